import base64
import binascii

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.domain.principals import Role
from broker.errors import IdentityProviderUnavailable, Unauthenticated
from broker.identity.oidc import (
    HttpxJwksFetcher,
    JwksFetchError,
    OidcIssuerConfig,
    parse_jwks,
)
from tests.identity.jwt_factory import (
    AUDIENCE,
    ISSUER,
    SUBJECT,
    closed_port_url,
    ec_key,
    make_verifier,
    rsa_key,
    standard_claims,
)

# -- configuration -------------------------------------------------------------

GOOD_CONFIG = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://idp.example/jwks"}


@pytest.mark.parametrize("override", [
    {"algorithms": ("HS256",)},
    {"algorithms": ("RS256", "HS512")},
    {"algorithms": ("none",)},
    {"algorithms": ("RS256", "None")},
    {"algorithms": ()},
    {"algorithms": ["RS256"]},
    {"algorithms": ("rs256",)},
    {"algorithms": ("ES512",)},
    {"issuer": ""},
    {"issuer": " https://idp.example"},
    {"audience": ""},
    {"jwks_url": "ftp://idp.example/jwks"},
    {"jwks_url": "idp.example/jwks"},
    {"roles": ()},
    {"roles": ("superuser",)},
    {"principal_prefix": "agent"},
    {"principal_prefix": "Agent:"},
    {"principal_claim": ""},
    {"leeway_seconds": -1},
    {"leeway_seconds": 3600},
    {"jwks_cache_seconds": 0},
    {"max_token_age_seconds": 0},
    {"allowed_typ": ("",)},
], ids=str)
def test_invalid_config_is_rejected_at_construction(override):
    with pytest.raises(ValueError):
        OidcIssuerConfig(**{**GOOD_CONFIG, **override})


def test_config_defaults():
    config = OidcIssuerConfig(**GOOD_CONFIG)
    assert config.principal_claim == "sub"
    assert config.principal_prefix == "agent:"
    assert config.role_set == frozenset({Role.AGENT})
    assert config.leeway_seconds == 30
    assert config.allowed_typ == ("JWT", "at+jwt")
    assert config.jwks_cache_seconds == 300


# -- happy paths ---------------------------------------------------------------


@pytest.mark.parametrize("signer_name,alg", [
    ("rsa_signer", "RS256"),
    ("rsa_signer", "PS256"),
    ("ec_signer", "ES256"),
    ("ed_signer", "EdDSA"),
])
def test_valid_token_yields_principal(request, verifier, signer_name, alg):
    signer = request.getfixturevalue(signer_name)
    principal = verifier.verify(signer.sign(standard_claims(), alg=alg))
    assert principal.id == f"agent:{SUBJECT}"
    assert principal.roles == frozenset({Role.AGENT})
    assert principal.auth_method == f"oidc:{ISSUER}"
    assert principal.acts_for is None
    assert principal.groups == frozenset()


def test_es384_key(jwks_server):
    signer = ec_key("ec384", ec.SECP384R1(), alg="ES384")
    jwks_server.serve_jwks(signer)
    verifier = make_verifier(jwks_server.jwks_url)
    assert verifier.verify(signer.sign(standard_claims())).id == f"agent:{SUBJECT}"


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt", "application/at+jwt", "AT+JWT"])
def test_accepted_token_types(verifier, rsa_signer, typ):
    assert verifier.verify(rsa_signer.sign(standard_claims(), typ=typ)).id == f"agent:{SUBJECT}"


def test_missing_typ_can_be_required(jwks_server, rsa_signer):
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(jwks_server.jwks_url, allow_missing_typ=False)
    with pytest.raises(Unauthenticated):
        verifier.verify(rsa_signer.sign(standard_claims(), typ=None))


