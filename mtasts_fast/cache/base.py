"""The cache entry model and the interface every backend implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from mtasts_fast.dane.state import DaneState
from mtasts_fast.policy import Policy

if TYPE_CHECKING:
    from mtasts_fast.fastpath import StampSource

__all__ = [
    "SCAN_BATCH",
    "Cache",
    "CacheEntry",
    "CacheStats",
    "CacheUnavailable",
    "FetchFailure",
]

# Entries per batch when a backend is walked (proactive refresh, export, list).
SCAN_BATCH = 1000


class CacheUnavailable(Exception):
    """The backend cannot be reached or read right now (it may come back)."""


@dataclass(slots=True, eq=False)
class CacheEntry:
    """One domain's policy as the daemon stores it (DESIGN.md §4 "Cache semantics").

    Times are Unix wall-clock seconds, because entries outlive the process
    and are shared between hosts. The policy expires ``max_age`` seconds after
    the last successful HTTPS fetch (RFC 8461 §3.2), not after the last TXT
    confirmation: an unchanged TXT id never extends a policy whose HTTPS host
    has gone away.
    """

    domain: str
    policy_id: str
    policy: Policy
    fetched_at: float
    checked_at: float
    # Framed replies, keyed by the zone's render key (the responder's; zones
    # that render alike share one); never stored, rebuilt on demand.
    rendered: dict[int, bytes] = field(default_factory=dict, repr=False)
    # fetched_at + max_age, computed once: the hot path compares it on every hit.
    expires_at: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.expires_at = self.fetched_at + self.policy.max_age

    def same_as(self, other: CacheEntry) -> bool:
        """True if both hold the same stored data (``rendered`` is not data)."""
        return (
            self.domain == other.domain
            and self.policy_id == other.policy_id
            and self.policy == other.policy
            and self.fetched_at == other.fetched_at
            and self.checked_at == other.checked_at
        )


@dataclass(slots=True)
class FetchFailure:
    """Why a domain has no cached policy to show for its last fetch, and when to retry.

    Negative caching and per-domain backoff (DESIGN.md §4): a "no policy"
    result is remembered for ``negative_ttl``; a failed fetch backs off
    exponentially. Stored in the cache beside the entries so that every worker
    and every host sharing the cache honours the same retry time, and so that
    ``mta-sts-cache show`` can tell an operator what went wrong.
    """

    domain: str
    # "no-policy", or an RFC 8460 §4.3 result type ("sts-policy-fetch-error",
    # "sts-policy-invalid", "sts-webpki-invalid") or "dns-error"/"dns-timeout".
    result_type: str
    stage: str  # "dns", "https" or "policy"; "" for no-policy
    reason: str
    failed_at: float  # when the last attempt ended
    retry_at: float  # no new attempt before this
    attempts: int  # consecutive failures, 1 for the first

    @property
    def no_policy(self) -> bool:
        return self.result_type == NO_POLICY


@dataclass(frozen=True, slots=True)
class CacheStats:
    """How much a backend holds (``mta-sts-cache stats``, the ``mtasts_cache_*`` gauges)."""

    entries: int
    """Policy entries."""
    failures: int
    """Fetch-failure and no-policy records (negative caching and backoff)."""
    oldest_checked: float | None
    """``checked_at`` of the least recently checked entry (None when empty)."""
    newest_checked: float | None
    """``checked_at`` of the most recently checked entry (None when empty)."""
    size_bytes: int | None
    """The files on disk (lmdb, sqlite), the memory of our keys (redis), the size
    of our tables with their indexes (postgres); None where there is no such
    thing (internal)."""


# FetchFailure.result_type of a domain that publishes no (usable) TXT record.
NO_POLICY = "no-policy"

# A failure record is kept this long after its retry time, so that the next
# failure continues the backoff sequence instead of starting it again.
FAILURE_RETENTION = 86400.0


class Cache(abc.ABC):
    """Async store of CacheEntry by normalised domain (an A-label string).

    Backends whose reads cost microseconds and never block the event loop set
    ``synchronous_reads`` and implement ``get_nowait`` so that a cache hit is
    answered without scheduling a task.

    Errors: a backend that cannot be reached raises ``CacheUnavailable`` (the
    daemon logs it, counts it and falls back to fetching); it never raises for
    a missing key. An entry that cannot be decoded (corrupt, or written by a
    newer format) reads as missing.
    """

    synchronous_reads: ClassVar[bool] = False

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Open connections or files, create the schema; called once, in the loop."""

    def get_nowait(self, domain: str) -> CacheEntry | None:
        raise NotImplementedError(f"{type(self).__name__} has no synchronous reads")

    # -- for the compiled request path (fastpath.py) -------------------------------

    @property
    def commit_stamps(self) -> StampSource | None:
        """Where the id of the backend's last commit is read, or None.

        Only a backend whose synchronous reads are memoised and stamped with
        that id has one (lmdb): while the id is unchanged, ``get_nowait``
        and ``get_dane_nowait`` return the objects they returned under it,
        unless the memo dropped them (``watch_memo`` tells of entries).
        """
        return None

    def watch_memo(self, listener: Callable[[], object]) -> None:  # noqa: B027 - no memo
        """Call ``listener()`` whenever the in-process memo drops policy entries."""

    def unwatch_memo(self, listener: Callable[[], object]) -> None:  # noqa: B027 - no memo
        """Stop calling ``listener`` (no error if it was not watching)."""

    @abc.abstractmethod
    async def get(self, domain: str) -> CacheEntry | None:
        """The entry for ``domain``, or None."""

    @abc.abstractmethod
    async def put(self, entry: CacheEntry) -> None:
        """Store ``entry`` under ``entry.domain``, replacing any older one.

        A write never replaces an entry whose ``checked_at`` is newer than the
        one written (another worker or host got there first).
        """

    @abc.abstractmethod
    async def delete(self, domain: str) -> bool:
        """Forget ``domain``; True if it was cached."""

    @abc.abstractmethod
    def scan(self, batch_size: int = SCAN_BATCH) -> AsyncIterator[list[CacheEntry]]:
        """Yield every entry exactly once, in batches of at most ``batch_size``.

        Entries written or deleted during the scan may or may not be seen.
        """

    @abc.abstractmethod
    async def purge(self) -> int:
        """Delete every policy entry; return how many there were.

        Failure records and DANE states go too, so that every purged domain
        is fetched and evaluated afresh; leases stay (they are not cached
        data). Only policy entries are counted.
        """

    @abc.abstractmethod
    async def prune(self, older_than: float) -> int:
        """Delete entries whose policy expired before ``older_than``; return the count.

        Keeps shared backends from growing for ever (postfix-mta-sts-resolver's
        never shrink). Also deletes the DANE states that expired before
        ``older_than`` and the failure records ``FAILURE_RETENTION`` past
        their retry time; only policy entries are counted.

        The periodic prune passes now minus ``maintenance.PRUNE_RETENTION``
        (one day). That is also how long past its expiry the responder may
        still answer from a DANE state while it revalidates the domain in the
        background, so a state is never pruned while it may be served.
        """

    @abc.abstractmethod
    async def get_proactive_ts(self) -> float:
        """When the last proactive refresh pass ended (0.0 if never)."""

    @abc.abstractmethod
    async def set_proactive_ts(self, ts: float) -> None:
        """Record the end of a proactive refresh pass."""

    # -- negative caching and backoff (FetchFailure records) ------------------------

    @abc.abstractmethod
    async def get_failure(self, domain: str) -> FetchFailure | None:
        """The last failure recorded for ``domain``, or None."""

    @abc.abstractmethod
    async def put_failure(self, failure: FetchFailure) -> None:
        """Record ``failure``, replacing the previous record of its domain.

        A backend may forget the record ``FAILURE_RETENTION`` seconds after
        its ``retry_at`` (Redis: a key TTL; the others: ``prune``).
        """

    @abc.abstractmethod
    async def delete_failure(self, domain: str) -> bool:
        """Forget ``domain``'s failure record; True if there was one."""

    # -- DANE states (DESIGN.md §7): one per domain, shared like the entries -----

    def get_dane_nowait(self, domain: str) -> DaneState | None:
        """Like ``get_dane``, without waiting; only if ``synchronous_reads``.

        A backend that memoises decoded states returns the same object while
        the stored state is unchanged, so replies rendered on it are kept.
        """
        raise NotImplementedError(f"{type(self).__name__} has no synchronous reads")

    @abc.abstractmethod
    async def get_dane(self, domain: str) -> DaneState | None:
        """The DANE state of ``domain``, or None (also when unreadable)."""

    @abc.abstractmethod
    async def put_dane(self, state: DaneState) -> None:
        """Store ``state`` under ``state.domain``, replacing the previous one.

        Never replaces a state whose ``evaluated_at`` is newer than the one
        written (another worker or host got there first). A state is kept
        until ``prune`` passes its ``expires_at`` (Redis: a key TTL of
        ``expires_at`` plus a day, the same retention).
        """

    @abc.abstractmethod
    async def delete_dane(self, domain: str) -> bool:
        """Forget ``domain``'s DANE state; True if there was one."""

    @abc.abstractmethod
    async def stats(self) -> CacheStats:
        """Count what the backend holds.

        Cheap for lmdb (two B-tree stats and a walk of the ends of an
        index); a full scan of our keys for redis; a count over our tables
        for sqlite and postgres.
        """

    # -- leases: one process at a time, across workers and hosts ------------------

    @abc.abstractmethod
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``owner`` for ``ttl`` seconds, or renew it.

        True if ``owner`` holds the lease now: it was free, had expired, or
        was already ``owner``'s (then its expiry moves to now + ``ttl``).
        Atomic against every other process using the same cache.
        """

    @abc.abstractmethod
    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it; otherwise do nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or files; the cache is not used afterwards."""
