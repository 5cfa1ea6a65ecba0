"""The policy hosts: one HTTPS server on <ip>:443 serving every test domain.

The certificate is chosen per SNI name (``sni_callback``) and the response per
``Host`` header, from a thread-safe table of :class:`Site` entries. The HTTP side
is a deliberately small HTTP/1.1 responder written on asyncio streams rather
than a web framework, because the tests need responses a framework would
"correct": no Content-Type at all, a body longer than a sane cap with an honest
Content-Length, chunked bodies that never end within the cap, a gzip
Content-Encoding. One request per connection, then ``Connection: close``.

Certificates come from trustme (a trusted test CA and an untrusted one) and,
for the self-signed kind, from ``cryptography`` directly.

Hostile hosts: a :class:`Site` can drip its response one byte at a time
(``drip``), send a body that never ends (``endless``), and a server can be
pinned to one TLS version (``HttpsServer(..., tls_version=TLSVersion.TLSv1)``)
to play a host that only speaks TLS 1.0.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers.streams import close_server, serving

__all__ = ["CertKind", "Certificates", "HttpsServer", "Site"]

CertKind = Literal["good", "untrusted", "wrong-name", "expired", "self-signed"]
CERT_KINDS: tuple[CertKind, ...] = ("good", "untrusted", "wrong-name", "expired", "self-signed")
Framing = Literal["length", "chunked", "close"]

_REASONS = {200: "OK", 301: "Moved Permanently", 302: "Found", 404: "Not Found", 500: "Error"}
_MAX_HEAD = 16_384
_CHUNK = 2049  # odd size, as the old daemon's fixture used


@dataclass(frozen=True)
class Site:
    """How ``https://mta-sts.<domain>/`` answers."""

    body: bytes
    status: int = 200
    content_type: str | None = "text/plain"  # None: no Content-Type header at all
    headers: tuple[tuple[str, str], ...] = ()
    framing: Framing = "length"  # Content-Length / chunked / until close
    delay: float = 0.0  # seconds to wait before answering
    cert: CertKind = "good"
    # Seconds between single bytes of the body (the head goes at once unless
    # ``drip_head``); 0 sends everything at once.
    drip: float = 0.0
    drip_head: bool = False
    # After the body, keep sending it again until the client goes away (with
    # "close" framing: no length; with "chunked": chunks that never end).
    endless: bool = False


