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


__all__ = ["JsonLines", "configure"]
