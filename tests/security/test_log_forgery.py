"""Someone with write access to the database tries to have the broker sign a shortened or a rewritten log
(issue 15, finding 1), on SQLite and PostgreSQL.  The broker must refuse to sign, raise the alarm, and keep
the checkpoints it signed insert-only; an auditor's kept checkpoint must refuse the forgery offline."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from broker.cli.main import main
from broker.domain import log as issuance_log
from tests.api.test_events_api import PROD, approve, export, issue

SQLITE_TRIGGERS = ("events_no_update", "events_no_delete", "checkpoints_no_update", "checkpoints_no_delete")
PG_TRIGGERS = ("events_insert_only ON events", "checkpoints_insert_only ON checkpoints")


class Attacker:
    """Plain SQL on the broker's database, as whoever owns it could run."""

    def __init__(self, broker) -> None:
        self.engine = broker.container.database.engine
        self.postgres = self.engine.dialect.name == "postgresql"

    def run(self, sql: str, **params) -> list:
        with self.engine.begin() as connection:
            result = connection.execute(sa.text(sql), params)
            return list(result) if result.returns_rows else []

    def drop_triggers(self) -> None:
        for trigger in PG_TRIGGERS if self.postgres else SQLITE_TRIGGERS:
            self.run(f"DROP TRIGGER {trigger}")

    def entries(self) -> list[dict]:
        return [json.loads(row.body) for row in self.run("SELECT body FROM events ORDER BY seq")]

    def write_entry(self, entry: dict) -> None:
        self.run("UPDATE events SET body = :body, prev_hash = :prev, hash = :hash WHERE seq = :seq",
                 body=issuance_log.entry_line(entry).decode(), prev=entry["prev_hash"], hash=entry["hash"],
                 seq=entry["seq"])

    def move_head(self, seq: int, head_hash: str) -> None:
        self.run("UPDATE log_head SET seq = :seq, hash = :hash WHERE id = 1", seq=seq, hash=head_hash)


def checkpoint(broker):
    return broker.post("/v1/events/checkpoints", "human:rita")


def refusals_metric(broker, reason: str | None = None) -> float:
    registry = broker.container.metrics.registry
    return sum(sample.value for metric in registry.collect() for sample in metric.samples
               if sample.name == "broker_log_checkpoint_refusals_total"
               and reason in (None, sample.labels.get("reason")))


def cosigned_grant(broker) -> str:
    pending = broker.post("/v1/requests", "agent:demo", json=PROD)
    assert pending.status_code == 202, pending.text
    request_id = pending.json()["id"]
    approve(broker, request_id, "human:bob")
    approve(broker, request_id, "human:carol")
    assert broker.post(f"/v1/requests/{request_id}/credentials", "agent:demo").status_code == 201
    return request_id


def assert_refused(broker, reason: str, *, before: float) -> None:
    response = checkpoint(broker)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "checkpoint_refused"
    assert refusals_metric(broker, reason) > before
    assert broker.get("/v1/events/export", "human:rita").status_code == 409


def cut_to_the_first_issue(broker, *, checkpoints_too: bool) -> tuple[Attacker, float]:
    """Two issuances, each checkpointed; then the second (requested, issued) is cut and the head moved back."""
    issue(broker)
    assert checkpoint(broker).status_code == 200
    issue(broker)
    assert checkpoint(broker).status_code == 200
    before = refusals_metric(broker)
    attacker = Attacker(broker)
    attacker.drop_triggers()
    kept = attacker.entries()[:2]
    attacker.run("DELETE FROM events WHERE seq > 2")
    if checkpoints_too:
        attacker.run("DELETE FROM checkpoints WHERE seq > 2")
    attacker.move_head(2, kept[-1]["hash"])
    return attacker, before


def test_the_log_tables_are_insert_only(broker):
    issue(broker)
    assert checkpoint(broker).status_code == 200
    attacker = Attacker(broker)
    for sql in ("UPDATE events SET type = 'denied'", "DELETE FROM events", "UPDATE checkpoints SET seq = 0",
                "DELETE FROM checkpoints"):
        with pytest.raises(sa.exc.DBAPIError, match="insert-only"):
            attacker.run(sql)
    assert [e["type"] for e in attacker.entries() if e["type"] != "templates_loaded"] == ["requested", "issued"]


def test_cut_newest_entries_and_move_the_head_back_is_not_signed(broker, caplog):
    attacker, before = cut_to_the_first_issue(broker, checkpoints_too=False)
    assert_refused(broker, "head_behind_checkpoint", before=before)
    assert "refusing to sign a log checkpoint" in caplog.text
    refused = [e for e in attacker.entries() if e["type"] == "checkpoint_refused"]
    assert [e["reason_code"] for e in refused] == ["head_behind_checkpoint"]  # the log was writable: logged, once
    assert checkpoint(broker).status_code == 409
    assert sum(e["type"] == "checkpoint_refused" for e in attacker.entries()) == 1


