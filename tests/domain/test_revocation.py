"""The revocation deny policy: table tests, size limits, and the evaluator's verdict on it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain import revocation as rules
from broker.domain.evaluator import AccessRequest, Outcome, PolicyKind, PolicySet, evaluate
from broker.errors import InvalidInput, PolicyTooLarge

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
ROLE = "arn:aws:iam::123456789012:role/broker-target-s3-read"
OTHER_ROLE = "arn:aws:iam::123456789012:role/other"
ROLE_ID = "AROAEXAMPLEROLEID0001"
ROLE_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket/*"}]}
SESSION_POLICY = ROLE_POLICY


def session(grant_id: str, *, minutes: int = 15, role: str = ROLE) -> rules.RevokedSession:
    return rules.RevokedSession(role_arn=role, grant_id=grant_id, session_name=f"demo-{grant_id[:20]}",
                                expires_at=NOW + timedelta(minutes=minutes))


def context(grant_id: str, *, issued: datetime = NOW - timedelta(minutes=1), agent: str = "agent.demo",
            template: str = "test-s3-read") -> dict[str, str]:
    return {"aws:PrincipalTag/broker-grant-id": grant_id, "aws:userid": f"{ROLE_ID}:demo-{grant_id[:20]}",
            "aws:SourceIdentity": agent, "aws:TokenIssueTime": issued.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "aws:PrincipalTag/broker-template": template}


def decide(policy: rules.RevocationPolicy, ctx: dict[str, str]) -> Outcome:
    identity = [ROLE_POLICY] + ([policy.document] if policy.document else [])
    request = AccessRequest(action="s3:GetObject", resource="arn:aws:s3:::bucket/key", context=ctx,
                            context_complete=True)
    return evaluate([PolicySet.of(PolicyKind.IDENTITY, *identity), PolicySet.of(PolicyKind.SESSION, SESSION_POLICY)],
                    request).outcome


def test_revoked_session_is_denied_and_others_are_not():
    policy = rules.build_revocation_policy(ROLE, [session("g-revoked-1"), session("g-revoked-2")], now=NOW)
    assert decide(policy, context("g-revoked-1")) is Outcome.DENIED
    assert decide(policy, context("g-revoked-2")) is Outcome.DENIED
    assert decide(policy, context("g-innocent")) is Outcome.ALLOWED
    assert rules.session_is_named(policy.document, grant_id="g-revoked-1")
    assert not rules.session_is_named(policy.document, grant_id="g-innocent")


def test_userid_statement_alone_denies_the_session():
    """Belt and braces: even without the tag (e.g. tags missing), aws:userid denies the session."""
    policy = rules.build_revocation_policy(ROLE, [session("g-revoked")], now=NOW)
    ctx = context("g-revoked")
    ctx["aws:PrincipalTag/broker-grant-id"] = "something-else"
    assert decide(policy, ctx) is Outcome.DENIED


@pytest.mark.parametrize(("scope", "value", "victim", "spared"), [
    (rules.RevokeScope.ROLE, None, {}, None),
    (rules.RevokeScope.AGENT, "agent.demo", {"agent": "agent.demo"}, {"agent": "agent.other"}),
    (rules.RevokeScope.TEMPLATE, "test-s3-read", {"template": "test-s3-read"}, {"template": "test-logs"}),
])
def test_revoke_all_denies_sessions_issued_before_the_cutoff_only(scope, value, victim, spared):
    cutoff = rules.revoke_all_cutoff(NOW)
    entry = rules.RevokeAll(role_arn=ROLE, scope=scope, value=value, cutoff=cutoff,
                            expires_at=cutoff + timedelta(hours=1))
    policy = rules.build_revocation_policy(ROLE, [entry], now=NOW)
    statement = policy.document["Statement"][0]
    assert statement["Condition"]["DateLessThan"] == {"aws:TokenIssueTime": "2025-03-01T12:00:01Z"}
    assert decide(policy, context("g1", issued=NOW - timedelta(seconds=1), **victim)) is Outcome.DENIED
    assert decide(policy, context("g0", issued=NOW, **victim)) is Outcome.DENIED
    assert decide(policy, context("g2", issued=NOW + timedelta(seconds=5), **victim)) is Outcome.ALLOWED
    if spared is not None:
        assert decide(policy, context("g3", issued=NOW - timedelta(seconds=1), **spared)) is Outcome.ALLOWED


@pytest.mark.parametrize(("now", "expected"), [
    (datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC), "2025-01-01T00:00:01Z"),         # this second is included
    (datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=UTC), "2025-01-01T00:00:01Z"),
    (datetime(2025, 1, 1, 0, 0, 59, 999999, tzinfo=UTC), "2025-01-01T00:01:00Z"),
])
def test_cutoff_is_the_next_whole_second(now, expected):
    assert rules.revoke_all_cutoff(now).strftime("%Y-%m-%dT%H:%M:%SZ") == expected


def test_entries_are_dropped_once_their_credentials_have_expired():
    entries = [session("g-short", minutes=5), session("g-long", minutes=60)]
    later = NOW + timedelta(minutes=5) + rules.CLOCK_SKEW_MARGIN + timedelta(seconds=1)
    just_before = NOW + timedelta(minutes=5) + rules.CLOCK_SKEW_MARGIN - timedelta(seconds=1)
    assert rules.session_is_named(rules.build_revocation_policy(ROLE, entries, now=just_before).document,
                                  grant_id="g-short")
    policy = rules.build_revocation_policy(ROLE, entries, now=later)
    assert not rules.session_is_named(policy.document, grant_id="g-short")
    assert rules.session_is_named(policy.document, grant_id="g-long")
    gone = rules.build_revocation_policy(ROLE, entries, now=NOW + timedelta(hours=2))
    assert gone.document is None and gone.json is None


def test_only_the_roles_own_entries_are_used():
    policy = rules.build_revocation_policy(ROLE, [session("mine"), session("theirs", role=OTHER_ROLE)], now=NOW)
    assert rules.session_is_named(policy.document, grant_id="mine")
    assert not rules.session_is_named(policy.document, grant_id="theirs")


def test_repeated_revoke_all_keeps_the_latest_cutoff():
    first = rules.RevokeAll(ROLE, rules.RevokeScope.AGENT, "agent.demo", NOW, NOW + timedelta(hours=1))
    second = rules.RevokeAll(ROLE, rules.RevokeScope.AGENT, "agent.demo", NOW + timedelta(minutes=5),
                             NOW + timedelta(hours=2))
    merged = rules.merge_revoke_all([first, second, session("g"), session("g")])
    alls = [e for e in merged if isinstance(e, rules.RevokeAll)]
    assert len(merged) == 2 and len(alls) == 1
    assert alls[0].cutoff == second.cutoff and alls[0].expires_at == second.expires_at


def test_policy_is_compacted_then_refused_when_it_cannot_fit():
    many = [session(f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd") for i in range(60)]
    full = rules.build_revocation_policy(ROLE, many, now=NOW)
    assert not full.compacted and full.size <= rules.ROLE_INLINE_POLICY_LIMIT
    # Less room (other inline policies on the role): the userid list goes, every grant is still named.
    squeezed = rules.build_revocation_policy(ROLE, many, now=NOW, room=full.size - 1)
    assert squeezed.compacted and squeezed.size < full.size
    assert all(rules.session_is_named(squeezed.document, grant_id=s.grant_id) for s in many)
    assert all(decide(squeezed, context(s.grant_id)) is Outcome.DENIED for s in many[:5])
    with pytest.raises(PolicyTooLarge) as caught:
        rules.build_revocation_policy(ROLE, many, now=NOW, room=squeezed.size - 1)
    assert caught.value.code == "revocation_policy_too_large"
    assert caught.value.details["needed"] == squeezed.size


def test_a_full_role_still_fits_at_least_a_hundred_revoked_sessions():
    many = [session(f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd") for i in range(100)]
    assert rules.build_revocation_policy(ROLE, many, now=NOW).size <= rules.ROLE_INLINE_POLICY_LIMIT


@pytest.mark.parametrize("raw", [
    {},
    {"kind": "nope"},
    {"kind": "session", "role_arn": ROLE, "grant_id": "", "session_name": "s", "expires_at": "2025-01-01T00:00:00Z"},
    {"kind": "session", "role_arn": ROLE, "grant_id": "g", "session_name": "s", "expires_at": "yesterday"},
    {"kind": "session", "role_arn": ROLE, "grant_id": 7, "session_name": "s", "expires_at": "2025-01-01T00:00:00Z"},
    {"kind": "issued_before", "role_arn": ROLE, "scope": "agent", "value": None, "cutoff": "2025-01-01T00:00:00Z",
     "expires_at": "2025-01-01T00:00:00Z"},
    {"kind": "issued_before", "role_arn": ROLE, "scope": "role", "value": "x", "cutoff": "2025-01-01T00:00:00Z",
     "expires_at": "2025-01-01T00:00:00Z"},
    {"kind": "issued_before", "role_arn": ROLE, "scope": "everything", "value": None,
     "cutoff": "2025-01-01T00:00:00Z", "expires_at": "2025-01-01T00:00:00Z"},
])
def test_malformed_stored_entries_are_errors_not_skipped(raw):
    with pytest.raises(InvalidInput) as caught:
        rules.entry_from_dict(raw)
    assert caught.value.code == "revocation_state_invalid"


@pytest.mark.parametrize("role", ["", "*", "arn:aws:iam::123456789012:user/bob", "role/x"])
def test_only_role_arns_get_a_policy(role):
    with pytest.raises(InvalidInput):
        rules.build_revocation_policy(role, [session("g", role=role)], now=NOW)


def test_round_trip_of_stored_entries():
    entries = [session("g1"), rules.RevokeAll(ROLE, rules.RevokeScope.TEMPLATE, "t", NOW, NOW + timedelta(hours=1))]
    again = [rules.entry_from_dict(json.loads(json.dumps(e.to_dict()))) for e in entries]
    assert again == entries


@settings(max_examples=60, deadline=None)
@given(revoked=st.sets(st.uuids().map(str), min_size=1, max_size=20), others=st.sets(st.uuids().map(str), max_size=5))
def test_property_every_revoked_session_denied_no_other(revoked, others):
    policy = rules.build_revocation_policy(ROLE, [session(g) for g in revoked], now=NOW)
    for grant_id in revoked:
        assert decide(policy, context(grant_id)) is Outcome.DENIED
    for grant_id in others - revoked:
        # Session names are derived from the first 20 characters; a uuid4 collision there is not a concern.
        assert decide(policy, context(grant_id)) is Outcome.ALLOWED


# --------------------------------------------------------------------------- fitting (issue 22, 1)

def issued_session(index: int, *, agent: str | None = "agent.demo", template: str | None = "test-s3-read",
                   issued: datetime = NOW - timedelta(minutes=1)) -> rules.RevokedSession:
    grant_id = f"{index:08d}-aaaa-bbbb-cccc-dddddddddddd"
    return rules.RevokedSession(role_arn=ROLE, grant_id=grant_id, session_name=f"demo-{grant_id[:20]}",
                                expires_at=NOW + timedelta(minutes=15), issued_by=issued, source_identity=agent,
                                template=template)


def test_fit_keeps_per_session_entries_while_they_fit():
    entries = [issued_session(i) for i in range(50)]
    fitted = rules.fit_revocation_policy(ROLE, entries, now=NOW)
    assert fitted.fallbacks == () and fitted.policy.sessions == 50
    assert fitted.policy.json == rules.build_revocation_policy(ROLE, entries, now=NOW).json


@pytest.mark.parametrize("agents, templates, scope, statements", [
    (["agent.demo"], ["test-s3-read"], rules.RevokeScope.AGENT, 1),      # one agent: narrowed to it
    (["agent.a", "agent.b", "agent.c"], ["test-s3-read"], rules.RevokeScope.AGENT, 3),
    ([f"agent.{i}" for i in range(300)], ["t1", "t2"], rules.RevokeScope.TEMPLATE, 2),  # too many agents
    ([None], ["test-s3-read"], rules.RevokeScope.TEMPLATE, 1),           # an entry that does not name its agent
    ([None], [None], rules.RevokeScope.ROLE, 1),                          # entries from before issue 22
    ([f"agent.{i}" for i in range(300)], [f"t{i}" for i in range(300)], rules.RevokeScope.ROLE, 1),
])
def test_sessions_that_do_not_fit_give_way_to_the_narrowest_issued_before_deny(agents, templates, scope, statements):
    entries = [issued_session(i, agent=agents[i % len(agents)], template=templates[i % len(templates)])
               for i in range(300)]
    with pytest.raises(PolicyTooLarge):
        rules.build_revocation_policy(ROLE, entries, now=NOW)
    fitted = rules.fit_revocation_policy(ROLE, entries, now=NOW, longest_session=timedelta(hours=1))
    assert {f.scope for f in fitted.fallbacks} == {scope} and len(fitted.fallbacks) == statements
    assert fitted.policy.sessions == 0 and fitted.policy.size <= rules.ROLE_INLINE_POLICY_LIMIT
    assert all(f.cutoff == rules.revoke_all_cutoff(NOW) and f.expires_at == f.cutoff + timedelta(hours=1)
               for f in fitted.fallbacks)
    # Every session the entries named is still denied, by the evaluator's reading of the policy.
    for entry in entries[:40]:
        ctx = context(entry.grant_id, agent=entry.source_identity or "agent.unknown",
                      template=entry.template or "unknown")
        assert decide(fitted.policy, ctx) is Outcome.DENIED
    # A session issued after the fallback is not.
    assert decide(fitted.policy, context("new-grant", issued=NOW + timedelta(seconds=2),
                                         agent=agents[0] or "agent.x", template=templates[0] or "t")) is Outcome.ALLOWED


def test_revoke_alls_already_stored_stay_and_a_fitted_list_is_stable():
    earlier = rules.RevokeAll(ROLE, rules.RevokeScope.TEMPLATE, "other", NOW - timedelta(minutes=5), NOW + timedelta(hours=1))
    entries = [earlier, *(issued_session(i) for i in range(300))]
    fitted = rules.fit_revocation_policy(ROLE, entries, now=NOW)
    assert earlier in fitted.entries and fitted.fallbacks
    again = rules.fit_revocation_policy(ROLE, fitted.entries, now=NOW + timedelta(minutes=1))
    assert again.fallbacks == () and set(again.entries) == set(fitted.entries)


def test_no_room_for_even_a_role_wide_deny_is_refused():
    with pytest.raises(PolicyTooLarge) as caught:
        rules.fit_revocation_policy(ROLE, [issued_session(i) for i in range(300)], now=NOW, room=100)
    assert caught.value.code == "revocation_policy_too_large"


@pytest.mark.parametrize("issued, agent, revoke_all, covered", [
    (NOW - timedelta(minutes=1), "agent.demo", (rules.RevokeScope.ROLE, None), True),
    (NOW - timedelta(minutes=1), "agent.demo", (rules.RevokeScope.AGENT, "agent.demo"), True),
    (NOW - timedelta(minutes=1), "agent.demo", (rules.RevokeScope.AGENT, "agent.other"), False),
    (NOW - timedelta(minutes=1), "agent.demo", (rules.RevokeScope.TEMPLATE, "test-s3-read"), True),
    (NOW - timedelta(minutes=1), "agent.demo", (rules.RevokeScope.TEMPLATE, "other"), False),
    (NOW + timedelta(seconds=1), "agent.demo", (rules.RevokeScope.ROLE, None), False),   # issued in the cutoff's second
    (None, "agent.demo", (rules.RevokeScope.ROLE, None), False),                          # issue time unknown
    (NOW - timedelta(minutes=1), None, (rules.RevokeScope.AGENT, "agent.demo"), False),   # agent unknown
])
def test_a_session_entry_a_revoke_all_covers_is_dropped(issued, agent, revoke_all, covered):
    entry = rules.RevokedSession(role_arn=ROLE, grant_id="g1", session_name="demo-g1",
                                 expires_at=NOW + timedelta(minutes=15), issued_by=issued, source_identity=agent,
                                 template="test-s3-read")
    scope, value = revoke_all
    everything = rules.RevokeAll(ROLE, scope, value, rules.revoke_all_cutoff(NOW), NOW + timedelta(hours=1))
    merged = rules.merge_revoke_all([entry, everything])
    assert (entry not in merged) is covered


def test_round_trip_keeps_what_says_which_revoke_all_covers_a_session():
    entry = issued_session(1)
    assert rules.entry_from_dict(json.loads(json.dumps(entry.to_dict()))) == \
        rules.RevokedSession(**{**entry.__dict__, "issued_by": entry.issued_by.replace(microsecond=0)})
