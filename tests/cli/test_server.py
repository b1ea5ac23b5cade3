"""`broker serve` says at start-up, as a warning, what is weak or broken in approver single sign-on."""

from __future__ import annotations

import argparse
import logging

import pytest

import broker.api.deps
from broker.cli import server

SSO = {"BROKER_UI_OIDC_ISSUER": "https://idp.example", "BROKER_UI_OIDC_CLIENT_ID": "broker",
       "BROKER_UI_OIDC_AUTHORIZATION_ENDPOINT": "https://idp.example/authorize",
       "BROKER_UI_OIDC_TOKEN_ENDPOINT": "https://idp.example/token",
       "BROKER_UI_OIDC_JWKS_URL": "https://idp.example/jwks"}


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),  # single sign-on off: nothing to say
    (SSO, "'preferred_username' claim with no domain or claim pinning"),
    ({**SSO, "BROKER_UI_OIDC_PRINCIPAL_CLAIM": "email"}, "'email' claim with no domain or claim pinning"),
    ({**SSO, "BROKER_UI_OIDC_ALLOWED_DOMAINS": "example.com"}, None),
    ({**SSO, "BROKER_UI_OIDC_REQUIRED_CLAIMS": "hd=example.com"}, None),
    ({**SSO, "BROKER_UI_OIDC_PRINCIPAL_CLAIM": "sub"}, None),
    ({**SSO, "BROKER_UI_OIDC_ALLOWED_DOMAINS": "example.com."}, "will refuse every sign-in"),
])
def test_serve_warns_about_single_sign_on(monkeypatch, caplog, env, expected):
    for name in ("BROKER_CONFIG_FILE", *SSO, "BROKER_UI_OIDC_PRINCIPAL_CLAIM", "BROKER_UI_OIDC_ALLOWED_DOMAINS",
                 "BROKER_UI_OIDC_REQUIRED_CLAIMS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Only start-up is under test: no container, no server.
    monkeypatch.setattr(broker.api.deps, "build_container", lambda settings: object())
    monkeypatch.setattr(server, "_run", lambda container, host, port: 0)
    with caplog.at_level(logging.WARNING, logger="broker.ui.oidc"):
        assert server.run_serve(argparse.Namespace(host=None, port=None)) == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "broker.ui.oidc" and r.levelno == logging.WARNING]
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expected in warnings[0]


@pytest.mark.parametrize(("pins", "warns"), [
    ({}, True),                                                           # unregistered principals, nothing pinned
    ({"required_claims": {"repository_owner": "acme"}}, False),
    ({"principal_pattern": "acme-[a-z]+"}, False),
    ({"require_registered": True}, False),
])
def test_serve_warns_about_an_issuer_that_trusts_any_workload(monkeypatch, caplog, tmp_path, pins, warns):
    import json

    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([{"issuer": "https://ci.example", "audience": "broker",
                                    "jwks_url": "https://ci.example/jwks", "acts_for_claim": "act", **pins}]))
    monkeypatch.delenv("BROKER_CONFIG_FILE", raising=False)
    monkeypatch.setenv("BROKER_OIDC_ISSUERS_FILE", str(issuers))
    monkeypatch.setattr(broker.api.deps, "build_container", lambda settings: object())
    monkeypatch.setattr(server, "_run", lambda container, host, port: 0)
    with caplog.at_level(logging.WARNING, logger="broker.identity.oidc"):
        assert server.run_serve(argparse.Namespace(host=None, port=None)) == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "broker.identity.oidc"]
    assert (len(warnings) == 1 and "https://ci.example" in warnings[0]) if warns else warnings == []


@pytest.mark.parametrize(("argv", "env", "code"), [
    (["--workers", "2"], {}, "workers_need_postgresql"),
    ([], {"BROKER_WORKERS": "3"}, "workers_need_postgresql"),
    (["--workers", "0"], {}, "invalid_workers"),
    (["--workers", "65"], {"BROKER_DATABASE_URL": "postgresql://broker@db.invalid/broker"}, "invalid_workers"),
])
def test_serve_refuses_workers_it_cannot_run_in_one_line(monkeypatch, capsys, tmp_path, argv, env, code):
    from broker.cli.main import main

    database = tmp_path / "broker.db"
    monkeypatch.delenv("BROKER_CONFIG_FILE", raising=False)
    monkeypatch.delenv("BROKER_WORKERS", raising=False)
    monkeypatch.setenv("BROKER_DATABASE_URL", f"sqlite:///{database}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Refused before anything starts: a container built or a server run would be a failure.
    monkeypatch.setattr(broker.api.deps, "build_container", lambda settings: pytest.fail("built a container"))
    monkeypatch.setattr(server, "_run", lambda *args, **kwargs: pytest.fail("started a server"))
    assert main(["serve", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error [{code}]: ") and err.count("\n") == 1, err
    assert not database.exists()


def test_one_worker_on_sqlite_is_the_single_process_server(monkeypatch, tmp_path):
    monkeypatch.delenv("BROKER_CONFIG_FILE", raising=False)
    monkeypatch.setenv("BROKER_DATABASE_URL", f"sqlite:///{tmp_path / 'broker.db'}")
    monkeypatch.setattr(broker.api.deps, "build_container", lambda settings: "container")
    ran = []
    monkeypatch.setattr(server, "_run", lambda container, host, port: ran.append(container) or 0)
    assert server.run_serve(argparse.Namespace(host=None, port=None, workers=1)) == 0
    assert ran == ["container"]
