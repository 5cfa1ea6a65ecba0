"""``GET /metrics`` and ``/healthz``, served from the supervisor's ``poll()`` loop.

Why in the supervisor rather than in a child process of its own: the
supervisor already holds everything a scrape needs (every live worker's
region, the totals of the workers that exited, which workers answer), and a
child forked once could not map the regions of workers forked after it
without a file system or descriptor passing between them. The supervisor
must not run threads (it forks), so the endpoint is a small non-blocking
HTTP/1.1 responder driven by the same ``poll()`` as everything else:

- every socket is non-blocking; a request is read and a response written a
  piece at a time as ``poll()`` reports them ready, so a slow client costs
  a registered descriptor, never a wait;
- a request head larger than :data:`MAX_REQUEST` bytes is answered 431;
  a connection is closed :data:`CLIENT_TIMEOUT` seconds after it was
  accepted, finished or not; at most :data:`MAX_CLIENTS` are open at once
  (more are closed on accept);
- one request per connection (``Connection: close``): Prometheus reconnects
  per scrape at this rate at no measurable cost.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import socket
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

__all__ = ["CLIENT_TIMEOUT", "MAX_CLIENTS", "MAX_REQUEST", "MetricsHttpServer", "Response"]

_log = logging.getLogger("mtasts_fast.metrics")

#: Bytes of request line and headers accepted.
MAX_REQUEST = 8192
#: Seconds a client connection may stay open, reading and writing included.
CLIENT_TIMEOUT = 10.0
#: Client connections open at once.
MAX_CLIENTS = 16
# Connections accepted per poll() event, so a flood cannot hold the loop.
_ACCEPTS_PER_EVENT = 64
_ERRORS = select.POLLERR | select.POLLHUP | select.POLLNVAL

_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes


#: handler(path) -> Response, for a GET or HEAD of ``path`` (query string removed).
Handler = Callable[[str], Response]


class _Client:
    __slots__ = ("deadline", "inbox", "outbox", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbox = bytearray()
        self.outbox: memoryview | None = None


def _text(status: int, message: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", (message + "\n").encode())


class MetricsHttpServer:
    """Serves ``handler`` on listening ``sockets``, driven by the caller's ``poll``."""

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        poll: select.poll,
        handler: Handler,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listening = {sock.fileno(): sock for sock in sockets}
        self._poll = poll
        self._handler = handler
        self._clock = clock
        self._clients: dict[int, _Client] = {}
        for sock in sockets:
            sock.setblocking(False)
            sock.listen(MAX_CLIENTS)
            poll.register(sock.fileno(), select.POLLIN)

    def handles(self, fd: int) -> bool:
        return fd in self._listening or fd in self._clients

    def next_deadline(self) -> float | None:
        """When the oldest client connection must be closed, if any is open."""
        return min((c.deadline for c in self._clients.values()), default=None)

    def on_event(self, fd: int, events: int) -> None:
        """Handle what ``poll()`` reported for ``fd``."""
        listener = self._listening.get(fd)
        if listener is not None:
            self._accept(listener)
            return
        client = self._clients.get(fd)
        if client is None:
            return
        try:
            if events & select.POLLIN and client.outbox is None:
                self._read(client)
            elif events & select.POLLOUT and client.outbox is not None:
                self._write(client)
            elif events & _ERRORS:
                self._drop(client)
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                _log.debug("metrics client: %s", exc)
            self._drop(client)

    def expire(self, now: float | None = None) -> None:
        """Close the connections past their deadline."""
        now = self._clock() if now is None else now
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            self._drop(client)

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        for fd, sock in self._listening.items():
            with contextlib.suppress(KeyError, ValueError):
                self._poll.unregister(fd)
            sock.close()
        self._listening.clear()

    def forget_in_child(self) -> None:
        """In a forked worker: close every descriptor, leaving the parent's intact."""
        for client in self._clients.values():
            client.sock.close()
        self._clients = {}
        for sock in self._listening.values():
            sock.close()
        self._listening = {}

    # -- connections ---------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_EVENT):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, say: try again at the next event
                _log.warning("metrics endpoint: cannot accept a connection: %s", exc)
                return
            if len(self._clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, self._clock() + CLIENT_TIMEOUT)
            self._clients[sock.fileno()] = client
            self._poll.register(sock.fileno(), select.POLLIN)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self._clients.pop(fd, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(fd)
        client.sock.close()

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self._drop(client)
            return
        client.inbox += data
        end = client.inbox.find(b"\r\n\r\n")
        if end < 0:
            end = client.inbox.find(b"\n\n")  # bare LF line ends, as curl never sends but nc does
        if end < 0:
            if len(client.inbox) > MAX_REQUEST:
                self._respond(client, _text(431, "request too large"), head_only=False)
            return
        if end > MAX_REQUEST:
            self._respond(client, _text(431, "request too large"), head_only=False)
            return
        self._answer(client, bytes(client.inbox[:end]))

    def _answer(self, client: _Client, head: bytes) -> None:
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[1].startswith(b"/"):
            self._respond(client, _text(400, "bad request"), head_only=False)
            return
        method, target, version = parts
        if version not in (b"HTTP/1.0", b"HTTP/1.1"):
            self._respond(client, _text(505, "HTTP/1.0 or HTTP/1.1 only"), head_only=False)
            return
        if method not in (b"GET", b"HEAD"):
            self._respond(client, _text(405, "GET or HEAD only"), head_only=False)
            return
        path = target.split(b"?", 1)[0].decode("latin-1")
        try:
            response = self._handler(path)
        except Exception:
            _log.exception("metrics endpoint: cannot answer %s", path)
            response = _text(503, "internal error")
        self._respond(client, response, head_only=method == b"HEAD")

    def _respond(self, client: _Client, response: Response, *, head_only: bool) -> None:
        status, content_type, body = response
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        client.outbox = memoryview(head if head_only else head + body)
        self._poll.modify(client.sock.fileno(), select.POLLOUT)
        self._write(client)

    def _write(self, client: _Client) -> None:
        outbox = client.outbox
        assert outbox is not None
        try:
            sent = client.sock.send(outbox)
        except (BlockingIOError, InterruptedError):
            return
        outbox = outbox[sent:]
        client.outbox = outbox
        if not outbox:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_WR)
            self._drop(client)
