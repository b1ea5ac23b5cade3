"""The issuance log for reviewers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, StreamingResponse

from broker.api.deps import ContainerDep, CurrentPrincipal
from broker.api.schemas import ERROR_RESPONSES
from broker.domain import log as issuance_log
from broker.errors import InvalidInput

router = APIRouter(prefix="/v1/events", tags=["events"], responses=ERROR_RESPONSES)
# Log sequence numbers are 32-bit integer columns (PostgreSQL INTEGER): a larger after_seq
# is refused as input (422) instead of overflowing the database driver (500/503).
MAX_SEQ = 2**31 - 1


def _time(value: str | None, name: str, now: datetime) -> datetime | None:
    if value is None:
        return None
    try:
        return issuance_log.parse_since(value, now)
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc.message}", code="invalid_time", field=name) from exc


@router.get("")
def list_events(container: ContainerDep, principal: CurrentPrincipal, agent: str | None = None,
                human: str | None = None, template: str | None = None, type: str | None = None,
                request_id: str | None = None, access_key_id: str | None = None, grant_id: str | None = None,
                risk: str | None = Query(None, description="Only entries declaring a risk: risky (any risk, or "
                                         "production: the dashboard's destructive and high-risk grants) or "
                                         "destructive."),
                since: str | None = None, until: str | None = None, after_seq: int = Query(0, ge=0, le=MAX_SEQ),
                limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    now = container.clock.now()
    filters = {"agent": agent, "human": human, "template": template, "type": type, "request_id": request_id,
               "access_key_id": access_key_id, "grant_id": grant_id, "risk": risk}
    return container.audit.query(principal=principal, filters=filters, after_seq=after_seq, limit=limit,
                                           since=_time(since, "since", now), until=_time(until, "until", now))


@router.get("/export", response_class=StreamingResponse, responses={
    200: {"description": "The log as JSON lines, oldest first.", "content": {"application/x-ndjson": {}}}})
def export_events(container: ContainerDep, principal: CurrentPrincipal, since: str | None = None) -> StreamingResponse:
    since_at = _time(since, "since", container.clock.now())
    lines = container.audit.export(principal=principal, since=since_at)
    first = next(lines)  # authorization and the checkpoint happen before the response starts
    return StreamingResponse(iter([first, *lines]), media_type="application/x-ndjson")


@router.get("/public-key", response_class=PlainTextResponse, responses={
    200: {"description": "The checkpoint public key (PEM).", "content": {"application/x-pem-file": {}}}})
def public_key(container: ContainerDep) -> PlainTextResponse:
    """The Ed25519 public key that verifies checkpoints (PEM).  Public on purpose."""
    return PlainTextResponse(issuance_log.public_key_pem(container.signer.public_key).decode(),
                             media_type="application/x-pem-file")


@router.post("/checkpoints")
def take_checkpoint(container: ContainerDep, principal: CurrentPrincipal) -> dict[str, Any]:
    from broker.usecases.audit import require_reviewer

    require_reviewer(principal)
    return container.audit.checkpoint().to_dict()


@router.get("/checkpoints/latest")
def latest_checkpoint(container: ContainerDep, principal: CurrentPrincipal) -> dict[str, Any]:
    return container.audit.latest_checkpoint(principal=principal).to_dict()


@router.get("/correlate")
def correlate(container: ContainerDep, principal: CurrentPrincipal, access_key_id: str | None = None,
              source_identity: str | None = None) -> dict[str, Any]:
    return container.audit.correlate(principal=principal, access_key_id=access_key_id,
                                               source_identity=source_identity)


@router.get("/report")
def report(container: ContainerDep, principal: CurrentPrincipal, since: str = "7d") -> dict[str, Any]:
    since_at = _time(since, "since", container.clock.now())
    return container.audit.report(principal=principal, since=since_at)
