"""Scope templates as the API shows them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from broker.api.deps import ContainerDep, CurrentPrincipal
from broker.api.schemas import ERROR_RESPONSES
from broker.domain.templates import ScopeTemplate

router = APIRouter(prefix="/v1/templates", tags=["templates"], responses=ERROR_RESPONSES)


def template_view(template: ScopeTemplate, *, allowed: bool | None = None) -> dict[str, Any]:
    view = template.model_dump(mode="json")
    view["version_digest"] = template.version_digest
    view["needs_approval"] = template.needs_approval
    if allowed is not None:
        view["you_may_request"] = allowed
    return view


@router.get("")
def list_templates(container: ContainerDep, principal: CurrentPrincipal) -> dict[str, Any]:
    return {"templates": [
        template_view(t, allowed=any(principal.matches(s) for s in t.requesters)) for t in container.catalog.all()
    ]}


@router.get("/{name}")
def get_template(name: str, container: ContainerDep, principal: CurrentPrincipal) -> dict[str, Any]:
    template = container.catalog.get(name)
    view = template_view(template, allowed=any(principal.matches(s) for s in template.requesters))
    if container.service.blast_radius is not None:
        view["blast_radius"] = container.service.blast_radius(template, None)
        # Each risk class the template grants, most dangerous first, in plain words.
        view["risk"] = view["blast_radius"].get("risk", [])
    return view
