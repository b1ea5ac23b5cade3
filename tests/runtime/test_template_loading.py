"""Signed production templates at load and reload: templates_loaded entries, refusal without enough owners'
signatures, SIGHUP reload that is atomic (a folder failing any check leaves the running catalog)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.aws.action_database import default_action_knowledge
from broker.cli.main import main
from broker.domain import guardrails
from broker.domain import log as issuance_log
from broker.errors import TemplateError
from broker.runtime.template_loading import TemplateLoader
from broker.settings import BrokerSettings
from tests.conftest import REPO_SCOPES, FrozenClock, migrated_database

PROD = "ecs-update-service-prod"


@pytest.fixture
def folder(tmp_path) -> Path:
    scopes = tmp_path / "scopes"
    shutil.copytree(REPO_SCOPES, scopes)
    return scopes


@pytest.fixture
def owners(tmp_path):
    """Three owners' keys on disk and an owners file naming their public keys (2 must sign)."""
    keys = {}
    for name in ("alice", "bob", "carol"):
        key = Ed25519PrivateKey.generate()
        path = tmp_path / f"{name}.pem"
        path.write_bytes(issuance_log.private_key_pem(key))
        (tmp_path / f"{name}.pub.pem").write_bytes(issuance_log.public_key_pem(key))
        keys[name] = path
    mallory = tmp_path / "mallory.pem"
    mallory.write_bytes(issuance_log.private_key_pem(Ed25519PrivateKey.generate()))
    keys["mallory"] = mallory
    owners_file = tmp_path / "owners.yaml"
    owners_file.write_text("required_signatures: 2\nowners:\n" + "".join(
        f"  - {{name: {n}, public_key_file: {n}.pub.pem}}\n" for n in ("alice", "bob", "carol")))
    return owners_file, keys


def sign(folder: Path, template: str, owner: str, key: Path) -> int:
    file = next(p for p in folder.glob("*.yaml") if f"name: {template}\n" in p.read_text())
    return main(["scopes", "sign", str(file), "--key", str(key), "--owner", owner])


def sign_all_needed(folder: Path, keys, owners=("alice", "bob")) -> None:
    for name in ("ecs-update-service-prod", "prod-stack-recreate", "lambda-deploy-dev", "workspace-reset"):
        for owner in owners:
            assert sign(folder, name, owner, keys[owner]) == 0


def loader(database, folder: Path, owners_file: Path | None, clock=None) -> TemplateLoader:
    actions = default_action_knowledge()
    settings = BrokerSettings(scopes_dir=folder, template_owners_file=owners_file)
    return TemplateLoader(settings=settings, database=database, clock=clock or FrozenClock(),
                          checks=[lambda t: guardrails.check_template(t, actions=actions)], actions=actions)


def loads(database) -> list[dict]:
    with database.read() as repo:
        return repo.query_events(filters={"type": "templates_loaded"}, limit=100)


@pytest.fixture
def database(tmp_path):
    with migrated_database(f"sqlite:///{tmp_path / 'broker.db'}") as db:
        yield db


def test_start_up_logs_every_template_with_its_digest_and_source(database, folder, caplog):
    with caplog.at_level(logging.WARNING, logger="broker.templates"):
        catalog = loader(database, folder, None).start()
    (entry,) = loads(database)
    details = entry["details"]
    assert details["reason"] == "start-up" and details["signatures"] == {"enforced": False, "required": 0}
    by_name = {t["name"]: t for t in details["templates"]}
    assert set(by_name) == {t.name for t in catalog.all()}
    assert by_name[PROD]["digest"] == catalog.get(PROD).version_digest
    assert by_name[PROD]["source"].endswith("ecs-update-service-prod.yaml")
    assert "previous_digest" not in by_name[PROD]
    assert "NO TEMPLATE OWNERS CONFIGURED" in caplog.text and PROD in caplog.text


def test_a_changed_template_names_its_previous_digest(database, folder):
    loader(database, folder, None).start()
    before = loads(database)[0]["details"]["templates"]
    path = folder / "s3-read-prefix.yaml"
    path.write_text(path.read_text().replace("max: 3600", "max: 1800"))
    (folder / "logs-investigate.yaml").unlink()
    loader(database, folder, None).start()
    after = {t["name"]: t for t in loads(database)[1]["details"]["templates"]}
    old = {t["name"]: t["digest"] for t in before}
    assert after["s3-read-prefix"]["previous_digest"] == old["s3-read-prefix"] != after["s3-read-prefix"]["digest"]
    assert "previous_digest" not in after["cost-explorer-read"]
    assert loads(database)[1]["details"]["removed"] == [{"name": "logs-investigate",
                                                         "previous_digest": old["logs-investigate"]}]


def test_with_owners_an_unsigned_production_template_does_not_load(database, folder, owners):
    owners_file, keys = owners
    with pytest.raises(TemplateError) as exc:
        loader(database, folder, owners_file).start()
    assert exc.value.code == "template_signatures_missing" and "valid: 0" in str(exc.value)
    assert loads(database) == []          # nothing loaded, nothing logged


def test_two_owners_signatures_load_and_are_logged(database, folder, owners):
    owners_file, keys = owners
    sign_all_needed(folder, keys)
    loader(database, folder, owners_file).start()
    (entry,) = loads(database)
    by_name = {t["name"]: t for t in entry["details"]["templates"]}
    assert by_name[PROD]["signed_by"] == ["alice", "bob"]
    assert by_name["s3-read-prefix"]["signed_by"] == []      # dev, no risky action: needs none
    assert entry["details"]["signatures"] == {"enforced": True, "required": 2}


