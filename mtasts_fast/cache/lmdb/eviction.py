"""Bounding the cache: the expiry and checked indexes, eviction and pruning.

``max_entries``: a put that adds a domain to a full cache first evicts a
batch of 1 % of the entries (at least one): expired policies first, then the
least recently *checked* ones. True per-read LRU would turn every lookup into
a cross-process write; ``checked_at`` is a cheap stand-in, because a lookup
of a domain past ``cache_grace`` revalidates it and moves its ``checked_at``
forward, so domains in use stay young and domains nobody mails to age out.
(A proactive refresh pass moves every entry's ``checked_at``, so right after
one the order is that of the pass.) Failure records are bounded the same
way, separately (``failures``).

``map_size``: deleting needs free pages too (copy-on-write), so a map
allowed to fill up completely could not be emptied any more. A put that adds
a domain therefore also evicts a batch when fewer than two pages per batch
entry (plus a reserve) are left (``evictions_due``).

The functions taking a transaction run on the writer thread inside a write
transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import lmdb

from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.cache.codec import decode_entry
from mtasts_fast.cache.lmdb.layout import TIME_KEY_SIZE, Databases, time_key

__all__ = [
    "Capacity",
    "batch_size",
    "evict",
    "evictions_due",
    "prune_expired",
    "unindex",
]

# Eviction removes this fraction of the entries at a time, so it is rare.
EVICT_DIVISOR = 100
# Pages kept free, beyond twice an eviction batch, so that the entries can
# still be evicted when the map is nearly full.
RESERVE_PAGES = 32


@dataclass(frozen=True, slots=True)
class Capacity:
    """What bounds the cache: the environment's map (in pages) and ``max_entries``."""

    env: lmdb.Environment
    page_size: int
    max_entries: int


def batch_size(capacity: Capacity, count: int) -> int:
    """Entries (or failure records) evicted at a time from a table holding ``count``."""
    return max(1, min(count, capacity.max_entries) // EVICT_DIVISOR)


def free_pages(
    txn: lmdb.Transaction[bytes], dbs: Databases, capacity: Capacity, enough: int
) -> int:
    """Pages of the map not holding data: free, reusable soon, or never used.

    Counting them takes a stat of every database, so when the file's
    high-water mark is more than ``enough`` pages below the end of the
    map, that distance is returned instead.
    """
    info = capacity.env.info()
    map_pages = info["map_size"] // capacity.page_size
    if map_pages - info["last_pgno"] > enough:
        return map_pages - info["last_pgno"]
    used = 2  # the meta pages
    for db in (None, *dbs.all()):
        st = txn.stat(db) if db is not None else txn.stat()
        used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
    return map_pages - used


def evictions_due(
    txn: lmdb.Transaction[bytes], dbs: Databases, capacity: Capacity, table: lmdb._Database
) -> int:
    """How many records to evict from ``table`` before a new one is added to it."""
    count = txn.stat(table)["entries"]
    batch = batch_size(capacity, count)
    reserve = 2 * batch + RESERVE_PAGES
    if count >= capacity.max_entries:
        return count - capacity.max_entries + batch
    if free_pages(txn, dbs, capacity, reserve) < reserve:
        # Evict while there is still room to do so: deleting needs fresh
        # pages too (copy-on-write), so a map that is allowed to fill up
        # completely can no longer be emptied.
        return batch
    return 0


def evict(txn: lmdb.Transaction[bytes], dbs: Databases, wanted: int) -> int:
    """Delete ``wanted`` entries: expired ones first, then the least recently checked."""
    now_key = time_key(time.time())
    evicted = _evict_from(txn, dbs, dbs.by_expiry, wanted, now_key)
    if evicted < wanted:
        evicted += _evict_from(txn, dbs, dbs.by_checked, wanted - evicted, None)
    if evicted < wanted:
        # Only entries missing from the indexes are left (written by another
        # format): remove them in key order so the bound still holds.
        cursor = txn.cursor(dbs.policies)
        while evicted < wanted and cursor.first():
            key, old = cursor.item()
            cursor.delete()
            previous = decode_entry(key.decode("utf-8", "replace"), old)
            if previous is not None:
                unindex(txn, dbs, key, previous)
            evicted += 1
    return evicted


def _evict_from(
    txn: lmdb.Transaction[bytes],
    dbs: Databases,
    index: lmdb._Database,
    wanted: int,
    stop: bytes | None,
) -> int:
    cursor = txn.cursor(index)
    evicted = 0
    while evicted < wanted and cursor.first():
        index_key = cursor.key()
        if stop is not None and index_key[:TIME_KEY_SIZE] >= stop:
            break
        # Every index key looked at is deleted: evicted or stale.
        cursor.delete()
        if _remove_indexed(txn, dbs, index_key, expiry_index=index is dbs.by_expiry):
            evicted += 1
    return evicted


def prune_expired(
    txn: lmdb.Transaction[bytes], dbs: Databases, limit: bytes, batch: int
) -> tuple[int, bool]:
    """Delete up to ``batch`` entries expired before ``limit``; (count, more?)."""
    cursor = txn.cursor(dbs.by_expiry)
    count = examined = 0
    while cursor.first() and cursor.key()[:TIME_KEY_SIZE] < limit:
        if examined >= batch:
            return count, True
        examined += 1
        index_key = cursor.key()
        cursor.delete()
        if _remove_indexed(txn, dbs, index_key, expiry_index=True):
            count += 1
    return count, False


def _remove_indexed(
    txn: lmdb.Transaction[bytes], dbs: Databases, index_key: bytes, *, expiry_index: bool
) -> bool:
    """Delete the entry an index key (already deleted) points to, if it is current.

    Returns True if an entry was removed. An undecodable value is removed
    too; an index key whose entry has since changed was stale and removes
    nothing.
    """
    key = index_key[TIME_KEY_SIZE:]
    old = txn.get(key, db=dbs.policies)
    if old is None:
        return False
    previous = decode_entry(key.decode("utf-8", "replace"), old)
    if previous is None:
        txn.delete(key, db=dbs.policies)
        return True
    if expiry_index:
        current, other_key, other = previous.expires_at, previous.checked_at, dbs.by_checked
    else:
        current, other_key, other = previous.checked_at, previous.expires_at, dbs.by_expiry
    if time_key(current) + key != index_key:
        return False
    txn.delete(key, db=dbs.policies)
    txn.delete(time_key(other_key) + key, db=other)
    return True


def unindex(txn: lmdb.Transaction[bytes], dbs: Databases, key: bytes, previous: CacheEntry) -> None:
    """Delete the index keys of the entry ``previous`` stored under ``key``."""
    txn.delete(time_key(previous.expires_at) + key, db=dbs.by_expiry)
    txn.delete(time_key(previous.checked_at) + key, db=dbs.by_checked)
