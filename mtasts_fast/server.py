"""The socketmap listener: an asyncio Protocol per connection (DESIGN.md §3).

A Protocol rather than streams: a cache hit is parsed, answered and written
inside one ``data_received`` call, with no task, no future and no extra copy.
While no reply is owed and no partial netstring is buffered, the bytes go
first to the responder's fast path (fastpath.py): one compiled call frames
them, finds the replies it recorded, counts the lookups and returns every
reply for one ``transport.write``. What it does not serve (from the first
netstring it cannot answer on) goes to the netstring parser and the
responder, as before. Requests that must wait for the network become tasks;
their replies are queued behind the ones already owed, so pipelined requests
are answered in order, and one slow lookup never delays another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

from mtasts_fast.binding import (
    ListenError,
    UnixSocketFile,
    bind_tcp,
    bind_unix,
    resolve_listen_address,
)
from mtasts_fast.config import Config
from mtasts_fast.errors import NetstringError
from mtasts_fast.netstring import NetstringParser
from mtasts_fast.responder import TEMP_INTERNAL, Responder

__all__ = ["ListenError", "SocketmapServer"]

_log = logging.getLogger(__name__)

# Replies owed on one connection before we stop reading from it. Postfix sends
# one request at a time; this only bounds what a pipelining client can queue.
_PIPELINE_LIMIT = 128
# Bytes buffered for a client that does not read its replies before reading
# from it stops (asyncio flow control: pause_writing / resume_writing).
_WRITE_HIGH_WATER = 64 * 1024
# How often idle connections are looked for; the idle timeout is therefore
# enforced to within this many seconds.
_SWEEP_PERIOD = 1.0
# From Python 3.13 on, asyncio and uvloop (cleanup_socket=PY313) unlink a unix
# server's socket file when the server closes. The file is never a worker's to
# remove: a worker retired by a reload would take away the path its successors
# answer on, and systemd's socket unit owns the file under socket activation.
# Whoever bound it removes it (binding.UnixSocketFile). The keyword is new in
# 3.13 (uvloop >= 0.21, the first to support 3.13), hence only passed there.
_KEEP_SOCKET_FILE: dict[str, Any] = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}


class SocketmapProtocol(asyncio.Protocol):
    __slots__ = (
        "_closing",
        "_fast",
        "_fast_ok",
        "_parser",
        "_paused_pipeline",
        "_paused_writing",
        "_pending",
        "_responder",
        "_serve",
        "_server",
        "_transport",
        "_write",
        "last_tick",
    )

    def __init__(self, server: SocketmapServer) -> None:
        self._server = server
        self._responder = server.responder
        self._parser = NetstringParser()
        self._fast = fast = server.responder.fast
        self._serve = fast.serve
        # True while the fast path may take the bytes: connected, no reply
        # owed, no partial netstring in the parser, not closing.
        self._fast_ok = False
        self._transport: asyncio.Transport | None = None
        self._write: Callable[[bytes], object] | None = None
        # Replies owed, oldest first: bytes when ready, a Task while waiting.
        self._pending: deque[bytes | asyncio.Task[bytes]] = deque()
        self._closing = False
        self._paused_writing = False
        self._paused_pipeline = False
        self.last_tick = server.tick

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._write = transport.write
        server = self._server
        if len(server.connections) >= server.max_connections:
            server.refuse(transport)
            return
        self._fast_ok = True
        server.connections.add(self)
        server.metrics.connection_accepted(len(server.connections))
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        connections = self._server.connections
        if self in connections:
            connections.discard(self)
            self._server.metrics.connection_closed(len(connections))
        self._closing = True
        self._fast_ok = False
        for item in self._pending:
            if not isinstance(item, bytes):
                item.cancel()
        self._pending.clear()

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests.
        self._paused_writing = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._maybe_resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._fast_ok:
            replies = self._serve(data)
            if replies is not None:
                # Every netstring answered by the fast path: one write.
                self._write(replies)  # type: ignore[misc]
                self.last_tick = self._server.tick
                return
            # Answered up to the first netstring it could not: those replies
            # go first, the rest to the parser, idle at that boundary.
            fast = self._fast
            if fast.unserved:
                self._write(fast.unserved)  # type: ignore[misc]
            if fast.offset:
                data = data[fast.offset :]
        self._received(data)

    def _received(self, data: bytes) -> None:
        if self._closing:
            return
        self.last_tick = self._server.tick
        try:
            payloads = self._parser.feed(data)
        except NetstringError as exc:
            # Answer what came before the bad netstring, then hang up; only
            # this connection is affected (DESIGN.md §3).
            self._server.metrics.bad_netstring()
            _log.info(
                "closing connection after a bad netstring: %s",
                exc,
                extra={"event": "bad-netstring", "reason": str(exc)},
            )
            for payload in exc.payloads:
                self._handle(payload)
            self._closing = True
            self._fast_ok = False
            if self._transport is not None:
                self._transport.pause_reading()
            self._close_when_flushed()
            return
        for payload in payloads:
            self._handle(payload)
        self._fast_ok = not (self._pending or self._parser.pending)

    def eof_received(self) -> bool | None:
        # The client has finished sending; deliver what is owed, then close.
        self._closing = True
        self._fast_ok = False
        self._close_when_flushed()
        return True

    # -- request handling ---------------------------------------------------------------

    def _handle(self, payload: bytes) -> None:
        try:
            reply = self._responder.answer(payload)
        except Exception:
            _log.exception("internal error while answering %r", payload[:200])
            reply = TEMP_INTERNAL
        if type(reply) is bytes:
            if self._pending:
                self._pending.append(reply)
            else:
                assert self._transport is not None
                self._transport.write(reply)
            return
        assert isinstance(reply, Coroutine)
        task = asyncio.ensure_future(reply)
        self._pending.append(task)
        task.add_done_callback(self._on_done)
        if len(self._pending) >= _PIPELINE_LIMIT and not self._paused_pipeline:
            self._paused_pipeline = True
            assert self._transport is not None
            self._transport.pause_reading()

    def _on_done(self, task: asyncio.Task[bytes]) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        transport = self._transport
        assert transport is not None
        while pending:
            head = pending[0]
            if isinstance(head, bytes):
                transport.write(head)
            elif head.done():
                if head.cancelled() or head.exception() is not None:
                    if not head.cancelled():
                        _log.error("lookup failed", exc_info=head.exception())
                    transport.write(TEMP_INTERNAL)
                else:
                    transport.write(head.result())
            else:
                break
            pending.popleft()
        if self._closing:
            self._close_when_flushed()
        else:
            self._fast_ok = not (pending or self._parser.pending)
            self._maybe_resume_reading()

    def _maybe_resume_reading(self) -> None:
        if self._paused_pipeline and len(self._pending) < _PIPELINE_LIMIT // 2:
            self._paused_pipeline = False
        paused = self._paused_pipeline or self._paused_writing or self._closing
        if not paused and self._transport is not None:
            self._transport.resume_reading()

    def _close_when_flushed(self) -> None:
        if not self._pending and self._transport is not None:
            self._transport.close()

    # -- used by the server ----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """True when no reply is owed (safe to close without losing an answer)."""
        return not self._pending

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def close_idle(self) -> None:
        """Close an idle connection; abort it if an earlier close is still pending.

        ``close()`` waits until the write buffer is flushed, which never happens
        for a client that does not read its replies: such a connection would
        keep its descriptor and buffers for ever. The sweep calls this once per
        period, so the second call finds the close still pending and aborts.
        """
        transport = self._transport
        if transport is None:
            return
        if transport.is_closing():
            _log.info("aborting a connection whose client does not read its replies")
            transport.abort()
        else:
            _log.debug("closing idle connection")
            self._server.metrics.idle_closed()
            transport.close()


class SocketmapServer:
    """Owns the listening socket(s) and every open connection of one process."""

    def __init__(self, config: Config, responder: Responder) -> None:
        self.config = config
        self.responder = responder
        #: The worker's counters (the responder's): connections are counted there too.
        self.metrics = responder.metrics
        self.max_connections = config.max_connections
        self.connections: set[SocketmapProtocol] = set()
        self.tick = 0
        self._idle_ticks = max(1, round(config.idle_timeout / _SWEEP_PERIOD))
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._unix_file: UnixSocketFile | None = None
        self._refused = 0

    # -- start ---------------------------------------------------------------------------

    async def start(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Start accepting; ListenError with a clear message on failure.

        Without ``sockets`` the server binds ``config``'s address itself and,
        for a unix socket, removes the socket file again in :meth:`stop`.
        With ``sockets`` (already bound, e.g. by the supervisor before it
        dropped privileges and forked this worker) it only serves them: the
        socket file belongs to whoever bound it, so workers replaced one at a
        time never remove the path their successors answer on.
        """
        loop = asyncio.get_running_loop()
        if sockets is None:
            if self.config.path:
                sock, self._unix_file = bind_unix(self.config)
                sockets = [sock]
            else:
                infos = await loop.run_in_executor(
                    None, resolve_listen_address, self.config.host, self.config.port
                )
                sockets = bind_tcp(self.config, infos)
        try:
            for sock in sockets:
                if sock.family == socket.AF_UNIX:
                    server = await loop.create_unix_server(
                        lambda: SocketmapProtocol(self),
                        sock=sock,
                        backlog=self.config.backlog,
                        **_KEEP_SOCKET_FILE,
                    )
                else:
                    server = await loop.create_server(
                        lambda: SocketmapProtocol(self), sock=sock, backlog=self.config.backlog
                    )
                self._servers.append(server)
        except BaseException:
            for sock in sockets:
                sock.close()
            self._remove_unix_socket()
            raise
        self._sweeper = asyncio.ensure_future(self._sweep())

    @property
    def addresses(self) -> list[Any]:
        """Bound addresses (``(host, port)`` tuples or the unix socket path)."""
        return [sock.getsockname() for server in self._servers for sock in server.sockets]

    # -- run ------------------------------------------------------------------------------

    def refuse(self, transport: asyncio.Transport) -> None:
        # Over the limit: close at once rather than queue, so the worker's memory
        # and descriptors stay bounded; Postfix retries the lookup.
        self._refused += 1
        self.metrics.connection_refused()
        if self._refused == 1 or self._refused % 1000 == 0:
            _log.warning(
                "max_connections (%d) reached; refused %d connection(s) so far",
                self.max_connections,
                self._refused,
                extra={"event": "connection-refused"},
            )
        transport.abort()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_PERIOD)
            self.tick += 1
            limit = self.tick - self._idle_ticks
            for conn in list(self.connections):
                if conn.last_tick <= limit and conn.idle:
                    conn.close_idle()

    # -- stop -----------------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Stop accepting, let owed replies go out for up to ``timeout`` s, close all."""
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self._remove_unix_socket()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections:
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
            if not self.connections or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()

    def _remove_unix_socket(self) -> None:
        unix_file, self._unix_file = self._unix_file, None
        if unix_file is not None:
            unix_file.remove()