def test_acts_for_groups_and_custom_claims(jwks_server, rsa_signer):
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(
        jwks_server.jwks_url, principal_claim="workload", principal_prefix="svc:",
        roles=("agent", "reviewer"), acts_for_claim="owner", groups_claim="groups")
    claims = standard_claims(workload="deploy-bot", owner="alice@example.com", groups=["sre", "oncall"])
    principal = verifier.verify(rsa_signer.sign(claims))
    assert principal.id == "svc:deploy-bot"
    assert principal.roles == frozenset({Role.AGENT, Role.REVIEWER})
    assert principal.acts_for == "human:alice@example.com"
    assert principal.groups == frozenset({"sre", "oncall"})
    # already prefixed: kept as is
    claims = standard_claims(workload="deploy-bot", owner="human:bob")
    assert verifier.verify(rsa_signer.sign(claims)).acts_for == "human:bob"


@pytest.mark.parametrize("claims_override", [
    {"owner": "agent:other"},  # acts_for must be a human
    {"owner": ""},
    {"owner": ["alice"]},
    {"owner": "alice bob"},
    {"groups": "sre"},
    {"groups": ["sre", ""]},
    {"groups": ["sre", "a b"]},
    {"groups": ["g"] * 101},
    {"workload": None},  # missing principal claim
    {"workload": ""},
    {"workload": 42},
    {"workload": "bot*"},
    {"workload": "bot\n"},
    {"workload": "x" * 257},
], ids=str)
def test_bad_mapped_claims_refused(jwks_server, rsa_signer, claims_override):
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(jwks_server.jwks_url, principal_claim="workload",
                             acts_for_claim="owner", groups_claim="groups")
    claims = standard_claims(**{"workload": "bot", **claims_override})
    with pytest.raises(Unauthenticated):
        verifier.verify(rsa_signer.sign(claims))


def test_max_token_age(jwks_server, rsa_signer, clock):
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(jwks_server.jwks_url, clock=clock, max_token_age_seconds=60, leeway_seconds=0)
    token = rsa_signer.sign(standard_claims(exp=int(clock()) + 3600))
    assert verifier.verify(token)
    clock.advance(61)
    with pytest.raises(Unauthenticated):
        verifier.verify(token)


def test_expiry_follows_injected_clock(verifier, rsa_signer, clock):
    token = rsa_signer.sign(standard_claims())  # exp = now + 600, leeway 30
    clock.advance(620)
    assert verifier.verify(token)
    clock.advance(20)
    with pytest.raises(Unauthenticated):
        verifier.verify(token)


def test_key_type_must_fit_alg(jwks_server, rsa_signer, ec_signer):
    jwks_server.serve_jwks(rsa_signer, ec_signer)
    verifier = make_verifier(jwks_server.jwks_url)
    # ES256 header pointing at the RSA key's kid, signed with the EC key.
    forged = ec_signer.sign(standard_claims(), kid=rsa_signer.kid)
    with pytest.raises(Unauthenticated, match="does not match"):
        verifier.verify(forged)


def test_jwk_alg_member_pins_algorithm(jwks_server, rsa_signer):
    jwks_server.serve_json("/jwks.json", {"keys": [rsa_signer.public_jwk(alg="RS256")]})
    verifier = make_verifier(jwks_server.jwks_url)
    assert verifier.verify(rsa_signer.sign(standard_claims(), alg="RS256"))
    with pytest.raises(Unauthenticated):
        verifier.verify(rsa_signer.sign(standard_claims(), alg="PS256"))


def test_alg_outside_issuer_allow_list(jwks_server, rsa_signer):
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(jwks_server.jwks_url, algorithms=("ES256",))
    with pytest.raises(Unauthenticated, match="algorithm"):
        verifier.verify(rsa_signer.sign(standard_claims()))
    assert jwks_server.hit_count() == 0  # refused before any key lookup


def test_error_messages_do_not_echo_token(verifier, rsa_signer):
    token = rsa_signer.sign(standard_claims(aud="someone-else"))
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    for part in token.split("."):
        assert part not in caught.value.message
    assert caught.value.code == "invalid_token"


def test_expired_token_code(verifier, rsa_signer):
    token = rsa_signer.sign(standard_claims(exp=1_000_000, iat=999_000))
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    assert caught.value.code == "token_expired"


# -- JWKS parsing --------------------------------------------------------------


