"""Approver sign-in with OpenID Connect against a real (small) identity provider on 127.0.0.1.

Driven step by step with the FastAPI TestClient (no automatic redirects): the broker's redirect to
the provider, the provider's redirect back, the callback.  Hostile answers are each refused with a
clear page and no session.  One real-browser test signs in through the provider and approves.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from sqlmodel import select

from broker.api.ui.oidc import CALLBACK_PATH, FLOW_COOKIE, UiOidcConfig, pkce_challenge
from broker.storage.ui_oidc_flows import UiOidcFlowRow
from broker.storage.ui_sessions import UiSessionRow
from tests.conftest import TEST_SCOPES, build_harness
from tests.identity.jwt_factory import rsa_key, unsigned_token
from tests.ui.oidc_idp import CLIENT_ID, running_idp, s256

PROD = {"template": "test-prod-ecs", "parameters": {"service": "checkout"}, "reason": "deploy checkout"}


# --- fixtures and steps ------------------------------------------------------------------------------

def make_site(idp, *, db_url: str, moto_server, tmp_path, **settings):
    harness = build_harness(db_url=db_url, scopes=TEST_SCOPES, aws_endpoint=moto_server.endpoint_url,
                            state_dir=tmp_path / "state", **{**idp.settings(tmp_path / "client-secret"), **settings})
    idp.redirect_uri = harness.container.settings.public_url.rstrip("/") + CALLBACK_PATH
    return harness


@pytest.fixture
def idp():
    with running_idp() as provider:
        yield provider


@pytest.fixture
def site(idp, moto_server, tmp_path):
    harness = make_site(idp, db_url=f"sqlite:///{tmp_path / 'ui.db'}", moto_server=moto_server, tmp_path=tmp_path)
    yield harness
    harness.container.database.engine.dispose()


def begin(client, next_path: str | None = "/ui/requests") -> str:
    """The broker's answer to "Sign in with ...": a redirect to the provider's authorization endpoint."""
    response = client.get("/ui/login/oidc", params={} if next_path is None else {"next": next_path},
                          follow_redirects=False)
    assert response.status_code == 303, response.text
    return response.headers["location"]


def at_provider(idp, authorize_url: str) -> str:
    """The provider signs the user in and redirects back: return the callback's path and query."""
    response = httpx.get(authorize_url, follow_redirects=False, trust_env=False)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(idp.redirect_uri + "?")
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}"


def sign_in(harness, idp, next_path: str | None = "/ui/requests"):
    return harness.client.get(at_provider(idp, begin(harness.client, next_path)), follow_redirects=False)


def session_rows(harness) -> list[UiSessionRow]:
    with harness.container.database.transaction() as repo:
        return list(repo.session.exec(select(UiSessionRow)))


def flow_rows(harness) -> list[UiOidcFlowRow]:
    with harness.container.database.transaction() as repo:
        return list(repo.session.exec(select(UiOidcFlowRow)))


def continue_target(response) -> str:
    return re.search(r'http-equiv="refresh" content="0;url=([^"]+)"', response.text).group(1)


