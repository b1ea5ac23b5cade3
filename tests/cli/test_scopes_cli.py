"""`broker scopes lint|render|explain|simulate`: outputs and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from broker.storage.template_files import load_catalog
from broker.cli.main import main
from broker.domain.rendering import render_policy, validate_parameters

REPO_SCOPES = Path(__file__).resolve().parents[2] / "scopes"
STACK_ARN = "arn:aws:cloudformation:us-east-1:444455556666:stack/cost-explorer-api/0f1e"
GOOD = yaml.safe_load((REPO_SCOPES / "lambda-deploy-dev.yaml").read_text())


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def write(folder: Path, name: str, data) -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- lint
def test_lint_of_the_shipped_templates_is_clean(capsys):
    code, out, err = run(capsys, "scopes", "lint", str(REPO_SCOPES))
    assert code == 0 and out == "" and "7 file(s), 0 error(s), 0 warning(s)" in err


def test_lint_defaults_to_broker_scopes_dir(capsys, monkeypatch, tmp_path):
    write(tmp_path, "a.yaml", GOOD)
    monkeypatch.setenv("BROKER_SCOPES_DIR", str(tmp_path))
    code, _, err = run(capsys, "scopes", "lint")
    assert code == 0 and "1 file(s)" in err


def test_lint_finding_names_file_template_and_field(capsys, tmp_path):
    bad = dict(GOOD, statements=[{"actions": ["lambda:*"], "resources": ["*"]}])
    path = write(tmp_path, "bad.yaml", bad)
    code, out, _ = run(capsys, "scopes", "lint", str(path))
    assert code == 1
    assert f"{path}: template 'lambda-deploy-dev': statements[0].actions[0]: error [service_star]" in out
    assert "statements[0].resources[0]" in out


def test_lint_schema_violation_is_a_finding_with_the_field(capsys, tmp_path):
    bad = dict(GOOD, statements=[{"actions": ["lambda:GetFunction"], "NotResource": ["*"], "resources": ["*"]}])
    path = write(tmp_path, "notresource.yaml", bad)
    code, out, _ = run(capsys, "scopes", "lint", "--format", "json", str(path))
    assert code == 1
    findings = json.loads(out)["findings"]
    assert findings[0]["source"] == str(path) and findings[0]["field"] == "statements[0].NotResource"


def test_lint_json_lists_findings_and_summary(capsys, tmp_path):
    write(tmp_path, "good.yaml", GOOD)
    reader = yaml.safe_load((REPO_SCOPES / "logs-investigate.yaml").read_text())
    write(tmp_path, "prod.yaml", dict(reader, name="prod-zero", environment="production"))
    code, out, _ = run(capsys, "scopes", "lint", "--format", "json", str(tmp_path))
    body = json.loads(out)
    assert code == 1
    assert [(f["template"], f["code"], f["field"]) for f in body["findings"]] == [
        ("prod-zero", "production_approvals", "approval.approvals")]
    assert body["summary"]["files"] == 2 and body["summary"]["errors"] == 1
    sizes = {t["template"]: t["worst_case_policy_size"] for t in body["templates"]}
    assert 0 < sizes["lambda-deploy-dev"] < body["templates"][0]["limit"] == 2048


def test_lint_duplicate_names_across_files(capsys, tmp_path):
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD)
    code, out, _ = run(capsys, "scopes", "lint", str(tmp_path))
    assert code == 1 and "[duplicate_template]" in out


def test_warnings_pass_unless_strict(capsys, tmp_path):
    path = write(tmp_path, "w.yaml", dict(GOOD, destructive=True, approval={"approvals": 2, "approvers": ["g:x"]}))
    assert run(capsys, "scopes", "lint", str(path))[0] == 0
    assert run(capsys, "scopes", "lint", "--strict", str(path))[0] == 1


@pytest.mark.parametrize(("content", "what"), [
    ("name: [unclosed", "broken YAML"),
    ("- just\n- a list\n", "not a mapping"),
    (None, "missing path"),
    ("", "empty folder"),
])
def test_lint_unusable_input_exits_2(capsys, tmp_path, content, what):
    if content is None:
        target = tmp_path / "nope.yaml"
    elif what == "empty folder":
        target = tmp_path
    else:
        target = write(tmp_path, "x.yaml", content)
    assert run(capsys, "scopes", "lint", str(target))[0] == 2, what


# ----------------------------------------------------------------------------- render / explain
def test_render_prints_the_exact_session_policy(capsys):
    code, out, err = run(capsys, "scopes", "render", "s3-read-prefix", "-p", "prefix=invoices/2024",
                         "--scopes", str(REPO_SCOPES))
    template = load_catalog(REPO_SCOPES).get("s3-read-prefix")
    expected = render_policy(template, validate_parameters(template, {"prefix": "invoices/2024"}))
    assert code == 0 and out == expected.json + "\n"
    assert "role arn:aws:iam::123456789012:role/broker-target-s3-read-prefix" in err


@pytest.mark.parametrize("param", ["prefix=*", "prefix=a/${aws:username}", "bucket=other-bucket", "nope=1"])
def test_render_refuses_bad_parameters(capsys, param):
    code, out, err = run(capsys, "scopes", "render", "s3-read-prefix", "-p", param, "--scopes", str(REPO_SCOPES))
    assert code == 1 and out == "" and "invalid_parameter" in err


def test_explain_template_and_request(capsys):
    code, out, _ = run(capsys, "scopes", "explain", "prod-stack-recreate", "--scopes", str(REPO_SCOPES))
    assert code == 0 and "DESTRUCTIVE:" in out and "{stack_name}" in out
    code, out, _ = run(capsys, "scopes", "explain", "prod-stack-recreate", "-p", "stack_name=cost-explorer-api",
                       "--format", "json", "--scopes", str(REPO_SCOPES))
    body = json.loads(out)
    assert code == 0 and body["destructive"] == ["cloudformation:DeleteStack"] and body["concrete"] is True


# ----------------------------------------------------------------------------- simulate
def simulate(capsys, *extra: str, name="prod-stack-recreate", params=("stack_name=cost-explorer-api",)):
    argv = ["scopes", "simulate", name, "--scopes", str(REPO_SCOPES)]
    for p in params:
        argv += ["-p", p]
    return run(capsys, *argv, *extra)


def test_simulate_allowed_denied_undecidable(capsys):
    code, out, _ = simulate(capsys, "--action", "cloudformation:DeleteStack", "--resource", STACK_ARN)
    assert code == 0 and out.startswith("allowed: allowed by Allow 'RecreateOneStack' in session policy")
    code, out, _ = simulate(capsys, "--action", "cloudformation:DeleteStack", "--resource",
                            "arn:aws:cloudformation:us-east-1:444455556666:stack/billing-db/1")
    assert code == 1 and out.startswith("denied:")
    code, out, _ = simulate(capsys, "--action", "s3:ListBucket", "--resource", "arn:aws:s3:::broker-demo-bucket",
                            name="s3-read-prefix", params=())
    assert code == 3 and out.startswith("undecidable: may allow") and "s3:prefix" in out


def test_simulate_with_context_decides(capsys):
    base = ["--action", "s3:ListBucket", "--resource", "arn:aws:s3:::broker-demo-bucket"]
    assert simulate(capsys, *base, "--context", "s3:prefix=reports/q1", name="s3-read-prefix", params=())[0] == 0
    assert simulate(capsys, *base, "--context", "s3:prefix=secrets/", name="s3-read-prefix", params=())[0] == 1
    assert simulate(capsys, *base, "--context-complete", name="s3-read-prefix", params=())[0] == 1


def test_simulate_intersects_with_the_role_policy(capsys, tmp_path):
    role = tmp_path / "role.json"
    role.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "cloudformation:*", "Resource": "*"},
        {"Sid": "BrokerRevoke", "Effect": "Deny", "Action": "*", "Resource": "*",
         "Condition": {"DateLessThan": {"aws:TokenIssueTime": "2024-06-01T00:00:00Z"}}}]}))
    base = ["--action", "cloudformation:DeleteStack", "--resource", STACK_ARN, "--role-policy", str(role),
            "--format", "json"]
    code, out, _ = simulate(capsys, *base, "--context", "aws:TokenIssueTime=2024-05-01T00:00:00Z")
    assert code == 1 and json.loads(out)["statements"][0]["sid"] == "BrokerRevoke"
    code, out, _ = simulate(capsys, *base, "--context", "aws:TokenIssueTime=2024-07-01T00:00:00Z")
    assert code == 0 and json.loads(out)["role_policy_checked"] is True
