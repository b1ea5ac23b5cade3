"""Requests after they are made, on fakes (broker.usecases.requests): expiry on a frozen clock, cancelling,
and who may read a request."""

from __future__ import annotations

import pytest

from broker.domain.principals import Principal, Role
from broker.domain.requests import RequestStatus
from broker.errors import Conflict, RequestNotFound
from tests.usecases.fakes import AGENT, ALICE, BOB, ask, world

STRANGER = Principal(id="agent:other", roles=frozenset({Role.AGENT}), acts_for="human:bob")


def test_a_pending_request_expires_after_expires_after_and_not_before():
    w = world()
    request_id = ask(w).request["id"]
    w.clock.advance(1800)          # expires_after: 1800; the deadline itself is not past
    assert w.service.expire_stale() == 0
    w.clock.advance(1)
    assert w.service.expire_stale() == 1
    assert w.store.request(request_id).status == RequestStatus.EXPIRED
    (expired,) = w.store.entries("expired")
    assert expired["actor"] == "broker" and expired["details"]["was"] == RequestStatus.PENDING
    assert w.service.expire_stale() == 0     # once
    with pytest.raises(Conflict):
        w.service.decide(principal=BOB, request_id=request_id, decision="approve", reason="late")


def test_the_requester_cancels_a_pending_request_once():
    w = world()
    request_id = ask(w).request["id"]
    assert w.service.cancel(principal=AGENT, request_id=request_id)["status"] == RequestStatus.CANCELLED
    with pytest.raises(Conflict):
        w.service.cancel(principal=AGENT, request_id=request_id)
    assert len(w.store.entries("cancelled")) == 1


@pytest.mark.parametrize(("who", "visible"), [(AGENT, True), (ALICE, True), (BOB, True), (STRANGER, False)])
def test_who_may_read_a_request(who, visible):
    w = world()
    request_id = ask(w).request["id"]
    if visible:
        assert w.service.get_request(principal=who, request_id=request_id)["id"] == request_id
    else:
        with pytest.raises(RequestNotFound):
            w.service.get_request(principal=who, request_id=request_id)
