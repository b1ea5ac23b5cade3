"""``broker dev``: a whole broker on one machine, in one process, in a few seconds.

FAKE AWS: the AWS endpoint here is moto's server, in-process.  It accepts any
role, any duration and any policy, and it does not enforce session policies.
Nothing minted here is a real credential.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from broker.storage.template_files import TemplateCatalog
from broker.domain import log as issuance_log
from broker.domain.rendering import substitute
from broker.identity.apikeys import generate_api_key, parse_api_key, verify_api_key_hash
from broker.storage.engine import Database

log = logging.getLogger("broker.dev")

DEMO_BUCKET = "broker-demo-bucket"
DEMO_OBJECTS = {
    "reports/2026-10-costs.csv": "service,cost\nce-api,1234.56\n",
    "reports/2026-11-costs.csv": "service,cost\nce-api,1301.10\n",
    "private/payroll.csv": "name,salary\nnot,for-agents\n",
}
# principal id -> (roles, groups, acts_for)
DEV_PRINCIPALS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    "agent:demo": (("agent",), (), "human:alice"),
    # A second agent, of another workspace: `broker demo` shows it refused on agent:demo's workspace.
    "agent:demo2": (("agent",), (), "human:alice"),
    "human:alice": (("approver",), ("sre",), None),
    "human:bob": (("approver",), ("sre",), None),
    "human:carol": (("approver",), ("sre",), None),
    "human:rita": (("reviewer",), (), None),
    "human:root": (("admin",), (), None),
    # A second admin: lifting a lockdown takes two different admins (one requests, the other confirms).
    "human:ops": (("admin",), (), None),
}
# Directory attributes of the dev principals (templates read them as attribute:NAME; scopes/workspace-reset.yaml).
DEV_ATTRIBUTES: dict[str, dict[str, str]] = {"agent:demo": {"workspace": "demo"}, "agent:demo2": {"workspace": "demo2"}}
# FAKE accounts of broker dev: the shipped dev templates' and the shipped production templates' (moto serves both).
DEV_ACCOUNTS: dict[str, str] = {"123456789012": "dev", "444455556666": "production"}
TRUST_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
    "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]}]})


@dataclass
class DevAws:
    endpoint_url: str
    server: object

    def stop(self) -> None:
        self.server.stop()


def free_port(preferred: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_fake_aws(port: int = 0) -> DevAws:
    """Start moto's server on 127.0.0.1 (FAKE AWS for development and tests)."""
    from moto.server import ThreadedMotoServer

    port = free_port(port)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # The broker's own (fake) AWS identity for calling moto.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "FAKEBROKERKEY")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "fake-broker-secret")
    return DevAws(endpoint_url=f"http://127.0.0.1:{port}", server=server)


def default_role_arn(template) -> str | None:
    values = {}
    for name in template.role_parameters():
        spec = template.parameters.get(name)
        value = spec.default if spec is not None and spec.default is not None else (
            template.role_choices(name) or [None])[0]
        if value is None:
            return None
        values[name] = str(value)
    return substitute(template.role, values)


