"""FastAPI app factory.  Errors are translated to ``{"error": {"code", "message"}}`` here, in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.api.deps import Container
from broker.errors import BrokerError
from broker.settings import trusted_proxy_networks

log = logging.getLogger("broker.api")


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class BodySizeLimit:
    """Pure ASGI middleware: refuses bodies over ``limit`` bytes (declared or streamed) with 413."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                declared = value  # the last one, as a dict of the headers would keep
        if declared is not None:
            try:
                if int(declared) > self.limit:
                    return await self._too_big()(scope, receive, send)
            except ValueError:
                return await error_response(400, "bad_request", "invalid Content-Length")(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._too_big()(scope, receive, send)

    def _too_big(self) -> JSONResponse:
        # NOTE: made when needed, not for every request.
        return error_response(413, "request_too_large", f"request bodies are limited to {self.limit} bytes")


class _BodyTooLarge(Exception):
    pass


def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    code = {"ttl_seconds": "invalid_ttl", "template": "invalid_template_name", "reason": "missing_reason"}.get(
        loc[0] if loc else "", "invalid_request")
    if first.get("type") == "extra_forbidden":
        code = "unknown_field"
    message = f"{field}: {first.get('msg', 'invalid')}" if field else str(first.get("msg", "invalid request"))
    return error_response(422, code, message, field)


def server_config(app: FastAPI, **options: Any):
    """The ``uvicorn.Config`` every broker server uses (``broker serve``, ``broker dev``, the tests' servers).

    NOTE: uvicorn believes X-Forwarded-For/-Proto from loopback unless told otherwise, so any local client
    could write the source_ip of its own log entries: the headers are read only from BROKER_TRUSTED_PROXIES
    (default none), and FORWARDED_ALLOW_IPS (uvicorn's own variable) is never consulted.
    """
    import uvicorn

    from broker.api.http_protocol import BoundedHttpToolsProtocol

    trusted = trusted_proxy_networks(app.state.container.settings)
    options.setdefault("log_level", "warning")
    options.setdefault("access_log", False)
    # NOTE: named, not uvicorn's "auto" (which falls back to h11 and asyncio without a word when either is missing);
    # httptools bounded as h11 was (broker.api.http_protocol: llhttp gathers a head of any size).
    options.setdefault("http", BoundedHttpToolsProtocol)
    options.setdefault("loop", "uvloop")
    return uvicorn.Config(app, proxy_headers=bool(trusted), forwarded_allow_ips=trusted, **options)


def create_app(container: Container) -> FastAPI:
    app = FastAPI(title="Agent credential broker", version="1", description=(
        "Short-lived, least-privilege AWS credentials for AI agents, co-signed by humans for production, "
        "with a tamper-evident issuance log."))
    app.state.container = container

    @app.exception_handler(BrokerError)
    async def _broker_error(request: Request, exc: BrokerError) -> JSONResponse:
        if exc.status == 503:
            container.outages.unavailable(exc, code=exc.code, where=f"{request.method} {request.url.path}")
        headers = {"Retry-After": str(exc.details.get("retry_after", 1))} if exc.status in (429, 503) else None
        return error_response(exc.status, exc.code, exc.diagnostics(), exc.field, headers=headers)

    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthenticated", 403: "forbidden"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # NOTE: never a stack trace or a driver message to the caller; the log line carries the type only.
        log.error("unexpected error: %s", exc.__class__.__name__, exc_info=exc)
        return error_response(500, "internal_error", "the broker hit an unexpected error; nothing was issued")

    from broker.api import (routes_events, routes_grants, routes_keys, routes_requests, routes_system,
                            routes_templates, ui)

    for module in (routes_system, routes_templates, routes_requests, routes_events, routes_grants, routes_keys, ui):
        app.include_router(module.router)
    app.add_middleware(BodySizeLimit, limit=container.settings.max_body_bytes)
    from broker.runtime.metrics import instrument

    instrument(app, container)  # outermost: the latency histogram sees every response, 413s included
    return app
