"""The approvers' pages without a browser: sessions, sign-in rules, redirects, escaping, headers."""

from __future__ import annotations

import re

import pytest
from sqlmodel import select

from broker.storage.ui_sessions import SESSION_IDLE, SESSION_LIFETIME, UiSessionRow
from tests.conftest import TEST_SCOPES, another_writer, build_harness

PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "deploy"}


@pytest.fixture
def ui(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'ui.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", dev_mode=True)
    yield harness
    harness.container.database.engine.dispose()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(harness, key: str, next_path: str = "/ui/requests"):
    harness.client.get("/ui/sign-in")
    token = harness.client.cookies.get("broker_ui_signin")  # double submit: the form carries the cookie's value
    return harness.client.post("/ui/sign-in", data={"key": key, "csrf_token": token, "next": next_path},
                               follow_redirects=False)


def test_session_is_stored_hashed_and_the_cookie_is_strict(ui):
    response = sign_in(ui, ui.keys["human:bob"])
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    token = ui.client.cookies.get("broker_ui_session")
    with ui.container.database.transaction() as repo:
        rows = list(repo.session.exec(select(UiSessionRow)))
    assert len(rows) == 1 and rows[0].principal_id == "human:bob"
    assert token not in repr(rows[0].model_dump()) and ui.keys["human:bob"] not in repr(rows[0].model_dump())


def test_secure_cookie_when_served_over_https(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'ui.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", dev_mode=True,
                            public_url="https://broker.example")
    try:
        assert "Secure" in harness.client.get("/ui/sign-in").headers["set-cookie"]
    finally:
        harness.container.database.engine.dispose()


@pytest.mark.parametrize(("who", "status"), [("agent:demo", 403), ("human:rita", 303), ("human:root", 303)])
def test_who_may_sign_in(ui, who, status):
    assert sign_in(ui, ui.keys[who]).status_code == status


@pytest.mark.parametrize("key", ["", "not-a-key", "brk_" + "0" * 12 + "_" + "A" * 43, "eyJhbGciOiJub25lIn0.e30."])
def test_bad_keys_are_refused_without_echo(ui, key):
    response = sign_in(ui, key)
    assert response.status_code == 401
    assert "broker_ui_session" not in response.headers.get("set-cookie", "")
    if key:
        assert key not in response.text


def test_key_sign_in_is_off_outside_dev_mode(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'ui.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state")
    try:
        assert 'id="key"' not in harness.client.get("/ui/sign-in").text
        assert sign_in(harness, harness.keys["human:bob"]).status_code == 403
    finally:
        harness.container.database.engine.dispose()


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/ui/", "/v1/requests", "/ui/\\evil",
                                    "/ui/requests\r\nSet-Cookie: x=1"])
def test_no_open_redirect_after_sign_in(ui, target):
    response = sign_in(ui, ui.keys["human:bob"], next_path=target)
    assert response.headers["location"] == "/ui/requests"


@pytest.mark.parametrize(("change", "after"), [
    (lambda h: h.clock.advance(SESSION_IDLE.total_seconds() + 1), "idle"),
    (lambda h: [h.clock.advance(SESSION_IDLE.total_seconds() - 60) or h.client.get("/ui/requests")
                for _ in range(int(SESSION_LIFETIME / SESSION_IDLE) + 2)], "lifetime"),
    (lambda h: _in_db(h, lambda repo: repo.disable_principal("human:bob")), "disabled"),
    (lambda h: _in_db(h, lambda repo: _revoke_key(repo, h.keys["human:bob"])), "key-revoked"),
])
def test_sessions_end(ui, change, after):
    sign_in(ui, ui.keys["human:bob"])
    assert ui.client.get("/ui/requests", follow_redirects=False).status_code == 200
    change(ui)
    response = ui.client.get("/ui/requests", follow_redirects=False)
    assert response.status_code == 303, after
    assert response.headers["location"].startswith("/ui/sign-in")


def _revoke_key(repo, token: str) -> None:
    from broker.identity.apikeys import parse_api_key
    from broker.storage.models import ApiKeyRow

    row = repo.session.get(ApiKeyRow, parse_api_key(token)[0])
    row.revoked = True
    repo.session.add(row)


def _in_db(harness, action):
    with harness.container.database.transaction() as repo:
        action(repo)


def test_sign_out_needs_the_token_and_ends_the_session(ui):
    sign_in(ui, ui.keys["human:bob"])
    page = ui.client.get("/ui/requests")
    assert ui.client.post("/ui/sign-out", data={}, follow_redirects=False).status_code == 403
    assert ui.client.get("/ui/requests", follow_redirects=False).status_code == 200
    out = ui.client.post("/ui/sign-out", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303
    assert ui.client.get("/ui/requests", follow_redirects=False).status_code == 303


def test_requester_text_is_escaped_and_headers_are_strict(ui):
    created = ui.post("/v1/requests", "agent:demo", json={**PROD, "reason": '<script>alert(1)</script>"><img src=x>'})
    rid = created.json()["id"]
    sign_in(ui, ui.keys["human:bob"])
    for path in ("/ui/requests", f"/ui/requests/{rid}"):
        response = ui.client.get(path)
        assert response.status_code == 200
        assert "<script>" not in response.text and "<img src=x>" not in response.text
        assert "&lt;script&gt;" in response.text
        assert response.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert response.headers["cache-control"] == "no-store"


def test_unknown_request_page_is_a_404_page(ui):
    sign_in(ui, ui.keys["human:bob"])
    response = ui.client.get("/ui/requests/nope")
    assert response.status_code == 404 and "request_not_found" in response.text


def test_deny_from_the_page(ui):
    rid = ui.post("/v1/requests", "agent:demo", json=PROD).json()["id"]
    sign_in(ui, ui.keys["human:carol"])
    page = ui.client.get(f"/ui/requests/{rid}")
    done = ui.client.post(f"/ui/requests/{rid}/decision", follow_redirects=True,
                          data={"decision": "deny", "reason": "freeze", "csrf_token": csrf_of(page.text)})
    assert done.status_code == 200 and "Your denial was recorded." in done.text
    assert ui.get(f"/v1/requests/{rid}", "agent:demo").json()["status"] == "denied"
    # No decision form on a request that is no longer pending.
    assert 'id="approve"' not in done.text


def test_a_cookie_naming_no_session_costs_no_write_transaction(ui):
    """A stale or forged session cookie is answered from a read: while another writer holds SQLite's write
    lock (as an issuance does), such requests neither wait for it nor take it."""
    import time

    from broker.api.ui.security import SESSION_COOKIE

    with another_writer(ui.container.database.engine):
        started = time.monotonic()
        for n in range(20):
            ui.client.cookies.set(SESSION_COOKIE, f"forged-{n}")
            answer = ui.client.get("/ui/requests", follow_redirects=False)
            assert answer.status_code in (303, 307) and "/ui/sign-in" in answer.headers["location"]
        elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed  # a write transaction would have waited for the other writer (10 s)
