"""The cache entry model and the interface every backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

from mtasts_fast.config import ZoneConfig
from mtasts_fast.policy import Policy

__all__ = ["Cache", "CacheEntry", "CacheUnavailable"]


class CacheUnavailable(Exception):
    """The backend cannot be reached or read right now."""


@dataclass(slots=True, eq=False)
class CacheEntry:
    """One domain's policy as the daemon stores it (DESIGN.md §4 "Cache semantics").

    Times are Unix wall-clock seconds, because entries outlive the process.
    The policy expires ``max_age`` seconds after the last successful HTTPS
    fetch (RFC 8461 §3.2), not after the last TXT confirmation: an unchanged
    TXT id never extends a policy whose HTTPS host has gone away.
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


class Cache(abc.ABC):
    """Async key-value store of CacheEntry by normalised domain.

    Backends whose reads cost microseconds and never block the event loop set
    ``synchronous_reads`` and implement ``get_nowait`` so that a cache hit is
    answered without scheduling a task.
    """

    synchronous_reads: ClassVar[bool] = False

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Open connections or files; called once in the running loop."""

    def get_nowait(self, domain: str) -> CacheEntry | None:
        raise NotImplementedError(f"{type(self).__name__} has no synchronous reads")

    @abc.abstractmethod
    async def get(self, domain: str) -> CacheEntry | None:
        """The entry for ``domain`` or None; CacheUnavailable if the backend is down."""

    @abc.abstractmethod
    async def put(self, entry: CacheEntry) -> None:
        """Store ``entry`` under ``entry.domain``, replacing any older one."""

    @abc.abstractmethod
    async def delete(self, domain: str) -> None:
        """Forget ``domain``; no error if it is not cached."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or files."""
