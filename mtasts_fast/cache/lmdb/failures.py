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
from mtasts_fast.cache.lmdb.layout import TIME_KEY_SIZE, Databases, storable, time_key

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


def put_failure(
    txn: lmdb.Transaction[bytes],
    dbs: Databases,
    capacity: Capacity,
    key: bytes,
    value: bytes,
    retry_at: float,
) -> None:
    """Store a failure record and index it by ``retry_at``, evicting first if due."""
    old = txn.get(key, db=dbs.failures)
    if old is not None:
        _unindex_failure(txn, dbs, key, old)
    else:
        wanted = evictions_due(txn, dbs, capacity, dbs.failures)
        if wanted:
            evict_failures(txn, dbs, wanted)
    txn.put(key, value, db=dbs.failures)
    txn.put(time_key(retry_at) + key, b"", db=dbs.failures_by_retry)


def delete_failure(txn: lmdb.Transaction[bytes], dbs: Databases, key: bytes) -> bool:
    """Delete the failure record under ``key``; True if there was one."""
    old = txn.pop(key, db=dbs.failures)
    if old is None:
        return False
    _unindex_failure(txn, dbs, key, old)
    return True


def _unindex_failure(txn: lmdb.Transaction[bytes], dbs: Databases, key: bytes, old: bytes) -> None:
    previous = decode_failure(key.decode("utf-8", "replace"), old)
    if previous is not None:
        txn.delete(time_key(previous.retry_at) + key, db=dbs.failures_by_retry)


def prune_failures(txn: lmdb.Transaction[bytes], dbs: Databases, limit: bytes, batch: int) -> bool:
    """Delete up to ``batch`` failure records retried before ``limit``; more left?"""
    cursor = txn.cursor(dbs.failures_by_retry)
    examined = 0
    while cursor.first() and cursor.key()[:TIME_KEY_SIZE] < limit:
        if examined >= batch:
            return True
        examined += 1
        index_key = cursor.key()
        cursor.delete()
        _remove_failure_indexed(txn, dbs, index_key)
    return False


def evict_failures(txn: lmdb.Transaction[bytes], dbs: Databases, wanted: int) -> int:
    """Delete ``wanted`` failure records, those with the oldest retry time first."""
    cursor = txn.cursor(dbs.failures_by_retry)
    evicted = 0
    while evicted < wanted and cursor.first():
        index_key = cursor.key()
        cursor.delete()
        if _remove_failure_indexed(txn, dbs, index_key):
            evicted += 1
    if evicted < wanted:
        # Records missing from the index (unreadable ones) go in key order.
        cursor = txn.cursor(dbs.failures)
        while evicted < wanted and cursor.first():
            cursor.delete()
            evicted += 1
    return evicted


def _remove_failure_indexed(txn: lmdb.Transaction[bytes], dbs: Databases, index_key: bytes) -> bool:
    """Delete the record an index key (already deleted) points to, if it is current."""
    key = index_key[TIME_KEY_SIZE:]
    old = txn.get(key, db=dbs.failures)
    if old is None:
        return False
    previous = decode_failure(key.decode("utf-8", "replace"), old)
    if previous is not None and time_key(previous.retry_at) + key != index_key:
        return False  # a stale index key: the record was rewritten since
    txn.delete(key, db=dbs.failures)
    return True
