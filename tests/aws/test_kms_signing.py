"""The log's signing key in AWS KMS (broker.aws.kms_signing).

Two endpoints, both over HTTP:

* moto's server, for what moto implements: GetPublicKey of keys of other specs (refused at start-up, naming
  the spec) and of an unknown key id.  moto 5.2.5 does not implement ECC_NIST_EDWARDS25519 keys.
* ``FakeKms`` below, for the Ed25519 path moto cannot do: a FAKE KMS (a few lines of AWS's JSON 1.1 protocol,
  ``TrentService.GetPublicKey`` and ``TrentService.Sign``) holding an Ed25519 key made with ``cryptography``.
  botocore talks to it as to KMS (same model, same request signing, same parsing); the fake checks the
  arguments the broker sends (RAW message, ED25519_SHA_512).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.aws.kms_signing import KmsMessageSigner, SigningUnavailable
from broker.domain import log as issuance_log
from broker.errors import InvalidInput
from broker.runtime.container import load_signer
from broker.settings import BrokerSettings
from tests.api.test_events_api import export, issue, verify_file
from tests.conftest import TEST_SCOPES, build_harness
from tests.security.test_log_forgery import checkpoint

FAKE_KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/fake-0000-ed25519"


class FakeKms:
    """A FAKE AWS KMS on 127.0.0.1 (tests only): one Ed25519 key, GetPublicKey and Sign."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.wrong_signatures = False   # sign with another key: what a broken or hostile endpoint returns
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                target = self.headers["X-Amz-Target"]
                fake.requests.append({"target": target, **body})
                status, answer = fake.answer(target, body)
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, target: str, body: dict) -> tuple[int, dict]:
        if body.get("KeyId") != FAKE_KEY_ARN:
            return 400, {"__type": "NotFoundException", "message": "FAKE KMS: no such key"}
        if target == "TrentService.GetPublicKey":
            der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
            return 200, {"KeyId": FAKE_KEY_ARN, "PublicKey": base64.b64encode(der).decode(),
                         "KeySpec": "ECC_NIST_EDWARDS25519", "KeyUsage": "SIGN_VERIFY",
                         "SigningAlgorithms": ["ED25519_SHA_512"]}
        if target == "TrentService.Sign":
            if body.get("MessageType") != "RAW" or body.get("SigningAlgorithm") != "ED25519_SHA_512":
                return 400, {"__type": "ValidationException", "message": "FAKE KMS: RAW / ED25519_SHA_512 only"}
            signer = Ed25519PrivateKey.generate() if self.wrong_signatures else self.key
            signature = signer.sign(base64.b64decode(body["Message"]))
            return 200, {"KeyId": FAKE_KEY_ARN, "Signature": base64.b64encode(signature).decode(),
                         "SigningAlgorithm": "ED25519_SHA_512"}
        return 400, {"__type": "UnsupportedOperationException", "message": f"FAKE KMS: no {target}"}

    def stop(self) -> None:
        if self.server.socket.fileno() != -1:  # once: a test may stop it before the fixture does
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def fake_kms():
    kms = FakeKms()
    yield kms
    kms.stop()


@pytest.fixture
def kms_broker(db_url, fake_kms, moto_server, tmp_path):
    """A broker whose log key is the FAKE KMS's (STS on moto: the endpoint setting is for KMS alone here)."""
    harness = build_harness(db_url=db_url, scopes=TEST_SCOPES, aws_endpoint=fake_kms.endpoint_url,
                            state_dir=tmp_path / "state", signing_key_file=None, signing_kms_key_id=FAKE_KEY_ARN,
                            minter=_moto_minter(moto_server))
    yield harness
    harness.container.database.engine.dispose()


def _moto_minter(moto_server):
    from broker.aws.sts import StsMinter
    return StsMinter(endpoint_url=moto_server.endpoint_url, region="us-east-1")


def _stored_checkpoints(harness) -> list:
    with harness.container.database.transaction() as repo:
        return repo.checkpoints()


# ----------------------------------------------------------------------------- moto: start-up checks
@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "RSA_2048"])
def test_a_kms_key_of_another_spec_is_refused_at_start_up(moto_server, spec):
    kms = boto3.client("kms", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    key_id = kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    settings = BrokerSettings(signing_kms_key_id=key_id, aws_endpoint_url=moto_server.endpoint_url)
    with pytest.raises(InvalidInput, match=f"key spec {spec}, not ECC_NIST_EDWARDS25519") as refused:
        load_signer(settings)
    assert refused.value.code == "signing_key_invalid"


def test_an_unknown_kms_key_is_refused_at_start_up(moto_server):
    settings = BrokerSettings(signing_kms_key_id="alias/no-such-key", aws_endpoint_url=moto_server.endpoint_url)
    with pytest.raises(InvalidInput, match=r"alias/no-such-key: GetPublicKey was refused \(NotFoundException\)"
                       ) as refused:
        load_signer(settings)
    assert refused.value.code == "signing_key_invalid"


def test_a_key_file_and_a_kms_key_together_are_refused(tmp_path):
    settings = BrokerSettings(signing_kms_key_id=FAKE_KEY_ARN, signing_key_file=tmp_path / "key.pem")
    with pytest.raises(InvalidInput, match="both set") as refused:
        load_signer(settings)
    assert refused.value.code == "config_invalid"


def test_kms_unreachable_at_start_up_stops_the_broker(fake_kms):
    fake_kms.stop()
    with pytest.raises(SigningUnavailable, match="cannot be reached"):
        KmsMessageSigner(key_id=FAKE_KEY_ARN, endpoint_url=fake_kms.endpoint_url, region="us-east-1")


# ----------------------------------------------------------------------------- the FAKE KMS: Ed25519
def test_checkpoints_signed_by_kms_verify_with_its_public_key(kms_broker, fake_kms, tmp_path):
    served = issuance_log.load_public_key(kms_broker.client.get("/v1/events/public-key").content)
    assert served == fake_kms.key.public_key()
    issue(kms_broker)
    assert checkpoint(kms_broker).status_code == 200
    issue(kms_broker)
    assert verify_file(tmp_path, kms_broker, export(kms_broker)) == 0
    signs = [r for r in fake_kms.requests if r["target"] == "TrentService.Sign"]
    assert signs and all(r["MessageType"] == "RAW" and r["SigningAlgorithm"] == "ED25519_SHA_512" for r in signs)
    assert sum(r["target"] == "TrentService.GetPublicKey" for r in fake_kms.requests) == 1  # once, at start-up


def test_a_signature_that_does_not_verify_is_never_stored(kms_broker, fake_kms):
    issue(kms_broker)
    before = _stored_checkpoints(kms_broker)
    fake_kms.wrong_signatures = True
    response = checkpoint(kms_broker)
    assert response.status_code == 503 and response.json()["error"]["code"] == "signing_unavailable", response.text
    assert _stored_checkpoints(kms_broker) == before
    fake_kms.wrong_signatures = False  # the next checkpoint signs
    assert checkpoint(kms_broker).status_code == 200
    assert len(_stored_checkpoints(kms_broker)) == len(before) + 1


def test_kms_unreachable_while_signing_stores_nothing(kms_broker, fake_kms):
    issue(kms_broker)
    before = _stored_checkpoints(kms_broker)
    fake_kms.stop()
    response = checkpoint(kms_broker)
    assert response.status_code == 503 and response.json()["error"]["code"] == "signing_unavailable", response.text
    assert "KMS" in response.json()["error"]["message"] and "127.0.0.1" not in response.json()["error"]["message"]
    assert _stored_checkpoints(kms_broker) == before
