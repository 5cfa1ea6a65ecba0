"""Cache backend outages under load, through the real daemon (DESIGN.md §5, issue 7 item 3).

A backend that is down must not take the daemon down: lookups keep being
answered (from fetches and the in-process fallback), nothing stored before the
outage is damaged, and once the backend is back new policies are stored in it
again without restarting the daemon. The outages are real: Redis and
PostgreSQL killed with SIGKILL and started again on the same port, an LMDB
file on a tmpfs that fills up, an SQLite file locked by another process.

The cache tests (test_cache_*.py) cover each backend's own outage handling;
these check the daemon as a whole while clients keep asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mtasts_fast.cache import CacheEntry, CacheUnavailable, create_cache
from mtasts_fast.config import Config
from mtasts_fast.policy import Policy
from tests.servers.daemon import DaemonProcess, frame, recv_netstring
from tests.servers.postgres import PostgresServer, PostgresUnavailable
from tests.servers.redis import RedisServer, RedisUnavailable
from tests.servers.world import World

pytestmark = pytest.mark.slow

REQUIRE_ALL = os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0")
STORED = 8  # domains looked up (and so stored) before each outage


def _unavailable(why: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"{why} (MTASTS_REQUIRE_ALL is set)")
    pytest.skip(why)


def _expected(domain: str) -> bytes:
    return f"OK secure match=mx.{domain} servername=hostname".encode()


def _policy_domain(world: World, prefix: str) -> str:
    domain = world.fresh_domain(prefix)
    world.add_domain(domain, policy=world.policy_text("enforce", ["mx." + domain]))
    return domain


# --- load -----------------------------------------------------------------------------------


@dataclass
class Load:
    """Client threads asking the daemon in a loop, each on its own connection.

    Every reply is kept with the time it came, and every failure to get one
    (connection refused or closed, timeout) is an error: under an outage the
    daemon must keep answering, not drop or stall its clients.
    """

    port: int
    domains: list[str]
    # Called for every fourth lookup: a new domain, so that the daemon keeps
    # fetching and writing policies, not only reading them.
    make_domain: Callable[[], str]
    threads: int = 4
    replies: list[tuple[float, str, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for number in range(self.threads):
            thread = threading.Thread(target=self._run, args=(number,), daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(30)

    def _run(self, number: int) -> None:
        i = number
        sock: socket.socket | None = None
        while not self._stop.is_set():
            domain = self.make_domain() if i % 4 == 3 else self.domains[i % len(self.domains)]
            i += 1
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=15)
                sock.sendall(frame(b"postfix " + domain.encode()))
                reply = recv_netstring(sock)
            except OSError as exc:
                with self._lock:
                    self.errors.append(f"{domain}: {exc!r}")
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.05)
                continue
            with self._lock:
                self.replies.append((time.monotonic(), domain, reply))
            time.sleep(0.002)
        if sock is not None:
            sock.close()

    def between(self, start: float, end: float) -> list[tuple[float, str, bytes]]:
        with self._lock:
            return [r for r in self.replies if start <= r[0] <= end]


@contextlib.contextmanager
def under_load(
    daemon: DaemonProcess, domains: list[str], make_domain: Callable[[], str]
) -> Iterator[Load]:
    load = Load(daemon.port, domains, make_domain)
    load.start()
    try:
        yield load
    finally:
        load.stop()


def _check_load(load: Load, outage: tuple[float, float]) -> None:
    assert not load.errors, f"{len(load.errors)} lookups not answered: {load.errors[:5]}"
    wrong = [(d, r) for _, d, r in load.replies if r != _expected(d)]
    assert not wrong, f"{len(wrong)} wrong replies, e.g. {wrong[:3]}"
    during = load.between(*outage)
    assert len(during) >= 10, f"only {len(during)} lookups answered during the outage"


# --- reading the backend from the test ------------------------------------------------------


def _read_entries(config: dict[str, Any], domains: list[str]) -> dict[str, CacheEntry | None]:
    """The backend's entries for ``domains``, read by a cache of our own."""

    async def read() -> dict[str, CacheEntry | None]:
        cache = create_cache(Config.from_mapping(config, "<test>").cache, "<test>")
        await cache.setup()
        try:
            return {domain: await cache.get(domain) for domain in domains}
        finally:
            await cache.close()

    return asyncio.run(read())


