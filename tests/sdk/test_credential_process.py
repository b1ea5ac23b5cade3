"""The private credential cache and ScopeCredentials (cache, pending marker, refusals)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.sdk import ApprovalDenied, IssuedCredentials, PendingRequest
from broker.sdk.credential_process import REFRESH_MARGIN_SECONDS, CredentialCache, ScopeCredentials, scope_key

REASON = "bug 42"


def _issued(seconds_left: float, key: str = "ASIAEXAMPLE") -> IssuedCredentials:
    return IssuedCredentials(access_key_id=key, secret_access_key="s3cr3t", session_token="t0k3n",
                             expiration=(datetime.now(UTC) + timedelta(seconds=seconds_left)).replace(microsecond=0),
                             request_id="r1", template="test-s3-read", environment="dev")


def test_cache_files_are_private_even_in_a_loose_directory(tmp_path):
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)
    cache = CredentialCache(directory)
    cache.store("k", _issued(900))
    cache.remember_pending("p", "req-1")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in directory.iterdir()} == {0o600}
    assert not [f for f in directory.iterdir() if f.name.startswith(".tmp-")]


@pytest.mark.parametrize(("seconds_left", "hit"), [
    (900, True), (REFRESH_MARGIN_SECONDS + 30, True), (REFRESH_MARGIN_SECONDS - 30, False), (10, False), (-60, False),
])
def test_cached_credentials_are_used_only_with_more_than_the_margin_left(tmp_path, seconds_left, hit):
    cache = CredentialCache(tmp_path)
    issued = _issued(seconds_left)
    cache.store("k", issued)
    loaded = cache.load("k")
    assert (loaded is not None) is hit
    if hit:
        assert loaded.as_credential_process() == issued.as_credential_process()


@pytest.mark.parametrize("garbage", ["", "not json", "{}", '{"AccessKeyId": 1}', '{"AccessKeyId": "a", '
                                     '"SecretAccessKey": "b", "SessionToken": "c", "Expiration": "yesterday"}'])
def test_a_corrupt_cache_file_is_a_miss_not_a_crash(tmp_path, garbage):
    cache = CredentialCache(tmp_path)
    (tmp_path / "k.credentials.json").write_text(garbage)
    assert cache.load("k") is None


def test_cache_dir_defaults_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("BROKER_CACHE_DIR", str(tmp_path / "x"))
    assert CredentialCache().directory == tmp_path / "x"
    monkeypatch.delenv("BROKER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert CredentialCache().directory == tmp_path / "xdg" / "agent-broker"


texts = st.text(min_size=0, max_size=20)


@given(url=texts, who=texts, template=texts, params=st.dictionaries(texts, texts, max_size=3),
       other=st.sampled_from(["url", "who", "template", "params"]))
def test_scope_key_changes_with_every_part(url, who, template, params, other):
    base = dict(url=url, identity_hash=who, template=template, params=params)
    changed = dict(base)
    if other == "url":
        changed["url"] = url + "x"
    elif other == "who":
        changed["identity_hash"] = who + "x"
    elif other == "template":
        changed["template"] = template + "x"
    else:
        changed["params"] = {**params, "extra-key-never-generated-" * 2: "v"}
    assert scope_key(**base) != scope_key(**changed)
    assert len(scope_key(**base)) == 64


def test_scope_credentials_reuse_the_cache_and_remember_pending_requests(live_broker, tmp_path):
    cache = CredentialCache(tmp_path)
    with live_broker.client() as client:
        dev = ScopeCredentials(client=client, cache=cache, template="test-s3-read", params={}, reason=REASON)
        first, second = dev.obtain(), dev.obtain()
        assert isinstance(first, IssuedCredentials) and first.access_key_id == second.access_key_id
        assert live_broker.harness.request_count() == 1
        prod = ScopeCredentials(client=client, cache=cache, template="test-prod-ecs", params={"service": "checkout"},
                                reason=REASON)
        pending = prod.obtain()
        assert isinstance(pending, PendingRequest) and prod.obtain().id == pending.id
        assert live_broker.harness.request_count() == 2
        with live_broker.client("human:bob") as bob:
            bob.decide(pending.id, "deny", "absolutely not")
        with pytest.raises(ApprovalDenied):
            prod.obtain()
        # After a denial the marker is gone: the next attempt is a new request (a new decision for humans).
        assert isinstance(prod.obtain(), PendingRequest)
        assert live_broker.harness.request_count() == 3
