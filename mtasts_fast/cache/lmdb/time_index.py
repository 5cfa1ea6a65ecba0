"""A database of records with one time index: the failure records and the DANE states.

``failures`` is indexed by each record's ``retry_at`` (``failures_by_retry``),
``dane`` by each state's ``expires_at`` (``dane_by_expiry``); both index keys
are ``time_key(t) + key`` with an empty value (``layout``), so the records
whose time is oldest are the first keys of the index. The policy entries have
two indexes and keep their own code (``writes``, ``eviction``).

An index key whose record has since been rewritten (another time) or deleted
is stale; whoever walks the index deletes it on sight. A record that does
not decode has no index key it can be found by; eviction takes such records
in key order once the index is exhausted.

Every function runs on the writer thread inside a write transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lmdb

from mtasts_fast.cache.lmdb.layout import TIME_KEY_SIZE, time_key

__all__ = ["TimeIndexed"]


@dataclass(frozen=True, slots=True)
class TimeIndexed:
    """The record database, its time index, and how to read a record's time."""

    records: Any  # an LMDB database handle (py-lmdb has no type for it)
    index: Any
    #: The indexed time of a stored value, or None when it does not decode.
    time_of: Callable[[bytes, bytes], float | None]

    def unindex(self, txn: lmdb.Transaction[bytes], key: bytes, old: bytes) -> bool:
        """Delete the index key of ``old`` (the value stored under ``key``); False if unreadable."""
        when = self.time_of(key, old)
        if when is None:
            return False
        txn.delete(time_key(when) + key, db=self.index)
        return True

    def put(self, txn: lmdb.Transaction[bytes], key: bytes, value: bytes, when: float) -> None:
        """Store ``value`` and index it at ``when`` (the caller unindexed the old value)."""
        txn.put(key, value, db=self.records)
        txn.put(time_key(when) + key, b"", db=self.index)

    def delete(self, txn: lmdb.Transaction[bytes], key: bytes) -> bool:
        """Delete the record under ``key`` and its index key; True if a readable one was there."""
        old = txn.pop(key, db=self.records)
        if old is None:
            return False
        return self.unindex(txn, key, old)

    def prune(self, txn: lmdb.Transaction[bytes], limit: bytes, batch: int) -> tuple[int, bool]:
        """Delete up to ``batch`` records indexed before ``limit``; (count, more left?)."""
        cursor = txn.cursor(self.index)
        count = examined = 0
        while cursor.first() and cursor.key()[:TIME_KEY_SIZE] < limit:
            if examined >= batch:
                return count, True
            examined += 1
            index_key = cursor.key()
            cursor.delete()
            if self._remove_indexed(txn, index_key):
                count += 1
        return count, False

    def evict(self, txn: lmdb.Transaction[bytes], wanted: int) -> int:
        """Delete ``wanted`` records, the oldest indexed time first."""
        cursor = txn.cursor(self.index)
        evicted = 0
        while evicted < wanted and cursor.first():
            index_key = cursor.key()
            cursor.delete()
            if self._remove_indexed(txn, index_key):
                evicted += 1
        if evicted < wanted:
            # Records missing from the index (unreadable ones) go in key order.
            cursor = txn.cursor(self.records)
            while evicted < wanted and cursor.first():
                cursor.delete()
                evicted += 1
        return evicted

    def _remove_indexed(self, txn: lmdb.Transaction[bytes], index_key: bytes) -> bool:
        """Delete the record an index key (already deleted) points to, if it is current.

        An unreadable record is removed too; an index key whose record has
        since been rewritten was stale and removes nothing.
        """
        key = index_key[TIME_KEY_SIZE:]
        old = txn.get(key, db=self.records)
        if old is None:
            return False
        when = self.time_of(key, old)
        if when is not None and time_key(when) + key != index_key:
            return False
        txn.delete(key, db=self.records)
        return True
