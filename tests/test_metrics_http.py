"""The metrics endpoint's HTTP responder, driven by a poll() loop as in the supervisor.

The loop runs in a thread of the test (the supervisor runs it in its main
loop): every socket of the server is non-blocking, so a slow or silent
client never delays another one, requests are bounded in size and time, and
only GET and HEAD of known paths are answered.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from mtasts_fast.metrics import http
from mtasts_fast.metrics.http import MetricsHttpServer, Response


class PollLoop(threading.Thread):
    """The supervisor's loop, reduced to what the endpoint needs."""

    def __init__(self, handler: Callable[[str], Response]) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.poll = select.poll()
        self.server = MetricsHttpServer([self.listener], self.poll, handler)
        self.halt = threading.Event()
        self.calls: list[str] = []

    def run(self) -> None:
        while not self.halt.is_set():
            for fd, events in self.poll.poll(20):
                assert self.server.handles(fd)
                self.server.on_event(fd, events)
            self.server.expire()
        self.server.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


@pytest.fixture
def endpoint() -> Iterator[PollLoop]:
    def handler(path: str) -> Response:
        loop.calls.append(path)
        if path == "/metrics":
            return Response(200, "text/plain; version=0.0.4", b"up 1\n" * 20_000)
        if path == "/healthz":
            return Response(503, "text/plain", b"unavailable: test\n")
        if path == "/big":
            return Response(200, "text/plain", b"x" * (32 << 20))
        if path == "/crash":
            raise RuntimeError("handler failed")
        return Response(404, "text/plain", b"no\n")

    loop = PollLoop(handler)
    loop.start()
    yield loop
    loop.stop()


def _exchange(address: tuple[str, int], request: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_get_returns_the_page_with_its_length(endpoint: PollLoop) -> None:
    response = _exchange(endpoint.address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4\r\n" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Connection: close" in head
    assert body == b"up 1\n" * 20_000  # larger than one send(): written as poll() allows


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", 503, id="health-page-status"),
        pytest.param(b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n", 200, id="query-string-ignored"),
        pytest.param(b"GET /nonesuch HTTP/1.1\r\n\r\n", 404, id="unknown-path"),
        pytest.param(b"POST /metrics HTTP/1.1\r\n\r\n", 405, id="post"),
        pytest.param(b"GET /metrics HTTP/2.0\r\n\r\n", 505, id="http2"),
        pytest.param(b"nonsense\r\n\r\n", 400, id="garbage"),
        pytest.param(b"GET /metrics HTTP/1.1\n\n", 200, id="bare-lf"),
        pytest.param(b"GET /crash HTTP/1.1\r\n\r\n", 503, id="handler-error"),
    ],
)
def test_requests(endpoint: PollLoop, request_bytes: bytes, status: int) -> None:
    assert _status(_exchange(endpoint.address, request_bytes)) == status


def test_head_has_no_body(endpoint: PollLoop) -> None:
    response = _exchange(endpoint.address, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert _status(head) == 200
    assert body == b""
    assert b"Content-Length: 100000" in head


def test_an_oversized_request_is_refused(endpoint: PollLoop) -> None:
    request = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * http.MAX_REQUEST + b"\r\n\r\n"
    assert _status(_exchange(endpoint.address, request)) == 431
    assert endpoint.calls == []


def test_a_silent_client_does_not_hold_up_another_and_is_cut_off(
    endpoint: PollLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "CLIENT_TIMEOUT", 0.5)
    stalled = socket.create_connection(endpoint.address, timeout=5)
    stalled.sendall(b"GET /metr")  # and never more
    started = time.monotonic()
    assert _status(_exchange(endpoint.address, b"GET /healthz HTTP/1.1\r\n\r\n")) == 503
    assert time.monotonic() - started < 0.5
    # The stalled connection is closed at its deadline.
    stalled.settimeout(5)
    assert stalled.recv(100) == b""
    assert time.monotonic() - started < 3
    stalled.close()


def test_a_client_that_never_reads_does_not_block_the_loop(
    endpoint: PollLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "CLIENT_TIMEOUT", 1.0)
    with socket.create_connection(endpoint.address, timeout=5) as greedy:
        greedy.sendall(b"GET /big HTTP/1.1\r\n\r\n")
        time.sleep(0.2)  # 32 MiB fill the socket buffers; the rest waits for it to read
        started = time.monotonic()
        assert _status(_exchange(endpoint.address, b"GET /healthz HTTP/1.1\r\n\r\n")) == 503
        assert time.monotonic() - started < 0.5
        # At its deadline the connection is cut, the answer unfinished.
        time.sleep(1.0)
        received = 0
        try:
            while chunk := greedy.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < 32 << 20


def test_connections_beyond_the_limit_are_closed(endpoint: PollLoop) -> None:
    held = [socket.create_connection(endpoint.address, timeout=5) for _ in range(http.MAX_CLIENTS)]
    try:
        time.sleep(0.2)  # all accepted
        with socket.create_connection(endpoint.address, timeout=5) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            try:
                closed = extra.recv(100) == b""
            except ConnectionResetError:  # closed with the request unread
                closed = True
            assert closed
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert _status(_exchange(endpoint.address, b"GET /healthz HTTP/1.1\r\n\r\n")) == 503


def test_next_deadline_follows_the_oldest_client(endpoint: PollLoop) -> None:
    assert endpoint.server.next_deadline() is None
    sock = socket.create_connection(endpoint.address, timeout=5)
    time.sleep(0.2)
    deadline = endpoint.server.next_deadline()
    assert deadline is not None
    assert 0 < deadline - time.monotonic() <= http.CLIENT_TIMEOUT
    sock.close()
