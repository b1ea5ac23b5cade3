"""The issuance path's combined writes (one statement each on PostgreSQL), on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from broker.errors import Conflict
from broker.storage.engine import Database, build_engine
from broker.storage.migrations import migrate
from broker.storage.models import GrantRow, MintIntentRow, NewGrant, NewMintIntent, NewRequest, RequestRow

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def database(db_url):
    database = Database(build_engine(db_url))
    migrate(database.engine)
    yield database
    database.engine.dispose()


def _request(request_id: str, grant_id: str) -> NewRequest:
    return NewRequest(id=request_id, template="t", template_digest="sha256:t", environment="dev", parameters="{}",
                      role_arn="arn:aws:iam::123456789012:role/r", policy="{}", policy_digest="sha256:p",
                      ttl_seconds=900, session_tags="[]", source_identity="agent.a", session_name="a-1",
                      grant_id=grant_id, binding_digest="sha256:b", requester="agent:a", acts_for="human:h",
                      reason="why", source_ip=None, status="issuing", approvals_required=0, created_at=NOW,
                      updated_at=NOW)


def _grant(request_id: str, grant_id: str) -> NewGrant:
    return NewGrant(id=grant_id, request_id=request_id, template="t", agent="agent:a", acts_for="human:h",
                    role_arn="arn:aws:iam::123456789012:role/r", access_key_id="ASIAEXAMPLE", source_identity="agent.a",
                    session_name="a-1", policy_digest="sha256:p", environment="dev", issued_at=NOW,
                    expiration=NOW + timedelta(seconds=900))


def _open(database: Database, request_id: str, grant_id: str) -> None:
    with database.transaction() as repo:
        repo.add_request_and_intent(_request(request_id, grant_id), NewMintIntent(
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


def test_a_request_that_moved_on_is_not_issued_and_nothing_is_kept(database):
    _open(database, "r2", "g2")
    with database.transaction() as repo:
        assert repo.transition_request("r2", from_statuses=["issuing"], to_status="cancelled", updated_at=NOW)
    with pytest.raises(Conflict), database.transaction() as repo:
        if not repo.record_issued("r2", from_statuses=["issuing"], to_status="issued", grant=_grant("r2", "g2"),
                                  now=NOW):
            raise Conflict("moved on", code="request_changed")
    with database.transaction() as repo:
        assert repo.get_request("r2").status == "cancelled"
        assert list(repo.session.exec(select(GrantRow))) == []
        intents = list(repo.session.exec(select(MintIntentRow)))
        assert [(i.grant_id, i.resolved) for i in intents] == [("g2", False)]
        assert [r.id for r in repo.session.exec(select(RequestRow))] == ["r2"]
