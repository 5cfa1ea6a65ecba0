"""``SqliteCache``: a pool of connections, each call one function in one thread.

Every call — waiting for a free connection, then waiting for a lock held by
another process (SQLite's busy timeout) — ends within ``timeout`` seconds, and
raises :class:`CacheUnavailable` if it could not finish; the connection goes
back to the pool when its statement really ends. What each call does, and the
tables, are in ``calls``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mtasts_fast import defaults
from mtasts_fast.cache.base import (
    SCAN_BATCH,
    Cache,
    CacheEntry,
    CacheStats,
    CacheUnavailable,
    FetchFailure,
)
from mtasts_fast.cache.codec import encode_dane, encode_entry, encode_failure
from mtasts_fast.cache.sqlite import calls
from mtasts_fast.dane.state import DaneState

__all__ = ["FILE_MODE", "SqliteCache"]

# The backend's one logger, named for the package.
_log = logging.getLogger("mtasts_fast.cache.sqlite")

_T = TypeVar("_T")

#: Permission bits of a database file we create (SQLite gives its -wal and
#: -shm files the same). Policies are public data, but the file is the
#: daemon's own: no other user needs to read it, none may write it.
FILE_MODE = 0o640


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for conn in connections:
        try:
            conn.close()
        except sqlite3.Error as exc:
            _log.warning("sqlite cache: error while closing: %s", exc)


def _job_done(
    idle: asyncio.LifoQueue[sqlite3.Connection],
    conn: sqlite3.Connection,
    job: asyncio.Future[Any],
) -> None:
    # The thread is done with the connection: back to the pool. The caller
    # may have stopped waiting; its outcome counts as seen either way.
    idle.put_nowait(conn)
    if not job.cancelled():
        job.exception()


# Pauses between attempts to create the tables of a file another process is
# setting up (SqliteCache._create_schema), in seconds.
_SCHEMA_RETRY_FIRST = 0.005
_SCHEMA_RETRY_MAX = 0.1


class _NoAnswer(CacheUnavailable):
    """A call did not finish within ``timeout`` (a lock, most likely)."""


def _is_lock_wait(exc: CacheUnavailable) -> bool:
    if isinstance(exc, _NoAnswer):
        return True
    code = getattr(exc.__cause__, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in calls.LOCKED


class SqliteCache(Cache):
    """Policies in a SQLite database file, shared by the worker processes of a host."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._filename = os.fspath(options["filename"])
        self._threads = int(options.get("threads", defaults.SQLITE_THREADS))
        self._timeout = float(options.get("timeout", defaults.SQLITE_TIMEOUT))
        if self._threads < 1 or self._timeout <= 0:
            raise ValueError("sqlite cache: threads must be at least 1 and timeout positive")
        self._executor: ThreadPoolExecutor | None = None
        self._idle: asyncio.LifoQueue[sqlite3.Connection] | None = None
        self._connections: list[sqlite3.Connection] = []
        self._fresh: set[sqlite3.Connection] = set()  # not configured yet
        # Set from a pool thread once the tables exist; until then every call
        # tries to create them first (the file may have been locked at start).
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"<SqliteCache {self._filename!r}>"

    # -- life cycle --------------------------------------------------------------

    async def setup(self) -> None:
        """Open the pool and create the tables.

        Raises CacheUnavailable if the file cannot be used at all (missing
        directory, no permission, not a database). A file locked by another
        process is not an error here: the tables are then created by the
        first call that gets the lock.
        """
        if self._idle is not None:
            return
        executor = ThreadPoolExecutor(self._threads, thread_name_prefix="mtasts-sqlite")
        try:
            connections = await asyncio.get_running_loop().run_in_executor(executor, self._open)
        except (OSError, sqlite3.Error) as exc:
            executor.shutdown(wait=False)
            raise CacheUnavailable(f"sqlite cache {self._filename}: cannot open: {exc}") from exc
        idle: asyncio.LifoQueue[sqlite3.Connection] = asyncio.LifoQueue()
        for conn in connections:
            idle.put_nowait(conn)
        self._executor, self._idle, self._connections = executor, idle, connections
        self._fresh = set(connections)
        try:
            await self._run(calls.get_meta, calls.PROACTIVE)  # any call creates the tables first
        except CacheUnavailable as exc:
            if not _is_lock_wait(exc):
                await self.close()
                raise
            _log.warning("%s; the cache is used once the lock is released", exc)

    def _open(self) -> list[sqlite3.Connection]:
        directory = os.path.dirname(os.path.abspath(self._filename))
        if not os.path.isdir(directory):
            # SQLite's own message would be "unable to open database file".
            raise FileNotFoundError(f"directory {directory} does not exist")
        # Created here rather than by SQLite, which would use 0644 (minus umask).
        os.close(os.open(self._filename, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
        connections: list[sqlite3.Connection] = []
        try:
            for _ in range(self._threads):
                conn = sqlite3.connect(
                    self._filename,
                    timeout=self._timeout,  # the busy timeout
                    isolation_level=None,  # autocommit: every write is its own transaction
                    check_same_thread=False,  # the pool hands it to one thread at a time
                )
                connections.append(conn)
        except BaseException:
            _close_all(connections)
            raise
        return connections

    async def close(self) -> None:
        idle, executor = self._idle, self._executor
        self._idle = self._executor = None
        if idle is None or executor is None:
            return
        connections, self._connections = self._connections, []
        self._fresh = set()
        # A statement still waiting for a lock ends within its busy timeout.
        # Waiting for it lets the last connection to close checkpoint the WAL.
        returned: list[sqlite3.Connection] = []
        try:
            async with asyncio.timeout(self._timeout + 1.0):
                while len(returned) < len(connections):
                    returned.append(await idle.get())
        except TimeoutError:
            _log.warning(
                "sqlite cache %s: %d connections still busy at close",
                self._filename,
                len(connections) - len(returned),
            )
        await asyncio.get_running_loop().run_in_executor(executor, _close_all, returned)
        executor.shutdown(wait=False)

    # -- one call ------------------------------------------------------------------

    async def _run(self, work: Callable[..., _T], *args: Any) -> _T:
        idle, executor = self._idle, self._executor
        if idle is None or executor is None:
            raise CacheUnavailable(f"sqlite cache {self._filename} is not open")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                conn = await idle.get()
        except TimeoutError:
            raise self._too_slow() from None
        try:
            job = loop.run_in_executor(executor, self._call, conn, work, args)
        except RuntimeError:  # close() gave up waiting and shut the threads down
            idle.put_nowait(conn)
            raise CacheUnavailable(f"sqlite cache {self._filename} is closed") from None
        job.add_done_callback(functools.partial(_job_done, idle, conn))
        # asyncio.wait, not wait_for or shield: the job is never cancelled
        # (the thread could not be stopped anyway), and its outcome is never
        # lost, whichever of the job and the deadline comes first.
        await asyncio.wait((job,), timeout=max(0.0, deadline - loop.time()))
        if not job.done():
            raise self._too_slow()
        try:
            return job.result()
        except sqlite3.Error as exc:
            raise CacheUnavailable(f"sqlite cache {self._filename}: {exc}") from exc

    def _too_slow(self) -> _NoAnswer:
        return _NoAnswer(
            f"sqlite cache {self._filename}: no answer within {self._timeout:g} s"
            " (database locked by another process?)"
        )

    def _call(self, conn: sqlite3.Connection, work: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        if conn in self._fresh:
            # Here, not when opening: even a PRAGMA reads the schema, so it
            # waits for a lock held by another process.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._fresh.discard(conn)
        if not self._schema_ready:
            self._create_schema(conn)
            self._schema_ready = True
        return work(conn, *args)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        """The tables (calls.create_schema), retried while another connection holds the lock.

        Turning a new file to WAL takes its exclusive lock. When several
        processes open a new file at once, SQLite may answer SQLITE_BUSY at
        once instead of calling the busy handler (waiting could deadlock: each
        would wait for a shared lock the other holds), so the call is tried
        again here, with a short growing pause, for as long as a call may take.
        """
        deadline = time.monotonic() + self._timeout
        pause = _SCHEMA_RETRY_FIRST
        while True:
            try:
                calls.create_schema(conn)
                return
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", None)
                locked = isinstance(code, int) and code & 0xFF in calls.LOCKED
                if not locked or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # a pool thread: the event loop is not held up
            pause = min(pause * 2, _SCHEMA_RETRY_MAX)

    # -- the interface -----------------------------------------------------------

    async def get(self, domain: str) -> CacheEntry | None:
        return await self._run(calls.get_entry, domain)

    async def put(self, entry: CacheEntry) -> None:
        row = (entry.domain, float(entry.checked_at), float(entry.expires_at), encode_entry(entry))
        await self._run(calls.put_entry, row)

    async def delete(self, domain: str) -> bool:
        return await self._run(calls.delete_entry, domain)

    async def scan(self, batch_size: int = SCAN_BATCH) -> AsyncIterator[list[CacheEntry]]:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        after: str | None = None
        while True:
            # One short statement per page, by primary key: no transaction
            # stays open between pages, so writers are never held up.
            after, count, entries = await self._run(calls.page, after, batch_size)
            if entries:
                yield entries
            if count < batch_size:
                return

    async def purge(self) -> int:
        return await self._run(calls.purge)

    async def prune(self, older_than: float) -> int:
        return await self._run(calls.prune, float(older_than))

    async def get_proactive_ts(self) -> float:
        return await self._run(calls.get_meta, calls.PROACTIVE)

    async def set_proactive_ts(self, ts: float) -> None:
        await self._run(calls.set_meta, calls.PROACTIVE, float(ts))

    async def stats(self) -> CacheStats:
        return await self._run(calls.stats, self._filename)

    async def get_failure(self, domain: str) -> FetchFailure | None:
        return await self._run(calls.get_failure, domain)

    async def put_failure(self, failure: FetchFailure) -> None:
        row = (failure.domain, encode_failure(failure), float(failure.retry_at))
        await self._run(calls.put_failure, row)

    async def delete_failure(self, domain: str) -> bool:
        return await self._run(calls.delete_failure, domain)

    async def get_dane(self, domain: str) -> DaneState | None:
        return await self._run(calls.get_dane, domain)

    async def put_dane(self, state: DaneState) -> None:
        row = (state.domain, float(state.evaluated_at), float(state.expires_at), encode_dane(state))
        await self._run(calls.put_dane, row)

    async def delete_dane(self, domain: str) -> bool:
        return await self._run(calls.delete_dane, domain)

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return await self._run(calls.acquire_lease, name, owner, float(ttl))

    async def release_lease(self, name: str, owner: str) -> None:
        await self._run(calls.release_lease, name, owner)
