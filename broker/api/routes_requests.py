"""Credential requests: create, read, co-sign, redeem, cancel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from broker.api.deps import ContainerDep, CurrentPrincipal, client_ip
from broker.api.schemas import ERROR_RESPONSES, CreateRequestBody, DecisionBody, RequestOut
from broker.service import RequestOutcome

router = APIRouter(prefix="/v1/requests", tags=["requests"], responses=ERROR_RESPONSES)


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


@router.post("", status_code=201, response_model=RequestOut, responses={202: {"model": RequestOut}})
def create_request(body: CreateRequestBody, request: Request, container: ContainerDep,
                   principal: CurrentPrincipal) -> JSONResponse:
    outcome = container.service.request_credentials(
        principal=principal, template_name=body.template, parameters=body.parameters, ttl_seconds=body.ttl_seconds,
        reason=body.reason, source_ip=client_ip(request))
    status = 201 if outcome.credentials is not None else 202
    return JSONResponse(outcome_body(outcome), status_code=status, headers=NO_STORE)


@router.get("")
def list_requests(container: ContainerDep, principal: CurrentPrincipal, status: str = "pending") -> dict[str, Any]:
    return {"requests": container.service.list_pending(principal=principal)}


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
