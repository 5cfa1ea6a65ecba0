"""The HTTPS side of a policy fetch: TLS context, session and the GET itself.

:func:`download_policy` fetches ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
(RFC 8461 §3.3) and returns the body, or raises :class:`Failure`. A
certificate that does not verify → ``sts-webpki-invalid``; anything else that
keeps us from a 200 ``text/plain`` body of at most 64 KiB (connection errors,
redirects, other statuses, media types, Content-Encoding, size) →
``sts-policy-fetch-error``. The caller bounds the time.
"""

from __future__ import annotations

import logging
import ssl
import sys

import aiohttp
from aiohttp.abc import AbstractResolver

from mtasts_fast import __version__
from mtasts_fast.fetch_result import Failure, FetchResult, Outcome, Progress
from mtasts_fast.policy import MAX_POLICY_BYTES, is_text_plain

__all__ = ["POLICY_PATH", "USER_AGENT", "download_policy", "make_ssl_context", "open_session"]

# The fetcher's logger: this is one of its stages.
log = logging.getLogger("mtasts_fast.fetcher")

USER_AGENT = f"mtasts-fast/{__version__}"
POLICY_PATH = "/.well-known/mta-sts.txt"  # RFC 8461 §3.3
_READ_CHUNK = 16_384
# Before CPython 3.12.8 / 3.13.1 an SSL transport whose peer never answers our
# close_notify (a policy host that stalls until we time out) is never freed;
# aiohttp's enable_cleanup_closed aborts such transports (and warns if it is
# set where it is not needed).
_NEEDS_SSL_CLEANUP = sys.version_info < (3, 12, 8) or (3, 13) <= sys.version_info < (3, 13, 1)


def make_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Client context: system trust store (or ``ca_file``), TLS 1.2 or newer."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8461 §7.2 / RFC 8996
    return ctx


def open_session(
    ssl_context: ssl.SSLContext, resolver: AbstractResolver | None
) -> aiohttp.ClientSession:
    """The session for policy downloads (inside the running loop).

    ``resolver`` None: aiohttp's default resolver (the system's).
    """
    connector = aiohttp.TCPConnector(
        ssl=ssl_context,
        resolver=resolver,
        use_dns_cache=False,
        force_close=True,  # no idle connections to policy hosts
        enable_cleanup_closed=_NEEDS_SSL_CLEANUP,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=True,  # honour https_proxy / no_proxy
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),  # fetch() bounds the whole thing
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


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


async def download_policy(session: aiohttp.ClientSession, domain: str, progress: Progress) -> bytes:
    """HTTPS stage: return the body or raise Failure."""
    url = f"https://mta-sts.{domain}{POLICY_PATH}"

    def failed(reason: str, result_type: str = "sts-policy-fetch-error") -> Failure:
        log.debug("%s: %s: %s", domain, url, reason)
        return Failure(
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
        async with session.get(url, allow_redirects=False) as response:
            if response.status != 200:  # RFC 8461 §3.3: no redirects, 200 only
                if 300 <= response.status < 400:
                    raise failed(f"HTTP {response.status} redirect, not followed (RFC 8461 §3.3)")
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
    except Failure:
        raise
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        cert_error = _cert_error(exc)
        if cert_error is not None:  # RFC 8461 §3.3: PKIX and host name
            detail = cert_error.verify_message or str(cert_error)
            raise failed(
                f"certificate of mta-sts.{domain} not valid: {detail}", "sts-webpki-invalid"
            ) from None
        raise failed(_describe(exc)) from None
