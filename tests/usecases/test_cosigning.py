"""Co-signing and redemption on fakes (broker.usecases.cosigning, issuance.redeem): the two-person rule, one human
once, exactly one redemption, the TTL starting at redemption; no SQL, no HTTP, no STS."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.domain.requests import RequestStatus
from broker.errors import Conflict, Forbidden
from tests.usecases.fakes import AGENT, ALICE, BOB, CAROL, DAVE, ask, world

REASON = "looks right"


def _pending():
    w = world()
    outcome = ask(w)
    assert outcome.credentials is None and outcome.request["status"] == RequestStatus.PENDING
    return w, outcome.request["id"]


@pytest.mark.parametrize("who", [
    AGENT,                      # the requester never approves (and is no approver)
    ALICE,                      # nor the human the agent acts for
    DAVE,                       # an approver outside the template's approvers
])
def test_who_may_not_approve_is_refused_and_nothing_counts(who):
    w, request_id = _pending()
    with pytest.raises(Forbidden):
        w.service.decide(principal=who, request_id=request_id, decision="approve", reason=REASON)
    assert not w.store.state["approvals"]
    assert w.store.request(request_id).status == RequestStatus.PENDING
    assert [e["type"] for e in w.store.entries()][-1] == "refused"


def test_two_approvers_approve_and_one_human_counts_once():
    w, request_id = _pending()
    first = w.service.decide(principal=BOB, request_id=request_id, decision="approve", reason=REASON)
    assert first["status"] == RequestStatus.PENDING and first["approvals_counted"] == 1
    with pytest.raises(Conflict) as again:
        w.service.decide(principal=BOB, request_id=request_id, decision="approve", reason=REASON)
    assert again.value.code == "already_decided"
    second = w.service.decide(principal=CAROL, request_id=request_id, decision="approve", reason=REASON)
    assert second["status"] == RequestStatus.APPROVED and second["approvals_counted"] == 2
    assert [e["type"] for e in w.store.entries() if e["type"] in ("cosigned", "approved")] == \
        ["cosigned", "cosigned", "approved"]
    assert w.minter.orders == []      # approval mints nothing: the agent redeems


def test_a_denial_ends_the_request():
    w, request_id = _pending()
    view = w.service.decide(principal=BOB, request_id=request_id, decision="deny", reason="not today")
    assert view["status"] == RequestStatus.DENIED
    with pytest.raises(Conflict):
        w.service.decide(principal=CAROL, request_id=request_id, decision="approve", reason=REASON)


def _approved():
    w, request_id = _pending()
    for approver in (BOB, CAROL):
        w.service.decide(principal=approver, request_id=request_id, decision="approve", reason=REASON)
    return w, request_id


def test_redemption_mints_once_from_now_and_only_for_the_requester():
    w, request_id = _approved()
    with pytest.raises(Forbidden):
        w.service.redeem(principal=BOB, request_id=request_id)
    w.clock.advance(300)
    outcome = w.service.redeem(principal=AGENT, request_id=request_id)
    assert outcome.credentials is not None and outcome.request["status"] == RequestStatus.ISSUED
    (order,) = w.minter.orders
    # The TTL starts at redemption, not at approval.
    assert outcome.credentials.expiration == w.clock.now() + timedelta(seconds=order.duration_seconds)
    with pytest.raises(Conflict):
        w.service.redeem(principal=AGENT, request_id=request_id)
    assert len(w.minter.orders) == 1
    # The second attempt is refused, and the refusal logged.
    assert [e["type"] for e in w.store.entries()][-3:] == ["redeeming", "issued", "refused"]


def test_an_approved_request_not_redeemed_in_time_expires():
    w, request_id = _approved()
    w.clock.advance(601)   # redeem_within: 600
    with pytest.raises(Conflict) as caught:
        w.service.redeem(principal=AGENT, request_id=request_id)
    assert caught.value.code == "request_expired"
    assert w.store.request(request_id).status == RequestStatus.EXPIRED and w.minter.orders == []