def assert_refused(harness, response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert code in response.text and 'role="alert"' in response.text  # a clear page saying why
    assert "Sign in with" in response.text  # ... from which one can start again
    assert "broker_ui_session" not in response.headers.get("set-cookie", "")
    assert f'{FLOW_COOKIE}=""' in response.headers.get("set-cookie", "")  # the flow cookie is cleared
    assert session_rows(harness) == []


# --- the happy path ------------------------------------------------------------------------------

def test_sign_in_with_oidc_then_approve(idp, db_url, moto_server, tmp_path):
    harness = make_site(idp, db_url=db_url, moto_server=moto_server, tmp_path=tmp_path)
    try:
        rid = harness.post("/v1/requests", "agent:demo", json=PROD).json()["id"]
        page = harness.client.get("/ui/sign-in")
        assert "Sign in with 127.0.0.1" in page.text
        assert 'id="key"' not in page.text  # not a dev broker: no key sign-in

        authorize_url = begin(harness.client, f"/ui/requests/{rid}")
        flow_cookie = harness.client.cookies.get(FLOW_COOKIE)
        query = {k: v[0] for k, v in parse_qs(urlsplit(authorize_url).query).items()}
        assert authorize_url.startswith(idp.authorization_endpoint + "?")
        assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
        assert query["redirect_uri"] == idp.redirect_uri and query["scope"] == "openid profile email"
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
        assert len(query["state"]) >= 43 and len(query["nonce"]) >= 43 and query["state"] != query["nonce"]
        [flow] = flow_rows(harness)
        assert query["state"] not in repr(flow.model_dump()) and flow_cookie not in repr(flow.model_dump())

        callback = harness.client.get(at_provider(idp, authorize_url), follow_redirects=False)
        assert callback.status_code == 200, callback.text
        assert continue_target(callback) == f"/ui/requests/{rid}"
        cookie = callback.headers["set-cookie"]
        assert "broker_ui_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        [session] = session_rows(harness)
        assert session.principal_id == "human:bob" and session.api_key_id is None
        assert session.auth_method == f"oidc:{idp.issuer}"
        assert flow_rows(harness) == []  # consumed

        # The provider saw client_secret_basic, the redirect_uri and a verifier that fits the challenge.
        [token_request] = idp.token_requests
        assert token_request.outcome == "ok" and "client_secret" not in token_request.form
        assert s256(token_request.form["code_verifier"]) == query["code_challenge"]
        assert token_request.form["code_verifier"] not in authorize_url + callback.text + cookie

        page = harness.client.get(f"/ui/requests/{rid}")
        assert "Signed in as <strong>human:bob</strong>" in page.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        decided = harness.client.post(f"/ui/requests/{rid}/decision", follow_redirects=False,
                                      data={"decision": "approve", "reason": "looked at it", "csrf_token": csrf})
        assert decided.status_code == 303
        view = harness.get(f"/v1/requests/{rid}", "human:carol").json()
        assert [a["approver"] for a in view["approvals"]] == ["human:bob"]
    finally:
        harness.container.database.engine.dispose()


def test_public_client_uses_pkce_only(moto_server, tmp_path):
    with running_idp(client_secret=None) as idp:
        harness = make_site(idp, db_url=f"sqlite:///{tmp_path / 'ui.db'}", moto_server=moto_server,
                            tmp_path=tmp_path)
        try:
            assert sign_in(harness, idp).status_code == 200
            [token_request] = idp.token_requests
            assert token_request.outcome == "ok" and token_request.form["client_id"] == CLIENT_ID
            assert [s.principal_id for s in session_rows(harness)] == ["human:bob"]
        finally:
            harness.container.database.engine.dispose()


def test_wrong_client_secret_is_refused_by_the_provider(site, idp):
    idp.client_secret = "another-secret"
    assert_refused(site, sign_in(site, idp), 401, "oidc_code_refused")
    assert idp.token_requests[-1].outcome == "wrong client credentials"


def test_reviewer_may_sign_in_read_only(site, idp):
    idp.user = {"sub": "u-7", "preferred_username": "rita"}
    assert sign_in(site, idp).status_code == 200
    assert [s.principal_id for s in session_rows(site)] == ["human:rita"]


def test_principal_claim_is_configurable(idp, moto_server, tmp_path):
    harness = make_site(idp, db_url=f"sqlite:///{tmp_path / 'ui.db'}", moto_server=moto_server, tmp_path=tmp_path,
                        ui_oidc_principal_claim="sub")
    try:
        idp.user = {"sub": "carol", "preferred_username": "bob"}
        assert sign_in(harness, idp).status_code == 200
        assert [s.principal_id for s in session_rows(harness)] == ["human:carol"]
    finally:
        harness.container.database.engine.dispose()


# --- who the provider's account is: verified email, allowed domains, pinned claims ----------------------

PINNED_SETTINGS = {"ui_oidc_principal_claim": "email", "ui_oidc_allowed_domains": "example.com, example.org"}


@pytest.fixture
def pinned_site(idp, moto_server, tmp_path):
    """Approvers named by a verified email in example.com or example.org; human:bob@example.com approves."""
    harness = make_site(idp, db_url=f"sqlite:///{tmp_path / 'ui.db'}", moto_server=moto_server, tmp_path=tmp_path,
                        **PINNED_SETTINGS, ui_oidc_required_claims="hd=example.com")
    with harness.container.database.transaction() as repo:
        for principal_id in ("human:bob@example.com", "human:bob@example.com.evil.com", "human:bob"):
            repo.upsert_principal(principal_id=principal_id, roles=("approver",), now=harness.clock.now())
    yield harness
    harness.container.database.engine.dispose()


def test_pinned_domain_sign_in(pinned_site, idp):
    idp.user = {"sub": "u-1", "preferred_username": "carol", "email": "bob@example.com", "email_verified": True,
                "hd": "example.com"}
    response = sign_in(pinned_site, idp)
    assert response.status_code == 200, response.text
    assert "broker_ui_session=" in response.headers["set-cookie"]
    # The whole address names the principal, never its local part (human:bob is someone else).
    assert [s.principal_id for s in session_rows(pinned_site)] == ["human:bob@example.com"]


VERIFIED = {"sub": "u-1", "email_verified": True, "hd": "example.com"}
ACCOUNT_REFUSALS = {
    "another domain": ({**VERIFIED, "email": "bob@example.com.evil.com"}, "oidc_email_domain_not_allowed"),
    "two addresses in one": ({**VERIFIED, "email": "bob@evil.com@example.com"}, "oidc_email_domain_not_allowed"),
    "a subdomain": ({**VERIFIED, "email": "bob@eu.example.com"}, "oidc_email_domain_not_allowed"),
    "no address": ({**VERIFIED, "email": "bob"}, "oidc_email_domain_not_allowed"),
    "unverified": ({**VERIFIED, "email": "bob@example.com", "email_verified": False}, "oidc_email_unverified"),
    "verification unknown": ({"sub": "u-1", "email": "bob@example.com", "hd": "example.com"},
                             "oidc_email_unverified"),
    'verified as the string "true"': ({**VERIFIED, "email": "bob@example.com", "email_verified": "true"},
                                      "oidc_email_unverified"),
    "another Workspace (hd)": ({**VERIFIED, "email": "bob@example.com", "hd": "evil.com"}, "oidc_claim_mismatch"),
    "a consumer account (no hd)": ({"sub": "u-1", "email": "bob@example.com", "email_verified": True},
                                   "oidc_claim_mismatch"),
}


@pytest.mark.parametrize("case", sorted(ACCOUNT_REFUSALS))
def test_account_outside_the_pinning_is_refused(pinned_site, idp, caplog, case):
    idp.user, code = ACCOUNT_REFUSALS[case]
    with caplog.at_level(logging.INFO, logger="broker.ui.oidc"):
        response = sign_in(pinned_site, idp)
    assert_refused(pinned_site, response, 403, code)
    # Logged like every other refused sign-in: the code and the client address.
    assert f"approver OIDC sign-in refused ({code})" in caplog.text
    assert "broker_ui_session" not in response.headers.get("set-cookie", "")
    assert "bob" not in response.text  # the account's claims are not echoed back


def test_unverified_email_is_refused_without_pinning(idp, moto_server, tmp_path):
    """A deployment that already named approvers by email: an address the provider has not verified is refused."""
    harness = make_site(idp, db_url=f"sqlite:///{tmp_path / 'ui.db'}", moto_server=moto_server, tmp_path=tmp_path,
                        ui_oidc_principal_claim="email")
    try:
        with harness.container.database.transaction() as repo:
            repo.upsert_principal(principal_id="human:bob@example.com", roles=("approver",), now=harness.clock.now())
        idp.user = {"sub": "u-1", "email": "bob@example.com"}
        assert_refused(harness, sign_in(harness, idp), 403, "oidc_email_unverified")
        idp.user = {"sub": "u-1", "email": "bob@example.com", "email_verified": True}
        assert sign_in(harness, idp).status_code == 200
        assert [s.principal_id for s in session_rows(harness)] == ["human:bob@example.com"]
    finally:
        harness.container.database.engine.dispose()


# --- state, nonce, PKCE: one flow, one browser, one use ----------------------------------------

def test_replayed_callback_is_refused(idp, db_url, moto_server, tmp_path):
    harness = make_site(idp, db_url=db_url, moto_server=moto_server, tmp_path=tmp_path)
    try:
        callback_path = at_provider(idp, begin(harness.client))
        flow_cookie = harness.client.cookies.get(FLOW_COOKIE)
        assert harness.client.get(callback_path, follow_redirects=False).status_code == 200
        # The same answer again, even with the flow cookie put back: the state is spent.
        harness.client.cookies.set(FLOW_COOKIE, flow_cookie, path="/ui/oidc")
        replay = harness.client.get(callback_path, follow_redirects=False)
        assert replay.status_code == 401 and "oidc_state_invalid" in replay.text
        assert "broker_ui_session" not in replay.headers.get("set-cookie", "")
        assert len(session_rows(harness)) == 1
        assert len(idp.token_requests) == 1  # the code was never sent twice
    finally:
        harness.container.database.engine.dispose()


def _with_query(path: str, **changes: str | None) -> str:
    parts = urlsplit(path)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return f"{parts.path}?{urlencode(query)}"


CALLBACK_TAMPERING = {
    "wrong state": lambda p: _with_query(p, state="A" * 43),
    "no state": lambda p: _with_query(p, state=None),
    "state twice": lambda p: p + "&state=" + "B" * 43,
    "no code": lambda p: _with_query(p, code=None),
    "code twice": lambda p: p + "&code=other",
    "another issuer named in the answer (mix-up)": lambda p: _with_query(p, iss="https://evil.example"),
}
TAMPERING_CODES = {"wrong state": "oidc_state_invalid", "no state": "oidc_state_invalid",
                   "state twice": "oidc_callback_malformed", "no code": "oidc_callback_malformed",
                   "code twice": "oidc_callback_malformed",
                   "another issuer named in the answer (mix-up)": "oidc_issuer_mismatch"}


@pytest.mark.parametrize("case", sorted(CALLBACK_TAMPERING))
def test_tampered_callback_is_refused(site, idp, case):
    callback_path = at_provider(idp, begin(site.client))
    response = site.client.get(CALLBACK_TAMPERING[case](callback_path), follow_redirects=False)
    assert_refused(site, response, 401, TAMPERING_CODES[case])
    assert idp.token_requests == []  # refused before the code was redeemed


def test_callback_in_another_browser_is_refused(site, idp):
    """Login CSRF: an attacker's callback URL planted in a victim's browser lacks the flow cookie."""
    callback_path = at_provider(idp, begin(site.client))
    site.client.cookies.delete(FLOW_COOKIE, path="/ui/oidc")
    assert_refused(site, site.client.get(callback_path, follow_redirects=False), 401, "oidc_state_invalid")
    # ... and an attacker who later brings the right cookie finds the state spent.
    assert flow_rows(site) == [] and idp.token_requests == []


def test_flow_expires_after_ten_minutes(site, idp):
    callback_path = at_provider(idp, begin(site.client))
    site.clock.advance(601)
    assert_refused(site, site.client.get(callback_path, follow_redirects=False), 401, "oidc_state_invalid")


def test_code_injected_from_another_flow_fails_pkce_at_the_provider(site, idp):
    """An attacker's own code spliced into the victim's callback: the victim's verifier does not fit it."""
    from fastapi.testclient import TestClient

    attacker = TestClient(site.client.app)
    attacker_code = parse_qs(urlsplit(at_provider(idp, begin(attacker))).query)["code"][0]
    victim_path = at_provider(idp, begin(site.client))
    response = site.client.get(_with_query(victim_path, code=attacker_code), follow_redirects=False)
    assert_refused(site, response, 401, "oidc_code_refused")
    assert idp.token_requests[-1].outcome == "pkce"


def test_code_issued_without_pkce_is_refused(site, idp):
    """A code that was asked for without a challenge (not by us) is not redeemed by the provider."""
    path = at_provider(idp, begin(site.client))
    code = parse_qs(urlsplit(path).query)["code"][0]
    idp.codes[code].code_challenge = None
    assert_refused(site, site.client.get(path, follow_redirects=False), 401, "oidc_code_refused")
    assert idp.token_requests[-1].outcome == "no S256 challenge"


@pytest.mark.parametrize(("error", "shown"), [("access_denied", "access_denied"),
                                              ("<b>made-up</b>", "(error)")])
def test_error_answer_from_the_provider(site, idp, error, shown):
    idp.error = error
    response = sign_in(site, idp)
    assert_refused(site, response, 401, "oidc_idp_error")
    assert shown in response.text
    assert "<script>" not in response.text and "<b>made-up" not in response.text
    assert idp.token_requests == []


# --- the ID token ------------------------------------------------------------------------------

OTHER_KEY = rsa_key("idp-key-1")  # same kid as the provider's key, different key


def _signed(idp, claims, **header):
    return idp.key.sign(claims, **header)


ID_TOKEN_TAMPERING = {
    "wrong nonce": (lambda idp, c: _signed(idp, {**c, "nonce": "n" * 43}), "invalid_token"),
    "no nonce": (lambda idp, c: _signed(idp, {k: v for k, v in c.items() if k != "nonce"}), "invalid_token"),
    "wrong audience": (lambda idp, c: _signed(idp, {**c, "aud": "another-client"}), "invalid_token"),
    "audience list without us": (lambda idp, c: _signed(idp, {**c, "aud": ["a", "b"]}), "invalid_token"),
    "wrong azp": (lambda idp, c: _signed(idp, {**c, "aud": [CLIENT_ID, "x"], "azp": "x"}), "invalid_token"),
    "wrong issuer": (lambda idp, c: _signed(idp, {**c, "iss": c["iss"] + ".evil.example"}), "invalid_token"),
    "expired": (lambda idp, c: _signed(idp, {**c, "iat": int(time.time()) - 900, "exp": int(time.time()) - 600}),
                "token_expired"),
    "issued long ago": (lambda idp, c: _signed(idp, {**c, "iat": int(time.time()) - 3600}), "invalid_token"),
    "alg none": (lambda idp, c: unsigned_token({"alg": "none", "typ": "JWT", "kid": idp.key.kid}, c),
                 "invalid_token"),
    "alg HS256": (lambda idp, c: unsigned_token({"alg": "HS256", "typ": "JWT", "kid": idp.key.kid}, c, b"x" * 32),
                  "invalid_token"),
    "signed by another key": (lambda idp, c: OTHER_KEY.sign(c), "invalid_token"),
    "jku header": (lambda idp, c: _signed(idp, c, jku="http://127.0.0.1:1/keys"), "invalid_token"),
    "no principal claim": (lambda idp, c: _signed(idp, {k: v for k, v in c.items() if k != "preferred_username"}),
                           "invalid_token"),
    "principal claim with markup": (lambda idp, c: _signed(idp, {**c, "preferred_username": "<b>bob</b>"}),
                                    "invalid_token"),
    "not a JWT": (lambda idp, c: "not-a-jwt", "invalid_token"),
}


@pytest.mark.parametrize("case", sorted(ID_TOKEN_TAMPERING))
def test_bad_id_token_is_refused(site, idp, case):
    make, code = ID_TOKEN_TAMPERING[case]
    idp.tamper = lambda claims: make(idp, claims)
    response = sign_in(site, idp)
    assert_refused(site, response, 401, code)
    assert idp.token_requests[-1].outcome == "ok"  # the provider answered; the broker refused the token


# --- the directory decides who may sign in -----------------------------------------------------

@pytest.mark.parametrize(("username", "code"), [
    ("root", "oidc_principal_not_allowed"),  # admin only: not an approver or reviewer
    ("nobody", "oidc_principal_unknown"),
    ("demo", "oidc_principal_unknown"),  # "human:demo"; an agent's name never becomes an agent
    ("agent:demo", "oidc_principal_unknown"),  # "human:agent:demo", not agent:demo
    ("carol", "oidc_principal_unknown"),  # disabled below
])
def test_only_enabled_approvers_and_reviewers_sign_in(site, idp, username, code):
    with site.container.database.transaction() as repo:
        assert repo.disable_principal("human:carol")
    idp.user = {"sub": "u-9", "preferred_username": username}
    assert_refused(site, sign_in(site, idp), 403, code)


# --- where the browser goes afterwards ----------------------------------------------------------

@pytest.mark.parametrize("next_path", ["https://evil.example/", "//evil.example/ui/requests", "/\\evil.example",
                                       "javascript:alert(1)", "/ui/requests\r\nLocation: https://evil.example",
                                       "http:/evil.example", None])
def test_no_open_redirect_after_sign_in(site, idp, next_path):
    response = sign_in(site, idp, next_path)
    assert response.status_code == 200
    assert continue_target(response) == "/ui/requests"


def test_callback_ignores_a_return_to_of_its_own(site, idp):
    response = site.client.get(at_provider(idp, begin(site.client, "/ui/requests")) + "&next=https://evil.example",
                               follow_redirects=False)
    assert continue_target(response) == "/ui/requests"
    assert "evil.example" not in response.text and "evil.example" not in response.headers.get("location", "")


def test_return_to_inside_the_pages_is_kept(site, idp):
    assert continue_target(sign_in(site, idp, "/ui/requests/abc")) == "/ui/requests/abc"


# --- configuration and an unreachable provider ----------------------------------------------------

def test_token_endpoint_unreachable_is_a_clear_503(idp, moto_server, tmp_path):
    from tests.identity.jwt_factory import closed_port_url

    harness = make_site(idp, db_url=f"sqlite:///{tmp_path / 'ui.db'}", moto_server=moto_server, tmp_path=tmp_path,
                        ui_oidc_token_endpoint=closed_port_url("/token"))
    try:
        assert_refused(harness, sign_in(harness, idp), 503, "identity_provider_unavailable")
    finally:
        harness.container.database.engine.dispose()


def test_not_configured_means_no_oidc(moto_server, tmp_path):
    harness = build_harness(db_url=f"sqlite:///{tmp_path / 'ui.db'}", scopes=TEST_SCOPES,
                            aws_endpoint=moto_server.endpoint_url, state_dir=tmp_path / "state", dev_mode=True)
    try:
        assert "Sign in with" not in harness.client.get("/ui/sign-in").text
        assert harness.client.get("/ui/login/oidc", follow_redirects=False).status_code == 404
        assert harness.client.get(CALLBACK_PATH + "?state=x&code=y").status_code == 401
    finally:
        harness.container.database.engine.dispose()


def test_misconfigured_oidc_fails_closed(idp, moto_server, tmp_path, caplog):
    harness = make_site(idp, db_url=f"sqlite:///{tmp_path / 'ui.db'}", moto_server=moto_server, tmp_path=tmp_path,
                        ui_oidc_token_endpoint="http://idp.example/token")  # plain http off loopback
    caplog.set_level(logging.WARNING, logger="broker.outage")
    try:
        response = harness.client.get("/ui/login/oidc", follow_redirects=False)
        assert response.status_code == 503 and "location" not in response.headers  # no redirect to the IdP
        assert "token_endpoint must be an https URL" in response.text and flow_rows(harness) == []
        # The operational log says why the pages answer 503 (issue 22, 6).
        assert "at GET /ui/login/oidc: " in caplog.text and "token_endpoint must be an https URL" in caplog.text
    finally:
        harness.container.database.engine.dispose()


@pytest.mark.parametrize(("setting", "value"), [
    ("ui_oidc_allowed_domains", "example.com."), ("ui_oidc_allowed_domains", "*.example.com"),
    ("ui_oidc_allowed_domains", "ex\u0430mple.com"), ("ui_oidc_required_claims", "hd"),
])
def test_misconfigured_pinning_fails_closed(idp, moto_server, tmp_path, setting, value):
    harness = make_site(idp, db_url=f"sqlite:///{tmp_path / 'ui.db'}", moto_server=moto_server, tmp_path=tmp_path,
                        **{setting: value})
    try:
        response = harness.client.get("/ui/login/oidc", follow_redirects=False)
        assert response.status_code == 503 and "location" not in response.headers
        assert setting.removeprefix("ui_oidc_") in response.text and flow_rows(harness) == []
    finally:
        harness.container.database.engine.dispose()


GOOD_CONFIG = {"issuer": "https://idp.example", "client_id": "broker", "authorization_endpoint": "https://idp.example/a",
               "token_endpoint": "https://idp.example/t", "jwks_url": "https://idp.example/k",
               "redirect_uri": "https://broker.example/ui/oidc/callback"}


@pytest.mark.parametrize(("name", "value"), [
    ("issuer", ""), ("issuer", "http://idp.example"), ("client_id", ""), ("client_id", "a b"),
    ("authorization_endpoint", "http://idp.example/a"), ("authorization_endpoint", "https://u:p@idp.example/a"),
    ("token_endpoint", "ftp://idp.example/t"), ("jwks_url", "idp.example/k"),
    ("redirect_uri", "https://broker.example/elsewhere"), ("principal_claim", ""),
    ("scopes", ("profile", "email")), ("scopes", ()), ("client_secret", "  "),
    ("allowed_domains", frozenset({"Example.com"})), ("allowed_domains", ("example.com",)),
    ("allowed_domains", frozenset({"example.com."})), ("required_claims", (("hd", ""),)),
    ("required_claims", (("hd", "a"), ("hd", "b"))), ("required_claims", ("hd=example.com",)),
])
def test_invalid_configuration_is_refused(name, value):
    with pytest.raises(ValueError, match=name):
        UiOidcConfig(**{**GOOD_CONFIG, name: value})
    UiOidcConfig(**GOOD_CONFIG)  # the base configuration itself is fine


def test_pkce_challenge_matches_rfc_7636_appendix_b():
    assert pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_concurrent_callbacks_with_one_state_consume_it_once(idp, db_url, moto_server, tmp_path):
    """One-time use is decided by the database's DELETE, so it holds across threads (and replicas)."""
    import threading
    from datetime import timedelta

    from broker.storage.ui_oidc_flows import UiOidcFlowStore

    site = make_site(idp, db_url=db_url, moto_server=moto_server, tmp_path=tmp_path)
    now = site.clock.now()
    with site.container.database.transaction() as repo:
        UiOidcFlowStore(repo).begin(state="s" * 43, browser_token="b" * 43, nonce="n" * 43, code_verifier="v" * 43,
                                    next_path="/ui/requests", now=now)
    barrier = threading.Barrier(6)
    taken: list[object] = []

    def take() -> None:
        barrier.wait()
        with site.container.database.transaction() as repo:
            taken.append(UiOidcFlowStore(repo).take("s" * 43, now=now + timedelta(seconds=1)))

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(taken) == 6
    winners = [flow for flow in taken if flow is not None]
    assert len(winners) == 1 and winners[0].bound_to("b" * 43) and not winners[0].bound_to("c" * 43)
    assert flow_rows(site) == []
    site.container.database.engine.dispose()


# --- a real browser ----------------------------------------------------------------------------



@pytest.mark.browser
@pytest.mark.timeout(180)
def test_browser_signs_in_with_oidc_and_approves(chromium, moto_server, tmp_path):  # noqa: F811
    """Chromium: the sign-in page -> the provider (another site: localhost vs 127.0.0.1) -> back -> approve."""
    from tests.live_server import LiveServer

    with running_idp(browser_host="localhost") as idp:
        idp.interactive = True
        harness = make_site(idp, db_url=f"sqlite:///{tmp_path / 'ui.db'}", moto_server=moto_server,
                            tmp_path=tmp_path)
        server = LiveServer(harness.client.app)
        # The redirect_uri is the broker's public URL: the live server's, known once its port is bound.
        harness.container.settings.public_url = server.url
        idp.redirect_uri = server.url + CALLBACK_PATH
        server.start()
        context = chromium.new_context(base_url=server.url)
        try:
            rid = harness.post("/v1/requests", "agent:demo", json=PROD).json()["id"]
            page = context.new_page()
            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(f"/ui/requests/{rid}")
            assert "/ui/sign-in" in page.url
            assert page.locator("#key").count() == 0  # not a dev broker: single sign-on only
            with page.expect_navigation(url=re.compile(r"^http://localhost:\d+/authorize\?")):
                page.click("#oidc-sign-in")
            with page.expect_navigation(url=re.compile(rf".*/ui/requests/{rid}$")):
                page.click("#idp-continue")
            assert page.inner_text("header .who") == "Signed in as human:bob"
            assert [t.outcome for t in idp.token_requests] == ["ok"]
            assert not violations, violations  # the "Signed in" page moves on without any script
            # The flow cookie is gone; the session cookie is HttpOnly and Strict.
            cookies = {c["name"]: c for c in context.cookies()}
            assert FLOW_COOKIE not in cookies
            assert cookies["broker_ui_session"]["httpOnly"] and cookies["broker_ui_session"]["sameSite"] == "Strict"

            page.fill("#decision-reason", "checked via single sign-on")
            with page.expect_navigation():
                page.click("#approve")
            assert "Your approval was recorded." in page.inner_text("main")
            assert page.inner_text("#counted") == "1"
            view = harness.get(f"/v1/requests/{rid}", "human:carol").json()
            assert [(a["approver"], a["reason"]) for a in view["approvals"]] == [
                ("human:bob", "checked via single sign-on")]
        finally:
            context.close()
            server.stop()
            harness.container.database.engine.dispose()
