"""Accounts have environments: a template's role must be in an account the configuration names, of the
template's environment; the target role prefix is configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.aws.action_database import default_action_knowledge
from broker.cli.main import main
from broker.domain.accounts import parse_accounts, target_accounts
from broker.domain.guardrails import check_rendered, check_template
from broker.domain.rendering import render_policy, validate_parameters
from broker.domain.templates import template_from_mapping
from broker.errors import InvalidInput, TemplateError
from broker.settings import BrokerSettings, load_target_accounts

ACCOUNTS = target_accounts(("test", {"123456789012": "dev", "444455556666": "production"}))
REPO_SCOPES = Path(__file__).resolve().parents[2] / "scopes"


def template(*, environment: str = "dev", accounts: list[str] = ("123456789012",), role_name: str = "broker-target-x",
             approvals: int = 0):
    data = {"name": "t", "description": "d", "environment": environment,
            "role": "arn:aws:iam::{account}:role/" + role_name,
            "parameters": {"account": {"type": "aws_account_id", "enum": list(accounts)}},
            "statements": [{"actions": ["logs:FilterLogEvents"],
                            "resources": ["arn:aws:logs:us-east-1:{account}:log-group:/aws/lambda/x"]}],
            "requesters": ["agent:*"]}
    if approvals:
        data["approval"] = {"approvals": approvals, "approvers": ["group:sre"]}
    return template_from_mapping(data, source="test")


def codes(tpl, accounts=ACCOUNTS) -> set[str]:
    return {f.code for f in check_template(tpl, actions=default_action_knowledge(), accounts=accounts) if f.blocking}


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, set()),
    ({"environment": "production", "accounts": ["444455556666"], "approvals": 2}, set()),
    # A dev template whose role is in the production account: the seed incident's failure mode.
    ({"accounts": ["444455556666"]}, {"environment_mismatch"}),
    ({"environment": "production", "accounts": ["123456789012"], "approvals": 2}, {"environment_mismatch"}),
    # One enum value in the wrong account is enough to refuse.
    ({"accounts": ["123456789012", "444455556666"]}, {"environment_mismatch"}),
    ({"accounts": ["999999999999"]}, {"account_unknown"}),
    ({"environment": "staging", "accounts": ["123456789012"], "approvals": 1}, {"environment_mismatch"}),
])
def test_role_account_must_be_named_and_of_the_template_environment(kwargs, expected):
    assert codes(template(**kwargs)) == expected


def test_without_configuration_accounts_are_not_checked_but_an_empty_configuration_refuses_all():
    tpl = template(accounts=["444455556666"])
    assert codes(tpl, accounts=None) == set()
    assert codes(tpl, accounts=target_accounts()) == {"account_unknown"}
    assert codes(tpl, accounts=target_accounts(configured=False)) == set()


def test_the_rendered_role_is_checked_too():
    tpl = template(accounts=["123456789012", "444455556666"])
    rendered = render_policy(tpl, validate_parameters(tpl, {"account": "444455556666"}))
    found = check_rendered(tpl, rendered, actions=default_action_knowledge(), accounts=ACCOUNTS)
    assert "environment_mismatch" in {f.code for f in found}


def test_role_prefix_is_configuration():
    tpl = template(role_name="acme-handout-x")
    assert "role_not_target" in codes(tpl)
    assert "role_not_target" not in codes(tpl, accounts=target_accounts(
        ("test", {"123456789012": "dev"}), role_prefix="acme-handout-"))
    assert "role_not_target" in codes(template(), accounts=target_accounts(
        ("test", {"123456789012": "dev"}), role_prefix="acme-handout-"))


@pytest.mark.parametrize("raw", [{"12345": "dev"}, {"123456789012": "prod"}, ["123456789012"], {"abcdefghijkl": "dev"}])
def test_bad_account_configuration_is_refused(raw):
    with pytest.raises(InvalidInput) as caught:
        parse_accounts(raw, source="test")
    assert caught.value.code == "config_invalid"


def test_an_account_named_twice_differently_is_refused(tmp_path):
    path = tmp_path / "accounts.yaml"
    path.write_text("accounts:\n  '123456789012': production\n")
    with pytest.raises(InvalidInput):
        load_target_accounts(BrokerSettings(accounts={"123456789012": "dev"}, accounts_file=path))
    with pytest.raises(InvalidInput):
        target_accounts(role_prefix="bad prefix*")


def test_settings_read_accounts_from_the_environment_and_a_file(monkeypatch, tmp_path):
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps({"444455556666": "production"}))
    monkeypatch.setenv("BROKER_ACCOUNTS", '{"123456789012": "dev"}')
    monkeypatch.setenv("BROKER_ACCOUNTS_FILE", str(path))
    monkeypatch.setenv("BROKER_TARGET_ROLE_PREFIX", "acme-")
    from broker.settings import load_settings

    accounts = load_target_accounts(load_settings())
    assert dict(accounts.environments) == {"123456789012": "dev", "444455556666": "production"}
    assert accounts.role_prefix == "acme-"


def test_lint_checks_accounts_given_the_configuration(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("BROKER_ACCOUNTS", raising=False)
    monkeypatch.delenv("BROKER_ACCOUNTS_FILE", raising=False)
    monkeypatch.delenv("BROKER_CONFIG_FILE", raising=False)
    assert main(["scopes", "lint", str(REPO_SCOPES)]) == 0
    assert "accounts" in capsys.readouterr().err          # said: not checked
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"123456789012": "dev", "444455556666": "production"}))
    assert main(["scopes", "lint", "--accounts", str(good), str(REPO_SCOPES)]) == 0
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps({"123456789012": "production", "444455556666": "dev"}))
    assert main(["scopes", "lint", "--accounts", str(swapped), str(REPO_SCOPES)]) == 1
    assert "[environment_mismatch]" in capsys.readouterr().out
    monkeypatch.setenv("BROKER_ACCOUNTS", '{"123456789012": "dev"}')
    assert main(["scopes", "lint", str(REPO_SCOPES)]) == 1
    assert "[account_unknown]" in capsys.readouterr().out


def test_the_broker_refuses_a_role_in_an_unnamed_account(tmp_path, moto_server):
    from tests.conftest import TEST_SCOPES, build_harness

    with pytest.raises(TemplateError) as caught:
        build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                      aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "s",
                      accounts={"123456789012": "dev"})
    assert "account_unknown" in str(caught.value) and "444455556666" in str(caught.value)


def test_an_account_written_twice_in_broker_accounts_is_refused(monkeypatch):
    from broker.settings import load_settings

    monkeypatch.delenv("BROKER_CONFIG_FILE", raising=False)
    monkeypatch.setenv("BROKER_ACCOUNTS", '{"444455556666": "production", "444455556666": "dev"}')
    with pytest.raises(InvalidInput) as caught:
        load_target_accounts(load_settings())
    assert "written twice" in caught.value.message
