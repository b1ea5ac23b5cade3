"""No secret at rest: after a full run, no secret access key or session token anywhere.

The run issues dev credentials, takes a production request through pending, approved and
redeemed, and provokes refusals and errors, with every logger at DEBUG.  Then it scans, for
every secret access key and session token the API returned (whole, and a 16-character piece
of each, so a truncated copy is caught too):

* the database: every column of every row of every table (SQLite and PostgreSQL), and for
  SQLite the raw database files on disk;
* the issuance log's export;
* everything logged (caplog, all loggers at DEBUG) and written to stdout/stderr (capfd);
* every response body that is not the one issuing the credentials (errors included).
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy

from tests.security.attack_tally import record

DEV = {"template": "test-s3-read", "parameters": {"prefix": "reports"}, "reason": "secrets scan"}
PROD = {"template": "test-prod-ecs", "parameters": {"service": "billing"}, "reason": "secrets scan"}
PIECE = 16


def _full_run(broker, bodies: list[str]) -> list[dict]:
    """Every way credentials flow, and every way a request fails; returns the issued credentials."""
    issued: list[dict] = []

    def call(method: str, path: str, who: str | None, *, issues: bool = False, **kwargs):
        headers = broker.auth(who) if who else {"Authorization": "Bearer brk_000000000000_" + "x" * 43}
        headers.update(kwargs.pop("headers", {}))
        response = broker.client.request(method, path, headers=headers, **kwargs)
        if issues and response.status_code == 201:
            issued.append(response.json()["credentials"])
        else:
            bodies.append(response.text)
        return response

    for _ in range(2):
        assert call("POST", "/v1/requests", "agent:demo", issues=True, json=DEV).status_code == 201
    assert call("POST", "/v1/requests", "agent:demo", issues=True, json={
        "template": "test-logs", "parameters": {"log_group": "/aws/lambda/checkout"}, "reason": "logs"}).status_code \
        == 201
    pending = call("POST", "/v1/requests", "agent:demo", json=PROD).json()
    call("POST", f"/v1/requests/{pending['id']}/credentials", "agent:demo")                  # still pending: 409
    for approver in ("human:bob", "human:carol"):
        call("POST", f"/v1/requests/{pending['id']}/approvals", approver,
             json={"decision": "approve", "reason": "ok"})
    assert call("POST", f"/v1/requests/{pending['id']}/credentials", "agent:demo", issues=True).status_code == 201
    call("POST", f"/v1/requests/{pending['id']}/credentials", "agent:demo")                  # replay: 409
    denied = call("POST", "/v1/requests", "agent:demo", json=PROD).json()
    call("POST", f"/v1/requests/{denied['id']}/approvals", "human:bob", json={"decision": "deny", "reason": "no"})
    # refusals and errors
    call("POST", "/v1/requests", "agent:demo", json={**DEV, "parameters": {"prefix": "*"}})
    call("POST", "/v1/requests", "agent:other", json={**DEV, "template": "test-logs"})
    call("POST", "/v1/requests", "agent:demo", json={**DEV, "template": "no-such-template"})
    call("POST", "/v1/requests", "agent:demo", json={**DEV, "ttl_seconds": 10})
    call("POST", "/v1/requests", None, json=DEV)                                              # bad key: 401
    call("POST", "/v1/requests", "agent:demo", content=b"{not json", headers={"content-type": "application/json"})
    call("POST", f"/v1/requests/{pending['id']}/approvals", "human:alice", json={"decision": "approve", "reason": "x"})
    # every read a reviewer or the agent has
    for credentials in issued:
        call("GET", f"/v1/events/correlate?access_key_id={credentials['access_key_id']}", "human:rita")
    call("GET", f"/v1/requests/{pending['id']}", "agent:demo")
    call("GET", "/v1/requests", "human:bob")
    call("GET", "/v1/events?limit=1000", "human:rita")
    call("POST", "/v1/events/checkpoints", "human:rita")
    call("GET", "/v1/events/report?since=7d", "human:rita")
    return issued


def _database_text(broker) -> list[str]:
    engine = broker.container.database.engine
    cells = []
    with engine.connect() as connection:
        tables = sqlalchemy.inspect(connection).get_table_names()
        assert {"requests", "grants", "events", "approvals"} <= set(tables)
        for table in tables:
            for row in connection.execute(sqlalchemy.text(f'SELECT * FROM "{table}"')):
                cells.extend(str(value) for value in row)
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database)
        for file in path.parent.glob(path.name + "*"):               # the database, -wal, -journal
            cells.append(file.read_bytes().decode("latin-1"))
    return cells


def _needles(issued: list[dict]) -> dict[str, str]:
    needles = {}
    for n, credentials in enumerate(issued):
        for kind in ("secret_access_key", "session_token"):
            value = credentials[kind]
            needles[f"{kind}[{n}]"] = value
            needles[f"{kind}[{n}] middle piece"] = value[len(value) // 2:len(value) // 2 + PIECE]
    return needles


def test_no_secret_in_database_log_output_or_error_bodies(broker, caplog, capfd):
    caplog.set_level(logging.DEBUG)                  # the root logger: every logger, botocore included
    for name in list(logging.root.manager.loggerDict):
        logging.getLogger(name).setLevel(logging.DEBUG)
    bodies: list[str] = []
    try:
        issued = _full_run(broker, bodies)
        export = broker.get("/v1/events/export", "human:rita")
        assert export.status_code == 200
    finally:
        for name in list(logging.root.manager.loggerDict):
            logging.getLogger(name).setLevel(logging.NOTSET)
    out, err = capfd.readouterr()
    assert len(issued) == 4
    places = {
        "database": "\n".join(_database_text(broker)),
        "log export": export.text,
        "log records": "\n".join([caplog.text, *(repr(r.__dict__) for r in caplog.records)]),
        "stdout/stderr": out + err,
        "other response bodies": "\n".join(bodies),
    }
    # positive control: what we scan really holds the run (access key ids are logged on purpose)
    assert all(c["access_key_id"] in places["database"] and c["access_key_id"] in places["log export"]
               for c in issued)
    assert caplog.records, "nothing was logged: the capture is not working"
    hits = [(needle, place) for needle, value in _needles(issued).items()
            for place, text in places.items() if value in text]
    for _ in _needles(issued):
        record("secrets at rest (per secret piece x 5 places)", refused=True)
    assert hits == [], hits