def seed_aws(endpoint_url: str, catalog: TemplateCatalog, region: str = "us-east-1") -> list[str]:
    """Create every template's target role (with the template's actions as its identity policy) and the demo bucket."""
    from broker.aws.sts import aws_client

    iam = aws_client("iam", endpoint_url=endpoint_url, region=region)
    s3 = aws_client("s3", endpoint_url=endpoint_url, region=region)
    created = []
    for template in catalog.all():
        arn = default_role_arn(template)
        if arn is None:
            continue
        name = arn.rsplit("/", 1)[-1]
        try:
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST_POLICY, MaxSessionDuration=template.role_max_session)
        except iam.exceptions.EntityAlreadyExistsException:
            pass
        actions = sorted({a for s in template.statements for a in s.actions})
        iam.put_role_policy(RoleName=name, PolicyName="broker-target-permissions", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
        created.append(arn)
    try:
        s3.create_bucket(Bucket=DEMO_BUCKET)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    for key, body in DEMO_OBJECTS.items():
        s3.put_object(Bucket=DEMO_BUCKET, Key=key, Body=body.encode())
    return created


def seed_principals(database: Database, keys_file: Path,
                    principals: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] | None = None,
                    ) -> dict[str, str]:
    """Create the demo principals and their keys; reuse keys from ``keys_file`` when they still verify."""
    now = datetime.now(UTC)
    existing: dict[str, str] = {}
    if keys_file.exists():
        try:
            existing = json.loads(keys_file.read_text())
        except ValueError:
            existing = {}
    keys: dict[str, str] = {}
    with database.transaction() as repo:
        for principal_id, (roles, groups, acts_for) in (principals or DEV_PRINCIPALS).items():
            repo.upsert_principal(principal_id=principal_id, roles=roles, groups=groups, acts_for=acts_for, now=now,
                                  attributes=DEV_ATTRIBUTES.get(principal_id))
            # NOTE: dev seeding restores its cast (upsert alone keeps a disabled principal disabled); a key
            # revoked when it was disabled stays revoked, and a new one is made below.
            repo.set_principal_disabled(principal_id, False)
            token = existing.get(principal_id)
            if token:
                parsed = parse_api_key(token)
                record = repo.find_api_key(parsed[0]) if parsed else None
                if record and not record.revoked and verify_api_key_hash(parsed[1], record.token_hash):
                    keys[principal_id] = token
                    continue
            issued = generate_api_key()
            repo.add_api_key(key_id=issued.key_id, token_hash=issued.token_hash, principal_id=principal_id, now=now)
            keys[principal_id] = issued.token
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    _write_private(keys_file, json.dumps(keys, indent=2))
    # One file per key as well, for BROKER_TOKEN_FILE / --token-file (and profiles, which never embed a key).
    tokens = keys_file.parent / TOKENS_DIR
    tokens.mkdir(mode=0o700, exist_ok=True)
    for principal_id, token in keys.items():
        _write_private(token_file(keys_file.parent, principal_id), token + "\n")
    return keys


TOKENS_DIR = "tokens"


def token_file(state_dir: Path, principal_id: str) -> Path:
    """Where ``broker dev`` writes a principal's key: ``.broker/tokens/agent-demo`` for agent:demo."""
    return state_dir / TOKENS_DIR / principal_id.replace(":", "-")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def ensure_signing_key(state_dir: Path) -> tuple[Path, Path]:
    private = state_dir / "log-signing-key.pem"
    public = state_dir / "log-public-key.pem"
    if not private.exists():
        key = issuance_log.generate_signing_key()
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(issuance_log.private_key_pem(key))
    key = issuance_log.load_signing_key(private.read_bytes())
    public.write_bytes(issuance_log.public_key_pem(key))
    return private, public


def self_check(*, url: str, agent_key: str, aws_endpoint: str) -> list[str]:
    """Show the broker working: agent:demo gets credentials for s3-read-prefix and lists its prefix with them.

    Every line returned describes a call that was made and what it answered.
    """
    import boto3
    import httpx

    lines = []
    response = httpx.post(f"{url}/v1/requests", headers={"Authorization": f"Bearer {agent_key}"}, timeout=10, json={
        "template": "s3-read-prefix", "parameters": {"prefix": "reports"}, "reason": "broker dev self-check"})
    if response.status_code != 201:
        return [f"self-check FAILED: POST /v1/requests answered {response.status_code} {response.text[:200]}"]
    body = response.json()
    creds = body["credentials"]
    lines.append(f"self-check: agent:demo asked for s3-read-prefix -> 201 issued, access key "
                 f"{creds['access_key_id']}, expires {creds['expiration']} (policy {body['policy_digest'][:19]}...)")
    s3 = boto3.client("s3", endpoint_url=aws_endpoint, region_name="us-east-1",
                      aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
                      aws_session_token=creds["session_token"])
    listed = s3.list_objects_v2(Bucket=DEMO_BUCKET, Prefix="reports/")
    keys = [item["Key"] for item in listed.get("Contents", [])]
    lines.append(f"self-check: with those credentials, s3 ls s3://{DEMO_BUCKET}/reports/ -> {', '.join(keys)}")
    lines.append("self-check: the session policy allows only s3:GetObject on reports/* and s3:ListBucket with "
                 "prefix reports/* (FAKE AWS does not enforce it; `broker scopes simulate` does)")
    return lines
