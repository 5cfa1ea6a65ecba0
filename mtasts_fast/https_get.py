"""One HTTPS GET on asyncio streams: what a policy fetch needs, and nothing else.

A policy fetch is a single GET of a small text file with ``Connection:
close`` (RFC 8461 §3.3): no cookies, no redirects, no compression, no
connection reuse, no request body. This module does exactly that on
asyncio's own streams, so a worker does not carry a general-purpose HTTP
client library (aiohttp and its dependencies were a third of a worker's
resident memory).

Connecting
    The host's addresses come from ``resolve`` (the fetcher's c-ares channel
    when nameservers are configured, else the system's ``getaddrinfo``).
    With several addresses the attempts are staggered as RFC 8305 (Happy
    Eyeballs) describes: families interleaved, the next attempt started
    CONNECT_DELAY seconds after the previous one unless a connection came up,
    the first to connect wins. Then TLS, with the host name for SNI and
    certificate verification (a failed verification is raised as the
    ``ssl.SSLCertVerificationError`` it is).

Proxies
    ``https_proxy`` (or ``HTTPS_PROXY``), unless ``no_proxy`` (or
    ``NO_PROXY``) names the host, a parent of it, or ``*``: the connection
    goes to the proxy, which is asked to ``CONNECT host:443`` (with
    ``Proxy-Authorization: Basic`` when the proxy URL has credentials), and
    TLS runs through the tunnel to the host. The environment is read once,
    when the client is made, as the daemon's other settings are.

The response
    The status line and headers (at most MAX_HEAD bytes) are parsed when
    :meth:`HttpsClient.get` returns; the body is read on demand, up to a
    limit, whatever its framing: ``Content-Length``, ``Transfer-Encoding:
    chunked``, or until the connection closes. Anything malformed raises
    :class:`HttpError`. The connection is aborted, not shut down, when the
    response is closed: waiting for a peer's TLS ``close_notify`` is how
    transports of hosts that never send it used to linger.

The caller bounds the time (``asyncio.timeout``); cancelling anywhere closes
whatever was opened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from urllib.parse import unquote, urlsplit

__all__ = ["CONNECT_DELAY", "MAX_HEAD", "HttpError", "HttpsClient", "Resolve", "Response"]

#: RFC 8305 §5: "a recommended value of 250 milliseconds" between attempts.
CONNECT_DELAY = 0.25
#: The status line and headers, together, at most.
MAX_HEAD = 32_768
_HTTPS_PORT = 443

#: ``resolve(host, port)``: the host's addresses as (family, address), in order.
Resolve = Callable[[str, int], Awaitable[Sequence[tuple[int, str]]]]


class HttpError(Exception):
    """The request could not be made or the response is not HTTP/1.x as it should be."""


class Response:
    """A response whose head has been read; :meth:`read` the body, then :meth:`close`."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.status = status
        #: Header names in lower case; the first of repeated headers.
        self.headers = headers
        self._reader = reader
        self._writer = writer

    @property
    def content_length(self) -> int | None:
        return _content_length(self.headers)

    async def read(self, limit: int) -> bytes:
        """The body, or its first ``limit + 1`` bytes if it is longer than ``limit``."""
        headers = self.headers
        reader = self._reader
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if coding.strip().lower() != "chunked":
                raise HttpError(f"Transfer-Encoding {coding[:40]!r} not supported")
            return await _read_chunked(reader, limit)
        length = _content_length(headers)
        if length is not None:
            try:
                return await reader.readexactly(min(length, limit + 1))
            except asyncio.IncompleteReadError as exc:
                raise HttpError(f"body ended after {len(exc.partial)} of {length} bytes") from None
        body = bytearray()
        while len(body) <= limit:
            chunk = await reader.read(limit + 1 - len(body))
            if not chunk:
                break
            body += chunk
        return bytes(body)

    def close(self) -> None:
        _abort(self._writer)


class HttpsClient:
    """Makes GET requests over HTTPS (see the module doc); one per fetcher."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        resolve: Resolve | None = None,
        *,
        headers: Sequence[tuple[str, str]] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``resolve``: None for the system's resolver. ``headers``: sent with every
        request. ``environ``: where the proxy settings are read (``os.environ``)."""
        self._ssl = ssl_context
        self._resolve = resolve or _system_resolve
        self._headers = "".join(f"{name}: {value}\r\n" for name, value in headers)
        env = os.environ if environ is None else environ
        self._proxy = _proxy_from(env)
        self._no_proxy = _no_proxy_from(env)

    def proxy_for(self, host: str) -> tuple[str, int, str | None] | None:
        """The proxy a request to ``host`` goes through: (host, port, credentials), or None."""
        if self._proxy is None or _bypassed(host, self._no_proxy):
            return None
        return self._proxy

    async def get(self, host: str, path: str) -> Response:
        """Send ``GET path`` to ``https://host/``; the response, its head read."""
        proxy = self.proxy_for(host)
        if proxy is None:
            sock = await self._connect(host, _HTTPS_PORT)
        else:
            sock = await self._connect(proxy[0], proxy[1])
        writer = None
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_HEAD)
            if proxy is not None:
                await _tunnel(reader, writer, host, proxy[2])
            try:
                await writer.start_tls(self._ssl, server_hostname=host)
            except ssl.SSLCertVerificationError:
                raise
            except (ssl.SSLError, OSError) as exc:
                raise HttpError(f"cannot connect to {host}:{_HTTPS_PORT}: {_detail(exc)}") from exc
            writer.write(
                (
                    f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{self._headers}"
                    "Connection: close\r\n\r\n"
                ).encode("ascii")
            )
            status, headers = await _read_head(reader)
            return Response(status, headers, reader, writer)
        except BaseException:
            if writer is not None:
                _abort(writer)
            else:
                sock.close()
            raise

    async def _connect(self, host: str, port: int) -> socket.socket:
        """A connected socket to ``host``; HttpError naming it if none can be had."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        try:
            if literal is not None:  # a proxy given by its address: nothing to resolve
                family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
                addresses: Sequence[tuple[int, str]] = [(family, host)]
            else:
                addresses = await self._resolve(host, port)
        except OSError as exc:
            raise HttpError(f"cannot connect to {host}:{port}: {_detail(exc)}") from exc
        if not addresses:
            raise HttpError(f"cannot connect to {host}:{port}: no address")
        try:
            return await _first_to_connect(_interleaved(addresses), port)
        except OSError as exc:
            raise HttpError(f"cannot connect to {host}:{port}: {_detail(exc)}") from exc


# -- connecting -------------------------------------------------------------------------------


async def _system_resolve(host: str, port: int) -> list[tuple[int, str]]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos]


def _interleaved(addresses: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """One of each family in turn, in the resolver's order (RFC 8305 §4)."""
    by_family: dict[int, list[tuple[int, str]]] = {}
    for item in dict.fromkeys(addresses):
        by_family.setdefault(item[0], []).append(item)
    queues = list(by_family.values())
    ordered: list[tuple[int, str]] = []
    while queues:
        for queue in list(queues):
            ordered.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    return ordered


