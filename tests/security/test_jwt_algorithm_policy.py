"""The verifier's algorithm allow-list holds on its own.

The issuer's own RSA key signs with an algorithm the key *could* verify (RS384, RS512, PS*)
but the configuration does not allow (only RS256 here): refused.  The JWKS entry names no
``alg``, so nothing but the allow-list stands in the way (tests/security/test_jwt_attacks.py
covers alg none / HS* / key confusion, where the key-type check is a second guard).
"""

from __future__ import annotations

import pytest

from broker.errors import Unauthenticated
from tests.identity.jwt_factory import make_verifier, standard_claims
from tests.security.attack_tally import record

OUTSIDE_ALLOW_LIST = ["RS384", "RS512", "PS256", "PS384", "PS512"]


@pytest.fixture
def rs256_only(jwks_server, rsa_signer):
    jwks_server.serve_jwks(rsa_signer)
    return make_verifier(jwks_server.jwks_url, algorithms=("RS256",))


def test_control_the_allowed_algorithm_verifies(rs256_only, rsa_signer):
    assert rs256_only.verify(rsa_signer.sign(standard_claims())).id == "agent:ci-deployer"


@pytest.mark.parametrize("alg", OUTSIDE_ALLOW_LIST)
def test_algorithm_outside_the_allow_list_is_refused(rs256_only, rsa_signer, alg):
    token = rsa_signer.sign(standard_claims(), alg=alg)
    with pytest.raises(Unauthenticated):
        rs256_only.verify(token)
    record("authentication (JWT)", refused=True)
