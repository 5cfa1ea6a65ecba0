"""Fetch-failure records (negative caching, backoff) and their retry index.

``failures`` maps a domain to its ``FetchFailure``; ``failures_by_retry``
indexes the records by ``retry_at``, built like ``by_expiry`` (``layout``).
The records are bounded like the policy entries but separately, so that a
flood of broken domains cannot push out working policies: a record for a new
domain in a full table first evicts 1 % of them, those whose ``retry_at`` is
oldest (``eviction`` decides how many). They are also the first data given
up when the map is full (``writes``): losing one costs at most an early
retry.

The functions taking a transaction, except ``read_failure``, run on the
writer thread inside a write transaction.
"""

from __future__ import annotations

import lmdb

from mtasts_fast.cache.base import CacheUnavailable, FetchFailure
from mtasts_fast.cache.codec import decode_failure
from mtasts_fast.cache.lmdb.eviction import Capacity, evictions_due
from mtasts_fast.cache.lmdb.layout import Databases, storable
from mtasts_fast.cache.lmdb.time_index import TimeIndexed

__all__ = [
    "delete_failure",
    "evict_failures",
    "prune_failures",
    "put_failure",
    "read_failure",
]


def read_failure(env: lmdb.Environment, dbs: Databases, domain: str) -> FetchFailure | None:
    """The failure record of ``domain``; raises ``MapResizedError`` as it comes."""
    key = domain.encode()
    if not storable(key):
        return None  # never stored (see LmdbCache.put_failure)
    try:
        with env.begin(dbs.failures) as txn:
            data = txn.get(key)
    except lmdb.MapResizedError:
        raise
    except lmdb.Error as exc:
        raise CacheUnavailable(f"LMDB read failed: {exc}") from exc
    return decode_failure(domain, data) if data is not None else None


def _retry_at(key: bytes, value: bytes) -> float | None:
    failure = decode_failure(key.decode("utf-8", "replace"), value)
    return None if failure is None else failure.retry_at


def _indexed(dbs: Databases) -> TimeIndexed:
    return TimeIndexed(dbs.failures, dbs.failures_by_retry, _retry_at)


def put_failure(
    txn: lmdb.Transaction[bytes],
    dbs: Databases,
    capacity: Capacity,
    key: bytes,
    value: bytes,
    retry_at: float,
) -> None:
    """Store a failure record and index it by ``retry_at``, evicting first if due."""
    indexed = _indexed(dbs)
    old = txn.get(key, db=dbs.failures)
    if old is not None:
        indexed.unindex(txn, key, old)
    else:
        wanted = evictions_due(txn, dbs, capacity, dbs.failures)
        if wanted:
            indexed.evict(txn, wanted)
    indexed.put(txn, key, value, retry_at)


def delete_failure(txn: lmdb.Transaction[bytes], dbs: Databases, key: bytes) -> bool:
    """Delete the failure record under ``key``; True if there was one."""
    old = txn.get(key, db=dbs.failures)
    if old is None:
        return False
    _indexed(dbs).delete(txn, key)
    return True


def prune_failures(txn: lmdb.Transaction[bytes], dbs: Databases, limit: bytes, batch: int) -> bool:
    """Delete up to ``batch`` failure records retried before ``limit``; more left?"""
    return _indexed(dbs).prune(txn, limit, batch)[1]


def evict_failures(txn: lmdb.Transaction[bytes], dbs: Databases, wanted: int) -> int:
    """Delete ``wanted`` failure records, those with the oldest retry time first."""
    return _indexed(dbs).evict(txn, wanted)
