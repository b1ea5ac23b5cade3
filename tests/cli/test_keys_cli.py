"""``broker keys create | list | revoke | rotate | disable | enable`` on the broker's own database."""

from __future__ import annotations

import json

import pytest

from broker.cli.main import main
from broker.identity.apikeys import parse_api_key
from broker.storage.engine import Database, build_engine


@pytest.fixture
def database_url(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    monkeypatch.setenv("BROKER_DATABASE_URL", url)
    return url


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _events(url: str) -> list[dict]:
    database = Database(build_engine(url))
    with database.read() as repo:
        return repo.query_events(filters={}, limit=100)


def test_the_key_lifecycle_from_the_command_line(database_url, capsys):
    code, out, _ = _run(capsys, "keys", "create", "--principal", "agent:ci", "--role", "agent",
                        "--acts-for", "human:alice", "--expires-in", "90d", "--reason", "CI")
    assert code == 0 and parse_api_key(out.strip()) is not None
    key_id = out.strip()[4:16]

    code, out, _ = _run(capsys, "keys", "list", "--format", "json")
    [listed] = json.loads(out)["keys"]
    assert (listed["key_id"], listed["principal"], listed["status"]) == (key_id, "agent:ci", "active")
    assert listed["expires_at"] is not None
    code, out, _ = _run(capsys, "keys", "list")
    assert out.splitlines()[0].split()[:3] == ["KEY", "ID", "PRINCIPAL"] and key_id in out

    code, out, err = _run(capsys, "keys", "rotate", key_id, "--reason", "quarterly")
    assert code == 0 and parse_api_key(out.strip()) and "ends now" in err
    new_id = out.strip()[4:16]

    assert _run(capsys, "keys", "revoke", new_id, "--reason", "leaked")[0] == 0
    code, _, err = _run(capsys, "keys", "revoke", new_id, "--reason", "again")
    assert code == 1 and "[api_key_revoked]" in err

    assert _run(capsys, "keys", "disable", "agent:ci", "--reason", "incident")[0] == 0
    code, _, err = _run(capsys, "keys", "create", "--principal", "agent:ci", "--role", "agent",
                        "--acts-for", "human:alice")
    assert code == 1 and "[principal_disabled]" in err and "broker keys enable agent:ci" in err
    assert _run(capsys, "keys", "enable", "agent:ci", "--reason", "back")[0] == 0
    assert _run(capsys, "keys", "create", "--principal", "agent:ci", "--role", "agent",
                "--acts-for", "human:alice")[0] == 0

    kinds = [(e["type"], e["actor"].split(":")[0]) for e in _events(database_url)]
    assert kinds == [("api_key_created", "local"), ("api_key_rotated", "local"), ("api_key_revoked", "local"),
                     ("principal_disabled", "local"), ("principal_enabled", "local"), ("api_key_created", "local")]


@pytest.mark.parametrize("argv", [
    ["keys", "create", "--principal", "agent:ci", "--role", "agent", "--acts-for", "human:a", "--expires-in", "soon"],
    ["keys", "create", "--principal", "agent:ci", "--role", "agent", "--acts-for", "human:a",
     "--expires-at", "2020-01-01", "--expires-in", "1d"],
])
def test_a_bad_expiry_is_a_usage_error(database_url, argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2


def test_directory_attributes_for_templates_are_set_with_the_key(database_url, capsys):
    code, out, _ = _run(capsys, "keys", "create", "--principal", "agent:ws-a-bot", "--role", "agent",
                        "--acts-for", "human:alice", "--attribute", "workspace=ws-a", "--format", "json")
    assert code == 0 and json.loads(out)["attributes"] == {"workspace": "ws-a"}
    database = Database(build_engine(database_url))
    with database.read() as repo:
        assert dict(repo.get_principal("agent:ws-a-bot").attributes) == {"workspace": "ws-a"}
    created = [e for e in _events(database_url) if e["type"] == "api_key_created"]
    assert created[-1]["details"]["attributes"] == {"workspace": "ws-a"}
    # A second key without --attribute keeps them; a bad one is refused and changes nothing.
    assert _run(capsys, "keys", "create", "--principal", "agent:ws-a-bot", "--role", "agent",
                "--acts-for", "human:alice")[0] == 0
    code, _, err = _run(capsys, "keys", "create", "--principal", "agent:ws-a-bot", "--role", "agent",
                        "--acts-for", "human:alice", "--attribute", "workspace=ws a")
    assert code != 0 and "invalid_attribute" in err
    with database.read() as repo:
        assert dict(repo.get_principal("agent:ws-a-bot").attributes) == {"workspace": "ws-a"}
