from dataclasses import dataclass, field

import pytest

from broker.domain.principals import Principal, Role
from broker.errors import Unauthenticated
from broker.identity.apikeys import generate_api_key
from broker.identity.authenticator import Authenticator
from broker.ports import ApiKeyRecord
from tests.identity.jwt_factory import ISSUER, SUBJECT, make_verifier, standard_claims


@dataclass
class InMemoryApiKeys:
    """Test double for ApiKeyStore (a dict; no mocking)."""

    records: dict[str, ApiKeyRecord] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        self.lookups.append(key_id)
        return self.records.get(key_id)


@dataclass
class InMemoryPrincipals:
    principals: dict[str, Principal] = field(default_factory=dict)

    def get_principal(self, principal_id: str) -> Principal | None:
        return self.principals.get(principal_id)

    def is_disabled(self, principal_id: str) -> bool:  # noqa: ARG002 - this directory disables no one
        return False


ALICE = Principal(id="human:alice", roles=frozenset({Role.APPROVER}), groups=frozenset({"sre"}))


@pytest.fixture()
def directory():
    return InMemoryPrincipals({ALICE.id: ALICE})


@pytest.fixture()
def key_store():
    return InMemoryApiKeys()


@pytest.fixture()
def issued(key_store):
    issued = generate_api_key()
    key_store.records[issued.key_id] = ApiKeyRecord(issued.key_id, issued.token_hash, ALICE.id)
    return issued


@pytest.fixture()
def authenticator(key_store, directory, verifier):
    return Authenticator(api_keys=key_store, principals=directory, oidc_verifiers=[verifier])


# -- header parsing ------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_credentials(authenticator, header):
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(header)
    assert caught.value.code == "missing_credentials"


@pytest.mark.parametrize("header", [
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "Bearer ",
    "Bearer a b",
    "Bearertoken",
    "Token brk_x",
    "Bearer\ttoken",
    "Bearer " + "a" * 20_000,
])
def test_malformed_header(authenticator, header):
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(header)
    assert caught.value.code == "invalid_credentials"


# -- API keys ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_api_key_authenticates(authenticator, issued, scheme):
    principal = authenticator.authenticate(f"{scheme} {issued.token}")
    assert principal.id == ALICE.id
    assert principal.roles == ALICE.roles
    assert principal.auth_method == "api_key"


def test_api_key_wrong_secret(authenticator, issued):
    other = generate_api_key()
    forged = f"brk_{issued.key_id}_{other.token.split('_', 2)[2]}"
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(f"Bearer {forged}")
    assert caught.value.code == "invalid_credentials"


def test_api_key_unknown_id(authenticator, key_store):
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(f"Bearer {generate_api_key().token}")
    assert len(key_store.lookups) == 1


def test_api_key_malformed_not_looked_up(authenticator, key_store):
    with pytest.raises(Unauthenticated):
        authenticator.authenticate("Bearer brk_nope")
    assert key_store.lookups == []


def test_revoked_key(authenticator, key_store, issued):
    record = key_store.records[issued.key_id]
    key_store.records[issued.key_id] = ApiKeyRecord(record.key_id, record.token_hash, record.principal_id, True)
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(f"Bearer {issued.token}")
    assert caught.value.code == "revoked_credentials"


def test_key_of_deleted_principal(authenticator, directory, issued):
    del directory.principals[ALICE.id]
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(f"Bearer {issued.token}")


# -- OIDC ----------------------------------------------------------------------


def test_oidc_token_authenticates(authenticator, rsa_signer):
    principal = authenticator.authenticate(f"Bearer {rsa_signer.sign(standard_claims())}")
    assert principal.id == f"agent:{SUBJECT}"
    assert principal.auth_method == f"oidc:{ISSUER}"
    assert principal.roles == frozenset({Role.AGENT})


def test_directory_wins_for_roles_and_adds_groups_and_acts_for(key_store, directory, jwks_server, rsa_signer):
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(jwks_server.jwks_url, groups_claim="groups")
    directory.principals[f"agent:{SUBJECT}"] = Principal(
        id=f"agent:{SUBJECT}", roles=frozenset({Role.REVIEWER}), acts_for="human:alice",
        groups=frozenset({"platform"}))
    authenticator = Authenticator(api_keys=key_store, principals=directory, oidc_verifiers=[verifier])
    principal = authenticator.authenticate(f"Bearer {rsa_signer.sign(standard_claims(groups=['ci']))}")
    assert principal.roles == frozenset({Role.REVIEWER})
    assert principal.groups == frozenset({"ci", "platform"})
    assert principal.acts_for == "human:alice"
    assert principal.auth_method == f"oidc:{ISSUER}"


def test_conflicting_acts_for_refused(key_store, directory, jwks_server, rsa_signer):
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(jwks_server.jwks_url, acts_for_claim="owner")
    directory.principals[f"agent:{SUBJECT}"] = Principal(id=f"agent:{SUBJECT}", acts_for="human:alice")
    authenticator = Authenticator(api_keys=key_store, principals=directory, oidc_verifiers=[verifier])
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(f"Bearer {rsa_signer.sign(standard_claims(owner='mallory'))}")
    ok = authenticator.authenticate(f"Bearer {rsa_signer.sign(standard_claims(owner='alice'))}")
    assert ok.acts_for == "human:alice"


