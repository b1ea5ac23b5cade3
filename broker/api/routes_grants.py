"""Revocation and lockdown: revoke a grant, revoke everything, lock an environment, lift (co-signed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from broker.api.deps import ContainerDep, CurrentPrincipal, client_ip
from broker.api.schemas import ERROR_RESPONSES
from broker.usecases.listing import visible_grants
from broker.usecases.revocation import RevocationService

router = APIRouter(prefix="/v1", tags=["revocation"], responses=ERROR_RESPONSES)


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000)


class RevokeAllBody(ReasonBody):
    """Exactly one of ``agent``, ``template``, ``role_arn``."""

    agent: str | None = Field(default=None, min_length=1, max_length=200)
    template: str | None = Field(default=None, min_length=1, max_length=100)
    role_arn: str | None = Field(default=None, min_length=1, max_length=2048)


class LockdownBody(ReasonBody):
    environment: str = Field(min_length=1, max_length=20)


def _revocations(container: ContainerDep) -> RevocationService:
    return container.revocations


@router.get("/grants")
def list_grants(container: ContainerDep, principal: CurrentPrincipal, agent: str | None = None,
                access_key_id: str | None = None, include_expired: bool = False) -> dict[str, Any]:
    """Grants (issued sessions) with their access key id, agent, template and expiry: live ones unless
    ``include_expired``.  Admins and reviewers see all; others their own and their agents'."""
    return {"grants": visible_grants(container.database, container.clock, principal, agent=agent,
                                     access_key_id=access_key_id, include_expired=include_expired)}


@router.post("/grants/{grant_id}/revoke")
def revoke_grant(grant_id: str, body: ReasonBody, request: Request, container: ContainerDep,
                 principal: CurrentPrincipal) -> dict[str, Any]:
    return _revocations(container).revoke_grant(principal=principal, grant_id=grant_id, reason=body.reason,
                                                source_ip=client_ip(request))


@router.post("/revocations")
def revoke_all(body: RevokeAllBody, request: Request, container: ContainerDep,
               principal: CurrentPrincipal) -> dict[str, Any]:
    return _revocations(container).revoke_all(principal=principal, reason=body.reason, agent=body.agent,
                                              template=body.template, role_arn=body.role_arn,
                                              source_ip=client_ip(request))


@router.post("/revocations/sync")
def sync_revocations(container: ContainerDep, principal: CurrentPrincipal) -> dict[str, Any]:
    """Admin: reconcile orphaned intents and prune expired revocations now (also runs at start-up)."""
    from broker.api.deps import require_role
    from broker.domain.principals import Role

    require_role(principal, Role.ADMIN)
    service = _revocations(container)
    orphans = service.reconcile_orphans()
    return {**service.sync(), "orphans": orphans}


@router.post("/lockdown", status_code=201)
def lockdown(body: LockdownBody, request: Request, container: ContainerDep,
             principal: CurrentPrincipal) -> dict[str, Any]:
    return _revocations(container).lockdown(principal=principal, environment=body.environment, reason=body.reason,
                                            source_ip=client_ip(request))


@router.post("/lockdown/{environment}/lift", responses={202: {"description": "lift requested; a second admin "
                                                                              "must confirm"}})
def lift_lockdown(environment: str, body: ReasonBody, request: Request, container: ContainerDep,
                  principal: CurrentPrincipal) -> JSONResponse:
    result = _revocations(container).lift_lockdown(principal=principal, environment=environment,
                                                   reason=body.reason, source_ip=client_ip(request))
    return JSONResponse(result, status_code=200 if result["status"] == "lifted" else 202)


@router.get("/lockdown")
def lockdowns(container: ContainerDep, principal: CurrentPrincipal) -> dict[str, Any]:  # noqa: ARG001
    return {"lockdowns": _revocations(container).lockdowns()}