def test_parse_jwks_keeps_only_usable_public_signing_keys(rsa_signer, ec_signer):
    small = rsa_key("small", bits=1024)
    p521 = ec_key("p521", ec.SECP521R1(), alg="ES512")
    document = {"keys": [
        rsa_signer.public_jwk(),
        ec_signer.public_jwk(kid="dup"),
        ec_signer.public_jwk(kid="dup"),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {**rsa_signer.public_jwk(kid="enc"), "use": "enc"},
        {**rsa_signer.public_jwk(kid="private"), "d": "AQAB"},
        {**rsa_signer.public_jwk(kid="hs-alg"), "alg": "HS256"},
        {**rsa_signer.public_jwk(), "kid": ""},
        {k: v for k, v in rsa_signer.public_jwk().items() if k != "kid"},
        small.public_jwk(),
        p521.public_jwk(),
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not-a-key",
    ]}
    assert set(parse_jwks(document)) == {rsa_signer.kid}


@pytest.mark.parametrize("document", [{}, {"keys": {}}, {"keys": "x"}, {"keys": [{}] * 101}])
def test_parse_jwks_rejects_malformed(document):
    with pytest.raises(JwksFetchError):
        parse_jwks(document)


# -- JWKS cache ----------------------------------------------------------------


def test_keys_cached_for_their_lifetime(verifier, rsa_signer, jwks_server, clock):
    for _ in range(5):
        verifier.verify(rsa_signer.sign(standard_claims()))
    assert jwks_server.hit_count("/jwks.json") == 1
    clock.advance(299)
    verifier.verify(rsa_signer.sign(standard_claims()))
    assert jwks_server.hit_count("/jwks.json") == 1
    clock.advance(2)
    verifier.verify(rsa_signer.sign(standard_claims()))
    assert jwks_server.hit_count("/jwks.json") == 2


def test_key_rotation_picked_up_by_one_refetch(verifier, rsa_signer, jwks_server, clock):
    verifier.verify(rsa_signer.sign(standard_claims()))
    rotated = rsa_key("rsa-2")
    jwks_server.serve_jwks(rsa_signer, rotated)
    clock.advance(31)  # past the refetch rate limit, still within cache lifetime
    assert verifier.verify(rotated.sign(standard_claims()))
    assert jwks_server.hit_count("/jwks.json") == 2


def test_unknown_kid_refetch_is_rate_limited(verifier, rsa_signer, jwks_server, clock):
    verifier.verify(rsa_signer.sign(standard_claims()))
    stranger = rsa_key("nobody")
    for _ in range(10):
        with pytest.raises(Unauthenticated, match="not known"):
            verifier.verify(stranger.sign(standard_claims()))
    assert jwks_server.hit_count("/jwks.json") == 1  # the first fetch was < 30 s ago
    clock.advance(31)
    for _ in range(10):
        with pytest.raises(Unauthenticated, match="not known"):
            verifier.verify(stranger.sign(standard_claims()))
    assert jwks_server.hit_count("/jwks.json") == 2  # one refetch, then limited again


def test_jwks_down_cached_keys_used_until_lifetime_then_503(jwks_server, rsa_signer, clock):
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(jwks_server.jwks_url, clock=clock)
    verifier.verify(rsa_signer.sign(standard_claims()))
    jwks_server.server.shutdown()
    jwks_server.server.server_close()  # the port is now closed

    clock.advance(200)
    assert verifier.verify(rsa_signer.sign(standard_claims()))
    # an unknown kid now forces a refetch, which fails; cached keys stay usable
    with pytest.raises(Unauthenticated):
        verifier.verify(rsa_key("new").sign(standard_claims()))
    assert verifier.verify(rsa_signer.sign(standard_claims()))

    clock.advance(101)  # lifetime (300 s) over
    with pytest.raises(IdentityProviderUnavailable) as caught:
        verifier.verify(rsa_signer.sign(standard_claims()))
    assert caught.value.status == 503


def test_jwks_unreachable_from_start_is_503(rsa_signer):
    verifier = make_verifier(closed_port_url())
    with pytest.raises(IdentityProviderUnavailable):
        verifier.verify(rsa_signer.sign(standard_claims()))


