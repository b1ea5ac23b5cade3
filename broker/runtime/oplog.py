"""The broker's operational log: where ``logging.getLogger("broker...")`` lines go in ``broker serve``.

Operators need what the broker says about itself (credentials withheld, a database connection lost,
orphans reconciled, weak sign-in configuration) with a time and a level, in a form a log shipper
reads.  Only the ``broker`` logger tree is configured: libraries keep their own settings.  Nothing
secret is ever logged (access key *ids* and grant ids are not secrets); the issuance log, not this,
is the audit record.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

BROKER_LOGGER = "broker"
_HANDLER_NAME = "broker-oplog"


class JsonLines(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and the exception type."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def text_formatter() -> logging.Formatter:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    formatter.converter = _utc_time_tuple
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def _utc_time_tuple(seconds: float | None):
    import time

    return time.gmtime(seconds)


def configure(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send the ``broker`` logger tree to ``stream`` (stderr) at ``level``; idempotent (one handler)."""
    logger = logging.getLogger(BROKER_LOGGER)
    for existing in list(logger.handlers):
        if existing.get_name() == _HANDLER_NAME:
            logger.removeHandler(existing)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonLines() if fmt == "json" else text_formatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


class OutageLog:
    """Says why the broker answers 503: each class of 503 (its error code) at least once a minute, with its cause.

    The first 503 of a code is logged at once; later ones of that code within ``every_seconds`` are only
    counted, and the next one after the interval is logged with how many were not (``+N since``).  The
    cause is the chained exception's type and the first line of its message (a driver's or botocore's,
    never a statement's parameters, a URL's password or a credential: see :func:`describe_cause`).
    """

    def __init__(self, *, every_seconds: float = 60.0, monotonic: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None) -> None:
        self._every = every_seconds
        self._monotonic = monotonic
        self._log = logger or logging.getLogger("broker.outage")
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def unavailable(self, exc: BaseException, *, code: str, where: str) -> None:
        now = self._monotonic()
        with self._lock:
            last = self._last.get(code)
            if last is not None and now - last < self._every:
                self._unlogged[code] = self._unlogged.get(code, 0) + 1
                return
            self._last[code] = now
            unlogged = self._unlogged.pop(code, 0)
        more = f" (+{unlogged} more since the last line)" if unlogged else ""
        self._log.warning("503 %s at %s: %s; cause: %s%s", code, where, _first_line(str(exc)),
                          describe_cause(exc), more)


def describe_cause(exc: BaseException) -> str:
    """The innermost chained exception, as ``Type: first line`` (DB-API errors: the driver's own message,
    without SQLAlchemy's statement and parameters)."""
    cause: BaseException = exc
    seen = {id(cause)}
    while True:
        nxt = cause.__cause__ or cause.__context__
        orig = getattr(nxt, "orig", None) if nxt is not None else None
        if orig is not None:
            nxt = orig  # SQLAlchemy's wrapper: the driver's exception carries the message without SQL
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        cause = nxt
    if cause is exc:
        return "none recorded"
    response = getattr(cause, "response", None)
    if isinstance(response, dict) and "Error" in response:   # botocore ClientError: the code, not AWS's text
        return f"{type(cause).__name__}: {response['Error'].get('Code', '')}"
    return f"{type(cause).__name__}: {_first_line(str(cause))}"


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


__all__ = ["JsonLines", "OutageLog", "configure", "describe_cause"]