def _snapshot(entries: dict[str, CacheEntry | None]) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for domain, entry in entries.items():
        assert entry is not None, f"{domain} was not stored"
        out[domain] = (entry.policy_id, entry.policy, entry.fetched_at)
    return out


def _stores_again(daemon: DaemonProcess, world: World, config: dict[str, Any]) -> str:
    """Look up new domains until one lands in the backend; that domain.

    Each try uses a new domain: one answered from the in-process fallback
    while the backend was still catching up is not written again.
    """
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        domain = _policy_domain(world, "back")
        assert daemon.ask(b"postfix " + domain.encode()) == _expected(domain)
        for _ in range(10):
            if _read_entries(config, [domain])[domain] is not None:
                return domain
            time.sleep(0.1)
    raise AssertionError("the daemon did not store policies again after the backend came back")


@dataclass
class Scenario:
    daemon: DaemonProcess
    config: dict[str, Any]  # the daemon's whole config (for reading its backend)
    stored: list[str]
    snapshot: dict[str, tuple[Any, ...]]
    worker: int


def _prepare(tmp_path: Path, world: World, cache: dict[str, Any], name: str) -> Scenario:
    daemon = DaemonProcess(tmp_path / name, world, cache=cache)
    (tmp_path / name).mkdir(exist_ok=True)
    daemon.start()
    stored = [_policy_domain(world, name) for _ in range(STORED)]
    for domain in stored:
        assert daemon.ask(b"postfix " + domain.encode()) == _expected(domain)
    config = {"cache": cache}
    snapshot = _snapshot(_read_entries(config, stored))
    return Scenario(daemon, config, stored, snapshot, daemon.worker_pid())


def _outage(
    scenario: Scenario, world: World, take_down: Callable[[], None], bring_back: Callable[[], None]
) -> None:
    """Load, take the backend down, keep loading, bring it back, keep loading; check."""
    daemon = scenario.daemon
    # The load asks the stored domains, and new ones whose policies must be
    # fetched and (but for the outage) stored.
    with under_load(daemon, scenario.stored, lambda: _policy_domain(world, "load")) as load:
        time.sleep(0.5)
        down = time.monotonic()
        take_down()
        time.sleep(2.0)
        up = time.monotonic()
        bring_back()
        time.sleep(1.0)
    _check_load(load, (down, up))
    assert daemon.worker_pid() == scenario.worker, "the worker was replaced"
    # What was stored before the outage is still there and reads back whole:
    # the same id and policy. (A lookup that could not read the backend in
    # time fetched the policy again; its write may have replaced the entry
    # with that newer fetch, which is not damage.)
    after = _snapshot(_read_entries(scenario.config, scenario.stored))
    for domain, (policy_id, policy, fetched_at) in scenario.snapshot.items():
        assert after[domain][:2] == (policy_id, policy), domain
        assert after[domain][2] >= fetched_at, domain
    # New policies are stored again, without a restart.
    _stores_again(daemon, world, scenario.config)
    assert daemon.worker_pid() == scenario.worker


# --- Redis ----------------------------------------------------------------------------------


def test_redis_killed_and_restarted_under_load(tmp_path: Path, world: World) -> None:
    if importlib.util.find_spec("redis") is None:
        _unavailable("redis-py is not installed (the `redis` extra)")
    try:
        server = RedisServer(str(tmp_path / "redis"), durable=True)
        server.start()
    except RedisUnavailable as exc:
        _unavailable(str(exc))
    try:
        cache = {
            "type": "redis",
            "options": {
                "url": server.url(),
                "socket_timeout": 1.0,
                "socket_connect_timeout": 1.0,
            },
        }
        scenario = _prepare(tmp_path, world, cache, "redis")
        try:
            _outage(scenario, world, server.kill, server.start)
            _assert_outage_logged(scenario.daemon)
        finally:
            scenario.daemon.stop()
    finally:
        server.stop()


# --- PostgreSQL -----------------------------------------------------------------------------


