"""`broker serve` refuses to start when a template's role is in an account the accounts configuration does not
name, or of another environment (issue 14 item 3): the same configuration, a clear error, exit 1, nothing served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.cli import server
from broker.cli.main import main
from broker.domain import log

REPO_SCOPES = Path(__file__).resolve().parents[2] / "scopes"
SHIPPED = {"123456789012": "dev", "444455556666": "production"}


@pytest.fixture
def serve_env(monkeypatch, tmp_path):
    for name in ("BROKER_CONFIG_FILE", "BROKER_ACCOUNTS", "BROKER_ACCOUNTS_FILE", "BROKER_TARGET_ROLE_PREFIX",
                 "BROKER_TEMPLATE_OWNERS_FILE", "BROKER_DEV_MODE"):
        monkeypatch.delenv(name, raising=False)
    key = tmp_path / "signing.pem"
    key.write_bytes(log.private_key_pem(log.generate_signing_key()))
    monkeypatch.setenv("BROKER_DATABASE_URL", f"sqlite:///{tmp_path / 'broker.db'}")
    monkeypatch.setenv("BROKER_SCOPES_DIR", str(REPO_SCOPES))
    monkeypatch.setenv("BROKER_SIGNING_KEY_FILE", str(key))
    served: list[object] = []
    monkeypatch.setattr(server, "_run", lambda container, host, port: served.append(container) or 0)
    yield served
    for container in served:
        container.database.engine.dispose()


@pytest.mark.parametrize(("accounts", "code", "account"), [
    ({"123456789012": "dev"}, "account_unknown", "444455556666"),              # the production account unnamed
    ({"123456789012": "dev", "444455556666": "dev"}, "environment_mismatch", "444455556666"),
    ({}, "account_unknown", "123456789012"),                                   # nothing named: every role refused
])
def test_serve_refuses_a_role_the_accounts_configuration_does_not_vouch_for(serve_env, monkeypatch, capsys,
                                                                            accounts, code, account):
    monkeypatch.setenv("BROKER_ACCOUNTS", json.dumps(accounts))
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert code in err and account in err, err
    assert serve_env == []                                  # never got as far as serving


def test_serve_starts_when_every_role_is_in_a_named_account_of_its_environment(serve_env, monkeypatch):
    monkeypatch.setenv("BROKER_ACCOUNTS", json.dumps(SHIPPED))
    assert main(["serve"]) == 0 and len(serve_env) == 1


def test_serve_refuses_the_issues_lambda_template_as_it_was(serve_env, monkeypatch, capsys, tmp_path):
    """scopes/lambda-deploy-dev.yaml before issue 14: code execution, nothing declared, no co-signers."""
    import yaml

    shipped = yaml.safe_load((REPO_SCOPES / "lambda-deploy-dev.yaml").read_text())
    shipped.pop("capabilities")
    shipped.pop("approval")
    folder = tmp_path / "scopes"
    folder.mkdir()
    (folder / "lambda-deploy-dev.yaml").write_text(yaml.safe_dump(shipped))
    monkeypatch.setenv("BROKER_SCOPES_DIR", str(folder))
    monkeypatch.setenv("BROKER_ACCOUNTS", json.dumps(SHIPPED))
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "undeclared_code_execution" in err and "risk_without_cosigning" in err, err
    assert serve_env == []
