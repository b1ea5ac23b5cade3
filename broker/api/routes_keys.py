"""Who am I; broker API keys and principals (admins): list, create, revoke, rotate, disable, enable."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from broker.api.deps import ContainerDep, CurrentPrincipal, client_ip
from broker.api.schemas import ERROR_RESPONSES
from broker.identity.apikeys import generate_api_key
from broker.usecases.api_keys import ApiKeyAdministration

router = APIRouter(prefix="/v1", tags=["keys"], responses=ERROR_RESPONSES)
# NOTE: an answer carrying a new key must never be cached by anything in between.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000)


class CreateKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    principal: str = Field(min_length=1, max_length=200)
    roles: list[str] = Field(min_length=1, max_length=4)
    groups: list[str] = Field(default_factory=list, max_length=50)
    acts_for: str | None = Field(default=None, max_length=200)
    # Directory attributes (templates' attribute:NAME); absent: the principal keeps the ones it has.
    attributes: dict[str, str] | None = Field(default=None, max_length=32)
    expires_at: datetime | None = None
    reason: str | None = Field(default=None, max_length=1000)


class RotateKeyBody(ReasonBody):
    grace_seconds: int = Field(default=0, ge=0, le=30 * 86400, strict=True)
    expires_at: datetime | None = None


def _keys(container: ContainerDep) -> ApiKeyAdministration:
    return ApiKeyAdministration(database=container.database, clock=container.clock, generate_key=generate_api_key,
                                refusal_budget=container.service.refusal_budget)


@router.get("/whoami")
def whoami(principal: CurrentPrincipal) -> dict[str, Any]:
    """The authenticated caller as the broker sees it (any role)."""
    return {"id": principal.id, "roles": sorted(r.value for r in principal.roles), "acts_for": principal.acts_for,
            "groups": sorted(principal.groups), "auth_method": principal.auth_method,
            "attributes": dict(principal.attributes)}


@router.get("/keys")
def list_keys(container: ContainerDep, principal: CurrentPrincipal, request: Request,
              principal_id: str | None = None) -> dict[str, Any]:
    return {"keys": _keys(container).list_keys(actor=principal, principal_id=principal_id,
                                               source_ip=client_ip(request))}


@router.post("/keys", status_code=201)
def create_key(body: CreateKeyBody, container: ContainerDep, principal: CurrentPrincipal,
               request: Request) -> JSONResponse:
    created = _keys(container).create_key(actor=principal, principal_id=body.principal, roles=body.roles,
                                          groups=body.groups, acts_for=body.acts_for, expires_at=body.expires_at,
                                          reason=body.reason, source_ip=client_ip(request),
                                          attributes=body.attributes)
    return JSONResponse(created.to_dict(), status_code=201, headers=NO_STORE)


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, body: ReasonBody, container: ContainerDep, principal: CurrentPrincipal,
               request: Request) -> dict[str, Any]:
    return _keys(container).revoke_key(actor=principal, key_id=key_id, reason=body.reason,
                                       source_ip=client_ip(request))


@router.post("/keys/{key_id}/rotate", status_code=201)
def rotate_key(key_id: str, body: RotateKeyBody, container: ContainerDep, principal: CurrentPrincipal,
               request: Request) -> JSONResponse:
    created = _keys(container).rotate_key(actor=principal, key_id=key_id, reason=body.reason,
                                          grace_seconds=body.grace_seconds, expires_at=body.expires_at,
                                          source_ip=client_ip(request))
    return JSONResponse(created.to_dict(), status_code=201, headers=NO_STORE)


@router.post("/principals/{principal_id:path}/disable")
def disable_principal(principal_id: str, body: ReasonBody, container: ContainerDep, principal: CurrentPrincipal,
                      request: Request) -> dict[str, Any]:
    return _keys(container).disable_principal(actor=principal, principal_id=principal_id, reason=body.reason,
                                              source_ip=client_ip(request))


@router.post("/principals/{principal_id:path}/enable")
def enable_principal(principal_id: str, body: ReasonBody, container: ContainerDep, principal: CurrentPrincipal,
                     request: Request) -> dict[str, Any]:
    return _keys(container).enable_principal(actor=principal, principal_id=principal_id, reason=body.reason,
                                             source_ip=client_ip(request))
