"""Adversarial suite for authentication (issue 9).

Every attack below is a credential an attacker could present.  Each one must end
in ``Unauthenticated`` (401), and the attacker's server, standing for every URL
a token may name (jku, x5u), must never be contacted.  Forgeries are built by
hand (hmac, base64) so the suite does not depend on PyJWT refusing them.

``ATTACK_COUNT`` (module level) summarises the suite; JWT attacks run twice,
through the full ``Authenticator`` and against ``OidcVerifier`` directly.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from broker.domain.principals import Principal, Role
from broker.errors import Unauthenticated
from broker.identity.apikeys import generate_api_key
from broker.identity.authenticator import Authenticator
from broker.ports import ApiKeyRecord
from broker.identity.oidc import OidcVerifier
from tests.identity.jwt_factory import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    SigningKey,
    b64url,
    make_verifier,
    rsa_key,
    standard_claims,
    unsigned_token,
)


@dataclass
class Arena:
    """Everything an attack may use: the real issuer's key, an attacker key, servers, API keys."""

    issuer_key: SigningKey
    attacker_key: SigningKey
    attacker_server: JwksServer
    verifier: OidcVerifier
    authenticator: Authenticator
    live_key: str
    revoked_key: str
    orphan_key: str


def _hs(alg: str, secret: bytes, header: dict, claims: dict) -> str:
    """Forge an HMAC-signed JWT by hand."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = unsigned_token(header, claims)[:-1]  # "h.p." -> "h.p"
    signature = hmac.new(secret, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def _public_pem(arena: Arena, fmt: serialization.PublicFormat) -> bytes:
    return arena.issuer_key.private_key.public_key().public_bytes(serialization.Encoding.PEM, fmt)


def _self_signed_cert_b64(key: SigningKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.private_key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key.private_key, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def _hdr(arena: Arena, alg: str = "RS256", **extra) -> dict:
    return {"alg": alg, "typ": "JWT", "kid": arena.issuer_key.kid, **extra}


def _with_attacker_url(arena: Arena, header_name: str) -> str:
    arena.attacker_server.serve_jwks(arena.attacker_key)
    return arena.attacker_key.sign(standard_claims(), **{header_name: arena.attacker_server.jwks_url})


def _reheader(token: str, header: dict) -> str:
    """The same payload and signature under another header."""
    _header, payload, signature = token.split(".")
    return f"{unsigned_token(header, {}).split('.')[0]}.{payload}.{signature}"


def _tampered_payload(arena: Arena) -> str:
    header, _payload, signature = arena.issuer_key.sign(standard_claims()).split(".")
    forged_payload = unsigned_token({}, standard_claims(sub="admin")).split(".")[1]
    return f"{header}.{forged_payload}.{signature}"


Attack = Callable[[Arena], str]
now = time.time

# -- JWT attacks: each returns a token -------------------------------------------------------

JWT_ATTACKS: dict[str, Attack] = {
    # alg: none, in several casings, with and without a signature segment
    "alg_none": lambda a: unsigned_token(_hdr(a, "none"), standard_claims()),
    "alg_None": lambda a: unsigned_token(_hdr(a, "None"), standard_claims()),
    "alg_NONE": lambda a: unsigned_token(_hdr(a, "NONE"), standard_claims()),
    "alg_nOnE": lambda a: unsigned_token(_hdr(a, "nOnE"), standard_claims()),
    "alg_none_with_signature": lambda a: unsigned_token(_hdr(a, "none"), standard_claims(), b"x" * 32),
    "alg_missing": lambda a: unsigned_token({"typ": "JWT", "kid": a.issuer_key.kid}, standard_claims(), b"x"),
    "alg_not_string": lambda a: unsigned_token(_hdr(a, ["RS256"]), standard_claims(), b"x"),  # type: ignore[arg-type]
    "alg_lowercase_rs256": lambda a: _reheader(a.issuer_key.sign(standard_claims()), _hdr(a, "rs256")),
    # HS256 keyed with the issuer's public key (CVE-2022-29217 shape), forged by hand
    "hs256_public_pem_spki": lambda a: _hs("HS256", _public_pem(a, serialization.PublicFormat.SubjectPublicKeyInfo),
                                           _hdr(a, "HS256"), standard_claims()),
    "hs256_public_pem_pkcs1": lambda a: _hs("HS256", _public_pem(a, serialization.PublicFormat.PKCS1),
                                            _hdr(a, "HS256"), standard_claims()),
    "hs512_public_pem_spki": lambda a: _hs("HS512", _public_pem(a, serialization.PublicFormat.SubjectPublicKeyInfo),
                                           _hdr(a, "HS512"), standard_claims()),
    "hs256_public_jwk_json": lambda a: _hs("HS256", json.dumps(a.issuer_key.public_jwk()).encode(),
                                           _hdr(a, "HS256"), standard_claims()),
    "hs256_public_jwk_json_compact": lambda a: _hs(
        "HS256", json.dumps(a.issuer_key.public_jwk(), separators=(",", ":")).encode(),
        _hdr(a, "HS256"), standard_claims()),
    "hs256_no_kid": lambda a: _hs("HS256", _public_pem(a, serialization.PublicFormat.SubjectPublicKeyInfo),
                                  {"alg": "HS256", "typ": "JWT"}, standard_claims()),
    # algorithm/key confusion among asymmetric algorithms
    "es256_header_on_rsa_kid": lambda a: _reheader(a.issuer_key.sign(standard_claims()), _hdr(a, "ES256")),
    "ecdsa_psychic_signature": lambda a: unsigned_token(_hdr(a, "ES256"), standard_claims(), b"\x00" * 64),
    # issuer confusion (CVE-2024-53861 partial match shape)
    "iss_suffix_extension": lambda a: a.issuer_key.sign(standard_claims(iss=ISSUER + ".evil")),
    "iss_trailing_slash": lambda a: a.issuer_key.sign(standard_claims(iss=ISSUER + "/")),
    "iss_substring": lambda a: a.issuer_key.sign(standard_claims(iss=ISSUER[:-1])),
    "iss_case": lambda a: a.issuer_key.sign(standard_claims(iss=ISSUER.upper())),
    "iss_list": lambda a: a.issuer_key.sign(standard_claims(iss=[ISSUER])),
    "iss_list_with_evil": lambda a: a.issuer_key.sign(standard_claims(iss=[ISSUER, "https://evil.example"])),
    "iss_nul_suffix": lambda a: a.issuer_key.sign(standard_claims(iss=ISSUER + "\x00")),
    "iss_missing": lambda a: a.issuer_key.sign(standard_claims(iss=None)),
    # audience
    "aud_wrong": lambda a: a.issuer_key.sign(standard_claims(aud="another-service")),
    "aud_prefix": lambda a: a.issuer_key.sign(standard_claims(aud=AUDIENCE[:-1])),
    "aud_extension": lambda a: a.issuer_key.sign(standard_claims(aud=AUDIENCE + "-evil")),
    "aud_list_without_ours": lambda a: a.issuer_key.sign(standard_claims(aud=["x", "y"])),
    "aud_empty_list": lambda a: a.issuer_key.sign(standard_claims(aud=[])),
    "aud_nested_list": lambda a: a.issuer_key.sign(standard_claims(aud=[[AUDIENCE]])),
    "aud_missing": lambda a: a.issuer_key.sign(standard_claims(aud=None)),
    # time
    "expired_beyond_leeway": lambda a: a.issuer_key.sign(
        standard_claims(iat=int(now()) - 3600, exp=int(now()) - 31)),
    "exp_missing": lambda a: a.issuer_key.sign(standard_claims(exp=None)),
    "exp_string": lambda a: a.issuer_key.sign(standard_claims(exp="9999999999")),
    "nbf_future": lambda a: a.issuer_key.sign(standard_claims(nbf=int(now()) + 120)),
    "iat_future": lambda a: a.issuer_key.sign(standard_claims(iat=int(now()) + 120)),
    "iat_missing": lambda a: a.issuer_key.sign(standard_claims(iat=None)),
    "iat_bool": lambda a: a.issuer_key.sign(standard_claims(iat=True)),
    # subject
    "sub_missing": lambda a: a.issuer_key.sign(standard_claims(sub=None)),
    "sub_empty": lambda a: a.issuer_key.sign(standard_claims(sub="")),
    "sub_not_string": lambda a: a.issuer_key.sign(standard_claims(sub=123)),
    "sub_glob": lambda a: a.issuer_key.sign(standard_claims(sub="*")),
    "sub_whitespace": lambda a: a.issuer_key.sign(standard_claims(sub="ci deployer")),
    # keys
    "unknown_kid": lambda a: a.attacker_key.sign(standard_claims()),
    "same_kid_other_key": lambda a: a.attacker_key.sign(standard_claims(), kid=a.issuer_key.kid),
    "kid_missing": lambda a: a.issuer_key.sign(standard_claims(), kid=None),
    "kid_not_string": lambda a: a.issuer_key.sign(standard_claims(), kid=7),
    "kid_path_traversal": lambda a: a.issuer_key.sign(standard_claims(), kid="../../../../dev/null"),
    "tampered_payload": _tampered_payload,
    "signature_stripped": lambda a: a.issuer_key.sign(standard_claims()).rsplit(".", 1)[0] + ".",
    # headers naming the key (never fetched)
    "jku_header": lambda a: _with_attacker_url(a, "jku"),
    "x5u_header": lambda a: _with_attacker_url(a, "x5u"),
    "jku_on_legit_token": lambda a: a.issuer_key.sign(standard_claims(), jku=a.attacker_server.jwks_url),
    "jwk_header": lambda a: a.attacker_key.sign(standard_claims(), jwk=a.attacker_key.public_jwk()),
    "x5c_header": lambda a: a.attacker_key.sign(standard_claims(), x5c=[_self_signed_cert_b64(a.attacker_key)]),
    "crit_header": lambda a: a.issuer_key.sign(standard_claims(), crit=["exp"]),
    "b64_false": lambda a: a.issuer_key.sign(standard_claims(), b64=False, crit=["b64"]),
    # other token types
    "typ_logout": lambda a: a.issuer_key.sign(standard_claims(), typ="logout+jwt"),
    "typ_id_token": lambda a: a.issuer_key.sign(standard_claims(), typ="id_token+jwt"),
    "typ_secevent": lambda a: a.issuer_key.sign(standard_claims(), typ="secevent+jwt"),
    "typ_dpop": lambda a: a.issuer_key.sign(standard_claims(), typ="dpop+jwt"),
    "typ_not_string": lambda a: a.issuer_key.sign(standard_claims(), typ=["JWT"]),
    # garbage
    "empty": lambda a: "",
    "single_char": lambda a: "a",
    "two_segments": lambda a: "a.b",
    "three_garbage": lambda a: "a.b.c",
    "only_dots": lambda a: "..",
    "jwe_five_segments": lambda a: "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d",
    "header_not_json": lambda a: f"{b64url(b'not json')}.{b64url(b'{}')}.{b64url(b'sig')}",
    "header_json_array": lambda a: f"{b64url(b'[1]')}.{b64url(b'{}')}.{b64url(b'sig')}",
    "payload_not_json": lambda a: a.issuer_key.sign(standard_claims()).split(".")[0] + "."
                                  + b64url(b"\xff\xfe") + ".c2ln",
    "padding_in_segments": lambda a: a.issuer_key.sign(standard_claims()).replace(".", "=.", 1),
    "oversized_token": lambda a: a.issuer_key.sign(standard_claims(blob="x" * 20_000)),
    "non_ascii": lambda a: "ey\u00e9.ey\u00e9.sig",
}

# -- API-key attacks: each returns a bearer token ---------------------------------------------


def _wrong_secret(a: Arena) -> str:
    key_id = a.live_key.split("_")[1]
    return f"brk_{key_id}_{generate_api_key().token.split('_', 2)[2]}"


def _flip_last_char(a: Arena) -> str:
    last = a.live_key[-1]
    return a.live_key[:-1] + ("A" if last != "A" else "B")


API_KEY_ATTACKS: dict[str, Attack] = {
    "api_key_wrong_secret_right_id": _wrong_secret,
    "api_key_one_char_changed": _flip_last_char,
    "api_key_revoked": lambda a: a.revoked_key,
    "api_key_unknown_id": lambda a: generate_api_key().token,
    "api_key_orphaned_principal": lambda a: a.orphan_key,
    "api_key_truncated": lambda a: a.live_key[:-1],
    "api_key_extended": lambda a: a.live_key + "A",
    "api_key_prefix_only": lambda a: "brk_",
    "api_key_uppercase_id": lambda a: a.live_key[:4] + a.live_key[4:16].upper() + a.live_key[16:],
    "api_key_hash_as_token": lambda a: "brk_" + a.live_key.split("_")[1] + "_" + "0" * 43,
    "api_key_prefixed_jwt": lambda a: "brk_" + a.issuer_key.sign(standard_claims()),
}

ATTACK_COUNT = 2 * len(JWT_ATTACKS) + len(API_KEY_ATTACKS)


@dataclass
class _Keys:
    records: dict[str, ApiKeyRecord]

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        return self.records.get(key_id)


@dataclass
class _Directory:
    principals: dict[str, Principal]

    def get_principal(self, principal_id: str) -> Principal | None:
        return self.principals.get(principal_id)

    def is_disabled(self, principal_id: str) -> bool:  # noqa: ARG002 - this directory disables no one
        return False


@pytest.fixture(scope="module")
def attacker_key() -> SigningKey:
    return rsa_key("attacker-1")


@pytest.fixture()
def arena(jwks_server, attacker_server, rsa_signer, attacker_key) -> Arena:
    jwks_server.serve_jwks(rsa_signer)
    verifier = make_verifier(jwks_server.jwks_url, algorithms=("RS256", "ES256"))
    live, revoked, orphan = generate_api_key(), generate_api_key(), generate_api_key()
    keys = _Keys({
        live.key_id: ApiKeyRecord(live.key_id, live.token_hash, "human:alice"),
        revoked.key_id: ApiKeyRecord(revoked.key_id, revoked.token_hash, "human:alice", revoked=True),
        orphan.key_id: ApiKeyRecord(orphan.key_id, orphan.token_hash, "human:gone"),
    })
    directory = _Directory({"human:alice": Principal(id="human:alice", roles=frozenset({Role.APPROVER}))})
    return Arena(
        issuer_key=rsa_signer,
        attacker_key=attacker_key,
        attacker_server=attacker_server,
        verifier=verifier,
        authenticator=Authenticator(api_keys=keys, principals=directory, oidc_verifiers=[verifier]),
        live_key=live.token,
        revoked_key=revoked.token,
        orphan_key=orphan.token,
    )


def test_controls_legitimate_credentials_pass(arena):
    """Positive control: without it, every attack below could 'pass' for a broken setup."""
    assert arena.authenticator.authenticate(f"Bearer {arena.live_key}").id == "human:alice"
    token = arena.issuer_key.sign(standard_claims())
    assert arena.authenticator.authenticate(f"Bearer {token}").id == "agent:ci-deployer"
    assert arena.verifier.verify(token).id == "agent:ci-deployer"
    # just inside the leeway is still fine, so the time attacks test the boundary
    edge = arena.issuer_key.sign(standard_claims(exp=int(time.time()) - 20, iat=int(time.time()) + 20))
    assert arena.verifier.verify(edge)


@pytest.mark.parametrize("target", ["authenticator", "verifier"])
@pytest.mark.parametrize("attack", list(JWT_ATTACKS.values()), ids=list(JWT_ATTACKS))
def test_jwt_attack_refused(arena, attack, target):
    token = attack(arena)
    with pytest.raises(Unauthenticated) as caught:
        if target == "authenticator":
            arena.authenticator.authenticate(f"Bearer {token}")
        else:
            arena.verifier.verify(token)
    if len(token) >= 8:
        assert token not in caught.value.message
    assert arena.attacker_server.hit_count() == 0


@pytest.mark.parametrize("attack", list(API_KEY_ATTACKS.values()), ids=list(API_KEY_ATTACKS))
def test_api_key_attack_refused(arena, attack):
    token = attack(arena)
    with pytest.raises(Unauthenticated) as caught:
        arena.authenticator.authenticate(f"Bearer {token}")
    assert token not in caught.value.message


def test_attack_count_is_summarised():
    assert ATTACK_COUNT == 2 * len(JWT_ATTACKS) + len(API_KEY_ATTACKS) >= 100
