"""Ending the processes that the test servers start."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited ``timeout`` seconds later.

    It is reaped either way, so that no zombie outlives the test; one that has
    already exited is only reaped. A process that does not die of SIGKILL
    within ``timeout`` either makes this raise ``subprocess.TimeoutExpired``
    rather than hang the test run.
    """
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
