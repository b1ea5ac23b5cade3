"""Asking for credentials on fakes (broker.usecases.issuance): what STS gets, what the log says, and that a
failing STS leaves a failed request and no grant; no SQL, no HTTP, no STS."""

from __future__ import annotations

import pytest

from broker.domain.requests import RequestStatus
from broker.errors import Forbidden, InvalidInput, NotFound, Unavailable
from tests.usecases.fakes import AGENT, BOB, STS_DOWN, ask, world


def test_a_dev_scope_is_minted_at_once_and_logged_with_its_grant():
    w = world()
    outcome = ask(w, "test-s3-read", {"prefix": "reports"})
    assert outcome.request["status"] == RequestStatus.ISSUED and outcome.credentials is not None
    (order,) = w.minter.orders
    assert order.role_arn == "arn:aws:iam::123456789012:role/broker-target-s3-read"
    assert order.duration_seconds == 900 and order.source_identity
    assert order.transitive_tag_keys == ()
    requested, issued = w.store.entries()
    assert (requested["type"], issued["type"]) == ("requested", "issued")
    assert issued["access_key_id"] == outcome.credentials.access_key_id
    assert issued["policy_digest"] == outcome.grant["policy_digest"] == requested["policy_digest"]
    (intent,) = w.store.state["intents"].values()
    assert intent.resolved


def test_a_failing_sts_fails_the_request_and_leaves_no_grant():
    w = world()
    w.minter.failure = STS_DOWN
    with pytest.raises(Unavailable):
        ask(w, "test-s3-read", {"prefix": "reports"})
    (row,) = w.store.state["requests"].values()
    assert row.status == RequestStatus.FAILED and row.decided_reason == "sts_unavailable"
    assert not w.store.state["grants"]
    assert [e["type"] for e in w.store.entries()] == ["requested", "failed"]
    assert w.store.entries("failed")[0]["reason_code"] == "sts_unavailable"


def test_a_store_that_fails_before_minting_mints_nothing():
    w = world()
    w.store.fail_next = Unavailable("the database is unavailable", code="database_unavailable")
    with pytest.raises(Unavailable):
        ask(w, "test-s3-read", {"prefix": "reports"})
    assert w.minter.orders == [] and not w.store.state["requests"]


@pytest.mark.parametrize(("template", "parameters", "principal", "error", "code"), [
    ("no-such-scope", {}, AGENT, NotFound, "template_not_found"),
    ("test-s3-read", {"prefix": "../etc"}, AGENT, InvalidInput, None),
    ("test-s3-read", {"bogus": "x"}, AGENT, InvalidInput, None),
    ("test-s3-read", {}, BOB, Forbidden, "requester_not_allowed"),
])
def test_a_refusal_is_logged_and_nothing_is_minted(template, parameters, principal, error, code):
    w = world()
    with pytest.raises(error) as caught:
        ask(w, template, parameters, principal=principal)
    if code:
        assert caught.value.code == code
    (refused,) = w.store.entries()
    assert refused["type"] == "refused" and refused["reason_code"] == caught.value.code
    assert w.minter.orders == [] and not w.store.state["requests"]


def test_a_missing_reason_is_refused():
    w = world()
    with pytest.raises(InvalidInput) as caught:
        ask(w, "test-s3-read", {}, reason="  ")
    assert caught.value.code == "missing_reason"
