"""A principal disabled in the directory must not authenticate by any route, OIDC tokens included.

Before the fix, a disabled principal looked "absent" to the authenticator, which then trusted the
token's issuer-default roles: disabling a compromised workload did not stop it.
"""

from datetime import UTC, datetime

import pytest

from broker.api.deps import DirectoryAdapter
from broker.errors import Unauthenticated
from broker.identity.authenticator import Authenticator
from broker.storage.engine import Database, build_engine
from broker.storage.migrations import migrate
from tests.identity.jwt_factory import SUBJECT, standard_claims

WORKLOAD = f"agent:{SUBJECT}"


@pytest.fixture()
def directory(tmp_path):
    database = Database(build_engine(f"sqlite:///{tmp_path / 'broker.db'}"))
    migrate(database.engine)
    with database.transaction() as repo:
        repo.upsert_principal(principal_id=WORKLOAD, roles=["agent"], acts_for="human:alice",
                              now=datetime.now(UTC))
    return database, DirectoryAdapter(database)


def test_enabled_workload_token_authenticates(directory, verifier, rsa_signer):
    _, adapter = directory
    authenticator = Authenticator(api_keys=adapter, principals=adapter, oidc_verifiers=[verifier])
    principal = authenticator.authenticate(f"Bearer {rsa_signer.sign(standard_claims())}")
    assert principal.id == WORKLOAD and principal.acts_for == "human:alice"


def test_disabled_workload_token_is_refused(directory, verifier, rsa_signer):
    database, adapter = directory
    with database.transaction() as repo:
        assert repo.disable_principal(WORKLOAD)
    authenticator = Authenticator(api_keys=adapter, principals=adapter, oidc_verifiers=[verifier])
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(f"Bearer {rsa_signer.sign(standard_claims())}")
    assert caught.value.code == "principal_disabled"


def test_unknown_workload_token_still_uses_issuer_defaults(tmp_path, verifier, rsa_signer):
    database = Database(build_engine(f"sqlite:///{tmp_path / 'empty.db'}"))
    migrate(database.engine)
    adapter = DirectoryAdapter(database)
    authenticator = Authenticator(api_keys=adapter, principals=adapter, oidc_verifiers=[verifier])
    assert authenticator.authenticate(f"Bearer {rsa_signer.sign(standard_claims())}").id == WORKLOAD
