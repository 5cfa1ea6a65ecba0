"""MTA-STS policy discovery and fetch (RFC 8461 §3.1, §3.3).

One :class:`PolicyFetcher` per event loop holds one aiodns resolver and one
aiohttp session for its whole life. :meth:`PolicyFetcher.fetch` never raises for
anything a remote party does: every outcome is a :class:`FetchResult`.

Stages and outcomes:

- ``dns``: TXT ``_mta-sts.<domain>``. NXDOMAIN or NODATA → ``NO_POLICY``;
  SERVFAIL, REFUSED, a CNAME loop and other DNS errors → ``FAILED`` with
  ``dns-error``; no answer in time → ``FAILED`` with ``dns-timeout``.
- ``txt``: the records are parsed; no usable record → ``NO_POLICY`` (RFC 8461
  §3.1: "no available policy"); the id equals ``known_id`` → ``NOT_CHANGED``.
- ``https``: GET ``https://mta-sts.<domain>/.well-known/mta-sts.txt``. A
  certificate that does not verify → ``sts-webpki-invalid``; anything else that
  keeps us from a 200 ``text/plain`` body of at most 64 KiB (connection errors,
  timeouts, redirects, other statuses, media types, Content-Encoding, size) →
  ``sts-policy-fetch-error``.
- ``policy``: a body that is not UTF-8 or breaks RFC 8461 §3.2 →
  ``sts-policy-invalid``; otherwise ``POLICY``.

The result types are RFC 8460 §4.3's names where one exists; ``dns-error`` and
``dns-timeout`` are ours (RFC 8460 has no result type for a failed discovery).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiodns
import aiohttp
import pycares
from aiohttp.abc import AbstractResolver, ResolveResult

from mtasts_fast import __version__
from mtasts_fast.errors import PolicyError
from mtasts_fast.policy import (
    MAX_POLICY_BYTES,
    Policy,
    is_text_plain,
    parse_policy,
    parse_txt_records,
)

__all__ = [
    "FetchResult",
    "Outcome",
    "PolicyFetcher",
    "make_ssl_context",
    "parse_nameservers",
]

log = logging.getLogger("mtasts_fast.fetcher")

USER_AGENT = f"mtasts-fast/{__version__}"
POLICY_PATH = "/.well-known/mta-sts.txt"  # RFC 8461 §3.3
_MAX_CNAME_CHAIN = 8
_READ_CHUNK = 16_384
_NO_SUCH_RECORD = frozenset({aiodns.error.ARES_ENOTFOUND, aiodns.error.ARES_ENODATA})
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
# Before CPython 3.12.8 / 3.13.1 an SSL transport whose peer never answers our
# close_notify (a policy host that stalls until we time out) is never freed;
# aiohttp's enable_cleanup_closed aborts such transports (and warns if it is
# set where it is not needed).
_NEEDS_SSL_CLEANUP = sys.version_info < (3, 12, 8) or (3, 13) <= sys.version_info < (3, 13, 1)


class Outcome(enum.Enum):
    POLICY = "policy"
    """A valid policy was fetched (``policy`` is set)."""
    NOT_CHANGED = "not-changed"
    """The TXT id equals the known id (or, for fetch_txt_id, a valid id exists)."""
    NO_POLICY = "no-policy"
    """The domain has no available policy (RFC 8461 §3.1)."""
    FAILED = "failed"
    """Discovery or fetch failed; ``result_type`` says how."""


@dataclass(frozen=True, slots=True)
class FetchResult:
    outcome: Outcome
    policy_id: str | None = None
    """The TXT id (POLICY, NOT_CHANGED; FAILED after a valid TXT record)."""
    policy: Policy | None = None
    """POLICY only."""
    stage: str = ""
    """Where it ended: ``"dns"``, ``"txt"``, ``"https"`` or ``"policy"``."""
    reason: str = ""
    """One human-readable line."""
    result_type: str | None = None
    """FAILED only: ``dns-error``, ``dns-timeout``, ``sts-policy-fetch-error``,
    ``sts-policy-invalid`` or ``sts-webpki-invalid``."""
    warnings: tuple[str, ...] = ()
    """Policy problems that did not invalidate it (dropped mx, clamped max_age...)."""
    txt_records: tuple[str, ...] = ()
    """Every TXT record seen at ``_mta-sts.<domain>``, strings joined; a record
    with non-ASCII bytes is shown with backslash escapes and was not parsed."""


class _Failure(Exception):
    """Ends a fetch early with a ready FetchResult."""

    def __init__(self, result: FetchResult) -> None:
        super().__init__(result.reason)
        self.result = result


@dataclass
class _Progress:
    """What a fetch has done so far, to classify a timeout and keep the id."""

    stage: str = "dns"
    policy_id: str | None = None
    txt_records: tuple[str, ...] = ()


def parse_nameservers(entries: Sequence[str]) -> list[str]:
    """Validate ``host`` / ``host:port`` entries and return c-ares server strings.

    ``host`` must be an IP address (IPv6 as ``::1`` or ``[::1]:53``); the port
    defaults to 53. c-ares accepts a port per server, so ports may differ.
    Raises ValueError naming the bad entry.
    """
    servers: list[str] = []
    for entry in entries:
        text = entry.strip()
        host, port = text, "53"
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"nameserver {entry!r}: expected [IPv6]:port")
            port = rest[1:] if rest else "53"
        elif text.count(":") == 1:
            host, port = text.split(":")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"nameserver {entry!r}: not an IP address") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"nameserver {entry!r}: bad port {port!r}")
        shown = f"[{address}]" if address.version == 6 else str(address)
        servers.append(f"{shown}:{int(port)}")
    return servers


class _CaresResolver(AbstractResolver):
    """aiohttp resolver on the fetcher's own c-ares channel (configured nameservers)."""

    def __init__(self, channel: Callable[[], aiodns.DNSResolver]) -> None:
        self._channel = channel

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        # A trailing dot makes the name absolute: no resolv.conf search list.
        name = host if host.endswith(".") else host + "."
        try:
            answer = await self._channel().getaddrinfo(
                name, family=family, port=port, type=socket.SOCK_STREAM
            )
        except aiodns.error.DNSError as exc:
            raise OSError(None, f"{host}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
        results: list[ResolveResult] = []
        for node in answer.nodes:
            address, node_port = node.addr[0], node.addr[1]
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address.decode("ascii"),
                    port=node_port,
                    family=node.family,
                    proto=0,
                    flags=_NUMERIC,
                )
            )
        if not results:
            raise OSError(None, f"{host}: no address")
        return results

    async def close(self) -> None:
        """The channel belongs to the fetcher, which closes it."""


