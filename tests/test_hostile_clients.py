"""Hostile socketmap clients against the real daemon (DESIGN.md §3, issue 7 item 1).

test_server.py covers the contract with well-behaved and slightly broken
clients in process; here the clients are hostile and, where the daemon's own
memory or descriptors are the point, the daemon is a real subprocess whose
worker is watched through /proc: a thousand stalled half-netstrings,
connections far beyond ``max_connections``, garbage and 10 MB of data with no
netstring in it, a client that pipelines without ever reading, and an
internal error in the middle of a pipelined burst.

Bounds here are generous sanity limits (seconds, tens of MB), never latency
targets: speed is the benchmarks' business.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import selectors
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.cache.internal import InternalCache
from mtasts_fast.config import Config
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.policy import Policy
from mtasts_fast.responder import Responder
from mtasts_fast.server import SocketmapServer
from tests.servers.daemon import (
    DaemonProcess,
    fd_count,
    frame,
    peak_rss,
    recv_netstring,
    reset_peak_rss,
    rss,
)
from tests.socketmap import Client, enforce, free_port, pipelined

OK_GOOD = b"OK secure match=mail.loc servername=hostname"
NOTFOUND = b"NOTFOUND "
MIB = 1 << 20
# What a worker may gain in resident memory from one hostile client. The
# daemon's bounded buffers are tens of KiB; this only catches "grows with
# what the client sends" (10 MB and more here).
RSS_SLACK = 24 * MIB
# The in-process cache: what is measured here is the connection handling, and
# an LMDB map's pages would only add noise to the worker's RSS.
INTERNAL = {"type": "internal"}


def _ensure_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        pytest.fail(f"need {wanted} file descriptors, the hard limit allows {soft}")


def _closed_by_peer(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """Wait until the daemon closes ``sock``; (closed?, bytes received before)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True, received
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        return True, received
    except TimeoutError:
        return False, received


_TCP_ESTABLISHED = 1


