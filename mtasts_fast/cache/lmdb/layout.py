"""What the LMDB file holds: its named databases, their keys and values.

Eight named databases in one environment:

- ``policies``: domain (A-label, UTF-8) → entry bytes from ``codec``.
- ``meta``: ``proactive_ts`` and ``last_eviction`` (a map-full eviction)
  → big-endian doubles; ``lease:<name>`` → lease bytes from ``codec``.
- ``by_expiry`` and ``by_checked``: eviction indexes, key = an 8-byte
  order-preserving encoding of ``expires_at`` (resp. ``checked_at``,
  ``time_key``) followed by the domain, empty value. An index key whose
  entry has since changed or gone is stale; whoever walks the index
  deletes it on sight.
- ``failures``: domain → ``FetchFailure`` bytes from ``codec`` (negative
  caching and backoff, shared by every worker), and ``failures_by_retry``,
  its index by ``retry_at`` built like ``by_expiry``: ``prune`` and
  eviction take the records whose retry time is oldest without reading
  the others.
- ``dane``: domain → ``DaneState`` bytes from ``codec`` (DESIGN.md §7), and
  ``dane_by_expiry``, its index by ``expires_at`` built like ``by_expiry``:
  ``prune`` and eviction take the states that expired first without reading
  the others.

The failure and DANE databases were added after the first release: a file
made without them gets them when it is next opened (``open_db`` creates a
missing database in a write transaction, as it always did for the others),
and a process of an earlier release still opens the file, since it never
asks for them (``max_dbs`` limits the databases a handle opens, not those
the file holds).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import lmdb

__all__ = [
    "DOUBLE",
    "LAST_EVICTION",
    "LEASE_PREFIX",
    "MAX_DBS",
    "MAX_KEY",
    "PROACTIVE_TS",
    "TIME_KEY_SIZE",
    "Databases",
    "storable",
    "time_key",
]

POLICIES = b"policies"
META = b"meta"
BY_EXPIRY = b"by_expiry"
BY_CHECKED = b"by_checked"
FAILURES = b"failures"
FAILURES_BY_RETRY = b"failures_by_retry"
DANE = b"dane"
DANE_BY_EXPIRY = b"dane_by_expiry"
# Named databases opened by this release (the limit is per environment
# handle, not stored in the file).
MAX_DBS = 8

# Keys of the meta database.
PROACTIVE_TS = b"proactive_ts"
LAST_EVICTION = b"last_eviction"
LEASE_PREFIX = b"lease:"

# LMDB's default key limit, minus the 8-byte prefix of the index keys.
MAX_KEY = 511 - 8

DOUBLE = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_SIGN = 1 << 63
_ALL_BITS = (1 << 64) - 1
TIME_KEY_SIZE = 8


def time_key(ts: float) -> bytes:
    """8 bytes whose byte order is the numeric order of ``ts`` (IEEE 754 trick)."""
    (bits,) = _U64.unpack(DOUBLE.pack(ts))
    return _U64.pack(bits ^ _ALL_BITS if bits & _SIGN else bits | _SIGN)


def storable(key: bytes) -> bool:
    """True if ``key`` can be stored and indexed (not empty, prefix included)."""
    return 0 < len(key) <= MAX_KEY


@dataclass(frozen=True, slots=True)
class Databases:
    """The handles of the eight named databases of one open environment."""

    policies: lmdb._Database
    meta: lmdb._Database
    by_expiry: lmdb._Database
    by_checked: lmdb._Database
    failures: lmdb._Database
    failures_by_retry: lmdb._Database
    dane: lmdb._Database
    dane_by_expiry: lmdb._Database

    @classmethod
    def open(cls, env: lmdb.Environment) -> Databases:
        """Open each database, creating the missing ones (see the module doc)."""
        return cls(
            policies=env.open_db(POLICIES),
            meta=env.open_db(META),
            by_expiry=env.open_db(BY_EXPIRY),
            by_checked=env.open_db(BY_CHECKED),
            failures=env.open_db(FAILURES),
            failures_by_retry=env.open_db(FAILURES_BY_RETRY),
            dane=env.open_db(DANE),
            dane_by_expiry=env.open_db(DANE_BY_EXPIRY),
        )

    def all(self) -> tuple[lmdb._Database, ...]:
        """Every named database, in the order they were opened."""
        return (
            self.policies,
            self.meta,
            self.by_expiry,
            self.by_checked,
            self.failures,
            self.failures_by_retry,
            self.dane,
            self.dane_by_expiry,
        )
