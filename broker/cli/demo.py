"""``broker demo``: the seed incident, replayed against a real (development) broker.

The story: an agent fixing a bug in ``cost-explorer-api`` asks for read-only cost data and gets
short-lived credentials that work; the simulator shows that deleting the production stack with
them is denied; the agent asks for the production "delete and recreate" scope and waits; the
human it acts for (alice) cannot approve it; bob and carol read the blast radius and co-sign
(or, with ``--deny``, carol says "absolutely not" and it ends there); the credentials that come
out reach one named stack for fifteen minutes; rita, the reviewer, reads the whole story in the
issuance log and verifies a signed export.

Every line printed reports an answer the broker (through the SDK) or the fake AWS just gave;
nothing is scripted output.  Without ``--url`` it starts ``broker dev`` as a subprocess on free
ports with a temporary state directory and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.sdk.client import BrokerClient, IssuedCredentials, PendingRequest
from broker.sdk.errors import ApprovalDenied, BrokerAPIError, Forbidden

ACCOUNT = "444455556666"         # the FAKE production account (broker dev names it)
STACK = "cost-explorer-api"
OTHER_STACK = "billing-api"
BUGFIX_TEMPLATE = "cost-explorer-read"
PROD_TEMPLATE = "prod-stack-recreate"
WORKSPACE_TEMPLATE = "workspace-reset"
DEV_ACCOUNT = "123456789012"     # the FAKE dev account


def workspace_table_arn(workspace: str) -> str:
    return f"arn:aws:dynamodb:us-east-1:{DEV_ACCOUNT}:table/workspace-{workspace}"
STARTUP_SECONDS = 60.0


def stack_arn(name: str) -> str:
    return f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/{name}/3f1c2b9e-demo"


class DemoFailure(Exception):
    """The broker did something the story says it must not (the demo stops and says what)."""


@dataclass
class DemoBroker:
    url: str
    keys: dict[str, str]
    aws_endpoint: str | None
    public_key_file: Path | None = None

    def client(self, principal: str) -> BrokerClient:
        if principal not in self.keys:
            raise DemoFailure(f"no key for {principal} in the keys file")
        return BrokerClient(self.url, token=self.keys[principal])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_scopes() -> Path:
    here = Path("scopes")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "scopes"


@contextmanager
def started_dev_broker(scopes: Path, say: Callable[[str], None]) -> Iterator[DemoBroker]:
    """``broker dev`` in a subprocess on free ports with a temporary state directory."""
    with tempfile.TemporaryDirectory(prefix="broker-demo-") as temp:
        state = Path(temp) / "state"
        port, aws_port = _free_port(), _free_port()
        log_path = Path(temp) / "broker-dev.log"
        command = [sys.executable, "-m", "broker.cli.main", "dev", "--port", str(port), "--aws-port", str(aws_port),
                   "--state-dir", str(state), "--scopes", str(scopes)]
        say(f"$ broker dev --port {port} --aws-port {aws_port} --state-dir {state}   (started for this demo)")
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            broker = _wait_until_ready(process, state, f"http://127.0.0.1:{port}", log_path)
            broker.aws_endpoint = f"http://127.0.0.1:{aws_port}"
            yield broker
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _wait_until_ready(process: subprocess.Popen, state: Path, url: str, log_path: Path) -> DemoBroker:
    keys_file = state / "dev-keys.json"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoFailure(f"broker dev exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
        if keys_file.exists():
            try:
                keys = json.loads(keys_file.read_text())
            except ValueError:
                keys = {}
            if keys and BrokerClient(url, token=keys["agent:demo"]).ready():
                return DemoBroker(url=url, keys=keys, aws_endpoint=None,
                                  public_key_file=state / "log-public-key.pem")
        time.sleep(0.2)
    raise DemoFailure(f"broker dev did not become ready within {STARTUP_SECONDS:.0f}s")


@contextmanager
def existing_broker(url: str, keys_file: Path, aws_endpoint: str | None) -> Iterator[DemoBroker]:
    try:
        keys = json.loads(keys_file.read_text())
    except (OSError, ValueError) as exc:
        raise DemoFailure(f"cannot read the keys file {keys_file}") from exc
    public_key = keys_file.parent / "log-public-key.pem"
    yield DemoBroker(url=url.rstrip("/"), keys=keys, aws_endpoint=aws_endpoint,
                     public_key_file=public_key if public_key.exists() else None)


class SeedIncident:
    """The story, one step per method; ``say`` prints a line."""

    def __init__(self, broker: DemoBroker, *, deny: bool, say: Callable[[str], None]) -> None:
        self.broker, self.deny, self.say = broker, deny, say
        self.agent = broker.client("agent:demo")
        self.request_ids: list[str] = []
        self.step_no = 0

    def step(self, title: str) -> None:
        self.step_no += 1
        self.say("")
        self.say(f"== {self.step_no}. {title}")

    def play(self) -> int:
        self.say(f"The seed incident, replayed against {self.broker.url}")
        self.say(f"(FAKE AWS at {self.broker.aws_endpoint}: moto; nothing here is a real credential)")
        bugfix = self.bugfix_scope()
        self.simulate(bugfix["policy"], "the bug-fix credentials",
                      [("ce:GetCostAndUsage", "*"), ("cloudformation:DeleteStack", stack_arn(STACK))])
        self.own_workspace_reset()
        pending = self.ask_for_production()
        self.own_human_tries(pending)
        approved = self.approvers_decide(pending)
        if approved:
            self.production_credentials(pending)
        self.reviewer_reads()
        self.say("")
        self.say("The end: " + ("the stack could be recreated, by one agent, for fifteen minutes, with two humans' "
                                "consent, and the log proves it." if approved else
                                "one human said no, so no credentials exist; the log proves that too."))
        return 0

    # ------------------------------------------------------------------ 1. the bug-fix scope
    def bugfix_scope(self) -> dict[str, Any]:
        self.step(f"agent:demo (acting for human:alice) asks for the bug-fix scope '{BUGFIX_TEMPLATE}'")
        session = self.agent.boto3_session(
            BUGFIX_TEMPLATE, {}, reason=f"Bug 4711: {STACK} returns stale totals; read cost data to reproduce",
            endpoint_url=self.broker.aws_endpoint)
        issued = session.refresher.current
        self.request_ids.append(issued.request_id)
        self.say(f"issued at once (dev scope): request {issued.request_id}, access key {issued.access_key_id}, "
                 f"expires {issued.as_credential_process()['Expiration']}")
        ce = session.client("ce", region_name="us-east-1")
        answer = ce.get_cost_and_usage(TimePeriod={"Start": "2026-10-01", "End": "2026-11-01"},
                                       Granularity="MONTHLY", Metrics=["UnblendedCost"])
        status = answer["ResponseMetadata"]["HTTPStatusCode"]
        self.say(f"the agent calls ce:GetCostAndUsage with them: HTTP {status}, "
                 f"{len(answer.get('ResultsByTime', []))} period(s) of cost data")
        view = self.agent.request_view(issued.request_id)
        return view

    # ------------------------------------------------------------------ 2. the simulator
    def simulate(self, policy: dict[str, Any], label: str, checks: list[tuple[str, str]]) -> dict[str, bool]:
        from broker.domain.evaluator import AccessRequest, PolicyKind, PolicySet, evaluate

        self.step(f"the simulator evaluates {label}' session policy (the same engine as `broker scopes simulate`)")
        results = {}
        for action, resource in checks:
            decision = evaluate([PolicySet.of(PolicyKind.SESSION, policy, name="session")],
                                AccessRequest(action=action, resource=resource))
            results[f"{action} {resource}"] = decision.allowed
            self.say(f"{action} on {resource}: {decision.outcome.value.upper()} ({decision.reason})")
        return results

    # ------------------------------------------------------------------ 2b. its own workspace, and only its own
    def own_workspace_reset(self) -> None:
        import boto3

        self.step(f"agent:demo resets its own workspace with '{WORKSPACE_TEMPLATE}' (no co-signer: the guardrails "
                  "prove the deletion is confined to the caller's own workspace)")
        issued = self.agent.request(WORKSPACE_TEMPLATE, {}, reason="reset my workspace database before the test run")
        if not isinstance(issued, IssuedCredentials):
            raise DemoFailure("the self-scoped workspace reset waited for co-signers")
        self.request_ids.append(issued.request_id)
        view = self.agent.request_view(issued.request_id)
        workspace = (view.get("identity") or {}).get("workspace")
        self.say(f"issued at once: the workspace comes from agent:demo's directory entry, not the request: "
                 f"{workspace}; policy resources: {', '.join(r for st in view['policy']['Statement'] for r in st['Resource'])}")
        dynamodb = boto3.Session(aws_access_key_id=issued.access_key_id, aws_secret_access_key=issued.secret_access_key,
                                 aws_session_token=issued.session_token, region_name="us-east-1"
                                 ).client("dynamodb", endpoint_url=self.broker.aws_endpoint)
        table = f"workspace-{workspace}"
        schema = {"TableName": table, "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                  "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                  "BillingMode": "PAY_PER_REQUEST"}
        if table not in dynamodb.list_tables().get("TableNames", []):
            dynamodb.create_table(**schema)
        dynamodb.delete_table(TableName=table)
        dynamodb.create_table(**schema)
        self.say(f"with them it deletes and recreates table {table}: "
                 f"{dynamodb.describe_table(TableName=table)['Table']['TableStatus']}")
        other = self.broker.client("agent:demo2")
        self.step("agent:demo2, of workspace demo2, tries to reset agent:demo's workspace")
        try:
            other.request(WORKSPACE_TEMPLATE, {"workspace": workspace}, reason="reset demo's workspace")
        except BrokerAPIError as exc:
            self.say(f"naming it in the request is refused: HTTP {exc.status} [{exc.code}] {exc.message}")
        else:
            raise DemoFailure("agent:demo2 chose another agent's workspace")
        own = other.request(WORKSPACE_TEMPLATE, {}, reason="reset my own workspace")
        if not isinstance(own, IssuedCredentials):
            raise DemoFailure("the self-scoped workspace reset waited for co-signers")
        self.request_ids.append(own.request_id)
        results = self.simulate(other.request_view(own.request_id)["policy"], "agent:demo2's credentials",
                                [("dynamodb:DeleteTable", workspace_table_arn(workspace)),
                                 ("dynamodb:DeleteTable", workspace_table_arn("demo2"))])
        if list(results.values()) != [False, True]:
            raise DemoFailure("agent:demo2's credentials reach another workspace (or not its own)")

    # ------------------------------------------------------------------ 3. production scope
    def ask_for_production(self) -> PendingRequest:
        self.step(f"the agent asks for the production scope '{PROD_TEMPLATE}' (stack {STACK}) and waits")
        answer = self.agent.request(PROD_TEMPLATE, {"stack_name": STACK},
                                    reason=f"Bug 4711: {STACK} is wedged; delete and recreate the stack")
        if isinstance(answer, IssuedCredentials):
            raise DemoFailure("the production scope was issued without approval")
        self.request_ids.append(answer.id)
        self.say(f"the broker answers {answer.status}: {answer.message()}")
        return answer

    def own_human_tries(self, pending: PendingRequest) -> None:
        self.step("human:alice, for whom the agent acts, tries to approve it")
        try:
            self.broker.client("human:alice").decide(pending.id, "approve", "my agent needs this")
        except Forbidden as exc:
            self.say(f"refused: HTTP {exc.status} [{exc.code}] {exc.message}")
            return
        raise DemoFailure("alice was allowed to approve her own agent's request")

    def approvers_decide(self, pending: PendingRequest) -> bool:
        self.step("two other approvers, human:bob and human:carol, read the blast radius and decide")
        bob, carol = self.broker.client("human:bob"), self.broker.client("human:carol")
        view = bob.request_view(pending.id)
        radius = view.get("blast_radius") or {}
        self.say(f"bob sees (GET /v1/requests/{pending.id}):")
        for line in radius.get("summary") or ["(no blast radius in the answer)"]:
            self.say(f"    {line}")
        self.say(f"    session policy resources: {', '.join(radius.get('resources') or [])}")
        decided = bob.decide(pending.id, "approve", "Read the blast radius: one named stack, 15 minutes.")
        self.say(f"bob approves: status {decided['status']}, {decided.get('approvals_counted')} of "
                 f"{decided.get('approvals_required')} approvals")
        if self.deny:
            decided = carol.decide(pending.id, "deny", "absolutely not")
            self.say(f"carol: \"absolutely not\": status {decided['status']}")
        else:
            decided = carol.decide(pending.id, "approve", "Agreed: recreate cost-explorer-api only.")
            self.say(f"carol approves: status {decided['status']}, {decided.get('approvals_counted')} of "
                     f"{decided.get('approvals_required')} approvals")
        try:
            self.agent.wait(pending.id, timeout=30, initial_delay=0.2)
        except ApprovalDenied as exc:
            self.say(f"the agent's wait ends: [{exc.code}] {exc.message}")
            try:
                self.agent.redeem(pending.id)
            except BrokerAPIError as redeem_exc:
                self.say(f"and redeeming anyway is refused: HTTP {redeem_exc.status} [{redeem_exc.code}]")
                return False
            raise DemoFailure("a denied request was redeemed") from exc
        if self.deny:
            raise DemoFailure("the request was approved although carol denied it")
        return True

    # ------------------------------------------------------------------ 4. what comes out
    def production_credentials(self, pending: PendingRequest) -> None:
        self.step("the agent redeems the approved request")
        issued = self.agent.redeem(pending.id)
        grant = issued.grant
        self.say(f"issued: access key {issued.access_key_id}, lifetime {grant.get('ttl_seconds')} s "
                 f"({int(grant.get('ttl_seconds') or 0) // 60} minutes), expires "
                 f"{issued.as_credential_process()['Expiration']}, role {grant.get('role_arn')}")
        identity = self._caller_identity(issued)
        self.say(f"sts:GetCallerIdentity with them: {identity}")
        view = self.agent.request_view(pending.id)
        results = self.simulate(view["policy"], "the production credentials",
                                [("cloudformation:DeleteStack", stack_arn(STACK)),
                                 ("cloudformation:DeleteStack", stack_arn(OTHER_STACK)),
                                 ("iam:DeleteRole", f"arn:aws:iam::{ACCOUNT}:role/anything")])
        if list(results.values()) != [True, False, False]:
            raise DemoFailure("the production credentials reach more (or less) than one named stack")

    def _caller_identity(self, issued: IssuedCredentials) -> str:
        import boto3

        sts = boto3.Session(aws_access_key_id=issued.access_key_id, aws_secret_access_key=issued.secret_access_key,
                            aws_session_token=issued.session_token, region_name="us-east-1"
                            ).client("sts", endpoint_url=self.broker.aws_endpoint)
        return sts.get_caller_identity()["Arn"]

    # ------------------------------------------------------------------ 5. the reviewer
    def reviewer_reads(self) -> None:
        from broker.domain import log as issuance_log

        self.step("human:rita, the reviewer, reads the story from the issuance log and verifies it")
        rita = self.broker.client("human:rita")
        for request_id in self.request_ids:
            events = rita.events(request_id=request_id, limit=100)
            self.say(f"GET /v1/events?request_id={request_id}: {len(events)} event(s)")
            for event in events:
                extra = event.get("access_key_id") or (event.get("details") or {}).get("reason") or ""
                self.say(f"    #{event.get('seq')} {event.get('time')} {event.get('type'):<10} "
                         f"{event.get('actor')}  {extra}".rstrip())
        checkpoint = rita.checkpoint()
        lines = list(rita.export_events())
        served_pem = rita.public_key_pem()
        key_source = "GET /v1/events/public-key"
        if self.broker.public_key_file is not None:
            local_pem = self.broker.public_key_file.read_bytes()
            if local_pem.strip() != served_pem.strip():
                raise DemoFailure("the broker serves a different public key than its state directory holds")
            key_source = str(self.broker.public_key_file)
        report = issuance_log.verify_export(lines, issuance_log.load_public_key(local_pem if
                                            self.broker.public_key_file else served_pem))
        self.say(f"signed checkpoint at seq {checkpoint.get('seq')}; export of {len(lines)} line(s) verified "
                 f"with the public key from {key_source}: {'OK' if report.ok else 'FAILED: ' + str(report.message)}"
                 f" ({report.entries} entries)")
        if not report.ok:
            raise DemoFailure("the exported log did not verify")


DEV_KEYS_FILE = Path(".broker") / "dev-keys.json"   # where `broker dev` run in this directory writes its keys


def run(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    url = args.url or os.environ.get("BROKER_URL")
    keys = args.keys or (DEV_KEYS_FILE if DEV_KEYS_FILE.exists() else None)
    use_running = bool(args.url or args.keys or (url and keys))
    try:
        if use_running:
            if not url or not keys:
                raise DemoFailure("against a running broker, give --url (or BROKER_URL) and --keys FILE "
                                  "(its dev-keys.json)")
            aws = args.aws_endpoint or os.environ.get("AWS_ENDPOINT_URL")
            if not aws:
                raise DemoFailure("against a running broker, give --aws-endpoint (or AWS_ENDPOINT_URL): the fake "
                                  "AWS that `broker dev` printed")
            context = existing_broker(url, keys, aws)
        else:
            context = started_dev_broker(args.scopes or default_scopes(), say)
        with context as broker:
            return SeedIncident(broker, deny=args.deny, say=say).play()
    except DemoFailure as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except BrokerAPIError as exc:
        print(f"demo failed: the broker answered [{exc.code}] {exc.message}", file=sys.stderr)
        return 1
