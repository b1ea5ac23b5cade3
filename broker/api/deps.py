"""FastAPI dependencies: the container, the caller's principal, role checks, the client's address.

The container itself is built by :mod:`broker.runtime.container` (re-exported here for callers that
import it from the API).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from broker.domain.principals import Principal, Role
from broker.errors import BrokerError, Forbidden
from broker.runtime.container import (  # noqa: F401 - re-exported
    Container,
    build_container,
    load_oidc_verifiers,
    load_signer,
    template_checks,
)
from broker.storage.directory import DirectoryAdapter  # noqa: F401 - re-exported

async def get_container(request: Request) -> Container:
    return request.app.state.container


ContainerDep = Annotated[Container, Depends(get_container)]


def current_principal(request: Request, container: ContainerDep) -> Principal:
    principal = container.authenticator.authenticate(request.headers.get("authorization"))
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(principal: Principal, *roles: Role) -> None:
    if not any(principal.has_role(role) for role in roles) and not principal.has_role(Role.ADMIN):
        raise Forbidden(f"this needs the {' or '.join(r.value for r in roles)} role", code="role_required")


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


__all__ = ["BrokerError", "Container", "ContainerDep", "CurrentPrincipal", "build_container", "client_ip",
           "require_role"]
