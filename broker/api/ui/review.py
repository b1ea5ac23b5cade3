"""The reviewers' dashboard pages: ``/ui/review`` and its charts (``/ui/review/charts/NAME.svg``).

Reviewers and admins only (the use case checks).  Each chart is its own SVG answer, drawn from
only the part of the figures it shows; the page shows the same figures as tables.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from broker.api.deps import ContainerDep
from broker.api.ui.charts import CHART_CSP, CHARTS
from broker.api.ui.pages import current_session, error_page, render, to_sign_in
from broker.api.ui.security import secured
from broker.domain.events import EventType
from broker.errors import BrokerError, NotFound
from broker.usecases.review import RANGES

router = APIRouter(prefix="/review", include_in_schema=False)  # under the pages' /ui


@router.get("")
def review(request: Request, container: ContainerDep, range: str | None = None) -> Response:  # noqa: A002
    resolved = current_session(request, container)
    if resolved is None:
        return to_sign_in("/ui/review")
    session, principal = resolved
    try:
        figures = container.review.figures(principal=principal, range_name=range)
    except BrokerError as exc:
        return error_page(container, exc, session, principal)
    links = {"over-time": figures.events_link(type=EventType.ISSUED),
             "refusals": figures.events_link(type=EventType.REFUSED),
             "time-to-approve": figures.events_link(type=EventType.APPROVED),
             "live-grants": figures.events_link(type=EventType.ISSUED),
             "risky-grants": figures.events_link(type=EventType.ISSUED, risk="risky"),
             "revocations": figures.events_link(type=EventType.REVOKED),
             "lockdowns": figures.events_link(type=EventType.LOCKDOWN)}
    return render("review.html", now=container.clock.now(), f=figures, links=links, ranges=list(RANGES),
                  fresh_for=container.review.fresh_for,
                  principal=principal, csrf_token=session.csrf_token)


@router.get("/charts/{name}.svg")
def chart(name: str, request: Request, container: ContainerDep, range: str | None = None) -> Response:  # noqa: A002
    resolved = current_session(request, container)
    if resolved is None:
        return secured(Response(status_code=401))
    session, principal = resolved
    try:
        if name not in CHARTS:
            raise NotFound("no such chart", code="chart_not_found")
        part, draw = CHARTS[name]
        figures = container.review.figures(principal=principal, range_name=range, parts=[part])
    except BrokerError as exc:
        return error_page(container, exc, session, principal)
    response = secured(Response(draw(figures), media_type="image/svg+xml"))
    # NOTE: the SVG's own style sheet (pygal's) needs inline style; it runs no script and loads nothing.
    response.headers["Content-Security-Policy"] = CHART_CSP
    return response
