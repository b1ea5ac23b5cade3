"""The refusal budget through the API (broker/usecases/refusal_budget.py): a flooding agent's refusals answer as before,
the log gets the first N one by one, one suppression entry and then the count; on both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.cli.server import _write_suppressed_refusals
from broker.domain.log import log_time
from broker.errors import InvalidInput
from broker.settings import BrokerSettings, load_settings
from tests.api.test_events_api import verify_file
from tests.conftest import REFUSAL_BUDGET, TEST_SCOPES, another_writer, build_harness
from tests.revocation.conftest import S3_REQUEST

N = REFUSAL_BUDGET  # the budget in these tests (the `budgeted` fixture)
M = 7           # refusals beyond it
AGENT = "agent:demo"
UNKNOWN = {"template": "no-such-scope", "parameters": {}, "reason": "probe"}
PROD_REQUEST = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "deploy"}


def of_type(broker, kind: str, actor: str = AGENT) -> list[dict]:
    return [e for e in broker.events() if e["type"] == kind and e["actor"] == actor]


def flood(broker, count: int, principal: str = AGENT, body: dict = UNKNOWN) -> list:
    return [broker.post("/v1/requests", principal, json=body) for _ in range(count)]


def test_over_budget_refusals_answer_the_same_and_only_their_count_is_logged(budgeted, tmp_path):
    start = budgeted.clock.now()
    answers = flood(budgeted, N + M)
    for answer in answers:
        assert answer.status_code == 404 and answer.json() == answers[0].json()
        assert answer.json()["error"]["code"] == "template_not_found"
        assert "retry-after" not in answer.headers and "credentials" not in answer.json()
    assert len(of_type(budgeted, "refused")) == N                 # the first N, one by one
    (announced,) = of_type(budgeted, "refusals_suppressed")        # exactly one suppression entry
    assert (announced["reason_code"], announced["template"]) == ("template_not_found", "no-such-scope")
    assert announced["details"]["budget"] == N
    assert announced["details"]["window_start"] == log_time(start)
    assert len(budgeted.events()) == N + 1                         # N+2..N+M wrote nothing

    budgeted.clock.advance(61)
    assert flood(budgeted, 1)[0].status_code == 404
    last = budgeted.events()[-1]
    assert (last["type"], last["actor"]) == ("refused", AGENT)
    assert last["details"]["suppressed"] == M                      # N+1 .. N+M: no refused entry of their own
    assert last["details"]["suppressed_since"] == log_time(start)
    assert last["details"]["suppressed_until"] == log_time(start + timedelta(seconds=60))
    assert last["details"]["suppressed_by_reason"] == {"template_not_found": M}
    assert verify_file(tmp_path, budgeted, budgeted.get("/v1/events/export", "human:rita").content) == 0


def test_when_the_flooder_stops_the_sweep_and_shutdown_log_the_count(budgeted, tmp_path):
    flood(budgeted, N + M)
    assert budgeted.container.service.flush_suppressed_refusals() == 0     # its window is still open
    budgeted.clock.advance(61)
    assert budgeted.container.service.flush_suppressed_refusals() == 1
    summary = budgeted.events()[-1]
    assert (summary["type"], summary["actor"], summary["details"]["suppressed"]) == (
        "refusals_suppressed_summary", AGENT, M)
    assert budgeted.container.service.flush_suppressed_refusals() == 0     # written once
    # At shutdown, windows still open are closed and written too.
    flood(budgeted, N + 2, principal="agent:other")
    _write_suppressed_refusals(budgeted.container)
    (cut_short,) = of_type(budgeted, "refusals_suppressed_summary", actor="agent:other")
    assert cut_short["details"]["suppressed"] == 2
    assert cut_short["details"]["suppressed_until"] == log_time(budgeted.clock.now())
    assert verify_file(tmp_path, budgeted, budgeted.get("/v1/events/export", "human:rita").content) == 0


def test_another_principal_is_unaffected(budgeted):
    flood(budgeted, N + M)
    assert flood(budgeted, 1, principal="agent:other")[0].status_code == 404
    assert len(of_type(budgeted, "refused", actor="agent:other")) == 1


def test_the_flooder_still_gets_credentials_and_its_issuance_is_logged(budgeted):
    flood(budgeted, N + M)
    issued = budgeted.post("/v1/requests", AGENT, json=S3_REQUEST)
    assert issued.status_code == 201, issued.text
    assert issued.json()["credentials"]["access_key_id"].startswith("ASIA")
    assert [e["type"] for e in budgeted.events()[-2:]] == ["requested", "issued"]
    # The budget is still spent on logging only: more refusals stay counted.
    before = len(budgeted.events())
    flood(budgeted, 3)
    assert len(budgeted.events()) == before


def test_every_kind_of_refusal_shares_the_budget(budgeted):
    pending = budgeted.post("/v1/requests", AGENT, json=PROD_REQUEST)
    assert pending.status_code == 202, pending.text
    tries = [
        ("post", "/v1/requests", UNKNOWN, 404, "template_not_found"),
        ("post", "/v1/requests", {**S3_REQUEST, "parameters": {"prefix": "a*"}}, 422, "invalid_parameter"),
        ("post", "/v1/lockdown", {"environment": "dev", "reason": "mine now"}, 403, "admin_required"),
        ("post", f"/v1/requests/{pending.json()['id']}/credentials", None, 409, "approval_pending"),
    ]
    for method, path, body, status, code in tries * 2:
        answer = getattr(budgeted, method)(path, AGENT, **({"json": body} if body else {}))
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
    assert len(of_type(budgeted, "refused")) == N
    assert len(of_type(budgeted, "refusals_suppressed")) == 1
    budgeted.clock.advance(61)
    budgeted.container.service.flush_suppressed_refusals()
    (summary,) = of_type(budgeted, "refusals_suppressed_summary")
    assert summary["details"]["suppressed"] == 2 * len(tries) - N
    assert sum(summary["details"]["suppressed_by_reason"].values()) == 2 * len(tries) - N


@pytest.mark.parametrize("budgeted", [{"refusals_per_minute": 2, "agent_requests_per_minute": 1}], indirect=True)
def test_a_rate_limited_flooder_keeps_its_429_and_retry_after(budgeted):
    assert budgeted.post("/v1/requests", AGENT, json=S3_REQUEST).status_code == 201
    for answer in flood(budgeted, 6, body=S3_REQUEST):
        assert answer.status_code == 429 and answer.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(answer.headers["retry-after"]) <= 61  # the window counts its start
    assert len(of_type(budgeted, "refused")) == 2
    assert len(of_type(budgeted, "refusals_suppressed")) == 1


@pytest.mark.parametrize("budgeted", [{"refusals_per_minute": 0}], indirect=True)
def test_zero_disables_the_budget(budgeted):
    flood(budgeted, 40)
    assert len(of_type(budgeted, "refused")) == 40
    assert of_type(budgeted, "refusals_suppressed") == []
    budgeted.clock.advance(61)
    assert budgeted.container.service.flush_suppressed_refusals(close_open=True) == 0


# A real fault: the database refuses every new log entry (authentication, a read, still works).
LOG_UNWRITABLE = {
    "sqlite": (["CREATE TRIGGER log_unwritable BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'no log'); END"],
               ["DROP TRIGGER log_unwritable"]),
    "postgresql": (["CREATE FUNCTION log_unwritable() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'no log'; END $$",
                    "CREATE TRIGGER log_unwritable BEFORE INSERT ON events FOR EACH ROW "
                    "EXECUTE FUNCTION log_unwritable()"],
                   ["DROP TRIGGER log_unwritable ON events", "DROP FUNCTION log_unwritable()"]),
}


def _log_writable(broker, writable: bool) -> None:
    engine = broker.container.database.engine
    breaking, mending = LOG_UNWRITABLE[engine.dialect.name]
    with engine.begin() as connection:
        for statement in mending if writable else breaking:
            connection.exec_driver_sql(statement)


def test_while_the_log_cannot_be_written_refusals_are_503_and_no_count_is_lost(budgeted, tmp_path):
    flood(budgeted, N + M)
    budgeted.clock.advance(61)
    before = budgeted.events()
    _log_writable(budgeted, False)
    try:
        for answer in flood(budgeted, N + 2) + flood(budgeted, 1, body=S3_REQUEST):
            # None is quietly suppressed, none is answered as if it had been logged, nothing is issued.
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "storage_unavailable"
            assert "credentials" not in answer.json()
    finally:
        _log_writable(budgeted, True)
    assert budgeted.events() == before
    assert flood(budgeted, 1)[0].status_code == 404
    assert budgeted.events()[-1]["details"]["suppressed"] == M     # the carried count came back
    assert verify_file(tmp_path, budgeted, budgeted.get("/v1/events/export", "human:rita").content) == 0


def test_the_setting(monkeypatch, tmp_path, moto_server):
    monkeypatch.delenv("BROKER_REFUSALS_PER_MINUTE", raising=False)
    assert BrokerSettings().refusals_per_minute == 30
    monkeypatch.setenv("BROKER_REFUSALS_PER_MINUTE", "7")
    assert load_settings().refusals_per_minute == 7
    with pytest.raises(InvalidInput) as raised:
        build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                      aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", refusals_per_minute=-1)
    assert raised.value.code == "config_invalid"


@pytest.mark.parametrize("budgeted", [{"refusals_per_minute": 1}], indirect=True)
def test_refused_revocations_over_budget_take_no_lock(budgeted):
    """Who may revoke is decided from a read first: once an agent's refusals are only counted, its refused
    revocations neither wait for nor take the log's lock (another writer holds it here)."""
    import time

    body = {"agent": "agent:other", "reason": "not mine to revoke"}
    for _ in range(2):  # the budget's entry, then its refusals_suppressed announcement
        assert budgeted.post("/v1/revocations", "agent:demo", json=body).status_code == 403
    with another_writer(budgeted.container.database.engine):
        started = time.monotonic()
        answers = [budgeted.post("/v1/revocations", "agent:demo", json=body) for _ in range(10)]
        grant = budgeted.post("/v1/grants/no-such-grant/revoke", "agent:demo", json={"reason": "probe"})
        elapsed = time.monotonic() - started
    assert [a.json()["error"]["code"] for a in answers] == ["not_allowed_to_revoke"] * 10
    assert grant.status_code == 404
    assert elapsed < 5, elapsed  # a unit of work taking the log's lock would have waited the writer's 10 s


