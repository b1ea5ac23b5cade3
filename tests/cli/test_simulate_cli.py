"""`broker scopes simulate`: unknown actions, permissions boundaries, and one real grant from the issuance log
(an export file, or the broker's API) checked against the role's real broker-revocations deny (moto over HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.aws.sts import aws_client
from broker.cli.main import main
from broker.domain.revocation import POLICY_NAME
from tests.conftest import TEST_SCOPES
from tests.live_server import serve
from tests.revocation.conftest import S3_ROLE, clear_deny_policy, issue

REPO_SCOPES = Path(__file__).resolve().parents[2] / "scopes"
OBJECT = "arn:aws:s3:::broker-demo-bucket/reports/q1.csv"
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["scopes", "simulate", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def s3_read(capsys, *extra: str):
    return run(capsys, "test-s3-read", "--scopes", TEST_SCOPES, "--resource", OBJECT, *extra)


def write(tmp_path: Path, name: str, body) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return path


# ----------------------------------------------------------------------------- unknown actions
@pytest.mark.parametrize(("action", "named", "suggestion"), [
    ("s3:GetObjct", "s3:GetObjct", "s3:GetObject"),
    ("S3:getobjct", "S3:getobjct", "s3:GetObject"),
    ("s3:DeleteBuckett", "s3:DeleteBuckett", "s3:DeleteBucket"),
    ("s4:GetObject", "s4", None),
    ("GetObject", "GetObject", None),
])
def test_an_unknown_action_is_named_never_denied(capsys, action, named, suggestion):
    code, out, err = s3_read(capsys, "--action", action)
    assert code == 4 and out == ""
    assert err.startswith("unknown action:") and named in err and "denied" not in err
    if suggestion:
        assert f"did you mean {suggestion}" in err
    code, out, _ = s3_read(capsys, "--action", action, "--format", "json")
    body = json.loads(out)
    assert code == 4 and body["outcome"] == "unknown_action" and body["outcome"] != "denied"
    assert (suggestion in body["did_you_mean"]) if suggestion else body["did_you_mean"] == []


def test_an_action_pattern_is_unusable_input(capsys):
    code, _, err = s3_read(capsys, "--action", "s3:Get*")
    assert code == 2 and "pattern" in err


def test_known_actions_are_evaluated_case_insensitively(capsys):
    assert s3_read(capsys, "--action", "S3:GETOBJECT")[0] == 0
    assert s3_read(capsys, "--action", "s3:PutObject")[0] == 1


# ----------------------------------------------------------------------------- permissions boundary
@pytest.mark.parametrize(("boundary", "code", "deciding"), [
    ({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}]}, 0, None),
    ({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:List*", "Resource": "*"}]}, 1,
     "boundary"),
    ({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"},
                                             {"Sid": "NoReports", "Effect": "Deny", "Action": "s3:*",
                                              "Resource": "arn:aws:s3:::broker-demo-bucket/reports/*"}]}, 1,
     "NoReports"),
    # the shape `aws iam get-policy-version` prints
    ({"PolicyVersion": {"Document": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}, "VersionId": "v1"}}, 0, None),
], ids=["allows", "implicit deny", "explicit deny", "get-policy-version output"])
def test_the_boundary_must_allow_too(capsys, tmp_path, boundary, code, deciding):
    got, out, _ = s3_read(capsys, "--action", "s3:GetObject", "--role-policy", write(tmp_path, "role.json", ALLOW_ALL),
                          "--boundary", write(tmp_path, "boundary.json", boundary), "--format", "json")
    body = json.loads(out)
    assert got == code and body["boundary_checked"] is True
    if deciding:
        assert deciding in body["reason"]
    else:
        assert [s["policy"] for s in body["statements"]] == ["role", "boundary", "session"]


def test_a_boundary_alone_intersects_with_the_session_policy(capsys, tmp_path):
    boundary = write(tmp_path, "b.json", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]})
    code, out, _ = s3_read(capsys, "--action", "s3:GetObject", "--boundary", boundary)
    assert code == 1 and "boundary policy" in out


@pytest.mark.parametrize("content", ["not json", json.dumps({"Statement": "x", "Nope": 1})[:-3], json.dumps([])])
def test_an_unreadable_policy_file_is_unusable_input_not_denied(capsys, tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    for option in ("--role-policy", "--boundary"):
        code, out, err = s3_read(capsys, "--action", "s3:GetObject", option, bad)
        assert code == 2 and out == "" and "error [" in err


# ----------------------------------------------------------------------------- one real grant
def export_log(broker, tmp_path: Path) -> Path:
    answer = broker.get("/v1/events/export", "human:rita")          # a reviewer
    assert answer.status_code == 200, answer.text
    path = tmp_path / "log.jsonl"
    path.write_bytes(answer.content)
    return path


def role_policies(broker, tmp_path: Path) -> list[str]:
    """The role's allow-all identity policy plus its real broker-revocations policy, as `aws iam get-role-policy`
    prints it (read back from moto)."""
    iam = aws_client("iam", endpoint_url=broker.aws_endpoint, region="us-east-1")
    got = iam.get_role_policy(RoleName=S3_ROLE.rsplit("/", 1)[1], PolicyName=POLICY_NAME)
    revocations = write(tmp_path, "revocations.json", {"RoleName": got["RoleName"], "PolicyName": got["PolicyName"],
                                                       "PolicyDocument": got["PolicyDocument"]})
    return ["--role-policy", str(write(tmp_path, "role.json", ALLOW_ALL)), "--role-policy", str(revocations)]


@pytest.fixture
def two_grants(sqlite_broker):
    clear_deny_policy(sqlite_broker.aws_endpoint)
    revoked, live = issue(sqlite_broker), issue(sqlite_broker)
    answer = sqlite_broker.post(f"/v1/grants/{revoked.grant_id}/revoke", "human:alice", json={"reason": "leaked"})
    assert answer.status_code == 200, answer.text
    yield sqlite_broker, revoked, live
    clear_deny_policy(sqlite_broker.aws_endpoint)


def test_a_revoked_grant_is_denied_by_the_revocation_policy_and_a_live_one_allowed(capsys, tmp_path, two_grants):
    broker, revoked, live = two_grants
    log, roles = export_log(broker, tmp_path), role_policies(broker, tmp_path)
    base = ["--scopes", TEST_SCOPES, "--action", "s3:GetObject", "--resource", OBJECT, "--log", log, *roles]

    code, out, err = run(capsys, "--grant", revoked.grant_id, *base)
    assert code == 1 and out.startswith("denied: explicitly denied by Deny 'BrokerRevokedGrants'")
    assert "revoked at" in err and "aws:SourceIdentity=agent.demo" in err

    code, out, _ = run(capsys, "--grant", live.grant_id, *base, "--format", "json")
    body = json.loads(out)
    assert code == 0 and body["outcome"] == "allowed", body
    context = body["grant"]["context"]
    assert context["aws:PrincipalTag/broker-grant-id"] == live.grant_id
    assert context["aws:userid"].endswith(":" + live.session_name) and context["aws:PrincipalArn"] == S3_ROLE
    assert context["aws:TokenIssueTime"].endswith("Z") and body["grant"]["access_key_id"] == live.access_key_id

    # the template name may be given too, the grant by a unique prefix of its id or by its access key id
    assert run(capsys, "test-s3-read", "--grant", revoked.grant_id[:13], *base)[0] == 1
    assert run(capsys, "--grant", live.access_key_id, *base)[0] == 0
    # the session policy of the grant still decides: it allows GetObject under its prefix only
    other_prefix = [b if b != OBJECT else "arn:aws:s3:::broker-demo-bucket/secrets/k" for b in base]
    assert run(capsys, "--grant", live.grant_id, *other_prefix)[0] == 1


def test_the_grant_from_the_brokers_api_with_a_reviewer_token(capsys, tmp_path, two_grants):
    broker, revoked, live = two_grants
    roles = role_policies(broker, tmp_path)
    base = ["--scopes", TEST_SCOPES, "--action", "s3:GetObject", "--resource", OBJECT, *roles]
    with serve(broker.client.app) as server:
        token = ["--url", server.url, "--token", broker.keys["human:rita"]]
        assert run(capsys, "--grant", revoked.grant_id, *base, *token)[0] == 1
        assert run(capsys, "--grant", live.grant_id, *base, *token)[0] == 0
        assert run(capsys, "--grant", live.access_key_id, *base, *token)[0] == 0
        code, _, err = run(capsys, "--grant", live.grant_id, *base, "--url", server.url, "--token",
                           broker.keys["agent:demo"])                # not a reviewer
        assert code == 2 and "error [" in err
        # A token file, as on every command; --context here is the request's IAM context, not a broker context.
        token_file = tmp_path / "rita.token"
        token_file.write_text(broker.keys["human:rita"] + "\n")
        code, out, _ = run(capsys, "--grant", live.grant_id, *base, "--url", server.url, "--token-file",
                           str(token_file), "--context", "aws:SourceIp=10.0.0.1")
        assert code == 0 and out.startswith("allowed"), out


def test_grant_problems_are_unusable_input(capsys, tmp_path, two_grants):
    broker, revoked, _ = two_grants
    log = export_log(broker, tmp_path)
    base = ["--scopes", TEST_SCOPES, "--action", "s3:GetObject", "--resource", OBJECT, "--log", log]
    code, _, err = run(capsys, "--grant", "no-such-grant", *base)
    assert code == 2 and "grant_not_found" in err
    code, _, err = run(capsys, "logs-read", "--grant", revoked.grant_id, *base)
    assert code == 2 and "issued from template 'test-s3-read'" in err
    # the template file changed since: the session's policy and tags cannot be rebuilt
    changed = tmp_path / "scopes"
    changed.mkdir()
    source = (TEST_SCOPES / "s3-read.yaml").read_text()
    (changed / "s3-read.yaml").write_text(source.replace("Read objects", "Read some objects"))
    code, _, err = run(capsys, "--grant", revoked.grant_id, *[b if b != TEST_SCOPES else changed for b in base])
    assert code == 2 and "template_changed" in err
    assert run(capsys, "--action", "s3:GetObject", "--resource", OBJECT)[0] == 2        # neither NAME nor --grant


def test_context_given_overrides_what_the_grant_fills_in(capsys, tmp_path, two_grants):
    broker, revoked, _ = two_grants
    log, roles = export_log(broker, tmp_path), role_policies(broker, tmp_path)
    base = ["--scopes", TEST_SCOPES, "--action", "s3:GetObject", "--resource", OBJECT, "--log", log, *roles]
    # another grant id in the tag: only the aws:userid deny can still name the session
    code, out, _ = run(capsys, "--grant", revoked.grant_id, *base, "--context",
                       "aws:PrincipalTag/broker-grant-id=someone-else")
    assert code == 1 and "BrokerRevokedSessions" in out


def test_the_role_id_makes_aws_userid_exact(capsys, tmp_path, two_grants):
    broker, revoked, live = two_grants
    log, roles = export_log(broker, tmp_path), role_policies(broker, tmp_path)
    base = ["--scopes", TEST_SCOPES, "--action", "s3:GetObject", "--resource", OBJECT, "--log", log, *roles,
            "--format", "json"]
    code, out, _ = run(capsys, "--grant", live.grant_id, *base, "--role-id", "AROAEXAMPLE123456789")
    assert code == 0 and json.loads(out)["grant"]["context"]["aws:userid"] == f"AROAEXAMPLE123456789:{live.session_name}"
    # a role policy that names the role id decides only when it is known
    pinned = write(tmp_path, "pinned.json", {"Version": "2012-10-17", "Statement": [
        {"Sid": "OnlyThisRoleId", "Effect": "Deny", "Action": "*", "Resource": "*",
         "Condition": {"StringNotLike": {"aws:userid": "AROAEXAMPLE123456789:*"}}}]})
    assert run(capsys, "--grant", live.grant_id, *base, "--role-policy", pinned)[0] == 3
    assert run(capsys, "--grant", live.grant_id, *base, "--role-policy", pinned, "--role-id",
               "AROAEXAMPLE123456789")[0] == 0
    assert run(capsys, "--grant", live.grant_id, *base, "--role-policy", pinned, "--role-id", "AROAOTHER")[0] == 1
