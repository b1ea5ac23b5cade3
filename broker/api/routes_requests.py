"""Credential requests: create, read, co-sign, redeem, cancel."""

from __future__ import annotations

import email.message
import functools
import json
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from broker.api.deps import Container, ContainerDep, CurrentPrincipal, client_ip, current_principal
from broker.api.schemas import ERROR_RESPONSES, CreateRequestBody, DecisionBody, RequestOut
from broker.usecases import listing
from broker.usecases.issuance import RequestOutcome
from broker.usecases.requests import PENDING_OFFSET_MAX, PENDING_PAGE, PENDING_PAGE_MAX

router = APIRouter(prefix="/v1/requests", tags=["requests"], responses=ERROR_RESPONSES)
BodyModel = TypeVar("BodyModel", bound=BaseModel)


def outcome_body(outcome: RequestOutcome) -> dict[str, Any]:
    body = dict(outcome.request)
    if outcome.credentials is not None:
        creds = outcome.credentials
        body["credentials"] = {
            "access_key_id": creds.access_key_id,
            "secret_access_key": creds.secret_access_key,
            "session_token": creds.session_token,
            "expiration": outcome.grant["expiration"] if outcome.grant else None,
        }
        body["grant"] = outcome.grant
    return body


# NOTE: responses carrying credentials must never be cached by anything in between.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.post("", status_code=201, response_model=RequestOut, responses={202: {"model": RequestOut}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": CreateRequestBody.model_json_schema()}}}})
async def create_request(request: Request, container: ContainerDep) -> JSONResponse:
    # NOTE: the hot path.  Authentication, the body and the use case run in one worker-thread hop (a
    # sync dependency plus a sync endpoint would be two, each a thread hand-off there and back).  The
    # caller is authenticated before anything of the body is judged, malformed JSON included.
    try:
        raw = await request.body()
    except ClientDisconnect:
        # The caller went away mid-body: nothing was judged, nothing is answered (as FastAPI does).
        return Response(status_code=400)
    return await run_in_threadpool(_create_request, request, container, raw)


def _create_request(request: Request, container: Container, raw: bytes) -> JSONResponse:
    principal = current_principal(request, container)
    body = parse_json_body(CreateRequestBody, raw, request.headers.get("content-type"))
    outcome = container.service.request_credentials(
        principal=principal, template_name=body.template, parameters=body.parameters, ttl_seconds=body.ttl_seconds,
        reason=body.reason, source_ip=client_ip(request))
    status = 201 if outcome.credentials is not None else 202
    return JSONResponse(outcome_body(outcome), status_code=status, headers=NO_STORE)


@functools.lru_cache(maxsize=64)
def _is_json(content_type: str) -> bool:
    """An ``application/json`` or ``application/*+json`` content type (as the email module parses it; callers
    send the same one or two, so each is parsed once)."""
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse_json_body(model: type[BodyModel], raw: bytes, content_type: str | None) -> BodyModel:
    """The body as FastAPI reads a model parameter: JSON only for an ``application/json`` or
    ``application/*+json`` content type; otherwise, or empty, it fails the model's validation.
    Errors are FastAPI's ``RequestValidationError`` (locations under ``body``), so the API's
    validation handler answers them exactly as for any other route."""
    value: Any = None
    if raw:
        value = raw
        if content_type and _is_json(content_type):
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, too deep, huge integer
                raise RequestValidationError([{"type": "json_invalid", "loc": ("body", getattr(exc, "pos", 0)),
                                               "msg": "JSON decode error", "input": {}}]) from None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in exc.errors(include_url=False)]) from None


@router.get("")
def list_requests(container: ContainerDep, principal: CurrentPrincipal, status: str = "pending",
                  offset: int = Query(0, ge=0, le=PENDING_OFFSET_MAX),
                  limit: int = Query(PENDING_PAGE, ge=1, le=PENDING_PAGE_MAX)) -> dict[str, Any]:
    """Requests waiting for co-signers, newest first, one page at a time: ``requests``, ``total`` (all that
    wait), ``by_agent`` (how many each agent has waiting) and ``next_offset`` (null on the last page)."""
    return container.service.list_pending(principal=principal, offset=offset, limit=limit)


@router.get("/mine")
def my_requests(container: ContainerDep, principal: CurrentPrincipal, status: str | None = None,
                limit: int = 50) -> dict[str, Any]:
    """The caller's own requests (made by it, or by an agent acting for it), newest first."""
    return {"requests": listing.my_requests(container.service, principal, statuses=[status] if status else None,
                                            limit=limit)}


@router.get("/{request_id}", response_model=RequestOut, response_model_exclude_unset=True)
def get_request(request_id: str, container: ContainerDep, principal: CurrentPrincipal) -> dict[str, Any]:
    return container.service.get_request(principal=principal, request_id=request_id)


@router.post("/{request_id}/approvals", response_model=RequestOut, response_model_exclude_unset=True)
def decide(request_id: str, body: DecisionBody, request: Request, container: ContainerDep,
           principal: CurrentPrincipal) -> dict[str, Any]:
    return container.service.decide(principal=principal, request_id=request_id, decision=body.decision,
                                    reason=body.reason, source_ip=client_ip(request))


@router.post("/{request_id}/credentials", status_code=201, response_model=RequestOut, response_model_exclude_unset=True)
def redeem(request_id: str, container: ContainerDep, principal: CurrentPrincipal) -> JSONResponse:
    outcome = container.service.redeem(principal=principal, request_id=request_id)
    return JSONResponse(outcome_body(outcome), status_code=201, headers=NO_STORE)


@router.post("/{request_id}/cancel", response_model=RequestOut, response_model_exclude_unset=True)
def cancel(request_id: str, container: ContainerDep, principal: CurrentPrincipal) -> dict[str, Any]:
    return container.service.cancel(principal=principal, request_id=request_id)
