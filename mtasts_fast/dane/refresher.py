"""Evaluation discipline: one evaluation per domain at a time, stored, backed off.

The DANE counterpart of :class:`~mtasts_fast.refresh.PolicyRefresher`, and
sharing its rules (DESIGN.md §2, §7):

- concurrent requests for one domain share one evaluation;
- at most ``max_concurrent_fetches`` evaluations are in flight per process; a
  request waits for a slot for at most its timeout;
- every evaluation is stored in the cache, so every worker and host sharing
  it answers from it; before evaluating, the state is read again, and one
  that another process stored meanwhile is used instead;
- a ``temp`` state (validation failed) is kept for a short retry interval:
  60 s, doubling while the failures go on, up to ``fetch_backoff_max``;
- a backend that fails is counted and logged by the policy refresher, and
  the states go to (and come from) its in-process fallback cache meanwhile;
- nothing is evaluated while the DNSSEC probe says the resolver does not
  validate: every domain would look insecure, and "no DANE" would be stored
  for all of them.

What a lookup waits for is the responder's business: it answers from a
stored state and calls :meth:`DaneRefresher.revalidate` once the state is
past ``expires_at``; only a domain without a state (or with one older than
``DANE_STALE_LIMIT``, or a ``temp`` one past its retry time) waits for
:meth:`DaneRefresher.refresh`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from mtasts_fast import defaults
from mtasts_fast.cache import Cache
from mtasts_fast.config import Config
from mtasts_fast.dane.evaluate import evaluate
from mtasts_fast.dane.probe import DnssecProbe
from mtasts_fast.dane.resolver import DaneResolver
from mtasts_fast.dane.state import NO_DANE, TEMP, DaneState
from mtasts_fast.memo import make_room
from mtasts_fast.refresh import PolicyRefresher

__all__ = ["DaneRefresher"]

_log = logging.getLogger("mtasts_fast.dane")

# Domains remembered in process with their last background attempt; the bound
# only stops a flood of distinct names from growing a worker without end.
_MEMO_LIMIT = 65_536


class DaneRefresher:
    """Evaluates and stores DANE states for one process."""

    def __init__(
        self,
        config: Config,
        cache: Cache,
        resolver: DaneResolver,
        policies: PolicyRefresher,
        *,
        probe: DnssecProbe | None = None,
        clock: Callable[[], float] = time.time,
        on_decision: Callable[[str], None] | None = None,
    ) -> None:
        """``on_decision``: called with each evaluation's decision (the metrics count it)."""
        self._cache = cache
        self._on_decision = on_decision
        self._resolver = resolver
        self._probe = probe
        # Backend health and the in-process fallback are the policy refresher's.
        self._policies = policies
        self._clock = clock
        self._backoff_max = config.fetch_backoff_max
        self._slots = asyncio.Semaphore(config.max_concurrent_fetches)
        self._inflight: dict[str, asyncio.Future[DaneState | None]] = {}
        # domain -> time of the last background revalidation started here.
        self._attempted: dict[str, float] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        #: Evaluations by decision, and "no-slot" (no slot within the timeout),
        #: "inactive" (skipped: the resolver does not validate) (for the metrics).
        self.counts: collections.Counter[str] = collections.Counter()

    @property
    def resolver(self) -> DaneResolver:
        return self._resolver

    # -- reading ------------------------------------------------------------------

    async def stored(self, domain: str) -> DaneState | None:
        """The stored state of ``domain``, from the fallback while the backend fails."""
        policies = self._policies
        try:
            state = await self._cache.get_dane(domain)
        except Exception as exc:
            policies.backend_failed("read", exc)
            return policies.fallback.get_dane_nowait(domain)
        policies.backend_ok("read")
        return state

    # -- evaluating ---------------------------------------------------------------

    def refresh(
        self, domain: str, timeout: float, previous: DaneState | None = None
    ) -> asyncio.Future[DaneState | None]:
        """Evaluate and store ``domain``'s state once, however many callers wait.

        The result is the new state; None when DANE detection is inactive
        (the resolver does not validate). A lookup that got no evaluation slot
        in time, or whose evaluation crashed, gets a ``temp`` state that is not
        stored: not knowing the DANE state must not downgrade. ``previous``:
        the state the caller has, whose ``temp`` interval the next one doubles.
        """
        future = self._inflight.get(domain)
        if future is None:
            future = asyncio.ensure_future(self._evaluate_and_store(domain, timeout, previous))
            self._inflight[domain] = future
            future.add_done_callback(lambda _f: self._inflight.pop(domain, None))
        # A caller that goes away must not cancel what the others wait for.
        return asyncio.shield(future)

    def revalidate(self, state: DaneState, timeout: float, now: float) -> None:
        """Re-evaluate ``state``'s domain in the background, at most once a minute."""
        domain = state.domain
        if domain in self._inflight:
            return
        last = self._attempted.get(domain)
        if last is not None and now - last < defaults.DANE_TTL_MIN:
            return
        make_room(self._attempted, _MEMO_LIMIT)
        self._attempted[domain] = now
        task = asyncio.ensure_future(self.refresh(domain, timeout, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _evaluate_and_store(
        self, domain: str, timeout: float, previous: DaneState | None
    ) -> DaneState | None:
        if self._probe is not None:
            await self._probe.wait_first(timeout)
            if not self._probe.active:
                self.counts["inactive"] += 1
                return None
        now = self._clock()
        current = await self.stored(domain)
        if current is not None:
            if now < current.expires_at:
                # Another worker or host evaluated it meanwhile.
                return current
            if previous is None or current.evaluated_at > previous.evaluated_at:
                previous = current
        try:
            if self._slots.locked():
                await asyncio.wait_for(self._slots.acquire(), timeout)
            else:
                await self._slots.acquire()
        except TimeoutError:
            self.counts["no-slot"] += 1
            _log.warning(
                "no evaluation slot for the DANE state of %s within %.3g s "
                "(max_concurrent_fetches)",
                domain,
                timeout,
            )
            # Not stored: the next lookup tries again.
            return _unknown(domain, now, "no DANE evaluation slot free in time")
        try:
            evaluation = await evaluate(
                domain,
                self._resolver,
                timeout,
                temp_retry=self._temp_retry(previous),
                clock=self._clock,
            )
        except Exception:
            _log.exception("DANE evaluation of %s crashed", domain)
            return _unknown(domain, now, "internal error in the DANE evaluation")
        finally:
            self._slots.release()
        state = evaluation.state
        self.counts[state.decision] += 1
        if self._on_decision is not None:
            self._on_decision(state.decision)
        _log_decision(state, previous)
        await self.store(state)
        return state

    def _temp_retry(self, previous: DaneState | None) -> float:
        """60 s after a first failure, then twice the last interval, up to fetch_backoff_max."""
        delay = defaults.FETCH_BACKOFF_MIN
        if previous is not None and previous.decision == TEMP:
            delay = max(delay, 2 * (previous.expires_at - previous.evaluated_at))
        return min(delay, self._backoff_max)

    async def store(self, state: DaneState) -> None:
        """Write ``state``; into the in-process fallback while the backend is down."""
        policies = self._policies
        try:
            await self._cache.put_dane(state)
        except Exception as exc:
            policies.backend_failed("write", exc)
            await policies.fallback.put_dane(state)
        else:
            policies.backend_ok("write")

    async def close(self) -> None:
        """Cancel evaluations in flight (at shutdown)."""
        pending = [*self._tasks, *self._inflight.values()]
        for future in pending:
            future.cancel()
        for future in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await future


def _unknown(domain: str, now: float, reason: str) -> DaneState:
    """A ``temp`` state for a lookup that could not be evaluated (never stored)."""
    return DaneState(domain, TEMP, reason, (), now, now)


def _log_decision(state: DaneState, previous: DaneState | None) -> None:
    """Say why a domain became dane-only, dane or temp (once per change of decision)."""
    changed = previous is None or previous.decision != state.decision
    if state.decision == TEMP:
        retry = round(state.expires_at - state.evaluated_at)
        level = logging.WARNING if changed else logging.INFO
        _log.log(
            level,
            "DANE: %s is TEMP (Postfix defers its mail): %s; next evaluation in %d s",
            state.domain,
            state.reason,
            retry,
        )
    elif state.decision == NO_DANE:
        _log.log(
            logging.INFO if changed and previous is not None else logging.DEBUG,
            "DANE: %s has no DANE policy: %s",
            state.domain,
            state.reason,
        )
    else:
        _log.log(
            logging.INFO if changed else logging.DEBUG,
            "DANE: %s is %s: %s",
            state.domain,
            state.decision,
            state.reason,
        )
