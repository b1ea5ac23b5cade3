"""Input the database cannot hold (a NUL character) is the caller's error (4xx), never a 503.

PostgreSQL refuses NUL in text values; before the fix every such request was reported as
"the broker's database is unavailable" (503, Retry-After): an input-triggered fake outage.
"""

import pytest

HOSTILE = [
    ("get", "/v1/requests/abc%00def", None, "agent:demo"),
    ("post", "/v1/requests", {"template": "x\u0000y", "parameters": {}, "reason": "r"}, "agent:demo"),
    ("get", "/v1/events?agent=a%00b", None, "human:rita"),
    ("get", "/v1/events/correlate?access_key_id=a%00b", None, "human:rita"),
    ("post", "/v1/grants/abc%00/revoke", {"reason": "x"}, "human:root"),
    ("post", "/v1/revocations", {"reason": "x", "agent": "agent:\u0000"}, "human:root"),
    ("post", "/v1/requests/abc%00/approvals", {"decision": "approve", "reason": "x"}, "human:alice"),
    ("post", "/v1/requests/abc%00/cancel", None, "agent:demo"),
    ("post", "/v1/requests/abc%00/credentials", None, "agent:demo"),
]


@pytest.mark.parametrize("method,path,body,who", HOSTILE, ids=[f"{m} {p}" for m, p, _, _ in HOSTILE])
def test_nul_in_input_is_a_client_error(broker, method, path, body, who):
    response = getattr(broker, method)(path, who, **({"json": body} if body is not None else {}))
    # A search may simply find nothing (SQLite stores NUL); it must never look like an outage.
    assert response.status_code < 500, response.text
    assert "storage_unavailable" not in response.text


def test_refused_template_name_with_nul_is_still_logged(broker):
    response = broker.post("/v1/requests", "agent:demo",
                           json={"template": "x\u0000y", "parameters": {}, "reason": "r"})
    assert response.status_code == 404, response.text
    refused = [e for e in broker.events() if e["type"] == "refused"]
    assert len(refused) == 1 and refused[0]["reason_code"] == "template_not_found"
    assert "\x00" not in refused[0]["template"]
