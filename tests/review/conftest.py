from tests.identity.jwt_factory import (  # noqa: F401 (fixtures)
    clock,
    ec_signer,
    ed_signer,
    jwks_server,
    rsa_signer,
    verifier,
)
