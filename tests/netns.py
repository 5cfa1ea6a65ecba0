"""Threads of this process inside another network namespace (setns(2), CLONE_NEWNET).

A network namespace belongs to a thread, not to the process: a thread that
enters one creates its sockets there, and a socket stays in the namespace it
was created in whatever thread uses it later. So the test servers (DNS, HTTPS,
SMTP) can run on an event loop in such a thread and serve a booted container's
private loopback, and a client thread can ask the daemon inside it, while the
rest of the test process stays on the host's network.

``path`` names the namespace as a file: ``/run/netns/NAME`` (``ip netns``) or
``/proc/PID/ns/net`` (a container's leader).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from tests.test_workers import ClientLoop

__all__ = ["NetnsClientLoop", "NetnsLoop", "call_in_netns", "enter_netns"]

_T = TypeVar("_T")

CLONE_NEWNET = 0x40000000  # <sched.h>; os.setns arrives only in Python 3.12


def enter_netns(path: str) -> None:
    """Move the calling thread (only it) into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def call_in_netns(path: str, function: Callable[[], _T], timeout: float = 30.0) -> _T:
    """Run ``function`` in a new thread inside the namespace; its result or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            enter_netns(path)
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


class NetnsLoop:
    """An asyncio loop in a thread living in the namespace; ``call`` runs coroutines there.

    ``errors`` collects what the loop's exception handler saw (the house rule:
    an exception a server swallowed fails the test).
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                enter_netns(self._path)
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


class NetnsClientLoop(ClientLoop):
    """:class:`tests.test_workers.ClientLoop` asking from inside the namespace."""

    def __init__(self, path: str, address: tuple[str, int] | str, payload: bytes) -> None:
        super().__init__(address, payload)
        self.netns = path

    def run(self) -> None:
        enter_netns(self.netns)
        super().run()
