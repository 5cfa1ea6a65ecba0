"""Logging set-up for the command-line tools: text lines, or JSON lines for log shippers.

``log_format: json`` writes one JSON object per line with the fields
:data:`JSON_FIELDS`, always all of them (``null`` when a line has nothing to
say there), so that a shipper can map them once. ``event``, ``domain``,
``result_type`` and ``reason`` come from the ``extra`` a call site passes
(``_log.warning(..., extra={"event": "fetch-failed", "domain": d, ...})``);
a line without an event is ``"log"``. ``worker`` is the worker's number in
a worker process and ``null`` in the supervisor (:func:`set_worker`).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import sys

__all__ = [
    "JSON_FIELDS",
    "LEVELS",
    "JsonFormatter",
    "configure_logging",
    "reopen_log_file",
    "set_log_format",
    "set_worker",
]

# The level names postfix-mta-sts-resolver accepts for -v, plus "crit".
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "crit": logging.CRITICAL,
}

# The process id tells the supervisor's lines from each worker's: all of them
# write to the same file or stderr.
_FORMAT = "%(asctime)s %(levelname)-8s [%(process)d] %(name)s: %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


#: The keys of every JSON log line, in order.
JSON_FIELDS = (
    "timestamp",
    "level",
    "pid",
    "worker",
    "logger",
    "event",
    "domain",
    "result_type",
    "reason",
    "message",
)
# This process's worker number (None in the supervisor and the tools).
_worker: int | None = None


def set_worker(number: int | None) -> None:
    """Tag this process's JSON log lines with its worker number."""
    global _worker
    _worker = number


class JsonFormatter(logging.Formatter):
    """One JSON object per record, keys :data:`JSON_FIELDS` (plus ``exception``)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        extra = record.__dict__
        data: dict[str, object] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "pid": record.process,
            "worker": _worker,
            "logger": record.name,
            "event": extra.get("event") or "log",
            "domain": extra.get("domain"),
            "result_type": extra.get("result_type"),
            "reason": extra.get("reason"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False, default=str)


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(_FORMAT, _DATEFMT)


# A new log file is readable by the daemon's group, never writable by others,
# whatever the umask (a world-writable log lets anyone forge its lines).
_LOG_FILE_MODE = 0o640


class _LogFileHandler(logging.FileHandler):
    """A FileHandler that creates its file with _LOG_FILE_MODE (also on reopen)."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _LOG_FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def configure_logging(level: str, logfile: str | None, log_format: str = "text") -> None:
    """Log to ``logfile`` (appending) or to stderr, at ``level``, as ``log_format``.

    Records are written directly (no queue): a queue that drops records when
    full, as the old daemon's did, loses exactly the lines an operator needs
    during an incident.
    """
    handler: logging.Handler
    if logfile:
        handler = _LogFileHandler(logfile, encoding="utf-8", delay=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[level])


def set_log_format(log_format: str) -> None:
    """Switch every handler to ``log_format`` (a reload that changed ``log_format``)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_formatter(log_format))


def reopen_log_file() -> list[str]:
    """Reopen file handlers (after logrotate moved the file; sent by SIGHUP).

    The new file is opened before the old one is closed, so a file that
    cannot be opened (after a privilege drop the directory may not be
    writable) leaves logging going to the old one. Returns one message per
    file that could not be reopened.
    """
    problems: list[str] = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                try:
                    stream = handler._open()
                except OSError as exc:
                    problems.append(f"cannot reopen log file {handler.baseFilename}: {exc}")
                    continue
                old = handler.stream
                handler.stream = stream
                if old is not None:
                    old.close()
            finally:
                handler.release()
    return problems
