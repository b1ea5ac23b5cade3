"""Health, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from broker.api.deps import ContainerDep
from broker.errors import BrokerError

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(container: ContainerDep) -> JSONResponse:
    """Ready to issue: the database answers (and takes writes, if the last unit of work failed) and templates are
    loaded."""
    try:
        container.database.ping()
        if container.clock_skew is not None:
            container.clock_skew.measure_and_check()   # 503 clock_skewed beyond BROKER_MAX_CLOCK_SKEW_SECONDS
        if container.database.write_failing:
            # NOTE: reads may work while writes fail (SQLite on a full disk): not ready until a write works.
            container.database.probe_write(now=container.clock.now())
    except BrokerError as exc:
        container.outages.unavailable(exc, code=exc.code, where="GET /readyz")
        return JSONResponse({"status": "unavailable", "error": {"code": exc.code, "message": exc.message}},
                            status_code=503)
    return JSONResponse({"status": "ready", "templates": len(container.catalog)})


@router.get("/metrics", response_class=Response)
def metrics(container: ContainerDep) -> Response:
    """Prometheus exposition of this process's metrics (no secrets, no identities beyond template names).

    Unauthenticated like /healthz, for the scraper; keep it on the internal network.
    """

    body, content_type = container.metrics.exposition()
    return Response(content=body, media_type=content_type)
