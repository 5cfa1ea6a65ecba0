"""Logging set-up for the command-line tools."""

from __future__ import annotations

import io
import logging
import os
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

# The process id tells the supervisor's lines from each worker's: all of them
# write to the same file or stderr.
_FORMAT = "%(asctime)s %(levelname)-8s [%(process)d] %(name)s: %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


# A new log file is readable by the daemon's group, never writable by others,
# whatever the umask (a world-writable log lets anyone forge its lines).
_LOG_FILE_MODE = 0o640


class _LogFileHandler(logging.FileHandler):
    """A FileHandler that creates its file with _LOG_FILE_MODE (also on reopen)."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _LOG_FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def configure_logging(level: str, logfile: str | None) -> None:
    """Log to ``logfile`` (appending) or to stderr, at ``level``.

    Records are written directly (no queue): a queue that drops records when
    full, as the old daemon's did, loses exactly the lines an operator needs
    during an incident.
    """
    handler: logging.Handler
    if logfile:
        handler = _LogFileHandler(logfile, encoding="utf-8", delay=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[level])


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