async def _open(family: int, address: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _first_to_connect(addresses: Sequence[tuple[int, str]], port: int) -> socket.socket:
    """Staggered connection attempts; the first socket to connect (RFC 8305 §5)."""
    pending: set[asyncio.Task[socket.socket]] = set()
    errors: list[OSError] = []
    waiting = iter(addresses)
    try:
        while True:
            following = next(waiting, None)
            if following is not None:
                pending.add(asyncio.ensure_future(_open(following[0], following[1], port)))
            if not pending:
                raise errors[-1] if errors else OSError("no address to connect to")
            done, pending = await asyncio.wait(
                pending,
                timeout=CONNECT_DELAY if following is not None else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                error = task.exception()
                if error is None:
                    winner = task.result()
                    # Any other attempt that has connected too is closed.
                    for other in done - {task}:
                        if other.exception() is None:
                            other.result().close()
                    return winner
                if not isinstance(error, OSError):
                    raise error
                errors.append(error)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            # A cancelled attempt closes its own socket; one that connected
            # in the meantime is closed here.
            await asyncio.wait(pending)
            for task in pending:
                if not task.cancelled() and task.exception() is None:
                    task.result().close()


async def _tunnel(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, credentials: str | None
) -> None:
    """Ask the proxy for a tunnel to ``host:443`` (RFC 9110 §9.3.6)."""
    target = f"{host}:{_HTTPS_PORT}"
    auth = f"Proxy-Authorization: Basic {credentials}\r\n" if credentials else ""
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode("ascii"))
    status, _ = await _read_head(reader)
    if status != 200:
        raise HttpError(f"cannot connect to {target}: the proxy answered {status} to CONNECT")


def _proxy_from(environ: Mapping[str, str]) -> tuple[str, int, str | None] | None:
    """``https_proxy`` as (host, port, Basic credentials or None); None when unset."""
    url = environ.get("https_proxy") or environ.get("HTTPS_PROXY")
    if not url:
        return None
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    credentials = None
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        credentials = base64.b64encode(secret.encode()).decode("ascii")
    default_port = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default_port
    except ValueError:
        return None
    return parts.hostname, port, credentials


def _no_proxy_from(environ: Mapping[str, str]) -> tuple[str, ...]:
    text = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    return tuple(e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())


def _bypassed(host: str, entries: tuple[str, ...]) -> bool:
    """``no_proxy`` names ``host`` or one of its parents, or is ``*``."""
    host = host.lower().rstrip(".")
    return any(e == "*" or host == e or host.endswith("." + e) for e in entries)


# -- the response ------------------------------------------------------------------------------


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers of the response (names lower-cased; the first of repeats)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise HttpError(
            "connection closed before the response head" if not exc.partial
            else "connection closed in the response head"
        ) from None  # fmt: skip
    except asyncio.LimitOverrunError:
        raise HttpError(f"response head over {MAX_HEAD} bytes") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit() or rest[3:4] not in ("", " "):
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or line[:1] in (" ", "\t"):
            raise HttpError(f"malformed header line {line[:60]!r}")
        headers.setdefault(name.lower(), value.strip(" \t"))
    return int(code), headers


def _content_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit() or not value.isascii():
        raise HttpError(f"Content-Length {value[:40]!r} is not a number")
    return int(value)


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    """A chunked body (RFC 9112 §7.1), or its first ``limit + 1`` bytes."""
    body = bytearray()
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpError(f"bad chunk size {size_text[:20]!r}") from None
            if size < 0 or not size_text.isalnum():
                raise HttpError(f"bad chunk size {size_text[:20]!r}")
            if size == 0:
                # Trailer fields, up to the empty line; their content is ignored.
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return bytes(body)
            take = min(size, limit + 1 - len(body))
            body += await reader.readexactly(take)
            if len(body) > limit:
                return bytes(body)
            if await reader.readexactly(2) != b"\r\n":
                raise HttpError("chunk not followed by CRLF")
    except asyncio.IncompleteReadError:
        raise HttpError("connection closed in a chunked body") from None
    except asyncio.LimitOverrunError:
        raise HttpError("chunk size line too long") from None


# -- helpers -----------------------------------------------------------------------------------


def _detail(exc: BaseException) -> str:
    """One line for a connection-level error (some TLS failures carry no text at all)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()