def test_failed_refresh_is_rate_limited_and_recovers(jwks_server, rsa_signer, clock):
    jwks_server.serve_json("/jwks.json", {"error": "down"}, status=500)
    verifier = make_verifier(jwks_server.jwks_url, clock=clock)
    token = rsa_signer.sign(standard_claims(exp=int(clock()) + 3600))
    with pytest.raises(IdentityProviderUnavailable):
        verifier.verify(token)
    with pytest.raises(IdentityProviderUnavailable):
        verifier.verify(token)
    assert jwks_server.hit_count("/jwks.json") == 1
    jwks_server.serve_jwks(rsa_signer)
    clock.advance(31)
    assert verifier.verify(token)
    assert jwks_server.hit_count("/jwks.json") == 2


# -- HTTP fetcher --------------------------------------------------------------


def test_fetcher_follows_same_origin_redirect(jwks_server, rsa_signer):
    jwks_server.serve_jwks(rsa_signer)
    jwks_server.redirect("/old", "/jwks.json")
    assert HttpxJwksFetcher().fetch(f"{jwks_server.base_url}/old")["keys"]


def test_fetcher_refuses_cross_origin_redirect(jwks_server, attacker_server, rsa_signer):
    attacker_server.serve_jwks(rsa_signer)
    jwks_server.redirect("/jwks.json", attacker_server.jwks_url)
    with pytest.raises(JwksFetchError, match="another origin"):
        HttpxJwksFetcher().fetch(jwks_server.jwks_url)
    assert attacker_server.hit_count() == 0


def test_fetcher_redirect_loop(jwks_server):
    jwks_server.redirect("/loop", "/loop")
    with pytest.raises(JwksFetchError, match="too many"):
        HttpxJwksFetcher().fetch(f"{jwks_server.base_url}/loop")


@pytest.mark.parametrize("route,status,body", [
    ("/jwks.json", 404, b"{}"),
    ("/jwks.json", 200, b"not json"),
    ("/jwks.json", 200, b"[1, 2]"),
    ("/jwks.json", 200, b'{"keys": []' + b" " * 600_000 + b"}"),
])
def test_fetcher_refuses_bad_answers(jwks_server, route, status, body):
    jwks_server.routes[route] = (status, body, {})
    with pytest.raises(JwksFetchError):
        HttpxJwksFetcher().fetch(jwks_server.jwks_url)


@pytest.mark.parametrize("url", [
    "http://idp.example/jwks",  # plain http to a non-loopback host
    "file:///etc/passwd",
    "https:///jwks",
])
def test_fetcher_refuses_insecure_urls_without_connecting(url):
    with pytest.raises(JwksFetchError):
        HttpxJwksFetcher().fetch(url)


def test_fetcher_unreachable_is_fetch_error():
    with pytest.raises(JwksFetchError, match="unreachable"):
        HttpxJwksFetcher(timeout_seconds=1).fetch(closed_port_url())


# -- properties ----------------------------------------------------------------



@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(position=st.integers(min_value=0), replacement=st.sampled_from("AQgw_-.=xyz0"))
def test_any_single_character_edit_of_a_valid_token_is_refused(verifier, rsa_signer, position, replacement):
    token = rsa_signer.sign(standard_claims())
    position %= len(token)
    edited = token[:position] + replacement + token[position + 1:]
    # Base64url's last character may carry unused bits: editing only those leaves
    # the decoded bytes unchanged, which is not a forgery.
    segments, edited_segments = token.split("."), edited.split(".")
    if len(edited_segments) == 3 and all(
            _decode(a) == _decode(b) for a, b in zip(segments, edited_segments, strict=True)):
        return
    with pytest.raises(Unauthenticated):
        verifier.verify(edited)


def _decode(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_is_refused_with_unauthenticated_only(verifier, text):
    with pytest.raises(Unauthenticated):
        verifier.verify(text)


def test_safe_identifier_accepts_common_subjects(jwks_server, rsa_signer):
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(jwks_server.jwks_url)
    for sub in ["repo:org/name:ref:refs/heads/main", "auth0|abc123", "client@clients", "system:serviceaccount:ns:sa"]:
        assert verifier.verify(rsa_signer.sign(standard_claims(sub=sub))).id == f"agent:{sub}"