def make_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Client context: system trust store (or ``ca_file``), TLS 1.2 or newer."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8461 §7.2 / RFC 8996
    return ctx


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind ``exc``, if there is one."""
    seen: BaseException | None = exc
    for _ in range(8):
        if isinstance(seen, aiohttp.ClientConnectorCertificateError):
            seen = seen.certificate_error
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        if seen is None:
            return None
        seen = seen.__cause__ or seen.__context__
    return None


def _describe(exc: BaseException) -> str:
    """One line for a connection-level error."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        # A TLS handshake cut short (a TLS 1.0-only host, say) surfaces as an
        # OSError with no errno and no text; its type is then all there is.
        detail = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port}: {detail}"
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


# c-ares (1.23 and later) keeps answers in an in-process cache, negative ones
# included, for up to an hour, and pycares has no option to turn it off: a
# stream of never-seen domains grows it by about 1 KB per name (measured: A +
# AAAA lookups of 30 000 new names, +27 MB; the same names again, +0). A fresh
# channel every _DNS_CHANNEL_LIFETIME seconds bounds it to that window. The
# daemon keeps the caches that matter itself, bounded; DNS caching belongs to
# the recursive resolver.
_DNS_CHANNEL_LIFETIME = 60.0


class PolicyFetcher:
    """Discovers and fetches MTA-STS policies; create and use it in one event loop."""

    def __init__(self, *, nameservers: Sequence[str] = (), ca_file: str | None = None) -> None:
        self._servers = parse_nameservers(nameservers)
        # Loaded now, not in start(): the daemon constructs the fetcher before
        # it drops privileges, so a CA file only root can read still works,
        # and a bad CA file is reported before the socket is bound.
        self._ssl = make_ssl_context(ca_file)
        self._dns: aiodns.DNSResolver | None = None
        self._dns_born = 0.0
        # Replaced channels, closed once the queries started on them are over.
        self._retired: set[asyncio.Task[None]] = set()
        self._longest_timeout = 0.0
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the resolver and the HTTP session (inside the running loop)."""
        if self._session is not None:
            return
        self._dns = self._new_channel()
        # With configured nameservers the policy host is resolved through them
        # too; otherwise aiohttp's default resolver (the system's).
        resolver = _CaresResolver(self._channel) if self._servers else None
        connector = aiohttp.TCPConnector(
            ssl=self._ssl,
            resolver=resolver,
            use_dns_cache=False,
            force_close=True,  # no idle connections to policy hosts
            enable_cleanup_closed=_NEEDS_SSL_CLEANUP,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=True,  # honour https_proxy / no_proxy
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),  # fetch() bounds the whole thing
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    def _new_channel(self) -> aiodns.DNSResolver:
        self._dns_born = time.monotonic()
        return aiodns.DNSResolver(
            nameservers=self._servers or None, loop=asyncio.get_running_loop()
        )

    def _channel(self) -> aiodns.DNSResolver:
        """The c-ares channel for a new query, replaced every _DNS_CHANNEL_LIFETIME s."""
        if self._dns is None:
            raise RuntimeError("PolicyFetcher.start() has not been called")
        if time.monotonic() - self._dns_born >= _DNS_CHANNEL_LIFETIME:
            old, self._dns = self._dns, self._new_channel()
            task = asyncio.ensure_future(self._retire(old, 2 * self._longest_timeout + 10))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        return self._dns

    @staticmethod
    async def _retire(channel: aiodns.DNSResolver, after: float) -> None:
        # Every query on it is bounded by its fetch timeout: let them finish.
        try:
            await asyncio.sleep(after)
        finally:
            await channel.close()

    async def close(self) -> None:
        session, dns = self._session, self._dns
        self._session = self._dns = None
        if session is not None:
            await session.close()
        if dns is not None:
            await dns.close()
        for task in list(self._retired):
            task.cancel()  # closes its channel now
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

    async def __aenter__(self) -> PolicyFetcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- public API ---

    # The timeout is a parameter (ASYNC109) because it is the zone's setting and
    # bounds the whole fetch, which applies it with asyncio.timeout() itself.
    async def fetch(self, domain: str, timeout: float, known_id: str | None = None) -> FetchResult:
        """Discover and fetch the policy of ``domain`` (a lower-case A-label).

        When the TXT id equals ``known_id`` the result is NOT_CHANGED and no
        HTTPS request is made. ``timeout`` bounds the whole fetch.
        """
        return await self._bounded(domain, timeout, known_id, txt_only=False)

    async def fetch_txt_id(self, domain: str, timeout: float) -> FetchResult:
        """The TXT stage only: is there a valid policy record, and its id?

        A valid record gives NOT_CHANGED with ``policy_id`` set (meaning "id
        found, body not fetched"); otherwise NO_POLICY or FAILED as in fetch().
        """
        return await self._bounded(domain, timeout, None, txt_only=True)

    # --- stages ---

    async def _bounded(
        self, domain: str, seconds: float, known_id: str | None, *, txt_only: bool
    ) -> FetchResult:
        if self._session is None or self._dns is None:
            raise RuntimeError("PolicyFetcher.start() has not been called")
        self._longest_timeout = max(self._longest_timeout, seconds)
        progress = _Progress()
        started = time.monotonic()
        try:
            async with asyncio.timeout(seconds):
                return await self._run(domain, known_id, progress, txt_only=txt_only)
        except TimeoutError:
            elapsed = time.monotonic() - started
            log.debug("%s: timed out in stage %s after %.2fs", domain, progress.stage, elapsed)
            if progress.stage == "dns":
                return FetchResult(
                    Outcome.FAILED,
                    stage="dns",
                    reason=f"TXT _mta-sts.{domain}: no answer within {seconds:g}s",
                    result_type="dns-timeout",
                )
            return FetchResult(
                Outcome.FAILED,
                policy_id=progress.policy_id,
                stage=progress.stage,
                reason=f"policy fetch timed out after {seconds:g}s",
                result_type="sts-policy-fetch-error",
                txt_records=progress.txt_records,
            )

    async def _run(
        self, domain: str, known_id: str | None, progress: _Progress, *, txt_only: bool
    ) -> FetchResult:
        try:
            policy_id = await self._discover(domain, progress)
            if txt_only or policy_id == known_id:
                log.debug("%s: TXT id %s, no HTTPS fetch", domain, policy_id)
                return FetchResult(
                    Outcome.NOT_CHANGED,
                    policy_id=policy_id,
                    stage="txt",
                    reason="TXT id unchanged" if not txt_only else "TXT id found",
                    txt_records=progress.txt_records,
                )
            progress.stage = "https"
            body = await self._download(domain, progress)
            progress.stage = "policy"
            return self._validate(domain, body, progress)
        except _Failure as failure:
            return failure.result

    async def _discover(self, domain: str, progress: _Progress) -> str:
        """TXT stage: return the policy id or raise _Failure."""
        name = f"_mta-sts.{domain}"
        try:
            raw = await self._query_txt(name)
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            message = exc.args[1] if len(exc.args) > 1 else str(exc)
            log.debug("%s: TXT %s: %s", domain, name, message)
            if code in _NO_SUCH_RECORD:
                raise _Failure(
                    FetchResult(Outcome.NO_POLICY, stage="dns", reason=f"TXT {name}: {message}")
                ) from None
            result_type = "dns-timeout" if code == aiodns.error.ARES_ETIMEOUT else "dns-error"
            raise _Failure(
                FetchResult(
                    Outcome.FAILED,
                    stage="dns",
                    reason=f"TXT {name}: {message}",
                    result_type=result_type,
                )
            ) from None
        progress.stage = "txt"
        records: list[str] = []
        shown: list[str] = []
        for data in raw:
            try:
                text = data.decode("ascii")
            except UnicodeDecodeError:
                shown.append(data.decode("ascii", "backslashreplace"))
                continue  # RFC 8461 §3.1 records are ASCII; ignore this one
            records.append(text)
            shown.append(text)
        progress.txt_records = tuple(shown)
        if not raw:
            raise _Failure(
                FetchResult(Outcome.NO_POLICY, stage="dns", reason=f"TXT {name}: no TXT record")
            )
        try:
            policy_id = parse_txt_records(records)
        except PolicyError as exc:
            log.debug("%s: %s", domain, exc)
            raise _Failure(
                FetchResult(
                    Outcome.NO_POLICY,
                    stage="txt",
                    reason=str(exc),
                    txt_records=progress.txt_records,
                )
            ) from None
        progress.policy_id = policy_id
        return policy_id

    async def _query_txt(self, name: str) -> list[bytes]:
        """TXT record data of ``name``, following CNAMEs (RFC 8461 §3.1).

        A recursive resolver normally returns the CNAME chain and the target's
        records together; if the answer ends at a CNAME we ask for its target.
        """
        current = name
        for _ in range(_MAX_CNAME_CHAIN):
            answer = await self._channel().query_dns(current, "TXT")
            texts: list[bytes] = []
            aliases: dict[str, str] = {}
            for rr in answer.answer:
                if isinstance(rr.data, pycares.TXTRecordData):
                    texts.append(rr.data.data)  # pycares joins the strings of a record
                elif isinstance(rr.data, pycares.CNAMERecordData):
                    aliases[rr.name.lower().rstrip(".")] = rr.data.cname
            if texts:
                return texts
            if not aliases:
                return []
            # Walk the chain in this answer to its end, then query the end.
            seen = set()
            target = current.lower().rstrip(".")
            while target in aliases and target not in seen:
                seen.add(target)
                target = aliases[target].lower().rstrip(".")
            if target in seen:
                raise aiodns.error.DNSError(aiodns.error.ARES_EBADRESP, f"CNAME loop at {target}")
            current = target
        raise aiodns.error.DNSError(aiodns.error.ARES_EBADRESP, "CNAME chain too long")

    async def _download(self, domain: str, progress: _Progress) -> bytes:
        """HTTPS stage: return the body or raise _Failure."""
        assert self._session is not None
        url = f"https://mta-sts.{domain}{POLICY_PATH}"

        def failed(reason: str, result_type: str = "sts-policy-fetch-error") -> _Failure:
            log.debug("%s: %s: %s", domain, url, reason)
            return _Failure(
                FetchResult(
                    Outcome.FAILED,
                    policy_id=progress.policy_id,
                    stage="https",
                    reason=reason,
                    result_type=result_type,
                    txt_records=progress.txt_records,
                )
            )

        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:  # RFC 8461 §3.3: no redirects, 200 only
                    if 300 <= response.status < 400:
                        raise failed(
                            f"HTTP {response.status} redirect, not followed (RFC 8461 §3.3)"
                        )
                    raise failed(f"HTTP status {response.status}, need 200 (RFC 8461 §3.3)")
                content_type = response.headers.get("Content-Type")
                if not is_text_plain(content_type):
                    shown = "missing" if content_type is None else repr(content_type[:60])
                    raise failed(f"Content-Type {shown}, need text/plain (RFC 8461 §3.3)")
                encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise failed(f"Content-Encoding {encoding[:40]!r} refused, need identity")
                declared = response.content_length
                if declared is not None and declared > MAX_POLICY_BYTES:
                    raise failed(f"Content-Length {declared} over {MAX_POLICY_BYTES} bytes")
                body = bytearray()
                while len(body) <= MAX_POLICY_BYTES:
                    chunk = await response.content.read(
                        min(_READ_CHUNK, MAX_POLICY_BYTES + 1 - len(body))
                    )
                    if not chunk:
                        break
                    body += chunk
                if len(body) > MAX_POLICY_BYTES:
                    response.close()
                    raise failed(f"body over {MAX_POLICY_BYTES} bytes")
                return bytes(body)
        except _Failure:
            raise
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            cert_error = _cert_error(exc)
            if cert_error is not None:  # RFC 8461 §3.3: PKIX and host name
                detail = cert_error.verify_message or str(cert_error)
                raise failed(
                    f"certificate of mta-sts.{domain} not valid: {detail}", "sts-webpki-invalid"
                ) from None
            raise failed(_describe(exc)) from None

    def _validate(self, domain: str, body: bytes, progress: _Progress) -> FetchResult:
        """Policy stage: decode and parse the body."""
        try:
            text = body.decode("utf-8")
            policy, warnings = parse_policy(text)
        except (UnicodeDecodeError, PolicyError) as exc:
            reason = "body is not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            log.debug("%s: policy invalid: %s", domain, reason)
            return FetchResult(
                Outcome.FAILED,
                policy_id=progress.policy_id,
                stage="policy",
                reason=reason,
                result_type="sts-policy-invalid",
                txt_records=progress.txt_records,
            )
        log.debug("%s: policy id %s mode %s", domain, progress.policy_id, policy.mode)
        return FetchResult(
            Outcome.POLICY,
            policy_id=progress.policy_id,
            policy=policy,
            stage="policy",
            reason=f"mode {policy.mode}, max_age {policy.max_age}, {len(policy.mx)} mx",
            warnings=tuple(warnings),
            txt_records=progress.txt_records,
        )
