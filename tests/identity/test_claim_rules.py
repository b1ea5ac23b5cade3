"""The claim rules of approver sign-in, table-style over hostile ID-token claims and configurations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import Forbidden
from broker.identity.claim_rules import (ApproverIdentity, ClaimEquals, EmailDomainIn, EmailVerified, email_domain,
                                         parse_allowed_domains, parse_required_claims)

DOMAINS = frozenset({"example.com", "example.org"})
PINNED = ApproverIdentity.configured(principal_claim="email", allowed_domains=DOMAINS)


def claims(email: object = "carol@example.com", verified: object = True, **more: object) -> dict[str, object]:
    token = {"sub": "u-1", "email": email, **more}
    if verified is not None:
        token["email_verified"] = verified
    return token


# --- the address and its domain --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "domain"), [
    ("carol@example.com", "example.com"),
    ("carol@EXAMPLE.COM", "example.com"),  # domains are case-insensitive
    ("Carol.Smith+approvals@Example.Org", "example.org"),
    ("carol@sub.example.com", "sub.example.com"),  # a domain, just not example.com (see the pinning table)
    ("carol@xn--exmple-cua.com", "xn--exmple-cua.com"),  # an IDN as its A-label is a domain like any other
    ("carol@example.com.", None),  # trailing dot
    ("carol@.example.com", None),
    ("carol@example..com", None),
    ("carol@-example.com", None),
    ("carol@example", None),  # one label
    ("carol@evil.com@example.com", None),  # two "@"
    ('"carol@evil.com"@example.com', None),  # quoted local part
    ("@example.com", None),  # empty local part
    (".carol@example.com", None),
    ("carol.@example.com", None),
    ("ca..rol@example.com", None),
    ("carol", None),  # no "@"
    ("carol@", None),
    ("", None),
    ("carol @example.com", None),
    ("carol@exa mple.com", None),
    ("carol@ex\u0430mple.com", None),  # Cyrillic "a"
    ("carol@\u212aexample.com", None),  # KELVIN SIGN: lower() would make it "k"
    ("c\u0430rol@example.com", None),  # non-ASCII local part
    ("carol@example.com\n", None),
    ("carol@*.example.com", None),
    ("a" * 65 + "@example.com", None),
    (None, None), (True, None), (["carol@example.com"], None), ({"email": "carol@example.com"}, None),
])
def test_email_domain(value, domain):
    assert email_domain(value) == domain


# --- the rules one by one ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("token", "accepted"), [
    (claims("carol@example.com"), True),
    (claims("carol@EXAMPLE.COM"), True),
    (claims("carol@Example.Org"), True),
    (claims("carol@example.com.evil.com"), False),
    (claims("carol@evil.com@example.com"), False),
    (claims("carol@evil.example.com"), False),  # no subdomains
    (claims("carol@sub.example.com"), False),
    (claims("carol@example.com."), False),
    (claims("carol@ex\u0430mple.com"), False),
    (claims("carol@\u212axample.com"), False),
    (claims("carol@examplecom"), False),
    (claims("carol@evilexample.com"), False),
    (claims("@example.com"), False),
    (claims("carol"), False),
    (claims(None), False),
    ({"sub": "u-1"}, False),  # no claim at all
])
def test_email_domain_in(token, accepted):
    refusal = EmailDomainIn("email", DOMAINS).verify(token)
    assert (refusal is None) is accepted
    if not accepted:
        assert refusal.code == "oidc_email_domain_not_allowed"


@pytest.mark.parametrize(("claim", "token", "accepted"), [
    ("email", claims(verified=True), True),
    ("email", claims(verified=None), False),  # missing
    ("email", claims(verified=False), False),
    ("email", claims(verified="true"), False),  # a string is not the boolean
    ("email", claims(verified="True"), False),
    ("email", claims(verified=1), False),
    ("email", claims(verified=[True]), False),
    ("email", claims("carol", verified=None), False),  # the claim is email: checked whatever the value
    ("preferred_username", {"preferred_username": "carol@example.com"}, False),  # looks like an address
    # email_verified speaks for the email claim only: the address must be that same, verified email.
    ("preferred_username", {"preferred_username": "carol@example.com", "email_verified": True}, False),
    ("preferred_username", {"preferred_username": "carol@example.com", "email": "carol@example.com",
                            "email_verified": True}, True),
    ("preferred_username", {"preferred_username": "alice@example.com", "email": "mallory@evil.test",
                            "email_verified": True}, False),
    ("preferred_username", {"preferred_username": "alice@example.com", "email": "ALICE@example.com",
                            "email_verified": True}, False),
    ("preferred_username", {"preferred_username": "carol"}, True),  # not an address: nothing to verify
    ("sub", {"sub": "00u1abc"}, True),
    ("upn", {"upn": "carol@example.com", "email_verified": "true"}, False),
])
def test_email_verified(claim, token, accepted):
    refusal = EmailVerified(claim).verify(token)
    assert (refusal is None) is accepted
    if not accepted:
        assert refusal.code == "oidc_email_unverified"


@pytest.mark.parametrize(("token", "accepted"), [
    ({"hd": "example.com"}, True),
    ({"hd": "EXAMPLE.COM"}, False),  # exact, as the provider writes it
    ({"hd": "example.com "}, False),
    ({"hd": "sub.example.com"}, False),
    ({"hd": ["example.com"]}, False),
    ({"hd": None}, False),
    ({}, False),  # missing: a consumer Google account has no hd
])
def test_claim_equals(token, accepted):
    refusal = ClaimEquals("hd", "example.com").verify(token)
    assert (refusal is None) is accepted
    if not accepted:
        assert refusal.code == "oidc_claim_mismatch" and "'hd'" in refusal.message


# --- the whole identity ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("identity", "token", "outcome"), [
    # Pinned domain: the principal is the whole address, as the provider wrote it (never its local part).
    (PINNED, claims("carol@example.com"), "human:carol@example.com"),
    (PINNED, claims("carol@EXAMPLE.COM"), "human:carol@EXAMPLE.COM"),
    (PINNED, claims("carol@example.org"), "human:carol@example.org"),
    (PINNED, claims("carol@example.com.evil.com"), "oidc_email_domain_not_allowed"),
    (PINNED, claims("carol@evil.com@example.com"), "oidc_email_domain_not_allowed"),
    (PINNED, claims("carol"), "oidc_email_domain_not_allowed"),
    (PINNED, claims("carol@example.com", verified=None), "oidc_email_unverified"),
    (PINNED, claims("carol@example.com", verified="true"), "oidc_email_unverified"),
    (PINNED, claims("carol@evil.com", verified=False), "oidc_email_domain_not_allowed"),  # domain first
    # No pinning: what existing deployments configured keeps working, except an unverified address.
    (ApproverIdentity.configured(principal_claim="preferred_username"), {"preferred_username": "carol"},
     "human:carol"),
    (ApproverIdentity.configured(principal_claim="email"), claims("carol@anywhere.example"),
     "human:carol@anywhere.example"),
    (ApproverIdentity.configured(principal_claim="email"), claims("carol@anywhere.example", verified=False),
     "oidc_email_unverified"),
    # Pinned claims: all must match; with sub as the principal no address is involved.
    (ApproverIdentity.configured(principal_claim="sub", required_claims=[("tid", "t-1"), ("hd", "example.com")]),
     {"sub": "u-1", "tid": "t-1", "hd": "example.com"}, "human:u-1"),
    (ApproverIdentity.configured(principal_claim="sub", required_claims=[("tid", "t-1"), ("hd", "example.com")]),
     {"sub": "u-1", "tid": "t-1"}, "oidc_claim_mismatch"),
    (ApproverIdentity.configured(principal_claim="sub", required_claims=[("tid", "t-1")]),
     {"sub": "u-1", "tid": "t-2"}, "oidc_claim_mismatch"),
    (ApproverIdentity.configured(principal_claim="email", allowed_domains=DOMAINS,
                                 required_claims=[("hd", "example.com")]),
     claims("carol@example.org", hd="example.com"), "human:carol@example.org"),
])
def test_approver_identity(identity, token, outcome):
    if outcome.startswith("human:"):
        assert identity.principal_id(token) == outcome
    else:
        with pytest.raises(Forbidden) as refused:
            identity.principal_id(token)
        assert refused.value.code == outcome and refused.value.status == 403
        assert "carol" not in refused.value.diagnostics()  # the token's values are never echoed


def test_an_empty_rule_table_is_an_error():
    with pytest.raises(ValueError, match="no claim rules"):
        ApproverIdentity(principal_claim="sub", rules=())


@given(st.text(max_size=40), st.sampled_from(sorted(DOMAINS)))
def test_any_accepted_address_ends_in_an_allowed_domain(local, domain):
    """Whatever precedes it, an accepted value is one ASCII address whose domain is exactly allowed."""
    for value in (f"{local}@{domain}", f"{domain}@{local}", f"{local}{domain}", f"{local}@{domain}.{local}"):
        if EmailDomainIn("email", DOMAINS).verify({"email": value}) is None:
            assert value.isascii() and value.count("@") == 1
            assert value.rpartition("@")[2].lower() in DOMAINS


# --- configuration -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "domains"), [
    ("", frozenset()), (None, frozenset()), ("  ", frozenset()),
    ("example.com", {"example.com"}),
    ("Example.COM, example.org", {"example.com", "example.org"}),
    ("example.com example.org,,example.com", {"example.com", "example.org"}),
    ("xn--exmple-cua.com", {"xn--exmple-cua.com"}),
])
def test_parse_allowed_domains(text, domains):
    assert parse_allowed_domains(text) == domains


@pytest.mark.parametrize("text", ["example.com.", ".example.com", "*.example.com", "@example.com",
                                  "carol@example.com", "exämple.com", "ex\u0430mple.com", "\u212aexample.com",
                                  "localhost", "example..com", "-example.com", "example.com/x", "https://example.com"])
def test_parse_allowed_domains_refuses(text):
    with pytest.raises(ValueError, match="allowed_domains"):
        parse_allowed_domains(text)


@pytest.mark.parametrize(("text", "pins"), [
    ("", ()), (None, ()),
    ("hd=example.com", (("hd", "example.com"),)),
    ("tid=9188040d-6c67-4c5b-b112-36a304b66dad, hd=example.com",
     (("tid", "9188040d-6c67-4c5b-b112-36a304b66dad"), ("hd", "example.com"))),
    ("x=a=b", (("x", "a=b"),)),
])
def test_parse_required_claims(text, pins):
    assert parse_required_claims(text) == pins


@pytest.mark.parametrize("text", ["hd", "hd=", "=example.com", "hd=a hd=b", "h d=x", "hd=\u212a", "hd=<b>"])
def test_parse_required_claims_refuses(text):
    with pytest.raises(ValueError, match="required_claims"):
        parse_required_claims(text)


@pytest.mark.parametrize(("claim", "domains", "pins", "warned"), [
    ("preferred_username", (), (), True),
    ("email", (), (), True),
    ("upn", (), (), True),
    ("preferred_username", ("example.com",), (), False),
    ("preferred_username", (), (("hd", "example.com"),), False),
    ("email", ("example.com",), (), False),
    ("sub", (), (), False),
    ("oid", (), (), False),
])
def test_weaknesses(claim, domains, pins, warned):
    weaknesses = ApproverIdentity.configured(principal_claim=claim, allowed_domains=domains,
                                             required_claims=pins).weaknesses()
    assert bool(weaknesses) is warned
    if warned:
        assert repr(claim) in weaknesses[0] and "BROKER_UI_OIDC_ALLOWED_DOMAINS" in weaknesses[0]