def test_postgres_killed_and_restarted_under_load(tmp_path: Path, world: World) -> None:
    if importlib.util.find_spec("asyncpg") is None:
        _unavailable("asyncpg is not installed (the `postgres` extra)")
    try:
        server = PostgresServer()
        server.start()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
    try:
        cache = {"type": "postgres", "options": {"dsn": server.dsn(), "timeout": 1.0}}
        scenario = _prepare(tmp_path, world, cache, "postgres")
        try:
            _outage(scenario, world, server.kill, server.restart)
            _assert_outage_logged(scenario.daemon)
        finally:
            scenario.daemon.stop()
    finally:
        server.close()


# --- SQLite ---------------------------------------------------------------------------------

_HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
conn.execute("ROLLBACK")
"""


def test_sqlite_locked_by_another_process(tmp_path: Path, world: World) -> None:
    filename = tmp_path / "cache.sqlite"
    cache = {"type": "sqlite", "options": {"filename": str(filename), "timeout": 0.5}}
    scenario = _prepare(tmp_path, world, cache, "sqlite")
    holder: subprocess.Popen[str] | None = None

    def lock() -> None:
        nonlocal holder
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(filename)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        # The lock is real: a writer of our own is refused.
        assert _write_until_refused(scenario.config, most=1) == 0

    def unlock() -> None:
        assert holder is not None
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(10) == 0

    try:
        _outage(scenario, world, lock, unlock)
        _assert_outage_logged(scenario.daemon)
    finally:
        if holder is not None:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
            for pipe in (holder.stdin, holder.stdout):
                if pipe is not None:
                    pipe.close()
        scenario.daemon.stop()


# --- LMDB on a full disk --------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (root only)."""
    if os.geteuid() != 0:
        _unavailable("mounting a tmpfs needs root")
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    block = b"\xa5" * 65536
    with open(path, "wb") as filler:
        try:
            while True:
                filler.write(block)
                filler.flush()
        except OSError:
            pass
    # Also take the last few free bytes a smaller write can still get.
    with contextlib.suppress(OSError), open(path, "ab") as filler:
        while True:
            filler.write(b"\xa5" * 512)
            filler.flush()


def test_lmdb_on_a_full_disk(small_tmpfs: Path, tmp_path: Path, world: World) -> None:
    cache = {
        "type": "lmdb",
        "options": {"path": str(small_tmpfs / "cache.lmdb"), "map_size": 64 << 20},
    }
    scenario = _prepare(tmp_path, world, cache, "lmdb")
    filler = small_tmpfs / "filler"

    def full() -> None:
        _fill(filler)
        # LMDB first reuses the pages its earlier transactions freed; use
        # them up, so that the next write has to grow the file, and check
        # that it cannot.
        assert _write_until_refused(scenario.config) < 5000, "LMDB kept accepting writes"

    def room_again() -> None:
        filler.unlink()

    try:
        _outage(scenario, world, full, room_again)
        _assert_outage_logged(scenario.daemon)
        # The operating system's reason reaches the log. A full tmpfs refuses
        # LMDB's commit with ENOSPC or, when the flush fails, EIO; which one
        # comes first depends on timing.
        log = scenario.daemon.log_text()
        assert "No space left on device" in log or "Input/output error" in log
    finally:
        scenario.daemon.stop()


def _write_until_refused(config: dict[str, Any], most: int = 5000) -> int:
    """Store dummy entries with a cache of our own until the backend refuses one."""

    async def write() -> int:
        cache = create_cache(Config.from_mapping(config, "<test>").cache, "<test>")
        await cache.setup()
        try:
            for i in range(most):
                now = time.time()
                policy = Policy("none", 60, (), ("version: STSv1", "mode: none", "max_age: 60"))
                try:
                    await cache.put(CacheEntry(f"filler{i}.invalid", "x", policy, now, now))
                except CacheUnavailable:
                    return i
            return most
        finally:
            await cache.close()

    return asyncio.run(write())


def _assert_outage_logged(daemon: DaemonProcess) -> None:
    """The daemon noticed the outage (and said so) rather than it going unseen."""
    lines = [line.lower() for line in daemon.log_text().splitlines()]
    assert any("cache" in line and ("fail" in line or "unavailable" in line) for line in lines)
