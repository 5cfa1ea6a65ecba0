"""Test-side helpers: a socketmap client and a running in-process daemon."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mtasts_fast.cache.base import Cache, CacheEntry, CacheUnavailable, FetchFailure
from mtasts_fast.cache.internal import InternalCache
from mtasts_fast.cache.lmdb import LmdbCache
from mtasts_fast.config import Config
from mtasts_fast.dane.probe import DnssecProbe
from mtasts_fast.dane.resolver import DaneResolver
from mtasts_fast.dane.state import DaneState
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.overrides import overrides_for
from mtasts_fast.policy import Policy
from mtasts_fast.responder import Responder
from mtasts_fast.server import SocketmapServer


def frame(payload: bytes | str) -> bytes:
    """A netstring, built independently of the code under test."""
    if isinstance(payload, str):
        payload = payload.encode()
    return str(len(payload)).encode() + b":" + payload + b","


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def read_netstring(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Read one netstring reply and return its payload."""
    head = await asyncio.wait_for(reader.readuntil(b":"), timeout)
    length = int(head[:-1])
    body = await asyncio.wait_for(reader.readexactly(length + 1), timeout)
    assert body[-1:] == b",", body
    return body[:-1]


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def ask(self, payload: bytes | str, timeout: float = 10.0) -> bytes:
        self.writer.write(frame(payload))
        await self.writer.drain()
        return await read_netstring(self.reader, timeout)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, timeout: float = 10.0) -> bytes:
        return await read_netstring(self.reader, timeout)

    async def at_eof(self, timeout: float = 5.0) -> bool:
        """True if the server closed the connection (nothing more arrives)."""
        data = await asyncio.wait_for(self.reader.read(), timeout)
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@dataclass
class Running:
    config: Config
    cache: Cache
    fetcher: PolicyFetcher
    responder: Responder
    server: SocketmapServer
    clients: list[Client] = field(default_factory=list)
    probe: DnssecProbe | None = None
    #: The temporary directory of the cache start_daemon made (removed at stop).
    cache_dir: str | None = None

    async def connect(self) -> Client:
        """A new client connection; ``stop()`` closes any the test left open."""
        if self.config.path:
            reader, writer = await asyncio.open_unix_connection(self.config.path)
        else:
            reader, writer = await asyncio.open_connection(self.config.host, self.config.port)
        client = Client(reader, writer)
        self.clients.append(client)
        return client

    async def ask(self, payload: bytes | str) -> bytes:
        client = await self.connect()
        try:
            return await client.ask(payload)
        finally:
            await client.close()

    async def seed(self, domain: str, policy: Policy, *, age: float = 0.0, pid: str = "1") -> None:
        now = time.time() - age
        await self.cache.put(CacheEntry(domain, pid, policy, now, now))

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.server.stop(1.0)
        await self.responder.close()
        await self.fetcher.close()
        if self.cache_dir is not None:
            # The cache start_daemon made is this daemon's alone.
            await self.cache.close()
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        else:
            await self.cache.close()


class DownCache(InternalCache):
    """A shared backend that is down, as a stopped Redis would be: every read
    and write of entries, failure records and DANE states fails."""

    def get_nowait(self, domain: str) -> CacheEntry | None:
        raise CacheUnavailable("connection refused")

    async def get(self, domain: str) -> CacheEntry | None:
        raise CacheUnavailable("connection refused")

    async def put(self, entry: CacheEntry) -> None:
        raise CacheUnavailable("connection refused")

    async def get_failure(self, domain: str) -> FetchFailure | None:
        raise CacheUnavailable("connection refused")

    async def put_failure(self, failure: FetchFailure) -> None:
        raise CacheUnavailable("connection refused")

    def get_dane_nowait(self, domain: str) -> DaneState | None:
        raise CacheUnavailable("connection refused")

    async def get_dane(self, domain: str) -> DaneState | None:
        raise CacheUnavailable("connection refused")

    async def put_dane(self, state: DaneState) -> None:
        raise CacheUnavailable("connection refused")


async def start_daemon(
    world: Any,
    tmp_path: Any = None,
    *,
    unix: bool = False,
    clock: Callable[[], float] = time.time,
    cache: Any = None,
    dane: bool = False,
    **settings: Any,
) -> Running:
    """Start cache, fetcher, responder and server in this loop, like the daemon does.

    The cache is what the daemon's ``internal`` cache is: an LMDB
    environment without flushes in a directory of its own (so the fast path
    of fastpath.py answers cached lookups as in a worker). ``clock``
    replaces the responder's wall clock (tests of backoff periods);
    ``cache`` replaces that cache (a shared one, an in-process
    ``InternalCache``, one that fails on purpose). ``dane``:
    evaluate DANE like a worker does, with a resolver for ``nameservers`` and
    a DNSSEC probe of ``dnssec_probe_name`` that has run once; without it
    every zone answers MTA-STS only.
    """
    data: dict[str, Any] = {"nameservers": [world.nameserver], "ca_file": world.ca_file}
    if unix:
        data["path"] = str(tmp_path / "mta-sts.sock")
    else:
        data["host"] = "127.0.0.1"
        data["port"] = free_port()
    data.update(settings)
    config = Config.from_mapping(data, "<test>")
    cache_dir = None
    if cache is None:
        cache_dir = tempfile.mkdtemp(prefix="mtasts-test-cache-")
        size = int(config.cache.options.get("cache_size", 10_000))
        cache = LmdbCache({"path": cache_dir + "/", "max_entries": size, "durable": False})
        await cache.setup()
    fetcher = PolicyFetcher(nameservers=config.nameservers, ca_file=config.ca_file)
    await fetcher.start()
    resolver = probe = None
    if dane:
        resolver = DaneResolver(config.nameservers)
        probe = DnssecProbe(resolver, config.dnssec_probe_name, timeout=config.default_zone.timeout)
    responder = Responder(
        config,
        cache,
        fetcher,
        clock=clock,
        resolver=resolver,
        probe=probe,
        overrides=overrides_for(config),
    )
    if probe is not None:
        await probe.check()
    server = SocketmapServer(config, responder)
    try:
        await server.start()
    except BaseException:
        await fetcher.close()
        if cache_dir is not None:
            await cache.close()
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise
    return Running(config, cache, fetcher, responder, server, probe=probe, cache_dir=cache_dir)


def enforce(*mx: str, max_age: int = 86400) -> Policy:
    lines = ("version: STSv1", "mode: enforce", *(f"mx: {m}" for m in mx), f"max_age: {max_age}")
    return Policy("enforce", max_age, tuple(mx), lines)


def pipelined(payloads: Iterable[bytes | str]) -> bytes:
    return b"".join(frame(p) for p in payloads)
