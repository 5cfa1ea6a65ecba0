"""The HTTPS client of policy fetches (https_get.py), piece by piece.

The whole GET against the test world's hosts (statuses, media types,
framings, certificates, TLS versions, proxies, hostile hosts) is in
tests/test_fetcher.py and tests/test_hostile_remote.py; here are the parts
those cannot reach one at a time: the response parser on exact bytes, the
proxy settings, and the staggered connection attempts (RFC 8305).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import pytest

from mtasts_fast import https_get
from mtasts_fast.https_get import HttpError, HttpsClient, Response

pytestmark = pytest.mark.both_loops


def _reader(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=https_get.MAX_HEAD)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


class _Writer:
    def __init__(self) -> None:
        self.aborted = False
        self.transport = self

    def abort(self) -> None:
        self.aborted = True


async def _response(data: bytes) -> Response:
    reader = _reader(data)
    status, headers = await https_get._read_head(reader)
    return Response(status, headers, reader, _Writer())  # type: ignore[arg-type]


# -- the response --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "body"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", b"abc", id="length"),
        pytest.param(b"HTTP/1.0 200 OK\r\n\r\nabc", b"abc", id="until-close"),
        pytest.param(b"HTTP/1.1 200\r\n\r\nabc", b"abc", id="no-reason-phrase"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2;ext=1\r\nab\r\n1\r\nc\r\n0\r\nX-Trailer: y\r\n\r\n",
            b"abc",
            id="chunked-extension-trailer",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
            b"0123456789",
            id="chunked-case-and-hex",
        ),
    ],
)
async def test_bodies_in_every_framing(data: bytes, body: bytes) -> None:
    response = await _response(data)
    assert response.status == 200
    assert await response.read(100) == body


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10, id="length"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100, id="until-close"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"4\r\nxxxx\r\n" * 100
            + b"0\r\n\r\n",
            id="chunked",
        ),
    ],
)
async def test_a_body_over_the_limit_is_cut_one_byte_past_it(data: bytes) -> None:
    response = await _response(data)
    assert await response.read(7) == b"x" * 8


async def test_headers_are_case_insensitive_and_the_first_of_repeats_counts() -> None:
    response = await _response(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
        b"content-type: text/html\r\nX-Empty:\r\nContent-Length:  0 \r\n\r\n"
    )
    assert response.status == 404
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["x-empty"] == ""
    assert response.content_length == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "before the response head", id="nothing"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA: b\r\n", "in the response head", id="cut-head"),
        pytest.param(b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x status line", id="http2"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line", id="long-code"),
        pytest.param(b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line", id="not-http"),
        pytest.param(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed header", id="no-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", "malformed header", id="folded"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n", "malformed header", id="space-name"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 9000, "over", id="huge-head"),
    ],
)
async def test_a_malformed_head_is_an_error(data: bytes, message: str) -> None:
    with pytest.raises(HttpError, match=message):
        await https_get._read_head(_reader(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"Content-Length: 5\r\n\r\nabc", "ended after 3 of 5", id="short-length"),
        pytest.param(b"Content-Length: -1\r\n\r\n", "not a number", id="negative-length"),
        pytest.param(b"Content-Length: 1e3\r\n\r\n", "not a number", id="float-length"),
        pytest.param(b"Transfer-Encoding: gzip\r\n\r\n", "not supported", id="other-coding"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size", id="hex"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n-1\r\n", "bad chunk size", id="sign"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc", "closed in", id="cut"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n1\r\nabc", "CRLF", id="overlong"),
    ],
)
async def test_a_malformed_body_is_an_error(data: bytes, message: str) -> None:
    response = await _response(b"HTTP/1.1 200 OK\r\n" + data)
    with pytest.raises(HttpError, match=message):
        await response.read(100)


# -- proxies -------------------------------------------------------------------------------------


def _client(**environ: str) -> HttpsClient:
    return HttpsClient(ssl.create_default_context(), environ=environ)


@pytest.mark.parametrize(
    ("environ", "host", "proxy"),
    [
        pytest.param({}, "mta-sts.a.test", None, id="none"),
        pytest.param(
            {"https_proxy": "http://p.test:3128"}, "mta-sts.a.test", ("p.test", 3128, None), id="on"
        ),
        pytest.param(
            {"HTTPS_PROXY": "p.test:8080"}, "mta-sts.a.test", ("p.test", 8080, None), id="upper"
        ),
        pytest.param({"https_proxy": "http://p.test"}, "x.test", ("p.test", 80, None), id="port"),
        pytest.param(
            {"https_proxy": "http://u%40x:p%3Aw@p.test:1"},
            "x.test",
            ("p.test", 1, "dUB4OnA6dw=="),  # base64 of "u@x:p:w"
            id="credentials",
        ),
        pytest.param(
            {"https_proxy": "http://p.test:1", "no_proxy": "a.test"},
            "mta-sts.a.test",
            None,
            id="no-proxy-parent",
        ),
        pytest.param(
            {"https_proxy": "http://p.test:1", "NO_PROXY": " .A.test , b.test"},
            "a.test",
            None,
            id="no-proxy-itself-dot-case",
        ),
        pytest.param(
            {"https_proxy": "http://p.test:1", "no_proxy": "a.test"},
            "mta-sts.ba.test",
            ("p.test", 1, None),
            id="no-proxy-not-a-suffix-match",
        ),
        pytest.param(
            {"https_proxy": "http://p.test:1", "no_proxy": "*"}, "x.test", None, id="no-proxy-all"
        ),
    ],
)
def test_the_proxy_for_a_host(environ: dict[str, str], host: str, proxy: Any) -> None:
    assert _client(**environ).proxy_for(host) == proxy


async def test_the_connect_request_carries_the_credentials() -> None:
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = _client(https_proxy=f"http://user:secret@127.0.0.1:{port}")
        with pytest.raises(HttpError, match="the proxy answered 407 to CONNECT"):
            await client.get("mta-sts.a.test", "/x")
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [
        b"CONNECT mta-sts.a.test:443 HTTP/1.1\r\nHost: mta-sts.a.test:443\r\n"
        b"Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=\r\n\r\n"
    ]


# -- connecting ----------------------------------------------------------------------------------


def test_addresses_are_tried_one_family_after_the_other() -> None:
    v4, v6 = socket.AF_INET, socket.AF_INET6
    given = [(v6, "::1"), (v6, "::2"), (v4, "1.1.1.1"), (v6, "::1"), (v4, "2.2.2.2")]
    assert https_get._interleaved(given) == [
        (v6, "::1"),
        (v4, "1.1.1.1"),
        (v6, "::2"),
        (v4, "2.2.2.2"),
    ]


async def test_a_silent_address_is_passed_by_after_the_connect_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first address never answers; the second one is tried CONNECT_DELAY
    # later and wins, long before the first would time out; the hanging
    # attempt is cancelled (and closes its socket).
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    real_open = https_get._open
    hung: list[asyncio.Task[Any]] = []

    async def fake_open(family: int, address: str, port: int) -> socket.socket:
        if address == "192.0.2.1":
            hung.append(asyncio.current_task())  # type: ignore[arg-type]
            await asyncio.sleep(3600)
        return await real_open(family, address, port)

    monkeypatch.setattr(https_get, "_open", fake_open)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        addresses = [(socket.AF_INET, "192.0.2.1"), (socket.AF_INET, "127.0.0.1")]
        sock = await https_get._first_to_connect(addresses, port)
        elapsed = loop.time() - started
        sock.close()
    finally:
        listener.close()
    assert https_get.CONNECT_DELAY <= elapsed < https_get.CONNECT_DELAY + 1.0
    assert hung
    assert hung[0].cancelled()


async def test_when_every_address_fails_the_last_error_is_raised() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    addresses = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "127.0.0.1")]
    with pytest.raises(ConnectionRefusedError):
        await https_get._first_to_connect(addresses, port)


async def test_an_unresolvable_host_names_itself() -> None:
    async def resolve(host: str, port: int) -> list[tuple[int, str]]:
        raise OSError(None, f"{host}: Domain name not found")

    client = HttpsClient(ssl.create_default_context(), resolve, environ={})
    with pytest.raises(HttpError) as caught:
        await client.get("mta-sts.nowhere.test", "/")
    assert str(caught.value) == (
        "cannot connect to mta-sts.nowhere.test:443: mta-sts.nowhere.test: Domain name not found"
    )
