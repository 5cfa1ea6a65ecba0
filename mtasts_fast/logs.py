"""Logging set-up for the command-line tools."""

from __future__ import annotations

import logging
import sys

__all__ = ["LEVELS", "configure_logging", "reopen_log_file"]

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

_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


def configure_logging(level: str, logfile: str | None) -> None:
    """Log to ``logfile`` (appending) or to stderr, at ``level``.

    Records are written directly (no queue): a queue that drops records when
    full, as the old daemon's did, loses exactly the lines an operator needs
    during an incident.
    """
    handler: logging.Handler
    if logfile:
        handler = logging.FileHandler(logfile, encoding="utf-8", delay=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[level])


def reopen_log_file() -> None:
    """Reopen file handlers (after logrotate moved the file; sent by SIGHUP)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()
