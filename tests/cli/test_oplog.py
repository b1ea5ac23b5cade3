"""The broker's operational log (broker/runtime/oplog.py): text or JSON lines on stderr, the broker's loggers only."""

from __future__ import annotations

import argparse
import io
import json
import logging

import pytest
from pydantic import ValidationError

import broker.api.deps
from broker.runtime import oplog
from broker.cli import server
from broker.settings import BrokerSettings


@pytest.fixture
def broker_logger():
    return logging.getLogger("broker")  # restored after each test by the root conftest


def test_text_lines_carry_a_utc_time_the_level_and_the_logger(broker_logger):
    stream = io.StringIO()
    oplog.configure("INFO", "text", stream=stream)
    logging.getLogger("broker.service").warning("credentials withheld for request %s", "r-1")
    logging.getLogger("broker.service").debug("not at INFO")
    logging.getLogger("sqlalchemy.engine").warning("not the broker's")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" WARNING broker.service: credentials withheld for request r-1")
    assert line[:24].endswith("Z") and line[10] == " "  # e.g. 2026-11-25 20:01:02.345Z


def test_json_lines_are_one_object_each_with_the_exception_type(broker_logger):
    stream = io.StringIO()
    oplog.configure("WARNING", "json", stream=stream)
    try:
        raise ConnectionError("database gone")
    except ConnectionError:
        logging.getLogger("broker.storage").error("unit of work failed", exc_info=True)
    logging.getLogger("broker.storage").info("below the level")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"], record["message"]) == ("ERROR", "broker.storage", "unit of work failed")
    assert record["exception"] == "ConnectionError" and record["time"].endswith("+00:00")


def test_configuring_twice_keeps_one_handler(broker_logger):
    oplog.configure("INFO", "text", stream=io.StringIO())
    oplog.configure("INFO", "json", stream=io.StringIO())
    assert [h.get_name() for h in broker_logger.handlers].count("broker-oplog") == 1


@pytest.mark.parametrize(("name", "value"), [("log_level", "LOUD"), ("log_format", "xml")])
def test_unknown_levels_and_formats_are_configuration_errors(name, value):
    with pytest.raises(ValidationError):
        BrokerSettings(**{name: value})


def test_broker_serve_configures_it_from_the_settings(monkeypatch, broker_logger):
    monkeypatch.delenv("BROKER_CONFIG_FILE", raising=False)
    monkeypatch.setenv("BROKER_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("BROKER_LOG_FORMAT", "json")
    monkeypatch.setattr(broker.api.deps, "build_container", lambda settings: object())
    monkeypatch.setattr(server, "_run", lambda container, host, port: 0)
    assert server.run_serve(argparse.Namespace(host=None, port=None)) == 0
    (handler,) = [h for h in broker_logger.handlers if h.get_name() == "broker-oplog"]
    assert isinstance(handler.formatter, oplog.JsonLines) and broker_logger.level == logging.WARNING