class Certificates:
    """Server certificates and SSL contexts for every kind, made on demand."""

    def __init__(self, directory: str) -> None:
        self._dir = directory
        self._lock = threading.Lock()
        self.ca = trustme.CA(organization_name="mtasts-fast test CA")
        self.untrusted_ca = trustme.CA(organization_name="mtasts-fast untrusted CA")
        self.ca_file = os.path.join(directory, "test-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self._contexts: dict[tuple[CertKind, str, ssl.TLSVersion | None], ssl.SSLContext] = {}

    def context(
        self, kind: CertKind, host: str, tls_version: ssl.TLSVersion | None = None
    ) -> ssl.SSLContext:
        """The server context presenting a ``kind`` certificate for ``host``.

        ``tls_version`` pins the context to that one protocol version.
        """
        with self._lock:
            ctx = self._contexts.get((kind, host, tls_version))
            if ctx is None:
                ctx = self._make(kind, host)
                if tls_version is not None:
                    pin_tls_version(ctx, tls_version)
                self._contexts[(kind, host, tls_version)] = ctx
            return ctx

    def _make(self, kind: CertKind, host: str) -> ssl.SSLContext:
        if kind == "good":
            return self._context_for(self.ca.issue_cert(host))
        if kind == "untrusted":
            return self._context_for(self.untrusted_ca.issue_cert(host))
        if kind == "wrong-name":
            # The old daemon's bad-cert2: valid for the bare domain only.
            bare = host.removeprefix("mta-sts.")
            return self._context_for(self.ca.issue_cert(bare))
        if kind == "expired":
            now = datetime.datetime.now(datetime.UTC)
            leaf = self.ca.issue_cert(
                host,
                not_before=now - datetime.timedelta(days=30),
                not_after=now - datetime.timedelta(days=1),
            )
            return self._context_for(leaf)
        if kind == "self-signed":
            return self._self_signed(host)
        raise ValueError(f"unknown certificate kind {kind!r}")

    @staticmethod
    def _context_for(leaf: trustme.LeafCert) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(ctx)
        return ctx

    def _self_signed(self, host: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        path = os.path.join(self._dir, f"self-signed-{host}.pem")
        with open(path, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(path)
        return ctx


def pin_tls_version(ctx: ssl.SSLContext, version: ssl.TLSVersion) -> None:
    """Make ``ctx`` speak only ``version``, legacy versions included.

    TLS 1.0 and 1.1 need OpenSSL security level 0 (Debian's default level 2
    refuses them and their SHA-1 signatures); Python warns that the versions
    are deprecated, which is the point of a hostile host.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if version < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = version
        ctx.maximum_version = version


@dataclass
class _Table:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sites: dict[str, Site] = field(default_factory=dict)  # keyed by host name
    requests: Counter[str] = field(default_factory=Counter)
    last: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> request


class HttpsServer:
    """Serves the :class:`Site` table on ``ip``:``port`` (443 by default)."""

    def __init__(
        self,
        certs: Certificates,
        ip: str,
        port: int = 443,
        *,
        tls_version: ssl.TLSVersion | None = None,
    ) -> None:
        self.certs = certs
        self.ip = ip
        self.port = port
        # Only this protocol version is spoken (None: what the defaults allow).
        self.tls_version = tls_version
        self._table = _Table()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- table (any thread) ---

    def set_site(self, host: str, site: Site) -> None:
        with self._table.lock:
            self._table.sites[host.lower()] = site

    def get_site(self, host: str) -> Site | None:
        with self._table.lock:
            return self._table.sites.get(host.lower())

    def remove_site(self, host: str) -> None:
        with self._table.lock:
            self._table.sites.pop(host.lower(), None)

    def requests(self, host: str) -> int:
        with self._table.lock:
            return self._table.requests[host.lower()]

    def last_request(self, host: str) -> dict[str, str] | None:
        with self._table.lock:
            request = self._table.last.get(host.lower())
            return None if request is None else dict(request)

    # --- serving (server thread) ---

    async def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # Presented only when the SNI name is unknown (and then never valid).
        self.certs.ca.issue_cert("default.invalid").configure_cert(ctx)
        if self.tls_version is not None:
            pin_tls_version(ctx, self.tls_version)
        ctx.sni_callback = self._pick_certificate
        self._server = await asyncio.start_server(
            self._serve, self.ip, self.port, ssl=ctx, reuse_address=True
        )

    async def close(self) -> None:
        await close_server(self._server, self._tasks)

    def _pick_certificate(
        self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        if server_name is None:
            return None
        site = self.get_site(server_name)
        if site is not None:
            sslobj.context = self.certs.context(site.cert, server_name.lower(), self.tls_version)
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with serving(self._tasks, writer, asyncio.LimitOverrunError, ssl.SSLError):
            await self._respond(reader, writer)

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if len(head) > _MAX_HEAD:
            return
        lines = head.decode("latin-1").split("\r\n")
        # The request line under ":request", headers by lower-case name.
        request = {":request": lines[0]}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                request[name.strip().lower()] = value.strip()
        host = request.get("host", "").lower().partition(":")[0]
        with self._table.lock:
            self._table.requests[host] += 1
            self._table.last[host] = request
            site = self._table.sites.get(host)
        if site is None:
            site = Site(body=b"no such site\n", status=404)
        if site.delay:
            await asyncio.sleep(site.delay)
        await self._send(writer, site)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, site: Site) -> None:
        reason = _REASONS.get(site.status, "Status")
        head = [f"HTTP/1.1 {site.status} {reason}", "Connection: close"]
        if site.content_type is not None:
            head.append(f"Content-Type: {site.content_type}")
        head.extend(f"{name}: {value}" for name, value in site.headers)
        if site.framing == "length":
            head.append(f"Content-Length: {len(site.body)}")
        elif site.framing == "chunked":
            head.append("Transfer-Encoding: chunked")
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if site.drip and site.drip_head:
            await _drip(writer, head_bytes, site.drip)
        else:
            writer.write(head_bytes)
        chunked = site.framing == "chunked"
        body = b"".join(_framed_pieces(site.body, chunked))
        if site.drip:
            await _drip(writer, body, site.drip)
        else:
            writer.write(body)
        await writer.drain()
        if site.endless:
            # Until the client hangs up (drain raises) or close() cancels us.
            again = b"".join(_framed_pieces(site.body or b"x" * _CHUNK, chunked))
            while not writer.is_closing():
                writer.write(again)
                await writer.drain()
                # drain() returns without yielding while the buffer is low; let
                # the loop deliver the client's hang-up (connection_lost).
                await asyncio.sleep(0)
            return
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()


def _framed_pieces(body: bytes, chunked: bool) -> list[bytes]:
    """``body`` as written on the wire: itself, or chunks (the end chunk comes later)."""
    if not chunked:
        return [body]
    return [
        b"%x\r\n%s\r\n" % (len(body[i : i + _CHUNK]), body[i : i + _CHUNK])
        for i in range(0, len(body), _CHUNK)
    ]


async def _drip(writer: asyncio.StreamWriter, data: bytes, interval: float) -> None:
    for i in range(len(data)):
        if writer.is_closing():
            return
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(interval)
