"""Log observers see committed entries only, cannot fail an operation, and drive checkpoint-every-N."""

from __future__ import annotations

import threading
import time

import pytest

from broker.errors import InvalidInput
from broker.runtime.background import CheckpointEvery, InBackground
from broker.storage.observed import ObservedDatabase
from tests.conftest import TEST_SCOPES, build_harness, migrated_database

S3 = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "read the cost reports"}


@pytest.fixture
def database(db_url):
    with migrated_database(db_url, ObservedDatabase) as observed:
        yield observed


def body(kind: str) -> dict:
    return {"event_id": f"e-{kind}", "time": "2025-01-01T00:00:00.000000Z", "type": kind, "details": {}}


def test_observers_get_the_entries_of_a_committed_unit_of_work(database):
    seen: list[list[int]] = []
    database.observers.append(lambda entries: seen.append([e["seq"] for e in entries]))
    with database.transaction() as repo:
        repo.append_event(body("a"))
        repo.append_event(body("b"))
    with database.transaction() as repo:
        repo.log_head()  # a unit of work that appends nothing is not reported
    assert seen == [[1, 2]]


def test_a_rolled_back_unit_of_work_is_not_observed(database):
    seen: list = []
    database.observers.append(seen.append)
    with pytest.raises(RuntimeError), database.transaction() as repo:
        repo.append_event(body("a"))
        raise RuntimeError("the operation failed after logging")
    assert seen == []
    with database.transaction() as repo:
        assert repo.log_head()[0] == 0


def test_a_failing_observer_does_not_fail_the_operation(database):
    seen: list = []

    def broken(_entries):
        raise ValueError("observer bug")

    database.observers += [broken, seen.append]
    with database.transaction() as repo:
        repo.append_event(body("a"))
        repo.append_event(body("b"))
    assert len(seen) == 1
    with database.transaction() as repo:
        assert repo.log_head()[0] == 2


@pytest.mark.parametrize("every", [0, -1])
def test_checkpoint_every_must_be_positive(every):
    with pytest.raises(InvalidInput):
        CheckpointEvery(lambda: None, every=every)


@pytest.mark.parametrize(("every", "seqs", "taken"), [
    (3, [1, 2], 0), (3, [2, 3], 1), (3, [3, 4, 5, 6], 1), (1, [7], 1), (100, [99, 101], 0),
])
def test_checkpoint_every_fires_on_boundaries(every, seqs, taken):
    calls: list[None] = []
    CheckpointEvery(lambda: calls.append(None), every=every)([{"seq": s} for s in seqs])
    assert len(calls) == taken


def test_the_broker_checkpoints_every_n_entries(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'b.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "s", checkpoint_every=3)
    with harness.container.database.transaction() as repo:
        assert repo.latest_checkpoint() is None
    checkpointer = harness.container.checkpointer
    for _ in range(4):  # 8 entries: requested + issued each
        assert harness.post("/v1/requests", "agent:demo", json=S3).status_code == 201
        assert checkpointer.drain()  # it is signed in the background, right after the boundary's commit
    with harness.container.database.transaction() as repo:
        latest = repo.latest_checkpoint()
        head_seq, head_hash = repo.log_head()
    assert head_seq == 8
    assert latest is not None and latest.seq == 6
    assert latest.key_id == harness.container.signer.key_id
    harness.container.database.engine.dispose()


def test_in_background_runs_off_the_callers_thread_and_coalesces():
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def task() -> None:
        runs.append(threading.current_thread().name)
        started.set()
        release.wait(5)

    background = InBackground(task, name="test-task")
    background()
    assert started.wait(5)
    # Three calls while a run is under way: one more run, not three.
    for _ in range(3):
        background()
    release.set()
    assert background.drain(5)
    assert runs == ["test-task", "test-task"]
    assert threading.current_thread().name not in runs


def test_in_background_survives_a_failing_run_and_restarts_after_idling(caplog):
    outcomes = iter([RuntimeError("database down"), None])
    runs: list[int] = []

    def task() -> None:
        runs.append(1)
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    background = InBackground(task, name="flaky", idle_seconds=0.05)
    background()
    assert background.drain(5)
    assert "background flaky failed" in caplog.text
    deadline = time.monotonic() + 5
    while background._thread is not None and time.monotonic() < deadline:  # idle: the thread ends
        time.sleep(0.01)
    assert background._thread is None
    background()  # a new thread takes the next call
    assert background.drain(5)
    assert len(runs) == 2
