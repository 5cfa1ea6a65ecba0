"""Counting what the file holds, for ``mta-sts-cache stats`` and the metrics.

The counts come from LMDB's own B-tree statistics (no walk over the
entries); the least and most recently checked entries are the first and last
keys of the ``by_checked`` index that still match their entry (a stale key,
left by an entry that was rewritten since, is skipped). One short read
transaction, a few microseconds at any size.
"""

from __future__ import annotations

import os

import lmdb

from mtasts_fast.cache.base import CacheStats, CacheUnavailable
from mtasts_fast.cache.codec import decode_entry
from mtasts_fast.cache.lmdb.layout import TIME_KEY_SIZE, Databases, time_key

__all__ = ["read_stats"]

# Index keys looked at from each end before giving up on finding a current one.
_MAX_STALE = 1000


def read_stats(env: lmdb.Environment, dbs: Databases, data_file: str) -> CacheStats:
    """The counts, the checked range and the data file's size; CacheUnavailable on LMDB errors."""
    try:
        with env.begin() as txn:
            entries = txn.stat(dbs.policies)["entries"]
            failures = txn.stat(dbs.failures)["entries"]
            cursor = txn.cursor(dbs.by_checked)
            oldest = _first_current(txn, dbs, cursor, forward=True)
            newest = _first_current(txn, dbs, cursor, forward=False)
    except lmdb.MapResizedError:
        raise
    except lmdb.Error as exc:
        raise CacheUnavailable(f"LMDB read failed: {exc}") from exc
    try:
        size: int | None = os.stat(data_file).st_size
    except OSError:
        size = None
    return CacheStats(entries, failures, oldest, newest, size)


def _first_current(
    txn: lmdb.Transaction[bytes], dbs: Databases, cursor: lmdb.Cursor[bytes], *, forward: bool
) -> float | None:
    more = cursor.first() if forward else cursor.last()
    for _ in range(_MAX_STALE):
        if not more:
            return None
        index_key = cursor.key()
        key = index_key[TIME_KEY_SIZE:]
        data = txn.get(key, db=dbs.policies)
        if data is not None:
            entry = decode_entry(key.decode("utf-8", "replace"), data)
            if entry is not None and time_key(entry.checked_at) == index_key[:TIME_KEY_SIZE]:
                return entry.checked_at
        more = cursor.next() if forward else cursor.prev()
    return None
