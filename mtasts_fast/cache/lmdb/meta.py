"""The ``meta`` database: the proactive-refresh timestamp, eviction time, leases.

A lease (``acquire_lease``) is read, judged and rewritten inside one write
transaction: LMDB admits one writer at a time across every process that
opens the file, so two workers can never both find a lease free and both
take it. Its expiry is wall-clock time, read once the transaction holds the
writer lock, because the processes share no other clock.

The functions taking a transaction run on the writer thread inside a write
transaction.
"""

from __future__ import annotations

import time

import lmdb

from mtasts_fast.cache.base import CacheUnavailable
from mtasts_fast.cache.codec import decode_lease, encode_lease
from mtasts_fast.cache.lmdb.layout import (
    DOUBLE,
    LAST_EVICTION,
    LEASE_PREFIX,
    PROACTIVE_TS,
    Databases,
)

__all__ = [
    "acquire_lease",
    "lease_key",
    "mark_eviction",
    "read_proactive_ts",
    "release_lease",
    "write_proactive_ts",
]


def read_proactive_ts(env: lmdb.Environment, dbs: Databases) -> float:
    """When the last proactive pass started (0.0 if never); raises ``MapResizedError``."""
    try:
        with env.begin(dbs.meta) as txn:
            data = txn.get(PROACTIVE_TS)
    except lmdb.MapResizedError:
        raise
    except lmdb.Error as exc:
        raise CacheUnavailable(f"LMDB read failed: {exc}") from exc
    if data is None or len(data) != DOUBLE.size:
        return 0.0
    value: float = DOUBLE.unpack(data)[0]
    return value


def write_proactive_ts(txn: lmdb.Transaction[bytes], dbs: Databases, value: bytes) -> None:
    """Store the proactive timestamp ``value``, packed with ``DOUBLE``."""
    txn.put(PROACTIVE_TS, value, db=dbs.meta)


def mark_eviction(txn: lmdb.Transaction[bytes], dbs: Databases) -> None:
    """Record the time of a map-full eviction."""
    txn.put(LAST_EVICTION, DOUBLE.pack(time.time()), db=dbs.meta)


def lease_key(name: str) -> bytes:
    """The meta key of the lease ``name``."""
    return LEASE_PREFIX + name.encode()


def acquire_lease(
    txn: lmdb.Transaction[bytes], dbs: Databases, key: bytes, owner: str, ttl: float
) -> bool:
    """Take the lease under ``key`` for ``ttl`` seconds unless another owner holds it."""
    # The writer lock is held from here to the commit: no other process
    # can read the lease as free in between (module doc).
    now = time.time()
    data = txn.get(key, db=dbs.meta)
    held = decode_lease(data) if data is not None else None
    if held is not None and held[0] != owner and held[1] > now:
        return False
    txn.put(key, encode_lease(owner, now + ttl), db=dbs.meta)
    return True


def release_lease(txn: lmdb.Transaction[bytes], dbs: Databases, key: bytes, owner: str) -> None:
    """Delete the lease under ``key`` if ``owner`` holds it."""
    data = txn.get(key, db=dbs.meta)
    held = decode_lease(data) if data is not None else None
    if held is not None and held[0] == owner:
        txn.delete(key, db=dbs.meta)