@pytest.mark.parametrize("attack", ["wrong_key", "same_owner_twice", "other_digest", "renamed"])
def test_hostile_signatures_do_not_count(database, folder, owners, attack):
    owners_file, keys = owners
    sign_all_needed(folder, keys)
    prod = folder / "ecs-update-service-prod.yaml"
    bob = folder / "signatures" / PROD / "bob.sig"
    if attack == "wrong_key":            # mallory's key, filed as bob's
        assert sign(folder, PROD, "bob", keys["mallory"]) == 0
    elif attack == "same_owner_twice":   # alice signs again, filed under bob's name
        assert sign(folder, PROD, "bob", keys["alice"]) == 0
    elif attack == "other_digest":       # the template changes after both signed
        prod.write_text(prod.read_text().replace('"ecs:DescribeServices"', '"ecs:DescribeServices", "ecs:DeleteService"'))
        prod.write_text(prod.read_text().replace("approvers:", "approvers:").replace(
            "ttl: {default: 900, max: 1800}", "ttl: {default: 900, max: 1800}\ndestructive: true"))
    elif attack == "renamed":            # same content under another name, old signatures copied over
        prod.write_text(prod.read_text().replace(f"name: {PROD}", "name: ecs-update-service-prod-2"))
        shutil.copytree(folder / "signatures" / PROD, folder / "signatures" / "ecs-update-service-prod-2")
    assert bob.exists()
    with pytest.raises(TemplateError) as exc:
        loader(database, folder, owners_file).start()
    assert exc.value.code == "template_signatures_missing"


def test_lint_reports_missing_signatures_as_warnings(folder, owners, capsys):
    owners_file, keys = owners
    assert main(["scopes", "lint", str(folder), "--owners", str(owners_file)]) == 0
    assert main(["scopes", "lint", str(folder), "--owners", str(owners_file), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "template_signatures_missing" in out and PROD in out
    sign_all_needed(folder, keys)
    assert main(["scopes", "lint", str(folder), "--owners", str(owners_file), "--strict"]) == 0


def test_sighup_reload_swaps_a_good_folder_and_keeps_the_catalog_on_a_bad_one(database, folder, owners, caplog):
    from broker.cli.server import install_reload_on_sighup

    owners_file, keys = owners
    sign_all_needed(folder, keys)
    templates = loader(database, folder, owners_file)
    catalog = templates.start()
    previous = signal.getsignal(signal.SIGHUP)
    install_reload_on_sighup(type("C", (), {"templates": templates})())
    try:
        # A good change (dev, no signatures needed): reloaded, logged with its previous digest.
        path = folder / "s3-read-prefix.yaml"
        path.write_text(path.read_text().replace("max: 3600", "max: 1800"))
        old_digest = catalog.get("s3-read-prefix").version_digest
        os.kill(os.getpid(), signal.SIGHUP)
        _wait(lambda: len(loads(database)) == 2)
        assert catalog.get("s3-read-prefix").ttl.max == 1800
        changed = {t["name"]: t for t in loads(database)[1]["details"]["templates"]}["s3-read-prefix"]
        assert changed["previous_digest"] == old_digest
        # A bad change: the production template edited after signing.  Nothing changes, the log says why.
        prod = folder / "ecs-update-service-prod.yaml"
        prod.write_text(prod.read_text().replace("max: 1800}", "max: 1700}"))
        path.write_text(path.read_text().replace("max: 1800", "max: 900"))
        with caplog.at_level(logging.ERROR, logger="broker.templates"):
            assert templates.reload() is False
        assert "template reload refused" in caplog.text and "template_signatures_missing" in caplog.text
        assert catalog.get("s3-read-prefix").ttl.max == 1800 and catalog.get(PROD).ttl.max == 1800
        assert len(loads(database)) == 2
        # A folder that stops parsing is refused the same way.
        (folder / "broken.yaml").write_text("name: [unclosed")
        assert templates.reload() is False and len(catalog) == 7
    finally:
        signal.signal(signal.SIGHUP, previous)


def _wait(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_an_owners_file_that_no_template_could_satisfy_stops_start_up(database, folder, tmp_path):
    key = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    owners_file = tmp_path / "one-owner.json"
    owners_file.write_text(json.dumps({"owners": [{"name": "solo", "public_key": key}]}))
    with pytest.raises(Exception) as exc:
        loader(database, folder, owners_file)
    assert "no template could ever load" in str(exc.value)


class DownAtFirst:
    """The database is down for the first unit of work (start-up), then back."""

    def __init__(self, database) -> None:
        self.database, self.calls = database, 0

    def transaction(self):
        from broker.errors import StorageUnavailable

        self.calls += 1
        if self.calls == 1:
            raise StorageUnavailable("database down at start-up")
        return self.database.transaction()


def test_a_start_up_the_database_refused_is_logged_before_the_first_request(database, folder, caplog):
    with caplog.at_level(logging.ERROR, logger="broker.templates"):
        templates = loader(DownAtFirst(database), folder, None)
        templates.start()                                  # start-up survives, like every other start-up step
    assert "could not be written at start-up" in caplog.text and loads(database) == []
    for _ in range(2):                                      # two requests: one entry
        with database.transaction() as repo:
            templates.gate(repo, None, None, None)
            repo.append_event({"event_id": f"r{_}", "time": "2026-01-01T00:00:00.000000Z", "type": "requested",
                               "details": {}})
    with database.read() as repo:
        types = [e["type"] for e in repo.query_events(filters={}, limit=10)]
    assert types == ["templates_loaded", "requested", "requested"]
    templates.write_pending()                               # the sweep finds nothing left to write
    assert len(loads(database)) == 1
