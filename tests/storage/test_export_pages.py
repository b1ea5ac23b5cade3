"""The export reads the log's checkpoints a page at a time, merged with the entries by seq: the same bytes as when
it held all of them in one list (docs/log-format.md, section 8), on both databases, whatever the page size."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.domain import log
from broker.domain.principals import Principal, Role
from broker.storage.repository import Repository
from broker.usecases.audit import AuditLog
from tests.conftest import FrozenClock, migrated_database

REVIEWER = Principal(id="human:rita", roles=frozenset({Role.REVIEWER}))
START = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
# A fixed key and clock: an export's bytes are then fixed too (Ed25519 signatures are deterministic).
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ENTRIES, EVERY = 40, 3  # a checkpoint of the empty log, then one every 3 entries: 14 of them (and the export's)
# sha256 of the exports as the broker made them before their checkpoints were read in pages (all in one list),
# computed with that code from this very log.
BEFORE = {"whole": "0fe4f1a23050b39f81a2ea24f20ddd737c1b0be07f917a153088bdb2fbad718e",
          "since": "5d906a28d03dbf48720292f268df700f698624cafaa2bff7904a7fa37873c45b",
          "older-final": "6ef2b9006e7887297097cf061061fd21405991a346423d79d9091f0f7a224484"}


class _Older:
    """A checkpointer that hands out an older stored checkpoint as the export's final one (as when a replica has
    signed newer ones since): the export ends there."""

    def __init__(self, checkpoint: log.Checkpoint) -> None:
        self.final = checkpoint

    def checkpoint(self) -> log.Checkpoint:
        return self.final


@pytest.fixture
def signed_log(db_url):
    """A log of ENTRIES entries with a checkpoint of it empty and one every EVERY entries, signed by KEY at fixed
    times; its database, clock and checkpoints."""
    with migrated_database(db_url) as database:
        clock = FrozenClock(START)
        audit = AuditLog(database=database, signer=log.CheckpointSigner(KEY), clock=clock)
        checkpoints = [audit.checkpoint()]
        for seq in range(1, ENTRIES + 1):
            with database.transaction() as repo:
                repo.append_event({"type": "test", "event_id": f"e{seq}", "time": log.log_time(clock.now())})
            clock.advance(60)
            if seq % EVERY == 0:
                checkpoints.append(audit.checkpoint())
        yield database, clock, checkpoints


def _export(signed_log, case: str, **page) -> bytes:
    database, clock, checkpoints = signed_log
    checkpointer = _Older(checkpoints[7]) if case == "older-final" else None
    audit = AuditLog(database=database, signer=log.CheckpointSigner(KEY), clock=clock, checkpointer=checkpointer,
                     **page)
    since = START + timedelta(minutes=16, seconds=30) if case == "since" else None
    return b"".join(audit.export(principal=REVIEWER, since=since))


@pytest.mark.parametrize("case", ["whole", "since", "older-final"])
def test_the_export_is_the_same_bytes_whatever_the_checkpoint_page(signed_log, case):
    for page in (1, 2, 3, 5, 1000):  # pages ending on the final checkpoint, before it, after it
        exported = _export(signed_log, case, checkpoint_page=page)
        assert hashlib.sha256(exported).hexdigest() == BEFORE[case], page
    report = log.verify_export(exported.splitlines(keepends=True), KEY.public_key())
    assert report.ok, report.message
    assert report.checkpoints == {"whole": 15, "since": 9, "older-final": 8}[case]


def test_the_export_reads_its_checkpoints_as_it_reaches_them(signed_log, monkeypatch):
    """Never all of them at once: a page of ``checkpoint_page`` is read when the export gets to it."""
    read: list[int] = []
    page_of = Repository.checkpoint_page

    def counted(self, **kwargs):
        page = page_of(self, **kwargs)
        read.append(len(page))
        return page

    monkeypatch.setattr(Repository, "checkpoint_page", counted)
    database, clock, _ = signed_log
    audit = AuditLog(database=database, signer=log.CheckpointSigner(KEY), clock=clock, checkpoint_page=2)
    lines = audit.export(principal=REVIEWER)
    taken = []
    for line in lines:
        taken.append(line)
        if len(taken) == 4:  # the seq 0 checkpoint, entries 1-3: the first page only
            assert read == [2]
        if len(taken) == 8:  # the seq 0 checkpoint, entries 1-3, checkpoint 3, entries 4-6: the second page read
            assert read == [2, 2]
    # 15 stored checkpoints (the 15th, of seq 40, signed by the export), the last of them the final one.
    assert read == [2] * 7 + [1]
    with database.read() as repo:
        assert taken[-1] == log.checkpoint_line(repo.latest_checkpoint())
