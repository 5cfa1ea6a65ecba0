"""The HTTPS side of a policy fetch: TLS context, client and the GET itself.

:func:`download_policy` fetches ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
(RFC 8461 §3.3) and returns the body, or raises :class:`Failure`. A
certificate that does not verify → ``sts-webpki-invalid``; anything else that
keeps us from a 200 ``text/plain`` body of at most 64 KiB (connection errors,
redirects, other statuses, media types, Content-Encoding, size) →
``sts-policy-fetch-error``. The caller bounds the time. The request itself
is https_get.py's.
"""

from __future__ import annotations

import logging
import ssl

from mtasts_fast import __version__
from mtasts_fast.fetch_result import Failure, FetchResult, Outcome, Progress
from mtasts_fast.https_get import HttpError, HttpsClient, Resolve
from mtasts_fast.policy import MAX_POLICY_BYTES, is_text_plain

__all__ = ["POLICY_PATH", "USER_AGENT", "download_policy", "make_client", "make_ssl_context"]

# The fetcher's logger: this is one of its stages.
log = logging.getLogger("mtasts_fast.fetcher")

USER_AGENT = f"mtasts-fast/{__version__}"
POLICY_PATH = "/.well-known/mta-sts.txt"  # RFC 8461 §3.3


def make_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Client context: system trust store (or ``ca_file``), TLS 1.2 or newer."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8461 §7.2 / RFC 8996
    return ctx


def make_client(ssl_context: ssl.SSLContext, resolve: Resolve | None) -> HttpsClient:
    """The client for policy downloads; ``resolve`` None: the system's resolver.

    ``https_proxy`` / ``no_proxy`` are read from the environment now.
    """
    return HttpsClient(
        ssl_context,
        resolve,
        headers=[
            ("User-Agent", USER_AGENT),
            ("Accept", "*/*"),
            # HTTP caching and compression are not for policies (RFC 8461 §3.3).
            ("Accept-Encoding", "identity"),
        ],
    )


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind ``exc``, if there is one."""
    seen: BaseException | None = exc
    for _ in range(8):
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        if seen is None:
            return None
        seen = seen.__cause__ or seen.__context__
    return None


def _describe(exc: BaseException) -> str:
    """One line for an error that is not the client's own."""
    if isinstance(exc, HttpError):
        return " ".join(str(exc).split())
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


async def download_policy(client: HttpsClient, domain: str, progress: Progress) -> bytes:
    """HTTPS stage: return the body or raise Failure."""
    host = f"mta-sts.{domain}"
    url = f"https://{host}{POLICY_PATH}"

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
        response = await client.get(host, POLICY_PATH)
        try:
            if response.status != 200:  # RFC 8461 §3.3: no redirects, 200 only
                if 300 <= response.status < 400:
                    raise failed(f"HTTP {response.status} redirect, not followed (RFC 8461 §3.3)")
                raise failed(f"HTTP status {response.status}, need 200 (RFC 8461 §3.3)")
            content_type = response.headers.get("content-type")
            if not is_text_plain(content_type):
                shown = "missing" if content_type is None else repr(content_type[:60])
                raise failed(f"Content-Type {shown}, need text/plain (RFC 8461 §3.3)")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise failed(f"Content-Encoding {encoding[:40]!r} refused, need identity")
            declared = response.content_length
            if declared is not None and declared > MAX_POLICY_BYTES:
                raise failed(f"Content-Length {declared} over {MAX_POLICY_BYTES} bytes")
            body = await response.read(MAX_POLICY_BYTES)
            if len(body) > MAX_POLICY_BYTES:
                raise failed(f"body over {MAX_POLICY_BYTES} bytes")
            return body
        finally:
            response.close()
    except Failure:
        raise
    except (HttpError, OSError, ValueError) as exc:
        cert_error = _cert_error(exc)
        if cert_error is not None:  # RFC 8461 §3.3: PKIX and host name
            detail = cert_error.verify_message or str(cert_error)
            raise failed(
                f"certificate of mta-sts.{domain} not valid: {detail}", "sts-webpki-invalid"
            ) from None
        raise failed(_describe(exc)) from None
