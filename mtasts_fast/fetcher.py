"""MTA-STS policy discovery and fetch (RFC 8461 §3.1, §3.3).

One :class:`PolicyFetcher` per event loop holds its c-ares channel (renewed
every minute) and one HTTPS client (https_get.py) for its whole life.
:meth:`PolicyFetcher.fetch` never raises for anything a remote party does:
every outcome is a :class:`FetchResult`.

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

The result model is in :mod:`mtasts_fast.fetch_result`, the DNS side (c-ares
channel, TXT query, nameservers) in :mod:`mtasts_fast.dns_channel`, the HTTPS
side (TLS context, client, the GET and its limits) in
:mod:`mtasts_fast.policy_download`; this module runs the stages in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import aiodns

from mtasts_fast.dns_channel import CaresResolver, DnsChannel, parse_nameservers, query_txt
from mtasts_fast.errors import PolicyError
from mtasts_fast.fetch_result import Failure, FetchResult, Outcome, Progress
from mtasts_fast.https_get import HttpsClient
from mtasts_fast.policy import parse_policy, parse_txt_records
from mtasts_fast.policy_download import download_policy, make_client, make_ssl_context

__all__ = [
    "FetchResult",
    "Outcome",
    "PolicyFetcher",
    "make_ssl_context",
    "parse_nameservers",
]

log = logging.getLogger("mtasts_fast.fetcher")

_NO_SUCH_RECORD = frozenset({aiodns.error.ARES_ENOTFOUND, aiodns.error.ARES_ENODATA})


class PolicyFetcher:
    """Discovers and fetches MTA-STS policies; create and use it in one event loop."""

    def __init__(self, *, nameservers: Sequence[str] = (), ca_file: str | None = None) -> None:
        self._servers = parse_nameservers(nameservers)
        # Loaded now, not in start(): the daemon constructs the fetcher before
        # it drops privileges, so a CA file only root can read still works,
        # and a bad CA file is reported before the socket is bound.
        self._ssl = make_ssl_context(ca_file)
        self._dns = DnsChannel(self._servers)
        self._client: HttpsClient | None = None

    async def start(self) -> None:
        """Create the resolver and the HTTPS client (inside the running loop)."""
        if self._client is not None:
            return
        self._dns.open()
        # With configured nameservers the policy host is resolved through them
        # too; otherwise through the system's resolver.
        resolver = CaresResolver(self._channel) if self._servers else None
        self._client = make_client(self._ssl, resolver)

    def _channel(self) -> aiodns.DNSResolver:
        """The c-ares channel for a new query: only between start() and close()."""
        if self._client is None:
            raise RuntimeError("PolicyFetcher.start() has not been called")
        return self._dns.current()

    @property
    def _retired(self) -> set[asyncio.Task[None]]:
        """Replaced channels not closed yet (they close once their queries are over)."""
        return self._dns.retired

    async def close(self) -> None:
        # No query starts from here on (see _channel); then the channels. The
        # client holds nothing open between requests.
        self._client = None
        await self._dns.close()

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
        if self._client is None:
            raise RuntimeError("PolicyFetcher.start() has not been called")
        self._dns.allow_for(seconds)
        progress = Progress()
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
        self, domain: str, known_id: str | None, progress: Progress, *, txt_only: bool
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
            assert self._client is not None
            body = await download_policy(self._client, domain, progress)
            progress.stage = "policy"
            return self._validate(domain, body, progress)
        except Failure as failure:
            return failure.result

    async def _discover(self, domain: str, progress: Progress) -> str:
        """TXT stage: return the policy id or raise Failure."""
        name = f"_mta-sts.{domain}"
        try:
            raw = await query_txt(self._channel, name)
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            message = exc.args[1] if len(exc.args) > 1 else str(exc)
            log.debug("%s: TXT %s: %s", domain, name, message)
            if code in _NO_SUCH_RECORD:
                raise Failure(
                    FetchResult(Outcome.NO_POLICY, stage="dns", reason=f"TXT {name}: {message}")
                ) from None
            result_type = "dns-timeout" if code == aiodns.error.ARES_ETIMEOUT else "dns-error"
            raise Failure(
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
            raise Failure(
                FetchResult(Outcome.NO_POLICY, stage="dns", reason=f"TXT {name}: no TXT record")
            )
        try:
            policy_id = parse_txt_records(records)
        except PolicyError as exc:
            log.debug("%s: %s", domain, exc)
            raise Failure(
                FetchResult(
                    Outcome.NO_POLICY,
                    stage="txt",
                    reason=str(exc),
                    txt_records=progress.txt_records,
                )
            ) from None
        progress.policy_id = policy_id
        return policy_id

    def _validate(self, domain: str, body: bytes, progress: Progress) -> FetchResult:
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
