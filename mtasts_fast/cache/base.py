"""The cache entry model and the interface every backend implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar

from mtasts_fast.config import ZoneConfig
from mtasts_fast.policy import Policy

__all__ = ["SCAN_BATCH", "Cache", "CacheEntry", "CacheUnavailable"]

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
    # Rendered replies, keyed by zone; never stored, rebuilt on demand.
    rendered: dict[ZoneConfig, bytes] = field(default_factory=dict, repr=False)

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.policy.max_age

    def same_as(self, other: CacheEntry) -> bool:
        """True if both hold the same stored data (``rendered`` is not data)."""
        return (
            self.domain == other.domain
            and self.policy_id == other.policy_id
            and self.policy == other.policy
            and self.fetched_at == other.fetched_at
            and self.checked_at == other.checked_at
        )


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
        """Delete every policy entry; return how many there were."""

    @abc.abstractmethod
    async def prune(self, older_than: float) -> int:
        """Delete entries whose policy expired before ``older_than``; return the count.

        Keeps shared backends from growing for ever (postfix-mta-sts-resolver's
        never shrink).
        """

    @abc.abstractmethod
    async def get_proactive_ts(self) -> float:
        """When the last proactive refresh pass ended (0.0 if never)."""

    @abc.abstractmethod
    async def set_proactive_ts(self, ts: float) -> None:
        """Record the end of a proactive refresh pass."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or files; the cache is not used afterwards."""
