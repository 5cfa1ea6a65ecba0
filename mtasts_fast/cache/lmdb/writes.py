"""Write transactions: one attempt at a job, and the bodies that write entries.

Everything here runs on the writer thread (``store``). ``attempt`` runs one
job in a write transaction. When it does not fit (``MapFullError``), stale
readers are reaped, a batch of failure records (the cheapest data to lose:
at worst one early retry), a batch of DANE states (a few DNS queries each)
and a batch of entries (an HTTPS fetch each) are evicted and the job retried
once; if it still does not fit, the store grows the map (``environment``)
and calls ``attempt`` again. A ``MapResizedError`` (another process grew the
map) is handed back too, because the map may only be adopted while this
thread is idle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import lmdb

from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.cache.codec import decode_entry
from mtasts_fast.cache.lmdb.dane import evict_dane
from mtasts_fast.cache.lmdb.eviction import Capacity, batch_size, evict, evictions_due, unindex
from mtasts_fast.cache.lmdb.failures import evict_failures
from mtasts_fast.cache.lmdb.layout import Databases, time_key
from mtasts_fast.cache.lmdb.meta import mark_eviction

__all__ = ["DONE", "FULL", "RESIZED", "attempt", "delete_entry", "purge", "put_entry"]

# The backend's one logger, named for the package: log lines and logging
# configuration name the backend, not the module.
_log = logging.getLogger("mtasts_fast.cache.lmdb")

_T = TypeVar("_T")

# Outcomes of one attempt on the writer thread.
DONE, FULL, RESIZED = range(3)


def attempt(
    env: lmdb.Environment,
    dbs: Databases,
    capacity: Capacity,
    path: str,
    job: Callable[[lmdb.Transaction[bytes]], _T],
) -> tuple[int, _T | None]:
    """One try at ``job``; on a full map, evict a batch and try once more."""
    try:
        with env.begin(write=True) as txn:
            return DONE, job(txn)
    except lmdb.MapResizedError:
        return RESIZED, None
    except lmdb.MapFullError:
        pass
    try:
        env.reader_check()
        with env.begin(write=True) as txn:
            # Failure records first: losing one costs at most an early retry.
            dropped = evict_failures(
                txn, dbs, batch_size(capacity, txn.stat(dbs.failures)["entries"])
            )
            states = evict_dane(txn, dbs, batch_size(capacity, txn.stat(dbs.dane)["entries"]))
            evicted = evict(txn, dbs, batch_size(capacity, txn.stat(dbs.policies)["entries"]))
        # LMDB reuses the pages a commit frees only from the second commit
        # after it (the previous snapshot must stay intact for crash
        # safety), so one small commit makes them available to the retry.
        with env.begin(write=True) as txn:
            mark_eviction(txn, dbs)
        _log.info(
            "LMDB cache %s: map full, evicted %d entries, %d DANE states and %d failure records",
            path,
            evicted,
            states,
            dropped,
        )
        with env.begin(write=True) as txn:
            return DONE, job(txn)
    except lmdb.MapResizedError:
        return RESIZED, None
    except lmdb.MapFullError:
        return FULL, None


def put_entry(
    txn: lmdb.Transaction[bytes],
    dbs: Databases,
    capacity: Capacity,
    key: bytes,
    value: bytes,
    entry: CacheEntry,
) -> None:
    """Store ``entry`` (encoded as ``value``) and index it, unless a newer check is stored."""
    old = txn.get(key, db=dbs.policies)
    if old is not None:
        if old == value:
            return
        previous = decode_entry(entry.domain, old)
        if previous is not None:
            if previous.checked_at > entry.checked_at:
                return  # another worker or host stored a newer check
            unindex(txn, dbs, key, previous)
    else:
        wanted = evictions_due(txn, dbs, capacity, dbs.policies)
        if wanted:
            evict(txn, dbs, wanted)
    txn.put(key, value, db=dbs.policies)
    txn.put(time_key(entry.expires_at) + key, b"", db=dbs.by_expiry)
    txn.put(time_key(entry.checked_at) + key, b"", db=dbs.by_checked)


def delete_entry(txn: lmdb.Transaction[bytes], dbs: Databases, key: bytes) -> bool:
    """Delete the entry under ``key`` and its index keys; True if one was there."""
    old = txn.pop(key, db=dbs.policies)
    if old is None:
        return False
    previous = decode_entry(key.decode("utf-8", "replace"), old)
    if previous is None:
        return False  # it read as missing; now it is gone for good
    unindex(txn, dbs, key, previous)
    return True


def purge(txn: lmdb.Transaction[bytes], dbs: Databases) -> int:
    """Empty every database but ``meta`` (leases survive); the entries there were."""
    count = txn.stat(dbs.policies)["entries"]
    for db in dbs.all():
        if db is not dbs.meta:
            txn.drop(db, delete=False)
    return count
