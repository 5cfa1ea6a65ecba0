"""Log formats: text (unchanged) and JSON lines (logs.py)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from mtasts_fast import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    yield out
    root.handlers[:], level = saved
    root.setLevel(level)
    logs.set_worker(None)


def test_json_lines_carry_every_field(stream: io.StringIO) -> None:
    logs.set_log_format("json")
    log = logging.getLogger("mtasts_fast.refresh")
    log.warning(
        "policy fetch for %s failed",
        "bücher.example",
        extra={
            "event": "fetch-failed",
            "domain": "xn--bcher-kva.example",
            "result_type": "sts-webpki-invalid",
            "reason": 'certificate "x"\nexpired',
        },
    )
    logs.set_worker(3)
    log.info("plain line")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("crashed")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(first) == list(logs.JSON_FIELDS)
    assert first["level"] == "warning"
    assert first["worker"] is None
    assert first["event"] == "fetch-failed"
    assert first["domain"] == "xn--bcher-kva.example"
    assert first["result_type"] == "sts-webpki-invalid"
    assert first["reason"] == 'certificate "x"\nexpired'
    assert first["message"] == "policy fetch for bücher.example failed"
    assert first["logger"] == "mtasts_fast.refresh"
    assert first["timestamp"].endswith("Z")
    assert second["worker"] == 3
    assert (second["event"], second["domain"], second["reason"]) == ("log", None, None)
    assert third["level"] == "error"
    assert "ValueError: boom" in third["exception"]


def test_text_stays_the_default_format(stream: io.StringIO) -> None:
    logs.configure_logging("info", None)
    handler = logging.getLogger().handlers[0]
    assert not isinstance(handler.formatter, logs.JsonFormatter)
    record = logging.LogRecord("mtasts_fast.x", logging.INFO, "f", 1, "hello %s", ("w",), None)
    record.process = 42
    line = handler.format(record)
    assert line.endswith(" INFO     [42] mtasts_fast.x: hello w")
    logs.set_log_format("json")
    assert isinstance(logging.getLogger().handlers[0].formatter, logs.JsonFormatter)
    logs.set_log_format("text")
    assert not isinstance(logging.getLogger().handlers[0].formatter, logs.JsonFormatter)