def test_cut_newest_entries_and_their_checkpoint_is_not_signed(broker):
    """Deleting the checkpoint rows too: this broker remembers what it signed."""
    attacker, before = cut_to_the_first_issue(broker, checkpoints_too=True)
    assert_refused(broker, "checkpoint_removed", before=before)


def test_rewrite_an_old_cosigned_entry_re_chain_and_append_is_not_signed(broker, tmp_path, capsys):
    cosigned_grant(broker)
    assert checkpoint(broker).status_code == 200
    kept = broker.get("/v1/events/checkpoints/latest", "human:rita").json()
    before = refusals_metric(broker)
    attacker = Attacker(broker)
    attacker.drop_triggers()
    entries = attacker.entries()
    victim = next(i for i, e in enumerate(entries) if e["type"] == "cosigned")
    prev_hash = entries[victim]["prev_hash"]
    for entry in entries[victim:]:
        if entry is entries[victim]:
            entry = dict(entry, actor="human:mallory")
        entry = issuance_log.seal_entry(entry, seq=entry["seq"], prev_hash=prev_hash)
        attacker.write_entry(entry)
        prev_hash = entry["hash"]
    attacker.move_head(entries[-1]["seq"], prev_hash)
    issue(broker)  # the broker appends on top of the rewritten chain
    assert_refused(broker, "checkpoint_fork", before=before)

    # Offline: even an export the key holder signed over the rewrite fails against the kept checkpoint.
    key = tmp_path / "key.pem"
    key.write_text(broker.client.get("/v1/events/public-key").text)
    trusted = tmp_path / "kept.json"
    trusted.write_text(json.dumps(kept))
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(forged_export(broker, attacker))
    assert main(["audit", "verify", str(forged), "--public-key", str(key)]) == 0  # the key signs anything
    assert main(["audit", "verify", str(forged), "--public-key", str(key), "--trusted-checkpoint", str(trusted)]) == 1
    assert "[fork]" in capsys.readouterr().err


def forged_export(broker, attacker: Attacker) -> bytes:
    """What a broker without the check (or whoever holds the key) would sign over the rewritten log."""
    signer = broker.container.signer
    entries = attacker.entries()
    final = signer.sign(entries[-1]["seq"], entries[-1]["hash"], issuance_log.log_time(broker.clock.now()),
                        prev_checkpoint=issuance_log.GENESIS_HASH)
    statement = signer.sign_export(final, first_seq=1, since=None, time=final.time)
    return b"".join(issuance_log.chained_export_lines(entries, [final], statement))


def test_an_intact_log_keeps_being_signed_and_its_export_extends_kept_checkpoints(broker, tmp_path):
    issue(broker)
    first = checkpoint(broker).json()
    cosigned_grant(broker)
    second = checkpoint(broker).json()
    assert second["prev_checkpoint"] == issuance_log.Checkpoint.from_dict(first).hash()
    key = tmp_path / "key.pem"
    key.write_text(broker.client.get("/v1/events/public-key").text)
    kept = tmp_path / "kept.jsonl"
    kept.write_text(json.dumps(first) + "\n" + json.dumps({"checkpoint": second}) + "\n")
    exported = tmp_path / "log.jsonl"
    exported.write_bytes(export(broker))
    assert main(["audit", "verify", str(exported), "--public-key", str(key), "--trusted-checkpoint", str(kept)]) == 0


def test_a_full_export_with_its_oldest_entries_cut_fails_verify_without_complete(broker, tmp_path, capsys):
    """Finding 9: ``broker audit verify FILE --public-key K``, as documented (no ``--complete``), refuses a full
    export whose oldest entries were deleted: the signed export statement says it is full."""
    issue(broker)
    issue(broker)
    key = tmp_path / "key.pem"
    key.write_text(broker.client.get("/v1/events/public-key").text)
    lines = export(broker).splitlines(keepends=True)
    cut = [line for line in lines if json.loads(line).get("seq", 3) > 2]   # entries and checkpoints up to seq 2
    assert len(cut) < len(lines) and json.loads(cut[0])["seq"] == 3
    exported = tmp_path / "cut.jsonl"
    exported.write_bytes(b"".join(cut))
    assert main(["audit", "verify", str(exported), "--public-key", str(key)]) == 1
    assert "[removed]" in capsys.readouterr().err
