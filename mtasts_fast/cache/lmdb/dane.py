"""DANE states (DESIGN.md §7): the memoised read, the records and their expiry index.

``dane`` maps a domain to its ``DaneState``; ``dane_by_expiry`` indexes the
states by ``expires_at``, built like ``by_expiry`` (``layout``).

Reading
    The responder looks a domain's DANE state up on every request it would
    answer with an MTA-STS policy, so ``read_dane`` is the hot path's second
    read and works exactly like ``reads.read_entry``: the decoded state of
    each recently read domain is memoised with its bytes and stamped with
    the id of the last commit (``commit_counter``). While that id is
    unchanged the same ``DaneState`` object comes back without a read
    transaction, so the replies the responder rendered on it are kept; after
    any commit the stored bytes are read and compared, so a write by any
    process is seen on the next read. It is a function of its own rather
    than ``read_entry`` with a decoder argument, so that the entries' hot
    path keeps its exact cost.

Bounds
    The states are bounded by ``max_entries`` like the policy entries but
    separately (as the failure records are), so that a flood of DANE-signed
    domains cannot push out working policies: a state for a new domain in a
    full table first evicts 1 % of them, those that expired first (``eviction``
    decides how many). When the map is full they are given up after the
    failure records and before the entries (``writes``): losing one costs a
    few DNS queries, losing a policy an HTTPS fetch.

Retention
    ``prune`` deletes the states that expired before its limit: the periodic
    prune keeps them one day past their expiry, as long as the responder may
    serve one while it revalidates the domain (``base.Cache.prune``).

The functions taking a transaction, except ``read_dane``, run on the writer
thread inside a write transaction.
"""

from __future__ import annotations

import lmdb

from mtasts_fast.cache.base import CacheUnavailable
from mtasts_fast.cache.codec import decode_dane
from mtasts_fast.cache.lmdb.commit_counter import CommitCounter
from mtasts_fast.cache.lmdb.eviction import Capacity, evictions_due
from mtasts_fast.cache.lmdb.layout import Databases
from mtasts_fast.cache.lmdb.reads import MEMO_LIMIT
from mtasts_fast.cache.lmdb.time_index import TimeIndexed
from mtasts_fast.dane.state import DaneState
from mtasts_fast.memo import make_room

__all__ = [
    "DaneMemo",
    "delete_dane",
    "evict_dane",
    "prune_dane",
    "put_dane",
    "read_dane",
]

# domain -> (stored bytes, decoded state, last commit id when read)
DaneMemo = dict[str, tuple[bytes, DaneState, int | None]]


def read_dane(
    env: lmdb.Environment | None,
    dbs: Databases | None,
    commits: CommitCounter | None,
    memo: DaneMemo,
    domain: str,
) -> DaneState | None:
    """The DANE state of ``domain``, from ``memo`` when it is still exact (module doc)."""
    if env is None or dbs is None:
        raise CacheUnavailable("the LMDB cache is not open")
    # Read before the transaction begins: a commit after this point
    # changes it, so a stamp never vouches for bytes older than itself.
    commit = commits.value() if commits is not None else None
    memoised = memo.get(domain)
    if memoised is not None and commit is not None and memoised[2] == commit:
        return memoised[1]
    key = domain.encode()
    try:
        txn = env.begin(dbs.dane)
        try:
            data = txn.get(key)
        finally:
            txn.abort()
    except lmdb.MapResizedError:
        raise
    except lmdb.BadValsizeError:
        return None  # a key LMDB cannot hold (empty, or over 511 bytes)
    except lmdb.Error as exc:
        raise CacheUnavailable(f"LMDB read failed: {exc}") from exc
    if data is None:
        if memoised is not None:
            memo.pop(domain, None)
        return None
    if memoised is not None and memoised[0] == data:
        if memoised[2] != commit:
            memo[domain] = (data, memoised[1], commit)
        return memoised[1]
    state = decode_dane(domain, data)
    if state is None:
        return None
    if memoised is None:
        make_room(memo, MEMO_LIMIT)
    memo[domain] = (data, state, commit)
    return state


def _expires_at(key: bytes, value: bytes) -> float | None:
    state = decode_dane(key.decode("utf-8", "replace"), value)
    return None if state is None else state.expires_at


def _indexed(dbs: Databases) -> TimeIndexed:
    return TimeIndexed(dbs.dane, dbs.dane_by_expiry, _expires_at)


def put_dane(
    txn: lmdb.Transaction[bytes],
    dbs: Databases,
    capacity: Capacity,
    key: bytes,
    value: bytes,
    state: DaneState,
) -> None:
    """Store ``state`` (encoded as ``value``) and index it, unless a newer one is stored."""
    indexed = _indexed(dbs)
    old = txn.get(key, db=dbs.dane)
    if old is not None:
        if old == value:
            return
        previous = decode_dane(state.domain, old)
        if previous is not None:
            if previous.evaluated_at > state.evaluated_at:
                return  # another worker or host stored a newer evaluation
            indexed.unindex(txn, key, old)
    else:
        wanted = evictions_due(txn, dbs, capacity, dbs.dane)
        if wanted:
            indexed.evict(txn, wanted)
    indexed.put(txn, key, value, state.expires_at)


def delete_dane(txn: lmdb.Transaction[bytes], dbs: Databases, key: bytes) -> bool:
    """Delete the state under ``key`` and its index key; True if a readable one was there."""
    return _indexed(dbs).delete(txn, key)


def prune_dane(
    txn: lmdb.Transaction[bytes], dbs: Databases, limit: bytes, batch: int
) -> tuple[int, bool]:
    """Delete up to ``batch`` states expired before ``limit``; (count, more?)."""
    return _indexed(dbs).prune(txn, limit, batch)


def evict_dane(txn: lmdb.Transaction[bytes], dbs: Databases, wanted: int) -> int:
    """Delete ``wanted`` states, those that expire first (expired ones) first."""
    return _indexed(dbs).evict(txn, wanted)
