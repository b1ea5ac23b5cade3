"""The issuance path's combined writes (one statement each on PostgreSQL), on both databases."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest
from sqlmodel import select

from broker.domain import log as issuance_log
from broker.errors import Conflict
from broker.storage.engine import Database, build_engine
from broker.domain.records import ApiKey, Approval, CredentialRequest, Grant, MintIntent, PrincipalEntry
from broker.storage import records as codec
from broker.storage.models import ApiKeyRow, ApprovalRow, GrantRow, MintIntentRow, PrincipalRow, RequestRow
from tests.conftest import migrated_database
from tests.revocation.test_lockdown import _waiting_on_a_lock

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def database(db_url):
    with migrated_database(db_url) as database:
        yield database


def _request(request_id: str, grant_id: str) -> CredentialRequest:
    return CredentialRequest(id=request_id, template="t", template_digest="sha256:t", environment="dev",
                      parameters=MappingProxyType({}), role_arn="arn:aws:iam::123456789012:role/r", policy="{}",
                      policy_digest="sha256:p", ttl_seconds=900, session_tags=(), source_identity="agent.a",
                      session_name="a-1",
                      grant_id=grant_id, binding_digest="sha256:b", requester="agent:a", acts_for="human:h",
                      reason="why", source_ip=None, status="issuing", approvals_required=0, created_at=NOW,
                      updated_at=NOW)


def _grant(request_id: str, grant_id: str) -> Grant:
    return Grant(id=grant_id, request_id=request_id, template="t", agent="agent:a", acts_for="human:h",
                    role_arn="arn:aws:iam::123456789012:role/r", access_key_id="ASIAEXAMPLE", source_identity="agent.a",
                    session_name="a-1", policy_digest="sha256:p", environment="dev", issued_at=NOW,
                    expiration=NOW + timedelta(seconds=900))


def _open(database: Database, request_id: str, grant_id: str) -> None:
    with database.transaction() as repo:
        repo.add_request_and_intent(_request(request_id, grant_id), MintIntent(
            grant_id=grant_id, request_id=request_id, role_arn="arn:aws:iam::123456789012:role/r",
            source_identity="agent.a", created_at=NOW))


def test_request_and_intent_then_issued(database):
    _open(database, "r1", "g1")
    with database.transaction() as repo:
        assert repo.unresolved_intents()[0].grant_id == "g1"
        assert repo.record_issued("r1", from_statuses=["issuing"], to_status="issued", grant=_grant("r1", "g1"),
                                  now=NOW)
    with database.transaction() as repo:
        row = repo.get_request("r1")
        assert row.status == "issued" and row.issued_at is not None
        assert repo.get_grant("g1").access_key_id == "ASIAEXAMPLE"
        assert repo.unresolved_intents() == []


ENTRY = {"type": "test", "time": "2026-01-02T03:04:05.000000Z"}


def test_an_issuances_writes_with_their_entries_each_write_the_entry_too(database):
    """Unit of work A's and B's writes with their log entries (PostgreSQL: one statement each), chained."""
    intent = MintIntent(grant_id="g5", request_id="r5", role_arn="arn:aws:iam::123456789012:role/r",
                        source_identity="agent.a", created_at=NOW)
    with database.transaction() as repo:
        repo.lock_log_head()
        requested = repo.add_request_and_intent(_request("r5", "g5"), intent, entry={**ENTRY, "event_id": "e1"})
        assert repo.appended == [requested] and requested["seq"] == 1
    with database.transaction() as repo:
        assert repo.record_issued("r5", from_statuses=["issuing"], to_status="issued", grant=_grant("r5", "g5"),
                                  now=NOW, entry={**ENTRY, "event_id": "e2"})
        (issued,) = repo.appended
        assert (issued["seq"], issued["prev_hash"]) == (2, requested["hash"])
        assert repo.lock_log_head() == (2, issued["hash"])
    with database.transaction() as repo:
        assert [e["event_id"] for e in repo.query_events(filters={})] == ["e1", "e2"]
        assert repo.log_head() == (2, issued["hash"])
        assert repo.get_request("r5").status == "issued" and repo.get_grant("g5") is not None
        assert repo.unresolved_intents() == []
        # What is stored is what was hashed, chained from genesis.
        stored = [json.loads(line) for line in repo.stored_entry_lines(from_seq=1)]
        assert stored == [requested, issued] and requested["prev_hash"] == issuance_log.GENESIS_HASH
        assert [issuance_log.entry_hash(e) for e in stored] == [requested["hash"], issued["hash"]]


def test_an_issuances_write_chained_to_a_head_that_moved_writes_nothing(database):
    """The compare-and-set of the head holds in the combined statements too: nothing of the unit of work stays."""
    from broker.errors import StorageUnavailable

    _open(database, "r7", "g7")
    intent = MintIntent(grant_id="g8", request_id="r8", role_arn="arn:aws:iam::123456789012:role/r",
                        source_identity="agent.a", created_at=NOW)
    for write in (lambda repo: repo.add_request_and_intent(_request("r8", "g8"), intent, entry={**ENTRY, "event_id": "x"}),
                  lambda repo: repo.record_issued("r7", from_statuses=["issuing"], to_status="issued",
                                                  grant=_grant("r7", "g7"), now=NOW, entry={**ENTRY, "event_id": "x"})):
        with pytest.raises(StorageUnavailable), database.transaction() as repo:
            repo._head = (5, issuance_log.GENESIS_HASH)  # noqa: SLF001 - a stale idea of the head
            write(repo)
        with database.transaction() as repo:
            assert repo.query_events(filters={}) == [] and repo.get_request("r8") is None
            assert repo.get_request("r7").status == "issuing" and repo.get_grant("g7") is None


@pytest.mark.parametrize("entry", [None, {**ENTRY, "event_id": "e1"}], ids=["alone", "with-its-entry"])
def test_a_request_that_moved_on_is_not_issued_and_nothing_is_kept(database, entry):
    _open(database, "r2", "g2")
    with database.transaction() as repo:
        assert repo.transition_request("r2", from_statuses=["issuing"], to_status="cancelled", updated_at=NOW)
    with pytest.raises(Conflict), database.transaction() as repo:
        if not repo.record_issued("r2", from_statuses=["issuing"], to_status="issued", grant=_grant("r2", "g2"),
                                  now=NOW, entry=entry):
            raise Conflict("moved on", code="request_changed")
    with database.transaction() as repo:
        assert repo.query_events(filters={}) == [] and repo.log_head() == (0, issuance_log.GENESIS_HASH)
        assert repo.get_request("r2").status == "cancelled"
        assert list(repo.session.exec(select(GrantRow))) == []
        intents = list(repo.session.exec(select(MintIntentRow)))
        assert [(i.grant_id, i.resolved) for i in intents] == [("g2", False)]
        assert [r.id for r in repo.session.exec(select(RequestRow))] == ["r2"]


@pytest.mark.parametrize("entry", [None, {**ENTRY, "event_id": "e2"}], ids=["alone", "with-its-entry"])
def test_a_request_that_moved_on_gets_no_write_even_if_the_unit_of_work_commits(database, entry):
    """False leaves nothing written by the call itself (PostgreSQL: every part of the one statement waits on the
    request's move), not only once the caller's refusal rolls the unit of work back: here it commits."""
    _open(database, "r3", "g3")
    with database.transaction() as repo:
        before = repo.append_event({**ENTRY, "event_id": "e1"})
        assert repo.transition_request("r3", from_statuses=["issuing"], to_status="failed", updated_at=NOW)
    with database.transaction() as repo:
        assert repo.record_issued("r3", from_statuses=["issuing"], to_status="issued", grant=_grant("r3", "g3"),
                                  now=NOW, entry=entry) is False
        assert repo.appended == [] and repo.lock_log_head() == (1, before["hash"])
    with database.transaction() as repo:
        assert [e["event_id"] for e in repo.query_events(filters={})] == ["e1"]
        assert repo.log_head() == (1, before["hash"])
        assert repo.get_request("r3").status == "failed" and repo.get_request("r3").issued_at is None
        assert list(repo.session.exec(select(GrantRow))) == []
        assert [(i.grant_id, i.resolved) for i in repo.session.exec(select(MintIntentRow))] == [("g3", False)]
        # The unit of work goes on from the head it holds: the next entry chains to the one before.
        assert repo.append_event({**ENTRY, "event_id": "e3"})["prev_hash"] == before["hash"]


@pytest.mark.parametrize(("statement", "updated"), [
    ("_RECORD_ISSUED_PG", {"requests": {"status", "updated_at", "issued_at"}, "mint_intents": {"resolved"}}),
    ("_APPEND_PG", {"log_head": {"seq", "hash"}}),
    ("_ADD_REQUEST_AND_INTENT_PG", {}),
    ("_ADD_REQUEST_INTENT_AND_APPEND_PG", {"log_head": {"seq", "hash"}}),
    ("_RECORD_ISSUED_AND_APPEND_PG", {"requests": {"status", "updated_at", "issued_at"}, "mint_intents": {"resolved"},
                                      "log_head": {"seq", "hash"}}),
])
def test_postgresql_statements_set_only_what_they_mean_to(statement, updated):
    """A bind parameter named like a column silently becomes a SET value of an UPDATE in the same
    statement (it happened once: ``grant_id``).  Compile each with the parameters the repository
    passes and read back every UPDATE's SET columns."""
    import re

    from sqlalchemy.dialects import postgresql

    from broker.storage import repository

    record = [f"grant__{c.name}" for c in GrantRow.__table__.columns] + [
        "match_id", "match_statuses", "to_status", "to_issued_at", "to_updated_at", "match_grant_id"]
    append = [f"entry__{c}" for c in ("seq", "event_id", "time", "type", "request_id", "grant_id", "actor", "acts_for",
                                      "template", "access_key_id", "body", "prev_hash", "hash")] + ["head_seq", "head_hash"]
    add = [f"request__{c.name}" for c in RequestRow.__table__.columns] + [
        f"intent__{c.name}" for c in MintIntentRow.__table__.columns]
    keys = {"_RECORD_ISSUED_PG": record, "_APPEND_PG": append, "_ADD_REQUEST_AND_INTENT_PG": add,
            "_ADD_REQUEST_INTENT_AND_APPEND_PG": add + append, "_RECORD_ISSUED_AND_APPEND_PG": record + append}[statement]
    sql = str(getattr(repository, statement).compile(dialect=postgresql.dialect(), column_keys=keys))
    found = {table: {column.split("=")[0].strip() for column in re.split(r",\s*(?=\w+=)", sets)}
             for table, sets in re.findall(r"UPDATE (\w+) SET (.*?) WHERE", sql, flags=re.S)}
    assert found == updated, sql


def test_an_in_memory_sqlite_database_still_starts():
    """Found in review: the LIFO pool option broke ``sqlite://`` (its pool takes no such option)."""
    for url in ("sqlite://", "sqlite:///:memory:"):
        engine = build_engine(url)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT 1").scalar_one() == 1
        engine.dispose()


# The columns holding JSON text, and how the store decodes each into its record's value.
DECODED = {(PrincipalRow, "roles"): codec.decode_names, (PrincipalRow, "groups"): codec.decode_names}


@pytest.mark.parametrize(("record", "table"), [(CredentialRequest, RequestRow), (Grant, GrantRow),
                                               (MintIntent, MintIntentRow), (Approval, ApprovalRow),
                                               (PrincipalEntry, PrincipalRow), (ApiKey, ApiKeyRow)])
def test_the_records_have_the_tables_fields_and_defaults(record, table):
    """broker.domain.records are what the use cases write: a column they lack (or a default that differs, decoded
    where the column holds JSON text) would be a row the repository cannot insert as the table says."""
    fields = {f.name: f for f in dataclasses.fields(record)}
    assert list(fields) == list(table.model_fields)
    for name, info in table.model_fields.items():
        default = fields[name].default
        assert (default is dataclasses.MISSING) == info.is_required(), name
        if not info.is_required():
            assert default == DECODED.get((table, name), lambda value: value)(info.default), name


def test_stored_json_text_is_the_canonical_text_written_before_records_were_decoded(database):
    """The columns keep the exact text the use cases used to encode (keys sorted, json's default separators):
    binding digests, stored-row checks and exports depend on it."""
    row = dataclasses.replace(_request("r-json", "g-json"), parameters=MappingProxyType({"z": "1", "a": "é"}),
                              session_tags=(("broker:agent", "agent:a"), ("k", "v")),
                              identity=MappingProxyType({"workspace": "ws", "account": "1"}))
    with database.transaction() as repo:
        repo.add_request(row)
        repo.upsert_principal(principal_id="agent:j", roles=["agent", "agent", "admin"], groups=["b", "a"],
                              now=NOW, attributes={"z": "1", "a": "2"})
    with database.transaction() as repo:
        stored = repo.session.get(RequestRow, "r-json")
        principal = repo.session.get(PrincipalRow, "agent:j")
        assert stored.parameters == json.dumps({"a": "é", "z": "1"}, sort_keys=True) == '{"a": "\\u00e9", "z": "1"}'
        assert stored.session_tags == '[["broker:agent", "agent:a"], ["k", "v"]]'
        assert stored.identity == '{"account": "1", "workspace": "ws"}'
        assert (principal.roles, principal.groups) == ('["admin", "agent"]', '["a", "b"]')
        assert principal.attributes == '{"a": "2", "z": "1"}'
        read = repo.get_request("r-json")
        assert (read.parameters, read.session_tags, read.identity) == (row.parameters, row.session_tags, row.identity)
        assert isinstance(read.parameters, MappingProxyType) and isinstance(read.identity, MappingProxyType)
        entry = repo.get_principal_entry("agent:j")
        assert (entry.roles, entry.groups, dict(entry.attributes)) == (("admin", "agent"), ("a", "b"),
                                                                        {"a": "2", "z": "1"})


@pytest.mark.parametrize("column, text", [
    ("parameters", "not json"), ("parameters", "[]"), ("session_tags", "{}"), ("session_tags", '["ab"]'),
    ("session_tags", '[["a", "b", "c"]]'), ("identity", "7"),
])
def test_an_edited_value_that_does_not_decode_reads_as_unreadable_never_as_a_request_value(database, column, text):
    """Text edited in the database into something no request holds reads as a value no plan can equal."""
    with database.transaction() as repo:
        repo.add_request(_request("r-bad", "g-bad"))
    with database.transaction() as repo:
        stored = repo.session.get(RequestRow, "r-bad")
        setattr(stored, column, text)
        repo.session.add(stored)
    with database.read() as repo:
        value = getattr(repo.get_request("r-bad"), column)
    if column == "session_tags":
        assert value == ((codec.UNREADABLE, text),)
    else:
        assert dict(value) == {codec.UNREADABLE: text}


def _add_request(database: Database, request_id: str, *, requester: str, template: str, created_at: datetime,
                 status: str = "issued", pending_expires_at: datetime | None = None) -> None:
    row = dataclasses.replace(_request(request_id, "g-" + request_id), requester=requester, template=template,
                              created_at=created_at, status=status, pending_expires_at=pending_expires_at)
    with database.transaction() as repo:
        repo.add_request(row)


def _add_grant(database: Database, grant_id: str, *, agent: str, expiration: datetime, revoked: bool = False) -> None:
    grant = dataclasses.replace(_grant("r-" + grant_id, grant_id), agent=agent, expiration=expiration,
                                access_key_id="ASIA" + grant_id.upper())
    with database.transaction() as repo:
        repo.add_grant(grant)
        if revoked:
            repo.save_grant(dataclasses.replace(grant, revoked_at=NOW, revoked_by="human:r"))


def test_issuance_counts_count_what_each_limit_bounds(database):
    since = NOW - timedelta(seconds=60)
    # Requests: the window's edge counts, a moment before it does not; other agents and templates apart.
    _add_request(database, "q1", requester="agent:a", template="t", created_at=since)
    _add_request(database, "q2", requester="agent:a", template="t", created_at=NOW)
    _add_request(database, "q3", requester="agent:a", template="other", created_at=NOW)
    _add_request(database, "q4", requester="agent:b", template="t", created_at=NOW)
    _add_request(database, "q5", requester="agent:a", template="t", created_at=since - timedelta(microseconds=1))
    # In flight (past its gate, no grant yet): a live grant in all but name.  Another agent's does not count.
    _add_request(database, "q6", requester="agent:a", template="old", created_at=since - timedelta(hours=1),
                 status="issuing")
    _add_request(database, "q7", requester="agent:b", template="old", created_at=NOW, status="issuing")
    # Grants: live ones only (expiring after now, not revoked), this agent's only; plus the one in flight.
    _add_grant(database, "g1", agent="agent:a", expiration=NOW + timedelta(seconds=1))
    _add_grant(database, "g2", agent="agent:a", expiration=NOW)
    _add_grant(database, "g3", agent="agent:a", expiration=NOW + timedelta(seconds=900), revoked=True)
    _add_grant(database, "g4", agent="agent:b", expiration=NOW + timedelta(seconds=900))
    # Waiting for co-signers: until their wait ends (an expired one not yet swept does not count).
    old = since - timedelta(hours=2)
    _add_request(database, "q8", requester="agent:a", template="p", created_at=old, status="pending",
                 pending_expires_at=NOW + timedelta(seconds=1))
    _add_request(database, "q9", requester="agent:a", template="p", created_at=old, status="pending",
                 pending_expires_at=NOW)
    _add_request(database, "q10", requester="agent:b", template="p", created_at=old, status="pending",
                 pending_expires_at=NOW + timedelta(seconds=60))
    with database.transaction() as repo:
        assert repo.issuance_counts(agent="agent:a", template="t", since=since, now=NOW) == {
            "agent_requests": 3, "template_requests": 3, "agent_live_grants": 2, "agent_pending_requests": 1}
        assert repo.issuance_counts(agent="agent:c", template="none", since=since, now=NOW) == {
            "agent_requests": 0, "template_requests": 0, "agent_live_grants": 0, "agent_pending_requests": 0}
        assert repo.earliest_pending_expiry(requester="agent:a", now=NOW) == NOW + timedelta(seconds=1)
        assert repo.count_requests_by_requester(statuses=["pending"]) == {"agent:a": 2, "agent:b": 1}


def test_the_log_head_a_unit_of_work_holds_advances_with_each_append(database):
    with database.transaction() as repo:
        assert repo.lock_log_head() == (0, issuance_log.GENESIS_HASH)
        first = repo.append_event({"type": "test", "time": "2026-01-02T03:04:05.000000Z", "event_id": "e1"})
        second = repo.append_event({"type": "test", "time": "2026-01-02T03:04:05.000000Z", "event_id": "e2"})
        assert (second["seq"], second["prev_hash"]) == (first["seq"] + 1, first["hash"])
        assert repo.lock_log_head() == (second["seq"], second["hash"])
    with database.transaction() as repo:  # a new unit of work reads the committed head
        assert repo.lock_log_head() == (second["seq"], second["hash"])
        assert repo.log_head() == (second["seq"], second["hash"])


def test_an_append_chained_to_a_head_that_moved_fails_closed(database):
    """The head moves only from the (seq, hash) an entry was chained to: a unit of work whose idea of
    the head went stale (here: a savepoint rolled back under it) cannot commit a gap or a fork."""
    from broker.errors import StorageUnavailable

    body = {"type": "test", "time": "2026-01-02T03:04:05.000000Z"}
    with pytest.raises(StorageUnavailable), database.transaction() as repo:
        repo.append_event({**body, "event_id": "e1"})
        savepoint = repo._core.begin_nested()  # noqa: SLF001 - no use case takes savepoints
        repo.append_event({**body, "event_id": "e2"})
        savepoint.rollback()  # entry 2 is gone; the unit of work still remembers it as the head
        repo.append_event({**body, "event_id": "e3"})
    with database.transaction() as repo:
        assert repo.query_events(filters={}) == []
        assert repo.log_head() == (0, issuance_log.GENESIS_HASH)


def test_a_read_only_unit_of_work_cannot_take_the_logs_lock(database):
    with database.read() as repo, pytest.raises(RuntimeError):
        repo.lock_log_head()


def test_settings_read_under_the_logs_lock_take_it_first(database):
    """``get_settings(lock_log=True)``: the lock and the read (SQLite: one statement), the head held after it."""
    with database.transaction() as repo:
        repo.set_setting("lockdown:dev", "on", now=NOW)
        repo.flush()
    with database.transaction() as repo:
        assert repo.locked_at is None
        assert repo.get_settings(["lockdown:dev", "lockdown:*"], lock_log=True) == {"lockdown:dev": "on"}
        assert repo.locked_at is not None and repo.lock_log_head() == (0, issuance_log.GENESIS_HASH)
        entry = repo.append_event({"type": "test", "time": "2026-01-02T03:04:05.000000Z", "event_id": "e1"})
        # Held already: the settings alone, as they are now.
        assert repo.get_settings(["lockdown:*"], lock_log=True) == {}
    with database.transaction() as repo:
        assert repo.get_settings(["absent"], lock_log=True) == {}
        assert repo.lock_log_head() == (entry["seq"], entry["hash"])
    with database.read() as repo, pytest.raises(RuntimeError):
        repo.get_settings(["lockdown:dev"], lock_log=True)



def _read_while_a_lockdown_commits(database: Database, key: str, read) -> object:
    """``read(database)`` started while another unit of work holds the log's lock and switches the lockdown ``key``
    on; what it returns once that unit of work has committed."""
    import threading
    import time

    answers: list[object] = []
    with database.transaction() as repo:
        repo.lock_log_head()
        repo.set_setting(key, "on", now=NOW)
        repo.flush()
        reader = threading.Thread(target=lambda: answers.append(read(database)))
        reader.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock(database.engine) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _waiting_on_a_lock(database.engine), "the read never waited for the log's lock"
    reader.join(10)
    (answer,) = answers
    return answer


def test_postgresql_settings_read_with_the_lock_see_a_lockdown_committed_while_it_waited(pg_url):
    """One round trip (broker_lock_log_head, migration 0014), and still a read after the lock: a lockdown that
    commits while the read waits for the lock is seen.  The control shows why it takes the function: the same
    lock and read as one plain statement miss it."""
    from sqlalchemy import text

    def with_the_lock(db: Database) -> dict[str, str]:
        with db.transaction() as repo:
            return repo.get_settings(["lockdown:dev", "lockdown:*"], lock_log=True)

    def in_one_plain_statement(db: Database) -> dict[str, str]:
        with db.engine.begin() as connection:
            rows = connection.execute(text(
                "SELECT s.key, s.value FROM log_head AS h LEFT JOIN broker_settings AS s ON s.key = 'lockdown:*' "
                "WHERE h.id = 1 FOR UPDATE OF h")).all()
            return {row.key: row.value for row in rows if row.key is not None}

    with migrated_database(pg_url) as database:
        assert _read_while_a_lockdown_commits(database, "lockdown:dev", with_the_lock) == {"lockdown:dev": "on"}
        assert _read_while_a_lockdown_commits(database, "lockdown:*", in_one_plain_statement) == {}, \
            "the control: one plain statement reads the settings as they were before it waited"
        assert with_the_lock(database) == {"lockdown:dev": "on", "lockdown:*": "on"}
