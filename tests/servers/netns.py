"""A network namespace of the test's own, and what runs in it.

The end-to-end tests (Postfix 3.7 on the host, Postfix 3.10 in the Debian 13
root) need DNS on port 53, SMTP on port 25 and HTTPS on port 443 that belong to
the test alone and cannot leak to the internet. A fresh network namespace has
only a loopback, which the test brings up::

    with Netns("mtasts-e2e", nameserver="127.0.0.53") as netns:
        loop = NetnsLoop(netns.name)      # asyncio servers inside it
        loop.start()
        daemon = NetnsDaemon(netns.name, config, log, probe)
        daemon.start()                    # `python -m mtasts_fast` inside it
        ...

- :class:`Netns` creates the namespace and ``/etc/netns/<name>/resolv.conf``
  (``ip netns exec`` bind-mounts it over ``/etc/resolv.conf`` for every process
  it starts); on exit it kills whatever still runs inside and deletes both.
- :class:`NetnsLoop` runs an asyncio loop in a thread that entered the
  namespace with setns(2) (a network namespace is per thread), so the DNS,
  HTTPS and SMTP test servers of this process listen inside it.
- :class:`NetnsDaemon` runs ``mta-sts-daemon`` there, stoppable and restartable.
- :func:`call_in_netns` runs one function in a thread inside a namespace.

A namespace is named as ``ip netns`` names it, or given as a file: a path
such as ``/proc/PID/ns/net`` (a booted container's leader, tests/systemd_lab.py).

Everything needs root (``ip netns add``); callers check that first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tests.servers.processes import stop_process

__all__ = ["CLONE_NEWNET", "Netns", "NetnsDaemon", "NetnsLoop", "call_in_netns", "enter_netns"]

_T = TypeVar("_T")

CLONE_NEWNET = 0x40000000  # <sched.h>; os.setns arrives only in Python 3.12


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace ``name`` (or the file ``name``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    path = name if name.startswith("/") else f"/run/netns/{name}"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def call_in_netns(name: str, function: Callable[[], _T], timeout: float = 30.0) -> _T:
    """Run ``function`` in a new thread inside the namespace; its result or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            enter_netns(name)
            outcome.append((True, function()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="netns-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"no result from the namespace thread after {timeout} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _run(*args: str) -> None:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")


class Netns:
    """A network namespace with its loopback up and its own resolv.conf.

    ``nameserver``: the address written to ``/etc/netns/<name>/resolv.conf``
    (with 1 s timeouts, so a lost answer costs 1 s and not the default 5 s x 2).
    Use it as a context manager; :meth:`close` is idempotent.
    """

    def __init__(self, name: str, *, nameserver: str) -> None:
        self.name = name
        self.nameserver = nameserver
        self._etc = Path("/etc/netns") / name
        self._created = False

    def __enter__(self) -> Netns:
        _run("ip", "netns", "add", self.name)
        self._created = True
        try:
            _run("ip", "-n", self.name, "link", "set", "lo", "up")
            self._etc.mkdir(parents=True)
            (self._etc / "resolv.conf").write_text(self.resolv_conf())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def resolv_conf(self) -> str:
        """The resolv.conf of the namespace (also for chroots run inside it)."""
        return f"nameserver {self.nameserver}\noptions attempts:2 timeout:1\n"

    def exec_prefix(self) -> list[str]:
        """``ip netns exec <name>``: put before a command to run it inside."""
        return ["ip", "netns", "exec", self.name]

    def pids(self) -> list[int]:
        """Processes inside the namespace (this one never: only a thread entered it)."""
        result = subprocess.run(
            ["ip", "netns", "pids", self.name],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return [int(pid) for pid in result.stdout.split() if pid.isdigit()]

    def close(self) -> None:
        if self._created:
            for pid in self.pids():
                if pid != os.getpid():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            subprocess.run(
                ["ip", "netns", "delete", self.name], capture_output=True, timeout=10, check=False
            )
            self._created = False
        if self._etc.exists():
            shutil.rmtree(self._etc, ignore_errors=True)
            with contextlib.suppress(OSError):
                self._etc.parent.rmdir()  # /etc/netns, only if nothing else lives there


class NetnsLoop:
    """An asyncio loop in a thread living in the namespace; ``call`` runs coroutines there.

    Exceptions the loop catches (a server callback that raised) are collected in
    :attr:`errors`; the tests fail when it is not empty.
    """

    def __init__(self, netns: str) -> None:
        self._netns = netns
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                enter_netns(self._netns)
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            loop = asyncio.new_event_loop()
            loop.set_exception_handler(lambda _l, ctx: self.errors.append(str(ctx)))
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="netns-loop", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        if self._loop is None:
            raise RuntimeError("the namespace's event loop did not start")

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None

    def tcp_open(self, host: str, port: int) -> bool:
        """Whether something accepts TCP connections on ``host:port`` inside the namespace."""

        async def connect() -> bool:
            try:
                _reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                return False
            writer.close()
            return True

        return self.call(connect())


class NetnsDaemon:
    """``mta-sts-daemon`` run inside the namespace, stoppable and restartable.

    ``probe`` says whether the daemon answers yet (e.g. :meth:`NetnsLoop.tcp_open`
    on its port); :meth:`start` waits for it.
    """

    def __init__(self, netns: str, config: Path, log: Path, probe: Callable[[], bool]) -> None:
        self._cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "mtasts_fast"]
        self._cmd += ["-c", str(config)]
        self._log = log
        self._probe = probe
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as out:
            # ip netns exec execs the command, so this is the daemon's own pid.
            self.proc = subprocess.Popen(self._cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self._probe():
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start listening:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, timeout=15)

    def output(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""
