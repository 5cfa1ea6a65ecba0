"""``LmdbCache``: the cache interface over the LMDB environment.

Reads (``get_nowait``, ``get``, ``scan``, ...) run on the event loop's
thread, because LMDB readers never wait (``reads``). All writes run on one
dedicated thread per process, one transaction at a time (an ``asyncio.Lock``
guards the hand-off), because a write may wait for LMDB's inter-process
writer lock and ``fsync``. py-lmdb drops the GIL while it waits, so the event
loop keeps answering. Writes asked for while the writer is busy share its
next transaction (``group_commit``). ``put_many`` writes WRITE_BATCH entries
per commit for imports.

A write that does not fit even after evicting (``writes.attempt``) doubles
the map, up to ``environment.MAP_GROWTH_LIMIT`` times the configured
``map_size``; beyond that the write is dropped with one error line. A grown
map, whether this process grew it or another, is adopted on the event
loop's thread while holding the write lock, so the writer thread is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

import lmdb

from mtasts_fast import defaults
from mtasts_fast.cache.base import (
    FAILURE_RETENTION,
    SCAN_BATCH,
    Cache,
    CacheEntry,
    CacheStats,
    CacheUnavailable,
    FetchFailure,
)
from mtasts_fast.cache.codec import encode_dane, encode_entry, encode_failure
from mtasts_fast.cache.lmdb import dane, failures, meta, stats, writes
from mtasts_fast.cache.lmdb.commit_counter import CommitCounter
from mtasts_fast.cache.lmdb.dane import read_dane
from mtasts_fast.cache.lmdb.environment import (
    MAP_GROWTH_LIMIT,
    adopt_map_size,
    grow_map,
    open_environment,
    split_path,
)
from mtasts_fast.cache.lmdb.eviction import Capacity, prune_expired
from mtasts_fast.cache.lmdb.group_commit import WriteQueue
from mtasts_fast.cache.lmdb.layout import DOUBLE, Databases, storable, time_key
from mtasts_fast.cache.lmdb.reads import MEMO_LIMIT, Memo, read_batch, read_entry
from mtasts_fast.dane.state import DaneState

__all__ = ["LmdbCache"]

# The backend's one logger, named for the package: log lines and logging
# configuration name the backend, not the module.
_log = logging.getLogger("mtasts_fast.cache.lmdb")

_T = TypeVar("_T")

# Entries written or deleted per write transaction by bulk operations
# (put_many, prune), so that other processes' writes are not held up for long.
WRITE_BATCH = 1000
# Write attempts before giving up on a map that keeps being resized.
MAX_ATTEMPTS = 8


class LmdbCache(Cache):
    """LMDB-backed cache shared by every process on the host (see the package doc)."""

    synchronous_reads: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._path = str(options.get("path", defaults.LMDB_PATH))
        self._map_size = int(options.get("map_size", defaults.LMDB_MAP_SIZE))
        self._max_entries = int(options.get("max_entries", defaults.LMDB_MAX_ENTRIES))
        if self._max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        # Not a config key: False only for the ``internal`` cache's throw-away
        # environment (cache.internal_dir), see environment.py "Durability".
        self._durable = bool(options.get("durable", True))
        self._env: lmdb.Environment | None = None
        self._dbs: Databases | None = None
        self._capacity: Capacity | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._write_lock = asyncio.Lock()
        self._queue = WriteQueue(self._write_lock, self._attempts)
        self._memo: Memo = {}
        # The memo holds decoded entries in each process: never more than the
        # cache itself may hold, so a small cache stays small in every worker.
        self._memo_limit = min(MEMO_LIMIT, self._max_entries)
        self._dane_memo: dane.DaneMemo = {}
        self._commits: CommitCounter | None = None
        # Told when a memo drops entries (the responder's fast path).
        self._memo_listeners: list[Callable[[], object]] = []
        # Bound once: the reads pass it on every call.
        self._on_drop = self._memo_dropped

    # -- opening and closing ------------------------------------------------------

    async def setup(self) -> None:
        """Open (creating if needed) the environment; call in each process after fork."""
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="lmdb-writer")
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._open)
        except (OSError, lmdb.Error) as exc:
            self._writer.shutdown(wait=False)
            self._writer = None
            raise CacheUnavailable(f"cannot open the LMDB cache at {self._path}: {exc}") from exc

    def _open(self) -> None:
        env, page_size, dbs, commits = open_environment(
            self._path, self._map_size, durable=self._durable
        )
        self._dbs = dbs
        self._capacity = Capacity(env, page_size, self._max_entries)
        self._commits = commits
        self._env = env

    async def close(self) -> None:
        if self._writer is None:
            return
        async with self._write_lock:
            if self._commits is not None:
                self._commits.close()
                self._commits = None
            if self._env is not None:
                self._env.close()
                self._env = None
            self._dbs = None
            self._capacity = None
            self._writer.shutdown(wait=False)
            self._writer = None
            self._memo.clear()
            self._dane_memo.clear()
            self._memo_dropped()

    @property
    def path(self) -> str:
        """The configured ``path`` (a directory or the data file)."""
        return self._path

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            raise CacheUnavailable("the LMDB cache is not open")
        return self._env

    def _require_dbs(self) -> Databases:
        if self._dbs is None:
            raise CacheUnavailable("the LMDB cache is not open")
        return self._dbs

    def _require_capacity(self) -> Capacity:
        if self._capacity is None:
            raise CacheUnavailable("the LMDB cache is not open")
        return self._capacity

    # -- the memo, for the compiled request path (fastpath.py) -------------------

    @property
    def commit_stamps(self) -> CommitCounter | None:
        commits = self._commits
        return commits if commits is not None and commits.value() is not None else None

    def watch_memo(self, listener: Callable[[], object]) -> None:
        self._memo_listeners.append(listener)

    def unwatch_memo(self, listener: Callable[[], object]) -> None:
        with contextlib.suppress(ValueError):
            self._memo_listeners.remove(listener)

    def _memo_dropped(self) -> None:
        for listener in list(self._memo_listeners):
            listener()

    # -- reads (event loop thread) --------------------------------------------

    def get_nowait(self, domain: str) -> CacheEntry | None:
        try:
            return read_entry(
                self._env,
                self._dbs,
                self._commits,
                self._memo,
                domain,
                self._memo_limit,
                self._on_drop,
            )
        except lmdb.MapResizedError:
            if self._write_lock.locked():
                # The writer thread is busy, so the map cannot be replaced now;
                # the responder falls back to get(), which waits for it.
                return None
            adopt_map_size(self._require_env(), self._path)
        try:
            return read_entry(
                self._env,
                self._dbs,
                self._commits,
                self._memo,
                domain,
                self._memo_limit,
                self._on_drop,
            )
        except lmdb.MapResizedError as exc:
            raise CacheUnavailable(f"LMDB map keeps being resized: {exc}") from exc

    async def get(self, domain: str) -> CacheEntry | None:
        return await self._adopting(self._read, domain)

    def _read(self, domain: str) -> CacheEntry | None:
        return read_entry(
            self._env,
            self._dbs,
            self._commits,
            self._memo,
            domain,
            self._memo_limit,
            self._on_drop,
        )

    async def _adopting(self, read: Callable[..., _T], *args: Any) -> _T:
        """``read(*args)``; if another process has grown the map, adopt it and retry."""
        try:
            return read(*args)
        except lmdb.MapResizedError:
            async with self._write_lock:
                adopt_map_size(self._require_env(), self._path)
        try:
            return read(*args)
        except lmdb.MapResizedError as exc:
            raise CacheUnavailable(f"LMDB map keeps being resized: {exc}") from exc

    async def scan(self, batch_size: int = SCAN_BATCH) -> AsyncIterator[list[CacheEntry]]:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        after: bytes | None = None
        while True:
            batch, after = await self._adopting(self._read_batch, after, batch_size)
            if batch:
                yield batch
            if after is None:
                return

    def _read_batch(self, after: bytes | None, size: int) -> tuple[list[CacheEntry], bytes | None]:
        return read_batch(self._require_env(), self._require_dbs(), after, size)

    def get_dane_nowait(self, domain: str) -> DaneState | None:
        # read_dane is called directly, like read_entry: the hot path's
        # second read (see the dane module).
        try:
            return read_dane(self._env, self._dbs, self._commits, self._dane_memo, domain)
        except lmdb.MapResizedError:
            if self._write_lock.locked():
                return None  # as in get_nowait: the caller falls back to get_dane()
            adopt_map_size(self._require_env(), self._path)
        try:
            return read_dane(self._env, self._dbs, self._commits, self._dane_memo, domain)
        except lmdb.MapResizedError as exc:
            raise CacheUnavailable(f"LMDB map keeps being resized: {exc}") from exc

    async def get_dane(self, domain: str) -> DaneState | None:
        return await self._adopting(self._read_dane, domain)

    def _read_dane(self, domain: str) -> DaneState | None:
        return read_dane(self._env, self._dbs, self._commits, self._dane_memo, domain)

    async def stats(self) -> CacheStats:
        return await self._adopting(self._read_stats)

    def _read_stats(self) -> CacheStats:
        path, subdir = split_path(self._path)
        data_file = os.path.join(path, "data.mdb") if subdir else path
        return stats.read_stats(self._require_env(), self._require_dbs(), data_file)

    async def get_proactive_ts(self) -> float:
        return await self._adopting(self._read_proactive_ts)

    def _read_proactive_ts(self) -> float:
        return meta.read_proactive_ts(self._require_env(), self._require_dbs())

    async def get_failure(self, domain: str) -> FetchFailure | None:
        return await self._adopting(self._read_failure, domain)

    def _read_failure(self, domain: str) -> FetchFailure | None:
        return failures.read_failure(self._require_env(), self._require_dbs(), domain)

    # -- writes (writer thread) --------------------------------------------------

    async def put(self, entry: CacheEntry) -> None:
        key = entry.domain.encode()
        if not storable(key):
            _log.error("LMDB cache: cannot store a key of %d bytes for %r", len(key), entry.domain)
            return
        value = encode_entry(entry)
        await self._write(
            lambda txn: writes.put_entry(
                txn, self._require_dbs(), self._require_capacity(), key, value, entry
            ),
            f"the policy of {entry.domain}",
        )

    async def put_many(self, entries: Iterable[CacheEntry]) -> None:
        """``put`` each entry, WRITE_BATCH per transaction (imports, warm-up, tests).

        One commit per batch instead of one per entry: importing a million
        entries takes seconds instead of a million fsyncs.
        """
        chunk: list[tuple[bytes, bytes, CacheEntry]] = []
        for entry in entries:
            key = entry.domain.encode()
            if not storable(key):
                _log.error("LMDB cache: cannot store a key of %d bytes", len(key))
                continue
            chunk.append((key, encode_entry(entry), entry))
            if len(chunk) >= WRITE_BATCH:
                await self._write_chunk(chunk)
                chunk = []
        if chunk:
            await self._write_chunk(chunk)

    async def _write_chunk(self, chunk: list[tuple[bytes, bytes, CacheEntry]]) -> None:
        def job(txn: lmdb.Transaction[bytes]) -> None:
            dbs, capacity = self._require_dbs(), self._require_capacity()
            for key, value, entry in chunk:
                writes.put_entry(txn, dbs, capacity, key, value, entry)

        await self._write(job, f"{len(chunk)} policies from {chunk[0][2].domain} on")

    async def delete(self, domain: str) -> bool:
        key = domain.encode()
        if not storable(key):
            return False
        deleted = await self._write(
            lambda txn: writes.delete_entry(txn, self._require_dbs(), key), f"deleting {domain}"
        )
        return bool(deleted)

    async def purge(self) -> int:
        count = await self._write(
            lambda txn: writes.purge(txn, self._require_dbs()), "purging the cache"
        )
        return count or 0

    async def prune(self, older_than: float) -> int:
        limit = time_key(older_than)
        total = 0
        while True:
            done = await self._write(lambda txn: self._prune_txn(txn, limit), "pruning")
            if done is None:
                break
            count, more = done
            total += count
            if not more:
                break
        # DANE states go once they expired before older_than, like the
        # entries (base.Cache.prune); only policy entries are counted.
        while True:
            done = await self._write(
                lambda txn: dane.prune_dane(txn, self._require_dbs(), limit, WRITE_BATCH),
                "pruning DANE states",
            )
            if done is None or not done[1]:
                break
        # Failure records are kept FAILURE_RETENTION after their retry time
        # (base.FAILURE_RETENTION).
        failure_limit = time_key(older_than - FAILURE_RETENTION)
        while True:
            more_failures = await self._write(
                lambda txn: self._prune_failures_txn(txn, failure_limit), "pruning failures"
            )
            if not more_failures:
                return total

    def _prune_txn(self, txn: lmdb.Transaction[bytes], limit: bytes) -> tuple[int, bool]:
        """Delete up to WRITE_BATCH entries expired before ``limit``; (count, more?)."""
        return prune_expired(txn, self._require_dbs(), limit, WRITE_BATCH)

    def _prune_failures_txn(self, txn: lmdb.Transaction[bytes], limit: bytes) -> bool:
        """Delete up to WRITE_BATCH failure records retried before ``limit``; more left?"""
        return failures.prune_failures(txn, self._require_dbs(), limit, WRITE_BATCH)

    async def set_proactive_ts(self, ts: float) -> None:
        value = DOUBLE.pack(float(ts))
        await self._write(
            lambda txn: meta.write_proactive_ts(txn, self._require_dbs(), value),
            "the proactive timestamp",
        )

    async def put_failure(self, failure: FetchFailure) -> None:
        key = failure.domain.encode()
        if not storable(key):
            _log.error(
                "LMDB cache: cannot store a key of %d bytes for %r", len(key), failure.domain
            )
            return
        value = encode_failure(failure)
        await self._write(
            lambda txn: failures.put_failure(
                txn, self._require_dbs(), self._require_capacity(), key, value, failure.retry_at
            ),
            f"the failure record of {failure.domain}",
        )

    async def delete_failure(self, domain: str) -> bool:
        key = domain.encode()
        if not storable(key):
            return False
        deleted = await self._write(
            lambda txn: failures.delete_failure(txn, self._require_dbs(), key),
            f"deleting the failure of {domain}",
        )
        return bool(deleted)

    async def put_dane(self, state: DaneState) -> None:
        key = state.domain.encode()
        if not storable(key):
            _log.error("LMDB cache: cannot store a key of %d bytes for %r", len(key), state.domain)
            return
        value = encode_dane(state)
        await self._write(
            lambda txn: dane.put_dane(
                txn, self._require_dbs(), self._require_capacity(), key, value, state
            ),
            f"the DANE state of {state.domain}",
        )

    async def delete_dane(self, domain: str) -> bool:
        key = domain.encode()
        if not storable(key):
            return False
        deleted = await self._write(
            lambda txn: dane.delete_dane(txn, self._require_dbs(), key),
            f"deleting the DANE state of {domain}",
        )
        return bool(deleted)

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        key = meta.lease_key(name)
        held = await self._write(
            lambda txn: meta.acquire_lease(txn, self._require_dbs(), key, owner, float(ttl)),
            f"the lease {name}",
        )
        # None: the write was dropped (map full at its limit), so not held.
        return bool(held)

    async def release_lease(self, name: str, owner: str) -> None:
        key = meta.lease_key(name)
        await self._write(
            lambda txn: meta.release_lease(txn, self._require_dbs(), key, owner),
            f"the lease {name}",
        )

    async def _write(self, job: Callable[[lmdb.Transaction[bytes]], _T], what: str) -> _T | None:
        """Run ``job`` in a write transaction on the writer thread.

        Returns its result, or None if the write had to be dropped because the
        map is full at its growth limit. Writes asked for while the writer is
        busy are committed together (group_commit.py).
        """
        result: _T | None = await self._queue.write(job, what)
        return result

    async def _attempts(
        self, job: Callable[[lmdb.Transaction[bytes]], _T], what: str, quiet: bool
    ) -> tuple[bool, _T | None]:
        """(True, the job's result), or (False, None) when the map is full at its
        limit: the write is dropped, with an error line unless ``quiet``.
        Called by the write queue, with the write lock held."""
        env = self._require_env()
        dbs, capacity = self._require_dbs(), self._require_capacity()
        loop = asyncio.get_running_loop()
        for _ in range(MAX_ATTEMPTS):
            try:
                outcome, result = await loop.run_in_executor(
                    self._writer, writes.attempt, env, dbs, capacity, self._path, job
                )
                if outcome == writes.DONE:
                    return True, result
                # The writer thread is idle now, so the map may be replaced.
                if outcome == writes.RESIZED:
                    adopt_map_size(env, self._path)
                    continue
            except lmdb.Error as exc:
                raise CacheUnavailable(f"LMDB write failed ({what}): {exc}") from exc
            if not grow_map(env, self._path, self._map_size):
                break
        if not quiet:
            _log.error(
                "LMDB cache %s is full: dropped the write of %s; the map holds %d bytes, "
                "evicting did not make room and it may not grow further "
                "(%d times cache.map_size); raise cache.map_size",
                self._path,
                what,
                env.info()["map_size"],
                MAP_GROWTH_LIMIT,
            )
        return False, None