def test_shutdown_waits_for_a_sweep_that_already_took_the_counts(budgeted, monkeypatch):
    """SIGTERM while the minute sweep is writing the counts it took: shutdown lets it finish, so the count is
    in the log when the process would exit (the last flush alone would find nothing to write)."""
    import threading
    import time

    from broker.cli.server import _checkpoint_loop, _shut_down
    from broker.storage.repository import Repository

    for _ in range(REFUSAL_BUDGET + 5):
        budgeted.post("/v1/requests", "agent:demo", json=UNKNOWN)
    budgeted.clock.advance(61)  # the window is over: the next sweep takes its count
    append, sweeping = Repository.append_event, threading.Event()

    def slow_summary(self, body):
        if body.get("type") == "refusals_suppressed_summary":
            sweeping.set()
            time.sleep(1)  # a sweep mid-write (a slow disk, a lock wait) when the stop comes
        return append(self, body)

    monkeypatch.setattr(Repository, "append_event", slow_summary)
    stop = threading.Event()
    sweeper = threading.Thread(target=_checkpoint_loop, args=(budgeted.container, stop, 0.01), daemon=True)
    sweeper.start()
    assert sweeping.wait(10)
    _shut_down(budgeted.container, stop, sweeper)
    assert not sweeper.is_alive()
    assert [e["type"] for e in budgeted.events()].count("refusals_suppressed_summary") == 1
