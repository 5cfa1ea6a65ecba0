"""Does the resolver validate DNSSEC? Asked at start and every hour.

A resolver that does not validate never sets the AD bit, so every domain would
look insecure and the DANE evaluation would conclude "no DANE" everywhere —
wrong answers, stored in the shared cache for an hour. Instead the probe asks
each configured resolver for a name that is signed (``dnssec_probe_name``,
the root by default, whose trust anchor every validating resolver holds) and
looks at the AD bit:

- every resolver sets it: DANE detection is active;
- one answers without it: one warning ("resolver X does not validate DNSSEC:
  DANE detection inactive, MTA-STS answers only"), and DANE detection is off
  (answers are MTA-STS only, nothing is evaluated or stored) until a later
  probe finds every resolver validating again;
- no answer at all (SERVFAIL, timeout): the probe cannot tell; whatever was
  known stays, and the probe is repeated after ``DNSSEC_PROBE_RETRY``.
  Detection stays active meanwhile: evaluations against a resolver that does
  not answer end in ``temp``, which defers rather than downgrades.

:attr:`DnssecProbe.validating`, :attr:`~DnssecProbe.checks` and
:attr:`~DnssecProbe.not_validating` are plain attributes for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from mtasts_fast import defaults
from mtasts_fast.dane.resolver import Answer, DaneResolver, Status, describe_server

__all__ = ["DnssecProbe"]

_log = logging.getLogger("mtasts_fast.dane")


class DnssecProbe:
    """Watches whether every configured resolver validates DNSSEC."""

    def __init__(
        self,
        resolver: DaneResolver,
        name: str = defaults.DNSSEC_PROBE_NAME,
        *,
        interval: float = defaults.DNSSEC_PROBE_INTERVAL,
        retry: float = defaults.DNSSEC_PROBE_RETRY,
        timeout: float = defaults.ZONE_TIMEOUT,
        loud: bool = True,
    ) -> None:
        self._resolver = resolver
        self.name = name
        self._interval = interval
        self._retry = retry
        self._timeout = timeout
        # Only one worker says it at warning level; the others would repeat it.
        self._level = logging.WARNING if loud else logging.DEBUG
        self._listeners: list[Callable[[bool], None]] = []
        self._first: asyncio.Event | None = None
        self._unanswered = False
        #: True: every resolver validates; False: one does not; None: not known yet.
        self.validating: bool | None = None
        #: Probes run, and probes that found a resolver that does not validate.
        self.checks = 0
        self.not_validating = 0

    @property
    def active(self) -> bool:
        """DANE detection is on (not proven off by a probe)."""
        return self.validating is not False

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(active)`` whenever :attr:`active` changes."""
        self._listeners.append(listener)

    async def wait_first(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until the first probe has ended."""
        if self.checks:
            return
        if self._first is None:
            self._first = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._first.wait()

    async def check(self) -> bool | None:
        """Probe every resolver once; return what :attr:`validating` became."""
        servers = self._resolver.servers
        answers = await asyncio.gather(
            *(self._resolver.ask(s, self.name, "SOA", self._timeout) for s in servers)
        )
        self.checks += 1
        plain = [
            (s, a) for s, a in zip(servers, answers, strict=True) if _definite(a) and not a.secure
        ]
        unanswered = [(s, a) for s, a in zip(servers, answers, strict=True) if not _definite(a)]
        before = self.validating
        if plain:
            self.not_validating += 1
            self.validating = False
            if before is not False:
                shown = ", ".join(describe_server(s) for s, _ in plain)
                verb = "does" if len(plain) == 1 else "do"
                _log.log(
                    self._level,
                    "resolver %s %s not validate DNSSEC: DANE detection inactive, MTA-STS "
                    "answers only (%s has no AD bit; RFC 7672 §2.1 needs a validating "
                    "resolver, ideally on this host)",
                    shown,
                    verb,
                    plain[0][1].describe(),
                )
        elif unanswered:
            if not self._unanswered:
                shown = ", ".join(describe_server(s) for s, _ in unanswered)
                _log.log(
                    self._level,
                    "cannot tell whether resolver %s validates DNSSEC: %s; probing again in %g s",
                    shown,
                    unanswered[0][1].describe(),
                    self._retry,
                )
        else:
            self.validating = True
            if before is False:
                _log.log(
                    self._level,
                    "resolver %s validates DNSSEC again: DANE detection active",
                    self._resolver.describe(),
                )
            elif before is None:
                _log.info(
                    "resolver %s validates DNSSEC (%s): DANE detection active",
                    self._resolver.describe(),
                    answers[0].describe(),
                )
        self._unanswered = bool(unanswered) and not plain
        if self._first is not None:
            self._first.set()
        if (before is not False) != self.active:
            for listener in self._listeners:
                listener(self.active)
        return self.validating

    async def run_forever(self) -> None:
        """Probe now, then every ``interval`` (``retry`` after a probe nobody answered)."""
        while True:
            try:
                await self.check()
            except Exception:
                _log.exception("DNSSEC probe failed")
            await asyncio.sleep(self._retry if self._unanswered else self._interval)


def _definite(answer: Answer) -> bool:
    """An answer whose AD bit means something: NOERROR or NXDOMAIN."""
    return answer.status in (Status.DATA, Status.NODATA, Status.NXDOMAIN)
