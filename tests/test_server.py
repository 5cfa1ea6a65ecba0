"""The socketmap server contract (DESIGN.md §3), over real TCP and unix sockets.

Every test runs under both the standard asyncio loop and uvloop (see the
``both_loops`` marker in conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mtasts_fast.server import ListenError
from tests.socketmap import DownCache, Running, enforce, frame, pipelined, start_daemon

pytestmark = pytest.mark.both_loops

OK_ENFORCE = b"OK secure match=mx1.enforce.test:.mail.enforce.test servername=hostname"
NOTFOUND = b"NOTFOUND "


@pytest.fixture(params=["tcp", "unix"])
async def running(request: pytest.FixtureRequest, world: Any, tmp_path: Path) -> Any:
    daemon = await start_daemon(world, tmp_path, unix=request.param == "unix")
    await daemon.seed("enforce.test", enforce("mx1.enforce.test", "*.mail.enforce.test"))
    yield daemon
    await daemon.stop()


async def test_cached_enforce_reply_bytes(running: Running) -> None:
    client = await running.connect()
    client.writer.write(b"20:postfix enforce.test,")
    raw = await asyncio.wait_for(client.reader.readexactly(len(OK_ENFORCE) + 4), 5)
    assert raw == b"71:" + OK_ENFORCE + b","
    await client.close()


async def test_one_byte_writes(running: Running) -> None:
    client = await running.connect()
    for byte in pipelined(["postfix enforce.test", "postfix .enforce.test"]):
        await client.send(bytes([byte]))
    assert await client.read() == OK_ENFORCE
    assert await client.read() == NOTFOUND
    await client.close()


async def test_pipelined_replies_come_back_in_order(running: Running, world: Any) -> None:
    # The middle request is a miss that waits for a real fetch; the hits after
    # it must still be answered after it, in order.
    client = await running.connect()
    await client.send(
        pipelined(["postfix enforce.test", "postfix good.loc", "postfix nonesuch.test", "x"])
    )
    assert await client.read() == OK_ENFORCE
    assert await client.read() == b"OK secure match=mail.loc servername=hostname"
    assert await client.read() == NOTFOUND
    assert await client.read() == NOTFOUND
    await client.close()


async def test_malformed_netstring_closes_only_that_connection(running: Running) -> None:
    other = await running.connect()
    bad = await running.connect()
    await bad.send(frame("postfix enforce.test") + frame("postfix good.loc") + b"xx:")
    # Replies owed before the bad netstring are delivered, then the server hangs up.
    assert await bad.read() == OK_ENFORCE
    assert await bad.read() == b"OK secure match=mail.loc servername=hostname"
    assert await bad.at_eof()
    assert await other.ask("postfix enforce.test") == OK_ENFORCE
    await other.close()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"abc:postfix example.com,", id="non-digit-length"),
        pytest.param(b"5:postfix example.com,", id="length-too-short"),
        pytest.param(b"19:postfix example.com;", id="wrong-terminator"),
        pytest.param(b":,", id="no-length-digits"),
        pytest.param(b"10001:" + b"x" * 100, id="over-10000-bytes"),
        pytest.param(b"99999999999999999999", id="endless-length"),
    ],
)
async def test_bad_input_closes_connection_without_reply(running: Running, data: bytes) -> None:
    client = await running.connect()
    await client.send(data)
    assert await client.at_eof()
    assert await running.ask("postfix enforce.test") == OK_ENFORCE


async def test_early_disconnect_leaves_server_serving(running: Running, world: Any) -> None:
    domain = world.fresh_domain()
    world.add_domain(domain, policy=world.policy_text("enforce", ["mx." + domain]))
    client = await running.connect()
    await client.send(frame("postfix " + domain) + frame("postfix enforce.test"))
    client.writer.transport.abort()
    # The fetch the vanished client started still completes and is cached.
    for _ in range(100):
        if running.cache.get_nowait(domain) is not None:
            break
        await asyncio.sleep(0.05)
    assert running.cache.get_nowait(domain) is not None
    assert await running.ask("postfix " + domain) == (
        f"OK secure match=mx.{domain} servername=hostname".encode()
    )


async def test_slow_lookup_does_not_block_other_connections(running: Running, world: Any) -> None:
    slow = await running.connect()
    await slow.send(frame("postfix blackhole.loc"))
    started = time.monotonic()
    assert await running.ask("postfix enforce.test") == OK_ENFORCE
    assert time.monotonic() - started < 1.0
    # The zone timeout (4 s) bounds the slow lookup, which then fails open.
    assert await slow.read(timeout=8) == NOTFOUND
    await slow.close()


@pytest.mark.parametrize(
    ("key", "reply"),
    [
        pytest.param(b"\xff\xfe.test", NOTFOUND, id="invalid-utf8-key"),
        pytest.param(b"", NOTFOUND, id="empty-key"),
        pytest.param(b"[192.0.2.1]", NOTFOUND, id="ip-literal"),
        pytest.param(b"ENFORCE.Test.", OK_ENFORCE, id="case-and-trailing-dot"),
        pytest.param(b"[enforce.test]:25", OK_ENFORCE, id="bracketed-with-port"),
    ],
)
async def test_keys(running: Running, key: bytes, reply: bytes) -> None:
    assert await running.ask(b"postfix " + key) == reply


async def test_empty_request_and_map_name_only(running: Running) -> None:
    client = await running.connect()
    await client.send(b"0:,7:postfix,")
    assert await client.read() == NOTFOUND
    assert await client.read() == NOTFOUND
    await client.close()


async def test_client_that_never_reads_is_throttled(running: Running) -> None:
    client = await running.connect()
    request = frame("postfix enforce.test")
    burst = request * 20_000  # ~480 KB of requests, ~1.5 MB of replies
    client.writer.transport.pause_reading()  # type: ignore[attr-defined]
    client.writer.write(burst)
    await asyncio.sleep(1.0)
    (conn,) = running.server.connections
    buffered = conn._transport.get_write_buffer_size()  # type: ignore[union-attr]
    # Flow control stopped reading requests long before all replies were queued.
    assert buffered < 1_000_000
    client.writer.transport.resume_reading()  # type: ignore[attr-defined]
    for _ in range(20_000):
        assert await client.read() == OK_ENFORCE
    await client.close()


async def test_idle_connection_is_closed(world: Any, tmp_path: Path) -> None:
    daemon = await start_daemon(world, tmp_path, idle_timeout=1)
    try:
        idle = await daemon.connect()
        partial = await daemon.connect()
        await partial.send(b"20:postfix enf")  # stalls mid-netstring
        assert await idle.at_eof(timeout=4)
        assert await partial.at_eof(timeout=4)
    finally:
        await daemon.stop()


async def test_max_connections(world: Any, tmp_path: Path) -> None:
    daemon = await start_daemon(world, tmp_path, max_connections=2)
    await daemon.seed("enforce.test", enforce("mx1.enforce.test", "*.mail.enforce.test"))
    try:
        first = await daemon.connect()
        second = await daemon.connect()
        assert await first.ask("postfix enforce.test") == OK_ENFORCE
        third = await daemon.connect()
        assert await third.at_eof()
        assert await second.ask("postfix enforce.test") == OK_ENFORCE
        await first.close()
        await asyncio.sleep(0.2)
        fourth = await daemon.connect()
        assert await fourth.ask("postfix enforce.test") == OK_ENFORCE
        await second.close()
        await fourth.close()
    finally:
        await daemon.stop()


async def test_backend_down_fetches_and_falls_back(world: Any, tmp_path: Path) -> None:
    daemon = await start_daemon(world, tmp_path)
    down = DownCache(100)
    daemon.responder._cache = down
    daemon.responder.refresher._cache = down
    daemon.responder._sync_reads = True
    try:
        client = await daemon.connect()
        # A domain with a policy is fetched and served; the next lookups come
        # from the in-process fallback, not from new fetches.
        before = world.https_requests("good.loc")
        for _ in range(3):
            assert await client.ask("postfix good.loc") == (
                b"OK secure match=mail.loc servername=hostname"
            )
        assert world.https_requests("good.loc") == before + 1
        # No policy published: still NOTFOUND, mail to it is not deferred.
        assert await client.ask("postfix no-record.loc") == NOTFOUND
        # The fetch fails and the cache cannot say whether an enforce policy
        # was cached: defer (TEMP) rather than risk a downgrade.
        assert (await client.ask("postfix servfail.loc")).startswith(b"TEMP ")
        # The connection stays usable after a TEMP.
        assert await client.ask("postfix .x") == NOTFOUND
    finally:
        await daemon.stop()


async def test_unix_socket_mode_and_cleanup(world: Any, tmp_path: Path) -> None:
    daemon = await start_daemon(world, tmp_path, unix=True, mode=0o660)
    path = daemon.config.path
    assert path is not None
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    await daemon.stop()
    with pytest.raises(FileNotFoundError):
        os.stat(path)


async def test_unix_socket_owner_and_group(world: Any, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("MTASTS_REQUIRE_ALL") == "1":
            pytest.fail("chown to another user needs root")
        pytest.skip("chown to another user needs root")
    daemon = await start_daemon(world, tmp_path, unix=True, owner="nobody", group="nogroup")
    try:
        st = os.stat(daemon.config.path)  # type: ignore[arg-type]
        import grp
        import pwd

        assert st.st_uid == pwd.getpwnam("nobody").pw_uid
        assert st.st_gid == grp.getgrnam("nogroup").gr_gid
    finally:
        await daemon.stop()


async def test_unix_socket_refuses_to_steal_a_live_socket(world: Any, tmp_path: Path) -> None:
    first = await start_daemon(world, tmp_path, unix=True)
    try:
        with pytest.raises(ListenError, match="another process is answering"):
            await start_daemon(world, tmp_path, unix=True)
        # The first daemon still owns and serves its socket.
        assert await first.ask("postfix .x") == NOTFOUND
    finally:
        await first.stop()


async def test_unix_socket_replaces_stale_socket(world: Any, tmp_path: Path) -> None:
    path = tmp_path / "mta-sts.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays, nobody listens: a crashed daemon's socket
    daemon = await start_daemon(world, tmp_path, unix=True)
    try:
        assert await daemon.ask("postfix .x") == NOTFOUND
    finally:
        await daemon.stop()


async def test_unix_socket_refuses_regular_file(world: Any, tmp_path: Path) -> None:
    (tmp_path / "mta-sts.sock").write_text("not a socket")
    with pytest.raises(ListenError, match="not a socket"):
        await start_daemon(world, tmp_path, unix=True)
    assert (tmp_path / "mta-sts.sock").read_text() == "not a socket"


async def test_reuse_port_false_and_port_in_use(world: Any, tmp_path: Path) -> None:
    daemon = await start_daemon(world, tmp_path, reuse_port=False)
    try:
        assert await daemon.ask("postfix .x") == NOTFOUND
        with pytest.raises(ListenError, match=r"cannot listen on 127\.0\.0\.1:"):
            await start_daemon(world, tmp_path, port=daemon.config.port, reuse_port=False)
    finally:
        await daemon.stop()


async def test_reuse_port_lets_two_servers_share(world: Any, tmp_path: Path) -> None:
    first = await start_daemon(world, tmp_path)
    second = await start_daemon(world, tmp_path, port=first.config.port)
    try:
        assert await first.ask("postfix .x") == NOTFOUND
    finally:
        await first.stop()
        await second.stop()


async def test_stop_flushes_owed_replies_then_closes(world: Any, tmp_path: Path) -> None:
    daemon = await start_daemon(world, tmp_path)
    await daemon.seed("enforce.test", enforce("mx1.enforce.test", "*.mail.enforce.test"))
    idle = await daemon.connect()
    busy = await daemon.connect()
    domain = world.fresh_domain()
    world.add_domain(domain, policy=world.policy_text("enforce", ["mx." + domain]))
    await busy.send(frame("postfix " + domain))
    await asyncio.sleep(0.05)
    await daemon.server.stop(5.0)
    assert await busy.read() == f"OK secure match=mx.{domain} servername=hostname".encode()
    assert await busy.at_eof()
    assert await idle.at_eof()
    await daemon.stop()


async def test_tcp_nodelay_on_accepted_connections(world: Any, tmp_path: Path) -> None:
    daemon = await start_daemon(world, tmp_path)
    try:
        client = await daemon.connect()
        assert await client.ask("postfix .x") == NOTFOUND
        (conn,) = daemon.server.connections
        sock = conn._transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await daemon.stop()


async def test_listen_backlog_is_configured(world: Any, tmp_path: Path) -> None:
    ss = shutil.which("ss")
    if ss is None:
        pytest.fail("ss (iproute2) is needed; `make test` installs it")
    daemon = await start_daemon(world, tmp_path, backlog=777)
    try:
        port = daemon.config.port
        proc = await asyncio.create_subprocess_exec(
            ss, "-ltnH", f"sport = :{port}", stdout=subprocess.PIPE
        )
        out = (await proc.communicate())[0].decode()
        # For a listening socket, ss's Send-Q column is the accept backlog.
        (line,) = out.splitlines()
        assert line.split()[2] == "777"
    finally:
        await daemon.stop()
