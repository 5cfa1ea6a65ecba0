"""The shared, memory-mapped LMDB cache (``cache.type: lmdb``, the default).

Every worker on a host opens the same LMDB environment (DESIGN.md §2, §5), so a
policy fetched by one worker is served by all of them and survives restarts.

Layout
    Six named databases in one environment:

    - ``policies``: domain (A-label, UTF-8) → entry bytes from ``codec``.
    - ``meta``: ``proactive_ts`` and ``last_eviction`` (a map-full eviction)
      → big-endian doubles; ``lease:<name>`` → lease bytes from ``codec``.
    - ``by_expiry`` and ``by_checked``: eviction indexes, key = an 8-byte
      order-preserving encoding of ``expires_at`` (resp. ``checked_at``)
      followed by the domain, empty value. An index key whose entry has since
      changed or gone is stale; whoever walks the index deletes it on sight.
    - ``failures``: domain → ``FetchFailure`` bytes from ``codec`` (negative
      caching and backoff, shared by every worker), and ``failures_by_retry``,
      its index by ``retry_at`` built like ``by_expiry``: ``prune`` and
      eviction take the records whose retry time is oldest without reading
      the others.

    The two failure databases were added after the first release: a file
    made without them gets them when it is next opened (``open_db`` creates a
    missing database in a write transaction, as it always did for the
    others), and a process of the previous release still opens the file,
    since it never asks for them.

    ``path`` names a directory (LMDB's ``data.mdb`` and ``lock.mdb`` inside it)
    if it exists as one or ends with ``/``; otherwise it names the data file
    and LMDB adds ``<path>-lock`` beside it. Missing parent directories are
    created with mode 0750 and files with 0640 (less if the umask says so);
    world bits on existing files are removed, because the lock file's reader
    table must not be writable by strangers and the domain list is private.

Reads
    ``get_nowait`` is one read-only transaction and one ``get`` on the event
    loop's thread: 1-1.5 µs from 10³ to 10⁶ entries, because LMDB reads the
    memory map in place and never waits for a writer. The environment is
    opened with ``MDB_NOTLS`` (py-lmdb always sets it) and one spare
    transaction, so ``begin`` reuses its reader slot (0.7 µs instead of 1.1).
    Decoding (~4 µs) and rendering the reply (2-4 µs) would multiply the cost
    of a hit, so the decoded entry of each recently read domain is memoised
    together with its bytes (up to MEMO_LIMIT domains): a hit whose stored
    bytes are unchanged returns the same ``CacheEntry`` object, whose
    ``rendered`` replies the responder keeps. Comparing the bytes makes the
    memo exact: a write by any process is seen on the next read.

    Each memo entry is also stamped with the id of the last committed
    transaction, read before the read transaction began. While that id is
    unchanged nobody has committed anything, so the entry is returned
    without opening a transaction at all: a hit then costs the same with
    10³ or 10⁶ entries, instead of a B-tree descent that touches more pages
    (and more TLB and cache misses) the bigger the file. LMDB keeps that id
    in its two meta pages (the first two pages of the data file; the newer
    one holds the higher id, updated by the single write that makes a commit
    visible), and ``env.info()`` reads it but costs more than a read
    transaction, so the pages are mapped read-only and the id read in place
    (``_CommitCounter``). Its layout is checked at open against
    ``env.info()``; on any mismatch the stamps are not used and every hit
    reads the file as before. The id is bumped by the commit itself, so it
    is exact across processes and crashes.

Writes
    All writes run on one dedicated thread per process, one at a time (an
    ``asyncio.Lock`` guards the hand-off), because a write may wait for LMDB's
    inter-process writer lock and ``fsync``. py-lmdb drops the GIL while it
    waits, so the event loop keeps answering. ``put_many`` writes WRITE_BATCH
    entries per commit for imports.

    A lease (``acquire_lease``) is read, judged and rewritten inside one write
    transaction: LMDB admits one writer at a time across every process that
    opens the file, so two workers can never both find a lease free and
    both take it. Its expiry is wall-clock time, read once the transaction
    holds the writer lock, because the processes share no other clock.

Durability
    ``sync=True, metasync=False``: each commit flushes the data pages once and
    skips the separate flush of the meta page. A ``kill -9`` of any process at
    any moment leaves a consistent cache whatever the flags (the page cache
    survives the process, commits are a single meta-page switch, a dead
    writer's robust mutex is recovered and its reader slots are reaped by
    ``reader_check``). Power loss can at worst undo the last commit, which for
    a cache only costs a refetch; ``sync=False`` would risk corruption on
    power loss, so it is not used. The lock is never disabled.

Size
    ``max_entries``: a put that adds a domain to a full cache first evicts a
    batch of 1 % of the entries (at least one): expired policies first, then
    the least recently *checked* ones. True per-read LRU would turn every
    lookup into a cross-process write; ``checked_at`` is a cheap stand-in,
    because a lookup of a domain past ``cache_grace`` revalidates it and moves
    its ``checked_at`` forward, so domains in use stay young and domains
    nobody mails to age out. (A proactive refresh pass moves every entry's
    ``checked_at``, so right after one the order is that of the pass.)
    Failure records are bounded the same way, separately (a flood of broken
    domains must not push out working policies): a record for a new domain
    in a full table first evicts 1 % of them, those whose ``retry_at`` is
    oldest.

    ``map_size``: deleting needs free pages too (copy-on-write), so a map
    allowed to fill up completely could not be emptied any more. A put that
    adds a domain therefore also evicts a batch when fewer than two pages per
    batch entry (plus a reserve) are left. When a write does not fit anyway
    (``MapFullError``), stale readers are reaped, a batch of failure records
    (the cheapest data to lose: at worst one early retry) and a batch of
    entries are evicted and the write retried; if it still does not fit, the
    map is doubled, up to four times the configured ``map_size``; beyond
    that the write is dropped with one error line. Other processes adopt a
    grown map when LMDB tells them (``MapResizedError``). The map is only
    ever replaced on the event loop's thread while the writer thread is
    idle, because LMDB forbids remapping while a transaction of the process
    is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import struct
import time
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
    CacheUnavailable,
    FetchFailure,
)
from mtasts_fast.cache.codec import (
    decode_entry,
    decode_failure,
    decode_lease,
    encode_entry,
    encode_failure,
    encode_lease,
)
from mtasts_fast.memo import make_room

__all__ = ["LmdbCache"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

FILE_MODE = 0o640
DIR_MODE = 0o750
# Every worker and every mta-sts-cache command holds reader slots; the table
# lives in the lock file and is sized by the first process that opens it.
MAX_READERS = 512
# The map may grow to this many times the configured map_size.
MAP_GROWTH_LIMIT = 4
# Eviction removes this fraction of the entries at a time, so it is rare.
EVICT_DIVISOR = 100
# Entries written or deleted per write transaction by bulk operations
# (put_many, prune), so that other processes' writes are not held up for long.
WRITE_BATCH = 1000
# Decoded entries memoised per process, about 2 KiB each with a rendered
# reply (so at most ~20 MiB); the old daemon's LRU default holds as many.
# When full, its oldest eighth is dropped (memo.make_room).
MEMO_LIMIT = 10_000
# Pages kept free, beyond twice an eviction batch, so that the entries can
# still be evicted when the map is nearly full.
_RESERVE_PAGES = 32
# Write attempts before giving up on a map that keeps being resized.
_MAX_ATTEMPTS = 8
# LMDB's default key limit, minus the 8-byte prefix of the index keys.
_MAX_KEY = 511 - 8

_POLICIES = b"policies"
_META = b"meta"
_BY_EXPIRY = b"by_expiry"
_BY_CHECKED = b"by_checked"
_FAILURES = b"failures"
_FAILURES_BY_RETRY = b"failures_by_retry"
_PROACTIVE_TS = b"proactive_ts"
_LAST_EVICTION = b"last_eviction"
_LEASE_PREFIX = b"lease:"
# Named databases opened by this release (the limit is per environment
# handle, not stored in the file).
_MAX_DBS = 6

_DOUBLE = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_SIGN = 1 << 63
_ALL_BITS = (1 << 64) - 1
_TIME_KEY_SIZE = 8


def _time_key(ts: float) -> bytes:
    """8 bytes whose byte order is the numeric order of ``ts`` (IEEE 754 trick)."""
    (bits,) = _U64.unpack(_DOUBLE.pack(ts))
    return _U64.pack(bits ^ _ALL_BITS if bits & _SIGN else bits | _SIGN)


def _split_path(path: str) -> tuple[str, bool]:
    """The path to hand to LMDB and whether it is a directory (``subdir``)."""
    if path.endswith("/") or os.path.isdir(path):
        return path.rstrip("/") or "/", True
    return path, False


def _make_dirs(directory: str) -> None:
    """Create ``directory`` and its missing ancestors, each with DIR_MODE."""
    missing: list[str] = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for name in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another process meanwhile
            os.mkdir(name, DIR_MODE)


def _restrict(filename: str) -> None:
    """Remove world permission bits from one of our files."""
    try:
        mode = os.stat(filename).st_mode
    except FileNotFoundError:
        return
    if mode & 0o007:
        os.chmod(filename, mode & 0o770)
        _log.warning("removed world permissions from %s", filename)


# Outcomes of one attempt on the writer thread.
_DONE, _FULL, _RESIZED = range(3)

# LMDB's meta page (lmdb.h, MDB_meta, on-disk format version 1): a 16-byte
# page header, then magic (u32), version (u32), address, map size, two
# 48-byte database records and the last page number (8 bytes each on 64-bit
# builds), then the transaction id.
_META_MAGIC = 0xBEEFC0DE
_META_VERSION = 1
_META_MAGIC_OFFSET = 16
_META_TXNID_OFFSET = 16 + 4 + 4 + 8 + 8 + 2 * 48 + 8


class _CommitCounter:
    """The id of the last committed write transaction, read from the map.

    ``value()`` is a few dozen nanoseconds, against ~0.9 µs for a read
    transaction and ~1.6 µs for ``env.info()``. Returns None if the layout
    of the file is not the one this was written for (checked at open).
    """

    def __init__(self, filename: str, page_size: int, env: lmdb.Environment) -> None:
        self._map: mmap.mmap | None = None
        self._words: memoryview | None = None
        if struct.calcsize("P") != 8 or page_size % 8:
            return
        with open(filename, "rb") as file:
            self._map = mmap.mmap(file.fileno(), 2 * page_size, access=mmap.ACCESS_READ)
        self._words = memoryview(self._map).cast("Q")
        self._first = _META_TXNID_OFFSET // 8
        self._second = (page_size + _META_TXNID_OFFSET) // 8
        if not self._layout_matches(page_size, env):
            _log.debug("LMDB meta page layout not recognised; every hit reads the file")
            self.close()

    def _layout_matches(self, page_size: int, env: lmdb.Environment) -> bool:
        assert self._map is not None
        for page in (0, page_size):
            magic, version = struct.unpack_from("=II", self._map, page + _META_MAGIC_OFFSET)
            if magic != _META_MAGIC or version != _META_VERSION:
                return False
        # Another process may commit between the two reads; try again then.
        for _ in range(5):
            before = env.info()["last_txnid"]
            ours = self.value()
            if ours == before == env.info()["last_txnid"]:
                return True
        return False

    def value(self) -> int | None:
        words = self._words
        if words is None:
            return None
        first = words[self._first]
        second = words[self._second]
        return first if first > second else second

    def close(self) -> None:
        if self._words is not None:
            self._words.release()
            self._words = None
        if self._map is not None:
            self._map.close()
            self._map = None


class LmdbCache(Cache):
    """LMDB-backed cache shared by every process on the host (see module doc)."""

    synchronous_reads: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._path = str(options.get("path", defaults.LMDB_PATH))
        self._map_size = int(options.get("map_size", defaults.LMDB_MAP_SIZE))
        self._max_entries = int(options.get("max_entries", defaults.LMDB_MAX_ENTRIES))
        if self._max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._env: lmdb.Environment | None = None
        self._policies: lmdb._Database
        self._meta: lmdb._Database
        self._by_expiry: lmdb._Database
        self._by_checked: lmdb._Database
        self._failures: lmdb._Database
        self._failures_by_retry: lmdb._Database
        self._writer: ThreadPoolExecutor | None = None
        self._page_size = 4096
        self._write_lock = asyncio.Lock()
        # domain -> (stored bytes, decoded entry, last commit id when read)
        self._memo: dict[str, tuple[bytes, CacheEntry, int | None]] = {}
        self._commits: _CommitCounter | None = None

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
        path, subdir = _split_path(self._path)
        if subdir:
            _make_dirs(path)
            files = [os.path.join(path, "data.mdb"), os.path.join(path, "lock.mdb")]
        else:
            _make_dirs(os.path.dirname(os.path.abspath(path)))
            files = [path, path + "-lock"]
        env = lmdb.Environment(
            path,
            map_size=self._map_size,
            subdir=subdir,
            mode=FILE_MODE,
            sync=True,
            metasync=False,
            # Lookups hit random pages; readahead would only evict useful ones.
            readahead=False,
            max_readers=MAX_READERS,
            max_dbs=_MAX_DBS,
            max_spare_txns=1,
            lock=True,
        )
        try:
            for filename in files:
                _restrict(filename)
            # Slots left behind by killed processes would pin old pages.
            env.reader_check()
            self._page_size = env.stat()["psize"]
            self._policies = env.open_db(_POLICIES)
            self._meta = env.open_db(_META)
            self._by_expiry = env.open_db(_BY_EXPIRY)
            self._by_checked = env.open_db(_BY_CHECKED)
            self._failures = env.open_db(_FAILURES)
            self._failures_by_retry = env.open_db(_FAILURES_BY_RETRY)
            self._commits = _CommitCounter(files[0], self._page_size, env)
        except BaseException:
            env.close()
            raise
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
            self._writer.shutdown(wait=False)
            self._writer = None
            self._memo.clear()

    @property
    def path(self) -> str:
        """The configured ``path`` (a directory or the data file)."""
        return self._path

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            raise CacheUnavailable("the LMDB cache is not open")
        return self._env

    # -- reads (event loop thread) --------------------------------------------

    def get_nowait(self, domain: str) -> CacheEntry | None:
        try:
            return self._read(domain)
        except lmdb.MapResizedError:
            if self._write_lock.locked():
                # The writer thread is busy, so the map cannot be replaced now;
                # the responder falls back to get(), which waits for it.
                return None
            self._adopt_map_size()
        return self._read_again(domain)

    async def get(self, domain: str) -> CacheEntry | None:
        return await self._adopting(self._read, domain)

    def _read_again(self, domain: str) -> CacheEntry | None:
        try:
            return self._read(domain)
        except lmdb.MapResizedError as exc:
            raise CacheUnavailable(f"LMDB map keeps being resized: {exc}") from exc

    async def _adopting(self, read: Callable[..., _T], *args: Any) -> _T:
        """``read(*args)``; if another process has grown the map, adopt it and retry."""
        try:
            return read(*args)
        except lmdb.MapResizedError:
            async with self._write_lock:
                self._adopt_map_size()
        try:
            return read(*args)
        except lmdb.MapResizedError as exc:
            raise CacheUnavailable(f"LMDB map keeps being resized: {exc}") from exc

    def _read(self, domain: str) -> CacheEntry | None:
        env = self._env
        if env is None:
            raise CacheUnavailable("the LMDB cache is not open")
        # Read before the transaction begins: a commit after this point
        # changes it, so a stamp never vouches for bytes older than itself.
        commits = self._commits
        commit = commits.value() if commits is not None else None
        memo = self._memo.get(domain)
        if memo is not None and commit is not None and memo[2] == commit:
            return memo[1]
        key = domain.encode()
        try:
            txn = env.begin(self._policies)
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
            if memo is not None:
                self._memo.pop(domain, None)
            return None
        if memo is not None and memo[0] == data:
            if memo[2] != commit:
                self._memo[domain] = (data, memo[1], commit)
            return memo[1]
        entry = decode_entry(domain, data)
        if entry is None:
            return None
        if memo is None:
            make_room(self._memo, MEMO_LIMIT)
        self._memo[domain] = (data, entry, commit)
        return entry

    def _adopt_map_size(self) -> None:
        """Take over the larger map another process has grown (writer idle)."""
        env = self._require_env()
        env.set_mapsize(0)
        _log.info("LMDB cache %s: adopted map size %d", self._path, env.info()["map_size"])

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
        """Up to ``size`` entries after key ``after``, and the key to resume after.

        Each batch has its own short read transaction, so a slow consumer never
        pins old pages (which would make the map fill up).
        """
        env = self._require_env()
        batch: list[CacheEntry] = []
        try:
            with env.begin(self._policies) as txn:
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

    async def get_proactive_ts(self) -> float:
        return await self._adopting(self._read_proactive_ts)

    def _read_proactive_ts(self) -> float:
        env = self._require_env()
        try:
            with env.begin(self._meta) as txn:
                data = txn.get(_PROACTIVE_TS)
        except lmdb.MapResizedError:
            raise
        except lmdb.Error as exc:
            raise CacheUnavailable(f"LMDB read failed: {exc}") from exc
        if data is None or len(data) != _DOUBLE.size:
            return 0.0
        value: float = _DOUBLE.unpack(data)[0]
        return value

    async def get_failure(self, domain: str) -> FetchFailure | None:
        return await self._adopting(self._read_failure, domain)

    def _read_failure(self, domain: str) -> FetchFailure | None:
        env = self._require_env()
        key = domain.encode()
        if not 0 < len(key) <= _MAX_KEY:
            return None  # never stored (see put_failure)
        try:
            with env.begin(self._failures) as txn:
                data = txn.get(key)
        except lmdb.MapResizedError:
            raise
        except lmdb.Error as exc:
            raise CacheUnavailable(f"LMDB read failed: {exc}") from exc
        return decode_failure(domain, data) if data is not None else None

    # -- writes (writer thread) --------------------------------------------------

    async def put(self, entry: CacheEntry) -> None:
        key = entry.domain.encode()
        if not 0 < len(key) <= _MAX_KEY:
            _log.error("LMDB cache: cannot store a key of %d bytes for %r", len(key), entry.domain)
            return
        value = encode_entry(entry)
        await self._write(
            lambda txn: self._put_txn(txn, key, value, entry), f"the policy of {entry.domain}"
        )

    async def put_many(self, entries: Iterable[CacheEntry]) -> None:
        """``put`` each entry, WRITE_BATCH per transaction (imports, warm-up, tests).

        One commit per batch instead of one per entry: importing a million
        entries takes seconds instead of a million fsyncs.
        """
        chunk: list[tuple[bytes, bytes, CacheEntry]] = []
        for entry in entries:
            key = entry.domain.encode()
            if not 0 < len(key) <= _MAX_KEY:
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
            for key, value, entry in chunk:
                self._put_txn(txn, key, value, entry)

        await self._write(job, f"{len(chunk)} policies from {chunk[0][2].domain} on")

    async def delete(self, domain: str) -> bool:
        key = domain.encode()
        if not 0 < len(key) <= _MAX_KEY:
            return False
        deleted = await self._write(lambda txn: self._delete_txn(txn, key), f"deleting {domain}")
        return bool(deleted)

    async def purge(self) -> int:
        count = await self._write(self._purge_txn, "purging the cache")
        return count or 0

    async def prune(self, older_than: float) -> int:
        limit = _time_key(older_than)
        total = 0
        while True:
            done = await self._write(lambda txn: self._prune_txn(txn, limit), "pruning")
            if done is None:
                break
            count, more = done
            total += count
            if not more:
                break
        # Failure records are kept FAILURE_RETENTION after their retry time
        # (base.FAILURE_RETENTION); only policy entries are counted.
        failure_limit = _time_key(older_than - FAILURE_RETENTION)
        while True:
            more_failures = await self._write(
                lambda txn: self._prune_failures_txn(txn, failure_limit), "pruning failures"
            )
            if not more_failures:
                return total

    async def set_proactive_ts(self, ts: float) -> None:
        value = _DOUBLE.pack(float(ts))
        await self._write(
            lambda txn: txn.put(_PROACTIVE_TS, value, db=self._meta), "the proactive timestamp"
        )

    async def put_failure(self, failure: FetchFailure) -> None:
        key = failure.domain.encode()
        if not 0 < len(key) <= _MAX_KEY:
            _log.error(
                "LMDB cache: cannot store a key of %d bytes for %r", len(key), failure.domain
            )
            return
        value = encode_failure(failure)
        await self._write(
            lambda txn: self._put_failure_txn(txn, key, value, failure.retry_at),
            f"the failure record of {failure.domain}",
        )

    async def delete_failure(self, domain: str) -> bool:
        key = domain.encode()
        if not 0 < len(key) <= _MAX_KEY:
            return False
        deleted = await self._write(
            lambda txn: self._delete_failure_txn(txn, key), f"deleting the failure of {domain}"
        )
        return bool(deleted)

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        key = _LEASE_PREFIX + name.encode()
        held = await self._write(
            lambda txn: self._acquire_txn(txn, key, owner, float(ttl)), f"the lease {name}"
        )
        # None: the write was dropped (map full at its limit), so not held.
        return bool(held)

    async def release_lease(self, name: str, owner: str) -> None:
        key = _LEASE_PREFIX + name.encode()
        await self._write(lambda txn: self._release_txn(txn, key, owner), f"the lease {name}")

    async def _write(self, job: Callable[[lmdb.Transaction[bytes]], _T], what: str) -> _T | None:
        """Run ``job`` in a write transaction on the writer thread.

        Returns its result, or None if the write had to be dropped because the
        map is full at its growth limit.
        """
        async with self._write_lock:
            env = self._require_env()
            loop = asyncio.get_running_loop()
            for _ in range(_MAX_ATTEMPTS):
                try:
                    outcome, result = await loop.run_in_executor(self._writer, self._attempt, job)
                    if outcome == _DONE:
                        return result
                    # The writer thread is idle now, so the map may be replaced.
                    if outcome == _RESIZED:
                        self._adopt_map_size()
                        continue
                except lmdb.Error as exc:
                    raise CacheUnavailable(f"LMDB write failed ({what}): {exc}") from exc
                if not self._grow_map(env):
                    break
            _log.error(
                "LMDB cache %s is full: dropped the write of %s; the map holds %d bytes, "
                "evicting did not make room and it may not grow further "
                "(%d times cache.map_size); raise cache.map_size",
                self._path,
                what,
                env.info()["map_size"],
                MAP_GROWTH_LIMIT,
            )
            return None

    def _grow_map(self, env: lmdb.Environment) -> bool:
        """Double the map, up to its limit; False if it cannot grow."""
        current = env.info()["map_size"]
        limit = self._map_size * MAP_GROWTH_LIMIT
        if current >= limit:
            return False
        new_size = min(current * 2, limit)
        try:
            env.set_mapsize(new_size)
        except lmdb.Error as exc:
            _log.error(
                "LMDB cache %s: cannot grow the map to %d bytes: %s", self._path, new_size, exc
            )
            return False
        _log.warning(
            "LMDB cache %s is full: map size raised from %d to %d bytes "
            "(raise cache.map_size to keep this from happening)",
            self._path,
            current,
            new_size,
        )
        return True

    def _attempt(self, job: Callable[[lmdb.Transaction[bytes]], _T]) -> tuple[int, _T | None]:
        """One try at ``job``; on a full map, evict a batch and try once more."""
        env = self._require_env()
        try:
            with env.begin(write=True) as txn:
                return _DONE, job(txn)
        except lmdb.MapResizedError:
            return _RESIZED, None
        except lmdb.MapFullError:
            pass
        try:
            env.reader_check()
            with env.begin(write=True) as txn:
                # Failure records first: losing one costs at most an early retry.
                dropped = self._evict_failures(
                    txn, self._batch(txn.stat(self._failures)["entries"])
                )
                evicted = self._evict(txn, self._batch(txn.stat(self._policies)["entries"]))
            # LMDB reuses the pages a commit frees only from the second commit
            # after it (the previous snapshot must stay intact for crash
            # safety), so one small commit makes them available to the retry.
            with env.begin(write=True) as txn:
                txn.put(_LAST_EVICTION, _DOUBLE.pack(time.time()), db=self._meta)
            _log.info(
                "LMDB cache %s: map full, evicted %d entries and %d failure records",
                self._path,
                evicted,
                dropped,
            )
            with env.begin(write=True) as txn:
                return _DONE, job(txn)
        except lmdb.MapResizedError:
            return _RESIZED, None
        except lmdb.MapFullError:
            return _FULL, None

    # Transaction bodies: run on the writer thread inside a write transaction.

    def _put_txn(
        self, txn: lmdb.Transaction[bytes], key: bytes, value: bytes, entry: CacheEntry
    ) -> None:
        old = txn.get(key, db=self._policies)
        if old is not None:
            if old == value:
                return
            previous = decode_entry(entry.domain, old)
            if previous is not None:
                if previous.checked_at > entry.checked_at:
                    return  # another worker or host stored a newer check
                self._unindex(txn, key, previous)
        else:
            count = txn.stat(self._policies)["entries"]
            batch = self._batch(count)
            reserve = 2 * batch + _RESERVE_PAGES
            if count >= self._max_entries:
                self._evict(txn, count - self._max_entries + batch)
            elif self._free_pages(txn, reserve) < reserve:
                # Evict while there is still room to do so: deleting needs
                # fresh pages too (copy-on-write), so a map that is allowed to
                # fill up completely can no longer be emptied.
                self._evict(txn, batch)
        txn.put(key, value, db=self._policies)
        txn.put(_time_key(entry.expires_at) + key, b"", db=self._by_expiry)
        txn.put(_time_key(entry.checked_at) + key, b"", db=self._by_checked)

    def _delete_txn(self, txn: lmdb.Transaction[bytes], key: bytes) -> bool:
        old = txn.pop(key, db=self._policies)
        if old is None:
            return False
        previous = decode_entry(key.decode("utf-8", "replace"), old)
        if previous is None:
            return False  # it read as missing; now it is gone for good
        self._unindex(txn, key, previous)
        return True

    def _purge_txn(self, txn: lmdb.Transaction[bytes]) -> int:
        count = txn.stat(self._policies)["entries"]
        for db in (
            self._policies,
            self._by_expiry,
            self._by_checked,
            self._failures,
            self._failures_by_retry,
        ):
            txn.drop(db, delete=False)
        return count

    def _prune_txn(self, txn: lmdb.Transaction[bytes], limit: bytes) -> tuple[int, bool]:
        """Delete up to WRITE_BATCH entries expired before ``limit``; (count, more?)."""
        cursor = txn.cursor(self._by_expiry)
        count = examined = 0
        while cursor.first() and cursor.key()[:_TIME_KEY_SIZE] < limit:
            if examined >= WRITE_BATCH:
                return count, True
            examined += 1
            index_key = cursor.key()
            cursor.delete()
            if self._remove_indexed(txn, index_key, expiry_index=True):
                count += 1
        return count, False

    def _free_pages(self, txn: lmdb.Transaction[bytes], enough: int) -> int:
        """Pages of the map not holding data: free, reusable soon, or never used.

        Counting them takes a stat of every database, so when the file's
        high-water mark is more than ``enough`` pages below the end of the
        map, that distance is returned instead.
        """
        env = self._require_env()
        info = env.info()
        map_pages = info["map_size"] // self._page_size
        if map_pages - info["last_pgno"] > enough:
            return map_pages - info["last_pgno"]
        used = 2  # the meta pages
        for db in (
            None,
            self._policies,
            self._meta,
            self._by_expiry,
            self._by_checked,
            self._failures,
            self._failures_by_retry,
        ):
            st = txn.stat(db) if db is not None else txn.stat()
            used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return map_pages - used

    def _batch(self, count: int) -> int:
        """Entries evicted at a time from a cache holding ``count``."""
        return max(1, min(count, self._max_entries) // EVICT_DIVISOR)

    def _evict(self, txn: lmdb.Transaction[bytes], wanted: int) -> int:
        """Delete ``wanted`` entries: expired ones first, then the least recently checked."""
        now_key = _time_key(time.time())
        evicted = self._evict_from(txn, self._by_expiry, wanted, now_key)
        if evicted < wanted:
            evicted += self._evict_from(txn, self._by_checked, wanted - evicted, None)
        if evicted < wanted:
            # Only entries missing from the indexes are left (written by another
            # format): remove them in key order so the bound still holds.
            cursor = txn.cursor(self._policies)
            while evicted < wanted and cursor.first():
                key, old = cursor.item()
                cursor.delete()
                previous = decode_entry(key.decode("utf-8", "replace"), old)
                if previous is not None:
                    self._unindex(txn, key, previous)
                evicted += 1
        return evicted

    def _evict_from(
        self, txn: lmdb.Transaction[bytes], index: lmdb._Database, wanted: int, stop: bytes | None
    ) -> int:
        cursor = txn.cursor(index)
        evicted = 0
        while evicted < wanted and cursor.first():
            index_key = cursor.key()
            if stop is not None and index_key[:_TIME_KEY_SIZE] >= stop:
                break
            # Every index key looked at is deleted: evicted or stale.
            cursor.delete()
            if self._remove_indexed(txn, index_key, expiry_index=index is self._by_expiry):
                evicted += 1
        return evicted

    def _remove_indexed(
        self, txn: lmdb.Transaction[bytes], index_key: bytes, *, expiry_index: bool
    ) -> bool:
        """Delete the entry an index key (already deleted) points to, if it is current.

        Returns True if an entry was removed. An undecodable value is removed
        too; an index key whose entry has since changed was stale and removes
        nothing.
        """
        key = index_key[_TIME_KEY_SIZE:]
        old = txn.get(key, db=self._policies)
        if old is None:
            return False
        previous = decode_entry(key.decode("utf-8", "replace"), old)
        if previous is None:
            txn.delete(key, db=self._policies)
            return True
        if expiry_index:
            current, other_key, other = previous.expires_at, previous.checked_at, self._by_checked
        else:
            current, other_key, other = previous.checked_at, previous.expires_at, self._by_expiry
        if _time_key(current) + key != index_key:
            return False
        txn.delete(key, db=self._policies)
        txn.delete(_time_key(other_key) + key, db=other)
        return True

    def _unindex(self, txn: lmdb.Transaction[bytes], key: bytes, previous: CacheEntry) -> None:
        txn.delete(_time_key(previous.expires_at) + key, db=self._by_expiry)
        txn.delete(_time_key(previous.checked_at) + key, db=self._by_checked)

    # Failure records and leases (transaction bodies, writer thread).

    def _put_failure_txn(
        self, txn: lmdb.Transaction[bytes], key: bytes, value: bytes, retry_at: float
    ) -> None:
        old = txn.get(key, db=self._failures)
        if old is not None:
            self._unindex_failure(txn, key, old)
        else:
            count = txn.stat(self._failures)["entries"]
            batch = self._batch(count)
            reserve = 2 * batch + _RESERVE_PAGES
            if count >= self._max_entries:
                self._evict_failures(txn, count - self._max_entries + batch)
            elif self._free_pages(txn, reserve) < reserve:
                # As in _put_txn: keep the pages that deleting needs.
                self._evict_failures(txn, batch)
        txn.put(key, value, db=self._failures)
        txn.put(_time_key(retry_at) + key, b"", db=self._failures_by_retry)

    def _delete_failure_txn(self, txn: lmdb.Transaction[bytes], key: bytes) -> bool:
        old = txn.pop(key, db=self._failures)
        if old is None:
            return False
        self._unindex_failure(txn, key, old)
        return True

    def _unindex_failure(self, txn: lmdb.Transaction[bytes], key: bytes, old: bytes) -> None:
        previous = decode_failure(key.decode("utf-8", "replace"), old)
        if previous is not None:
            txn.delete(_time_key(previous.retry_at) + key, db=self._failures_by_retry)

    def _prune_failures_txn(self, txn: lmdb.Transaction[bytes], limit: bytes) -> bool:
        """Delete up to WRITE_BATCH failure records retried before ``limit``; more left?"""
        cursor = txn.cursor(self._failures_by_retry)
        examined = 0
        while cursor.first() and cursor.key()[:_TIME_KEY_SIZE] < limit:
            if examined >= WRITE_BATCH:
                return True
            examined += 1
            index_key = cursor.key()
            cursor.delete()
            self._remove_failure_indexed(txn, index_key)
        return False

    def _evict_failures(self, txn: lmdb.Transaction[bytes], wanted: int) -> int:
        """Delete ``wanted`` failure records, those with the oldest retry time first."""
        cursor = txn.cursor(self._failures_by_retry)
        evicted = 0
        while evicted < wanted and cursor.first():
            index_key = cursor.key()
            cursor.delete()
            if self._remove_failure_indexed(txn, index_key):
                evicted += 1
        if evicted < wanted:
            # Records missing from the index (unreadable ones) go in key order.
            cursor = txn.cursor(self._failures)
            while evicted < wanted and cursor.first():
                cursor.delete()
                evicted += 1
        return evicted

    def _remove_failure_indexed(self, txn: lmdb.Transaction[bytes], index_key: bytes) -> bool:
        """Delete the record an index key (already deleted) points to, if it is current."""
        key = index_key[_TIME_KEY_SIZE:]
        old = txn.get(key, db=self._failures)
        if old is None:
            return False
        previous = decode_failure(key.decode("utf-8", "replace"), old)
        if previous is not None and _time_key(previous.retry_at) + key != index_key:
            return False  # a stale index key: the record was rewritten since
        txn.delete(key, db=self._failures)
        return True

    def _acquire_txn(
        self, txn: lmdb.Transaction[bytes], key: bytes, owner: str, ttl: float
    ) -> bool:
        # The writer lock is held from here to the commit: no other process
        # can read the lease as free in between (module doc, "Writes").
        now = time.time()
        data = txn.get(key, db=self._meta)
        held = decode_lease(data) if data is not None else None
        if held is not None and held[0] != owner and held[1] > now:
            return False
        txn.put(key, encode_lease(owner, now + ttl), db=self._meta)
        return True

    def _release_txn(self, txn: lmdb.Transaction[bytes], key: bytes, owner: str) -> None:
        data = txn.get(key, db=self._meta)
        held = decode_lease(data) if data is not None else None
        if held is not None and held[0] == owner:
            txn.delete(key, db=self._meta)
