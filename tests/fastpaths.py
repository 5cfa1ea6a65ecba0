"""Test-side helpers for the compiled request path (fastpath.py): an in-process stack.

A :class:`Stack` is what a worker runs, minus the sockets: the daemon's
``internal`` cache (a non-durable LMDB environment), the fetcher against the
test world, the responder with a wall clock the test sets, and the server's
Protocol on a fake transport that keeps what is written. Either twin of the
fast path can be chosen (``fast_class``), or none (``fast_class=None``: the
connections never serve from it, every request goes through the responder,
as before the fast path existed), so a test can run the same requests with
and without it and compare.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mtasts_fast import _compat, fastpath
from mtasts_fast import responder as responder_module
from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.cache.lmdb import LmdbCache
from mtasts_fast.config import Config
from mtasts_fast.dane.resolver import DaneResolver
from mtasts_fast.dane.state import DaneState
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.overrides import overrides_for
from mtasts_fast.policy import Policy
from mtasts_fast.responder import Responder
from mtasts_fast.server import SocketmapProtocol, SocketmapServer
from tests.socketmap import frame

#: The start of every test clock: a fixed, recent wall-clock time.
EPOCH = 1_800_000_000.0


def fast_classes() -> list[Any]:
    """``pytest.param``s of both twins, ids ``c`` and ``py`` (``c`` needs the build)."""
    return [
        pytest.param(
            "c",
            id="c",
            marks=pytest.mark.skipif(_compat.NO_EXTENSIONS, reason="MTASTS_NO_EXTENSIONS=1"),
        ),
        pytest.param("py", id="py"),
    ]


def fast_class(name: str) -> Any:
    """The twin named ``name``; fails when the compiled one is required but missing."""
    if name == "py":
        return fastpath.FastPathPy
    if fastpath.FastPathC is None:
        pytest.fail("mtasts_fast._fastpath is not built")
    return fastpath.FastPathC


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTransport:
    """Keeps every write; reading can be paused; closing is remembered."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def split_replies(data: bytes) -> list[bytes]:
    """The payloads of the netstrings in ``data`` (independently of the code under test)."""
    replies = []
    while data:
        head, _, rest = data.partition(b":")
        length = int(head)
        assert rest[length : length + 1] == b",", data
        replies.append(rest[:length])
        data = rest[length + 1 :]
    return replies


class _NeverServes:
    """Stands for the fast path when a stack runs without one."""

    unserved = b""
    offset = 0
    stamps = None

    def serve(self, data: bytes) -> None:
        return None

    def put(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any) -> None:
        pass

    def stamp(self) -> None:
        return None

    def clear(self) -> None:
        pass

    def set_stamps(self, stamps: Any) -> None:
        pass


class _NoFastPath:
    """``FastPath`` for a responder built without one."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return _NeverServes()


@dataclass
class Connection:
    protocol: SocketmapProtocol
    transport: FakeTransport
    seen: int = 0  # bytes of transport.writes already returned

    def received(self) -> bytes:
        data = b"".join(self.transport.writes)
        new, self.seen = data[self.seen :], len(data)
        return new


@dataclass
class Stack:
    config: Config
    cache: LmdbCache
    fetcher: PolicyFetcher
    responder: Responder
    server: SocketmapServer
    clock: Clock
    owns_cache: bool = True

    def connect(self) -> Connection:
        protocol = SocketmapProtocol(self.server)
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return Connection(protocol, transport)

    async def send(self, conn: Connection, chunks: Iterable[bytes]) -> bytes:
        """Feed ``chunks`` as the transport would, wait until nothing is owed; the bytes written."""
        for chunk in chunks:
            conn.protocol.data_received(chunk)
        await self.settle(conn)
        return conn.received()

    async def ask(self, conn: Connection, *payloads: str) -> list[bytes]:
        """Send ``payloads`` pipelined in one chunk; their replies."""
        data = b"".join(frame(p) for p in payloads)
        return split_replies(await self.send(conn, [data]))

    async def settle(self, conn: Connection | None = None) -> None:
        """Wait until every task of this loop but the caller's is done (fetches, revalidations)."""
        me = asyncio.current_task()
        for _ in range(2000):
            busy = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not busy and (conn is None or conn.protocol.idle):
                return
            await asyncio.sleep(0.002)
        raise AssertionError(f"still busy: {busy!r}")

    def cells(self) -> list[int]:
        cells = self.responder.metrics.region.cells
        return [cells.get(i) for i in range(len(cells))]

    def count(self, zone: str, path: str, outcome: str) -> int:
        cell = self.responder.metrics.lookup_cells(zone).cell(path, outcome)
        return self.responder.metrics.region.cells.get(cell)

    async def seed(self, domain: str, policy: Policy, *, checked_age: float = 0.0) -> CacheEntry:
        entry = CacheEntry(domain, "1", policy, self.clock.now, self.clock.now - checked_age)
        await self.cache.put(entry)
        return entry

    async def seed_dane(self, state: DaneState) -> None:
        await self.cache.put_dane(state)

    @contextlib.contextmanager
    def counting_answers(self) -> Iterator[list[bytes]]:
        """The payloads the responder's ``answer`` is called with, while inside."""
        calls: list[bytes] = []
        original = self.responder.answer

        def answer(payload: bytes) -> Any:
            calls.append(payload)
            return original(payload)

        self.responder.answer = answer  # type: ignore[method-assign]
        try:
            yield calls
        finally:
            del self.responder.answer

    async def close(self) -> None:
        await self.responder.close()
        await self.fetcher.close()
        if self.owns_cache:
            await self.cache.close()


async def make_stack(
    directory: Path,
    world: Any,
    *,
    fast: str | None,
    dane: bool = False,
    clock: Clock | None = None,
    cache: LmdbCache | None = None,
    monkeypatch: pytest.MonkeyPatch,
    **settings: Any,
) -> Stack:
    """A stack whose cache lives in ``directory``; ``fast``: "c", "py" or None (no fast path).

    ``cache``: an open cache to share (LMDB opens a file once per process),
    left open by :meth:`Stack.close`.

    ``dane``: a DANE resolver (the test world's DNS, which does not validate,
    so every evaluation finds no DANE) with detection active, as after a
    probe of a validating resolver: the DANE states the test stores decide.
    """
    data: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 1,
        "nameservers": [world.nameserver],
        "ca_file": world.ca_file,
        "cache_grace": 600,
    }
    data.update(settings)
    config = Config.from_mapping(data, "<test>")
    owns_cache = cache is None
    if cache is None:
        cache = LmdbCache({"path": str(directory) + "/", "durable": False})
        await cache.setup()
    fetcher = PolicyFetcher(nameservers=config.nameservers, ca_file=config.ca_file)
    await fetcher.start()
    clock = clock or Clock()
    with monkeypatch.context() as patch:
        patch.setattr(
            responder_module, "FastPath", _NoFastPath if fast is None else fast_class(fast)
        )
        responder = Responder(
            config,
            cache,
            fetcher,
            clock=clock,
            resolver=DaneResolver(config.nameservers) if dane else None,
            overrides=overrides_for(config),
        )
    server = SocketmapServer(config, responder)
    return Stack(config, cache, fetcher, responder, server, clock, owns_cache)