def test_unknown_issuer_refused_without_fetch(authenticator, rsa_signer, jwks_server):
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(f"Bearer {rsa_signer.sign(standard_claims(iss='https://other.example'))}")
    assert caught.value.code == "untrusted_issuer"
    assert jwks_server.hit_count() == 0


def test_no_verifiers_configured(key_store, directory, rsa_signer):
    authenticator = Authenticator(api_keys=key_store, principals=directory, oidc_verifiers=[])
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(f"Bearer {rsa_signer.sign(standard_claims())}")


def test_duplicate_issuer_verifiers_rejected(key_store, directory, verifier):
    with pytest.raises(ValueError):
        Authenticator(api_keys=key_store, principals=directory, oidc_verifiers=[verifier, verifier])


def test_routes_by_issuer(key_store, directory, jwks_server, rsa_signer, ec_signer):
    jwks_server.serve_jwks(rsa_signer, ec_signer)
    first = make_verifier(jwks_server.jwks_url, issuer="https://a.example", principal_prefix="agent:")
    second = make_verifier(jwks_server.jwks_url, issuer="https://b.example", principal_prefix="svc:")
    authenticator = Authenticator(api_keys=key_store, principals=directory, oidc_verifiers=[first, second])
    a = authenticator.authenticate(f"Bearer {rsa_signer.sign(standard_claims(iss='https://a.example'))}")
    b = authenticator.authenticate(f"Bearer {ec_signer.sign(standard_claims(iss='https://b.example'))}")
    assert (a.id, a.auth_method) == (f"agent:{SUBJECT}", "oidc:https://a.example")
    assert (b.id, b.auth_method) == (f"svc:{SUBJECT}", "oidc:https://b.example")


# -- require_registered ----------------------------------------------------------


@dataclass
class DirectoryWithDisabled(InMemoryPrincipals):
    """A directory that also holds disabled principals, and records every lookup."""

    disabled: set[str] = field(default_factory=set)
    lookups: list[str] = field(default_factory=list)

    def get_principal(self, principal_id: str) -> Principal | None:
        self.lookups.append(principal_id)
        return None if principal_id in self.disabled else self.principals.get(principal_id)

    def is_disabled(self, principal_id: str) -> bool:
        return principal_id in self.disabled


REGISTERED = Principal(id="agent:registered", roles=frozenset({Role.AGENT, Role.REVIEWER}), acts_for="human:alice")


@pytest.fixture()
def registry(jwks_server, rsa_signer):
    jwks_server.serve_jwks(rsa_signer)
    directory = DirectoryWithDisabled({REGISTERED.id: REGISTERED, "agent:switched-off": REGISTERED},
                                      disabled={"agent:switched-off"})
    return directory, jwks_server


@pytest.mark.parametrize(("require_registered", "subject", "outcome"), [
    (True, "stranger", "principal_unknown"),
    (True, "registered", {Role.AGENT, Role.REVIEWER}),  # the directory's roles
    (True, "switched-off", "principal_disabled"),
    (False, "stranger", {Role.AGENT}),  # the issuer's roles, as before
    (False, "registered", {Role.AGENT, Role.REVIEWER}),
    (False, "switched-off", "principal_disabled"),
])
def test_require_registered(key_store, registry, rsa_signer, require_registered, subject, outcome):
    directory, jwks_server = registry
    verifier = make_verifier(jwks_server.jwks_url, require_registered=require_registered)
    authenticator = Authenticator(api_keys=key_store, principals=directory, oidc_verifiers=[verifier])
    header = f"Bearer {rsa_signer.sign(standard_claims(sub=subject))}"
    if isinstance(outcome, str):
        with pytest.raises(Unauthenticated) as caught:
            authenticator.authenticate(header)
        assert (caught.value.code, caught.value.status) == (outcome, 401)
        assert subject not in caught.value.message
    else:
        principal = authenticator.authenticate(header)
        assert (principal.id, principal.roles) == (f"agent:{subject}", outcome)


def test_a_token_off_its_pins_is_refused_before_the_directory_is_asked(key_store, registry, rsa_signer):
    directory, jwks_server = registry
    verifier = make_verifier(jwks_server.jwks_url, require_registered=True,
                             required_claims={"repository_owner": "acme"})
    authenticator = Authenticator(api_keys=key_store, principals=directory, oidc_verifiers=[verifier])
    for owner in ("evil", None):
        with pytest.raises(Unauthenticated) as caught:
            token = rsa_signer.sign(standard_claims(sub="registered", repository_owner=owner))
            authenticator.authenticate(f"Bearer {token}")
        assert caught.value.code == "claim_mismatch"
    assert directory.lookups == []
    token = rsa_signer.sign(standard_claims(sub="registered", repository_owner="acme"))
    ok = authenticator.authenticate(f"Bearer {token}")
    assert ok.id == REGISTERED.id and directory.lookups == [REGISTERED.id]
