"""Reading policy entries: the memoised hot path and batches for scans.

``get_nowait`` is one read-only transaction and one ``get`` on the event
loop's thread: 1-1.5 µs from 10³ to 10⁶ entries, because LMDB reads the
memory map in place and never waits for a writer. The environment is opened
with ``MDB_NOTLS`` (py-lmdb always sets it) and one spare transaction, so
``begin`` reuses its reader slot (0.7 µs instead of 1.1). Decoding (~4 µs)
and rendering the reply (2-4 µs) would multiply the cost of a hit, so the
decoded entry of each recently read domain is memoised together with its
bytes (up to MEMO_LIMIT domains, or ``max_entries`` when that is smaller: a
memo never needs more entries than the cache can hold): a hit whose stored bytes are unchanged
returns the same ``CacheEntry`` object, whose ``rendered`` replies the
responder keeps. Comparing the bytes makes the memo exact: a write by any
process is seen on the next read.

Each memo entry is also stamped with the id of the last committed
transaction (``commit_counter``), read before the read transaction began.
While that id is unchanged nobody has committed anything, so the entry is
returned without opening a transaction at all: a hit then costs the same
with 10³ or 10⁶ entries, instead of a B-tree descent that touches more
pages (and more TLB and cache misses) the bigger the file. Without a
counter (a file layout it does not recognise) every hit reads the file.

The compiled request path (``fastpath``) goes one step further and replays
a reply while the id is unchanged; it must hear when the memo drops an
entry (the next read would decode a new one), hence ``dropped``.

Every function here raises ``lmdb.MapResizedError`` as it comes, so that
the caller can adopt the grown map and read again; other LMDB errors become
``CacheUnavailable``.
"""

from __future__ import annotations

from collections.abc import Callable

import lmdb

from mtasts_fast.cache.base import CacheEntry, CacheUnavailable
from mtasts_fast.cache.codec import decode_entry
from mtasts_fast.cache.lmdb.commit_counter import CommitCounter
from mtasts_fast.cache.lmdb.layout import Databases
from mtasts_fast.memo import make_room

__all__ = ["MEMO_LIMIT", "Memo", "read_batch", "read_entry"]

# Decoded entries memoised per process, about 2 KiB each with a rendered
# reply (so at most ~20 MiB); the old daemon's LRU default holds as many.
# When full, its oldest eighth is dropped (memo.make_room).
MEMO_LIMIT = 10_000

# domain -> (stored bytes, decoded entry, last commit id when read)
Memo = dict[str, tuple[bytes, CacheEntry, int | None]]


def read_entry(
    env: lmdb.Environment | None,
    dbs: Databases | None,
    commits: CommitCounter | None,
    memo: Memo,
    domain: str,
    limit: int = MEMO_LIMIT,
    dropped: Callable[[], object] | None = None,
) -> CacheEntry | None:
    """The entry of ``domain``, from ``memo`` when it is still exact (module doc).

    ``dropped`` is called when making room dropped entries from ``memo``.
    """
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
        txn = env.begin(dbs.policies)
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
    entry = decode_entry(domain, data)
    if entry is None:
        return None
    if memoised is None and make_room(memo, limit) and dropped is not None:
        dropped()
    memo[domain] = (data, entry, commit)
    return entry


def read_batch(
    env: lmdb.Environment, dbs: Databases, after: bytes | None, size: int
) -> tuple[list[CacheEntry], bytes | None]:
    """Up to ``size`` entries after key ``after``, and the key to resume after.

    Each batch has its own short read transaction, so a slow consumer never
    pins old pages (which would make the map fill up).
    """
    batch: list[CacheEntry] = []
    try:
        with env.begin(dbs.policies) as txn:
            cursor = txn.cursor()
            if after is None:
                more = cursor.first()
            else:
                more = cursor.set_range(after)
                if more and cursor.key() == after:
                    more = cursor.next()
            while more and len(batch) < size:
                key, data = cursor.item()
                domain = key.decode("utf-8", "replace")
                entry = decode_entry(domain, data)
                if entry is not None:
                    batch.append(entry)
                after = key
                more = cursor.next()
    except lmdb.MapResizedError:
        raise
    except lmdb.Error as exc:
        raise CacheUnavailable(f"LMDB read failed: {exc}") from exc
    return batch, after if more else None