def _tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (struct tcp_info's first byte)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def _wait_for(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@pytest.fixture
def daemons(tmp_path: Path, world: Any) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def make(name: str = "d", **settings: Any) -> DaemonProcess:
        directory = tmp_path / name
        directory.mkdir()
        daemon = DaemonProcess(directory, world, **settings)
        started.append(daemon)
        daemon.start()
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


# -- 1000 stalled half-netstrings ----------------------------------------------------------


@pytest.mark.slow
def test_thousand_stalled_half_netstrings(daemons: Any) -> None:
    stalled_count = 1000
    idle_timeout = 4
    _ensure_fd_limit(stalled_count + 256)
    daemon = daemons(idle_timeout=idle_timeout, max_connections=stalled_count + 100, cache=INTERNAL)
    worker = daemon.worker_pid()
    assert daemon.ask(b"postfix good.loc") == OK_GOOD  # fetched and cached
    baseline_fds = fd_count(worker)

    stalled: list[socket.socket] = []
    try:
        opened = time.monotonic()
        for _ in range(stalled_count):
            sock = daemon.connect()
            sock.sendall(b"20:postfix enf")  # half a netstring, then nothing
            stalled.append(sock)
        # The worker holds every one of them (so the answers below are given
        # while they are open, not after the idle sweep freed them).
        held = baseline_fds + stalled_count - 10  # the baseline may count a closing socket
        assert _wait_for(lambda: fd_count(worker) >= held, 10)

        # Others keep being answered: new connections and a persistent one,
        # cache hits and lookups that need a fetch.
        keeper = daemon.connect()
        fresh = "stall-" + str(random.randrange(10**9)) + ".loc"
        for i in range(50):
            assert daemon.ask(b"postfix good.loc") == OK_GOOD
            keeper.sendall(frame(b"postfix .parent-probe.loc"))
            assert recv_netstring(keeper) == NOTFOUND
            if i == 0:
                # A miss (NXDOMAIN from the test DNS): the fetch path works too.
                assert daemon.ask(b"postfix " + fresh.encode()) == NOTFOUND
        answered_after = time.monotonic() - opened
        assert fd_count(worker) >= held, (
            f"stalled connections were closed before the others were answered "
            f"({answered_after:.1f}s after opening them; idle_timeout {idle_timeout}s)"
        )

        # Every stalled connection is closed by the daemon after idle_timeout
        # (the sweep runs once a second; 15 s is a sanity bound).
        selector = selectors.DefaultSelector()
        for sock in stalled:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_socks = set(stalled)
        deadline = time.monotonic() + idle_timeout + 15
        while open_socks and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                assert data == b"", f"a stalled client got a reply: {data!r}"
                selector.unregister(sock)
                open_socks.discard(sock)
        selector.close()
        assert not open_socks, f"{len(open_socks)} stalled connections still open"
        closed_after = time.monotonic() - opened
        assert closed_after >= idle_timeout - 1, "closed before idle_timeout"
        # The keeper was active a moment ago; it may or may not have been swept
        # by now, so it is not asserted on. The worker let go of the rest.
        keeper.close()
        assert _wait_for(lambda: fd_count(worker) <= baseline_fds + 2, 10)
        assert daemon.worker_pid() == worker, "the worker was replaced"
        assert daemon.ask(b"postfix good.loc") == OK_GOOD
    finally:
        for sock in stalled:
            sock.close()


# -- max_connections ------------------------------------------------------------------------


def test_max_connections_refuses_cleanly_and_recovers(daemons: Any) -> None:
    limit = 20
    daemon = daemons(max_connections=limit, cache=INTERNAL)
    worker = daemon.worker_pid()
    assert daemon.ask(b"postfix good.loc") == OK_GOOD  # cached from now on
    assert _wait_for(lambda: fd_count(worker) < 50, 5)

    held = [daemon.connect() for _ in range(limit)]
    refused: list[socket.socket] = []
    try:
        for sock in held:  # each is accepted and served
            sock.sendall(frame(b"postfix good.loc"))
            assert recv_netstring(sock) == OK_GOOD
        # Far beyond the limit: each is closed at once, with no reply.
        for _ in range(10 * limit):
            sock = daemon.connect()
            refused.append(sock)
            with contextlib.suppress(OSError):
                sock.sendall(frame(b"postfix good.loc"))
        for sock in refused:
            closed, received = _closed_by_peer(sock, timeout=5)
            assert closed, "a connection over max_connections was left open"
            assert received == b""
        # The worker did not crash and its descriptors stayed bounded.
        assert daemon.worker_pid() == worker
        assert fd_count(worker) < 50 + limit
        # The connections it holds are still served, pipelined too.
        for sock in held:
            sock.sendall(pipelined([b"postfix good.loc", b"postfix .x"]))
            assert recv_netstring(sock) == OK_GOOD
            assert recv_netstring(sock) == NOTFOUND
        # Serving resumes for newcomers once connections drop.
        for sock in held[: limit // 2]:
            sock.close()

        def newcomer_served() -> bool:
            try:
                return bool(daemon.ask(b"postfix good.loc", timeout=2) == OK_GOOD)
            except OSError:
                return False

        assert _wait_for(newcomer_served, 10, step=0.1)
        extra = [daemon.connect() for _ in range(limit // 2 - 1)]
        refused.extend(extra)
        for sock in extra:
            sock.sendall(frame(b"postfix good.loc"))
            assert recv_netstring(sock) == OK_GOOD
        assert "max_connections (20) reached" in daemon.log_text()
        assert daemon.worker_pid() == worker
    finally:
        for sock in held + refused:
            sock.close()


# -- garbage, binary and oversized input ----------------------------------------------------

_TEN_MB = 10 * MIB
_rng = random.Random(7)

GARBAGE = [
    pytest.param(lambda: bytes(_rng.getrandbits(8) for _ in range(MIB)), id="random-binary-1mb"),
    pytest.param(lambda: b"x" * _TEN_MB, id="10mb-no-digit-no-comma"),
    pytest.param(lambda: b"7" * _TEN_MB, id="10mb-of-length-digits"),
    pytest.param(lambda: b"10000:" + b"x" * _TEN_MB, id="10mb-payload-no-comma"),
    pytest.param(lambda: b"0" * 30 + b"1:x,", id="leading-zeros-over-limit"),
    pytest.param(lambda: b"18446744073709551617:x,", id="length-2**64+1"),
    pytest.param(lambda: b"\x00" * MIB, id="nul-bytes"),
    pytest.param(
        lambda: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(500), id="tls-client-hello"
    ),
    pytest.param(lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-request"),
]


@pytest.fixture(scope="module")
def garbage_daemon(tmp_path_factory: pytest.TempPathFactory, world: Any) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(
        tmp_path_factory.mktemp("garbage"), world, idle_timeout=2, cache=INTERNAL
    )
    daemon.start()
    try:
        assert daemon.ask(b"postfix good.loc") == OK_GOOD
        yield daemon
    finally:
        daemon.stop()


def _send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """sendall ``data`` in a thread; the daemon hanging up mid-way is expected."""

    def run() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("make_data", GARBAGE)
def test_garbage_closes_only_that_connection(garbage_daemon: DaemonProcess, make_data: Any) -> None:
    daemon = garbage_daemon
    worker = daemon.worker_pid()
    data = make_data()
    bystander = daemon.connect()
    before = rss(worker)
    peak_known = reset_peak_rss(worker)
    sock = daemon.connect(timeout=10)
    try:
        sender = _send_in_background(sock, data)
        closed, received = _closed_by_peer(sock, timeout=10)
        assert closed, "the daemon kept a connection that sent garbage"
        assert received == b"", f"garbage was answered: {received[:80]!r}"
        sender.join(10)
        assert not sender.is_alive()
    finally:
        sock.close()
    # Only that connection: another one, open all along, is still served.
    bystander.sendall(frame(b"postfix good.loc"))
    assert recv_netstring(bystander) == OK_GOOD
    bystander.close()
    assert daemon.worker_pid() == worker
    # Memory did not grow with what was sent (10 MB for the large cases).
    grown = (peak_rss(worker) if peak_known else rss(worker)) - before
    assert grown < RSS_SLACK, f"worker RSS grew by {grown / MIB:.1f} MiB"


# -- a client that never reads --------------------------------------------------------------


LOOPS = [pytest.param((), id="uvloop"), pytest.param(("--disable-uvloop",), id="asyncio")]


@pytest.mark.slow
@pytest.mark.parametrize("args", LOOPS)
def test_client_that_never_reads_is_paused_then_dropped(
    daemons: Any, args: tuple[str, ...]
) -> None:
    idle_timeout = 2
    daemon = daemons(idle_timeout=idle_timeout, cache=INTERNAL, args=args)
    worker = daemon.worker_pid()
    assert daemon.ask(b"postfix good.loc") == OK_GOOD
    time.sleep(0.2)  # let the worker finish closing that connection
    baseline_fds = fd_count(worker)
    before = rss(worker)
    peak_known = reset_peak_rss(worker)

    hog = daemon.connect()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    hog.setblocking(False)
    request = frame(b"postfix good.loc")
    burst = request * 4096
    sent = 0
    stuck_since: float | None = None
    deadline = time.monotonic() + 30
    # Pipeline requests without reading a single reply, until the daemon
    # stops taking them (its reading is paused: our send buffer fills up).
    while time.monotonic() < deadline:
        try:
            sent += hog.send(burst)
            stuck_since = None
        except BlockingIOError:
            if stuck_since is None:
                stuck_since = time.monotonic()
            elif time.monotonic() - stuck_since > 0.5:
                break
            time.sleep(0.01)
    else:
        pytest.fail(f"the daemon kept reading after {sent} bytes of requests")
    requests_sent = sent // len(request)
    assert requests_sent > 1000, "too few requests to make the point"

    # Meanwhile everyone else is served.
    for _ in range(20):
        assert daemon.ask(b"postfix good.loc") == OK_GOOD
    grown = (peak_rss(worker) if peak_known else rss(worker)) - before
    assert grown < RSS_SLACK, f"worker RSS grew by {grown / MIB:.1f} MiB for a non-reader"

    # No reply is owed to it (all hits were written) and it sends nothing
    # more: after idle_timeout the daemon drops it, unread replies and all.
    # Checked without reading (reading would let the daemon flush and close
    # normally): the kernel sees the daemon's RST or FIN on our socket.
    assert _wait_for(lambda: _tcp_state(hog) != _TCP_ESTABLISHED, idle_timeout + 10), (
        "a client that never reads its replies holds its connection for ever"
    )
    assert _wait_for(lambda: fd_count(worker) <= baseline_fds, 5)
    hog.setblocking(True)
    closed, received = _closed_by_peer(hog, timeout=10)
    assert closed
    # It got at most what fit in the buffers, far less than it asked for.
    replies = received.count(b"OK secure")
    assert replies < requests_sent
    hog.close()
    assert daemon.worker_pid() == worker
    assert daemon.ask(b"postfix good.loc") == OK_GOOD


# -- an internal error answers TEMP for that request only -----------------------------------


class _DecoderBugCache(InternalCache):
    """A backend whose reads hand back a damaged entry for one domain.

    Stands for a bug in a backend's decoding (or a memory corruption): the
    entry is well-typed on the outside but its mx list holds a non-string, so
    rendering the reply raises. This class reads synchronously (the hot path:
    get_nowait, no task); the subclass below reads asynchronously, as Redis
    and PostgreSQL do.
    """

    @staticmethod
    def _damage(entry: CacheEntry | None) -> CacheEntry | None:
        if entry is None or entry.domain != "broken.test":
            return entry
        policy = Policy("enforce", 86400, (None,), ())  # type: ignore[arg-type]
        return CacheEntry(entry.domain, entry.policy_id, policy, entry.fetched_at, entry.checked_at)

    def get_nowait(self, domain: str) -> CacheEntry | None:
        return self._damage(super().get_nowait(domain))

    async def get(self, domain: str) -> CacheEntry | None:
        return self.get_nowait(domain)


class _AsyncDecoderBugCache(_DecoderBugCache):
    synchronous_reads: ClassVar[bool] = False


@pytest.fixture(params=["sync-read", "async-read"])
async def buggy_daemon(request: pytest.FixtureRequest, world: Any) -> AsyncIterator[Any]:
    config = Config.from_mapping(
        {
            "host": "127.0.0.1",
            "port": free_port(),
            "nameservers": [world.nameserver],
            "ca_file": world.ca_file,
        },
        "<test>",
    )
    cache_class = _DecoderBugCache if request.param == "sync-read" else _AsyncDecoderBugCache
    cache = cache_class(100)
    now = time.time()
    for domain in ("enforce.test", "broken.test"):
        await cache.put(CacheEntry(domain, "1", enforce("mx." + domain), now, now))
    fetcher = PolicyFetcher(nameservers=config.nameservers, ca_file=config.ca_file)
    await fetcher.start()
    responder = Responder(config, cache, fetcher)
    server = SocketmapServer(config, responder)
    await server.start()
    try:
        yield config
    finally:
        await server.stop(1.0)
        await responder.close()
        await fetcher.close()


@pytest.mark.both_loops
async def test_internal_error_gives_temp_and_connection_stays_usable(buggy_daemon: Any) -> None:
    config = buggy_daemon
    reader, writer = await asyncio.open_connection(config.host, config.port)
    client = Client(reader, writer)
    try:
        ok = b"OK secure match=mx.enforce.test servername=hostname"
        # Pipelined: the failing request in the middle answers TEMP, in order,
        # and the requests around it are answered normally.
        await client.send(
            pipelined(
                ["postfix enforce.test", "postfix broken.test", "postfix enforce.test", "x .x"]
            )
        )
        assert await client.read() == ok
        temp = await client.read()
        assert temp.startswith(b"TEMP "), temp
        assert await client.read() == ok
        assert await client.read() == NOTFOUND
        # The same connection keeps working, including the failing key again.
        assert await client.ask("postfix enforce.test") == ok
        assert (await client.ask("postfix broken.test")).startswith(b"TEMP ")
        assert await client.ask("postfix enforce.test") == ok
    finally:
        await client.close()
