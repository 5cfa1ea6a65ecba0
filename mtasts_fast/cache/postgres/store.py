"""``PostgresCache``: the pool, the outage discipline, and the calls.

The tables and their statements are in ``statements``; what the backend
stores and how it behaves when the server is down is in the package doc.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from asyncpg import exceptions as pgexc

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
from mtasts_fast.cache.codec import (
    decode_dane,
    decode_entry,
    decode_failure,
    encode_dane,
    encode_entry,
    encode_failure,
)
from mtasts_fast.cache.postgres import statements
from mtasts_fast.dane.state import DaneState
from mtasts_fast.errors import ConfigError

__all__ = ["RETRY_INTERVAL", "PostgresCache"]

# The backend's one logger, named for the package.
_log = logging.getLogger("mtasts_fast.cache.postgres")

#: Seconds calls fail at once after the server could not be reached.
RETRY_INTERVAL = 1.0

_PROACTIVE = "proactive_ts"

# What asyncpg raises when a call fails: server errors, client-side
# connection errors, protocol trouble, and the socket errors underneath.
# (TimeoutError is an OSError.)
_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    pgexc.PostgresError,
    pgexc.InterfaceError,
    pgexc.InternalClientError,
)
# The subset meaning "the server cannot be used now", not "this statement
# failed": these make calls fail at once for RETRY_INTERVAL.
_SERVER_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    pgexc.PostgresConnectionError,  # class 08
    pgexc.OperatorInterventionError,  # class 57: shutting down, starting up
    pgexc.InsufficientResourcesError,  # class 53: too many connections, disk full
    pgexc.InvalidAuthorizationSpecificationError,  # class 28
    pgexc.InvalidCatalogNameError,  # the database does not exist
)

# Keys create_pool() takes itself or passes on to connect(). Hooks and classes
# cannot come from a YAML file; `timeout` is ours (connect's own stays at its
# default, and our deadline cuts it short anyway).
_POOL_KEYS = frozenset(
    name
    for function in (asyncpg.create_pool, asyncpg.connect)
    for name, parameter in inspect.signature(function).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY or name == "dsn"
) - {"loop", "timeout", "connect", "setup", "init", "reset", "connection_class", "record_class"}
# asyncpg >= 0.30 lets the pool skip its reset query (UNLISTEN, RESET ALL...)
# on every release: our calls leave no session state behind, and the query
# would cost the server one more round trip per cache call.
_POOL_TAKES_RESET = "reset" in inspect.signature(asyncpg.create_pool).parameters


async def _keep_session(connection: object) -> None:
    """Pool ``reset`` hook: asyncpg still rolls back any open transaction."""


# One statement, one snapshot: the counts, the checked range, and the size of
# our tables with their indexes and TOAST data.
_STATS = """
SELECT
    (SELECT count(*) FROM mtasts_policy) AS entries,
    (SELECT min(checked_at) FROM mtasts_policy) AS oldest,
    (SELECT max(checked_at) FROM mtasts_policy) AS newest,
    (SELECT count(*) FROM mtasts_failures) AS failures,
    pg_total_relation_size('mtasts_policy') + pg_total_relation_size('mtasts_failures')
        + pg_total_relation_size('mtasts_dane') AS size
"""


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    return str(exc) or type(exc).__name__


def _check_options(options: Mapping[str, Any], filename: str) -> None:
    """Refuse keys asyncpg would only refuse when it first connects."""
    for key in options:
        if key not in _POOL_KEYS:
            close = difflib.get_close_matches(key, sorted(_POOL_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                filename,
                f"cache.options.{key}",
                f"not an option of asyncpg.create_pool or asyncpg.connect{hint}",
            )


class PostgresCache(Cache):
    """Policies in PostgreSQL tables, shared by every relay that names the database."""

    def __init__(self, options: Mapping[str, Any], filename: str = "<config>") -> None:
        self._timeout = float(options.get("timeout", defaults.POSTGRES_TIMEOUT))
        pool_options = {key: value for key, value in options.items() if key != "timeout"}
        _check_options(pool_options, filename)
        if _POOL_TAKES_RESET:
            pool_options["reset"] = _keep_session
        self._pool_options = pool_options
        self._pool: Any = None  # asyncpg.Pool, made by the first call that connects
        self._schema_ready = False
        self._closed = False
        # Why the server cannot be used (None: it can), when to try again, and
        # whether a call is trying right now.
        self._down: str | None = "not connected yet"
        self._retry_at = 0.0
        self._probing = False
        self._reported = False  # the outage was logged: log the recovery too
        self._releases: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<PostgresCache {'down: ' + self._down if self._down else 'up'}>"

    # -- life cycle --------------------------------------------------------------

    async def setup(self) -> None:
        """Connect and create the tables; a server that is down is only logged."""
        try:
            async with self._connection():
                pass
        except CacheUnavailable:
            _log.warning(
                "postgres cache unavailable at start: %s; retrying every %g s,"
                " policies are fetched meanwhile",
                self._down,
                RETRY_INTERVAL,
            )
            self._reported = True

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if self._releases:
            await asyncio.wait(self._releases, timeout=self._timeout)
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await pool.close()  # waits for connections still in use
        except Exception as exc:
            _log.debug("postgres cache: closing the pool: %r", exc)
            pool.terminate()

    # -- one call ------------------------------------------------------------------

    def _admit(self) -> bool:
        """Let a call through (True: it is the one retrying) or fail it at once."""
        if self._closed:
            raise CacheUnavailable("postgres cache is closed")
        if self._down is None:
            return False
        if self._probing or asyncio.get_running_loop().time() < self._retry_at:
            raise CacheUnavailable(f"postgres cache unavailable: {self._down}")
        self._probing = True
        return True

    async def _open_pool(self) -> Any:
        try:
            pool = asyncpg.create_pool(**self._pool_options)
        except (TypeError, ValueError) as exc:
            # Sizes the config does not check (max_queries, init_size...).
            raise pgexc.ClientConfigurationError(f"pool options rejected: {exc}") from exc
        try:
            await pool  # connects min_size connections
        except BaseException:
            with contextlib.suppress(Exception):
                pool.terminate()
            raise
        self._pool = pool
        return pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection, for one call bounded by ``timeout``.

        Any failure in the block comes out as CacheUnavailable.
        """
        probing = self._admit()
        try:
            async with asyncio.timeout(self._timeout):
                pool = self._pool if self._pool is not None else await self._open_pool()
                conn = await pool.acquire(timeout=self._timeout)
                try:
                    if not self._schema_ready:
                        await statements.ensure_schema(conn)
                        self._schema_ready = True
                    yield conn
                except BaseException:
                    # A cancelled statement may keep the connection busy until
                    # the server confirms the cancel: not on this call's time.
                    self._release_soon(pool, conn)
                    raise
                await pool.release(conn)
        except _FAILURES as exc:
            if isinstance(exc, pgexc.UndefinedTableError):
                self._schema_ready = False  # dropped behind our back: make it again
            if probing or isinstance(exc, _SERVER_DOWN):
                self._mark_down(_describe(exc, self._timeout))
            raise CacheUnavailable(f"postgres: {_describe(exc, self._timeout)}") from exc
        else:
            if probing:
                self._mark_up()
        finally:
            if probing:
                self._probing = False

    def _mark_down(self, reason: str) -> None:
        if self._down is None:
            _log.warning(
                "postgres cache unavailable: %s; retrying every %g s", reason, RETRY_INTERVAL
            )
            self._reported = True
        self._down = reason
        self._retry_at = asyncio.get_running_loop().time() + RETRY_INTERVAL

    def _mark_up(self) -> None:
        if self._reported:
            _log.warning("postgres cache available again")
            self._reported = False
        self._down = None

    def _release_soon(self, pool: Any, conn: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._release(pool, conn))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    @staticmethod
    async def _release(pool: Any, conn: Any) -> None:
        # asyncpg terminates a connection it cannot reset and re-raises; the
        # pool opens a new one when needed.
        with contextlib.suppress(*_FAILURES):
            await pool.release(conn)

    # -- the interface -----------------------------------------------------------

    async def get(self, domain: str) -> CacheEntry | None:
        async with self._connection() as conn:
            data = await conn.fetchval("SELECT entry FROM mtasts_policy WHERE domain = $1", domain)
        return decode_entry(domain, data) if isinstance(data, bytes) else None

    async def put(self, entry: CacheEntry) -> None:
        data = encode_entry(entry)
        async with self._connection() as conn:
            await conn.execute(
                statements.UPSERT,
                entry.domain,
                float(entry.checked_at),
                float(entry.expires_at),
                data,
            )

    async def delete(self, domain: str) -> bool:
        async with self._connection() as conn:
            status = await conn.execute("DELETE FROM mtasts_policy WHERE domain = $1", domain)
        return statements.count(status) > 0

    async def scan(self, batch_size: int = SCAN_BATCH) -> AsyncIterator[list[CacheEntry]]:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        after: str | None = None
        while True:
            # One short statement per page, by primary key, on whichever pooled
            # connection is free: no transaction or cursor spans the pages.
            async with self._connection() as conn:
                if after is None:
                    rows = await conn.fetch(
                        "SELECT domain, entry FROM mtasts_policy ORDER BY domain LIMIT $1",
                        batch_size,
                    )
                else:
                    rows = await conn.fetch(
                        "SELECT domain, entry FROM mtasts_policy WHERE domain > $1"
                        " ORDER BY domain LIMIT $2",
                        after,
                        batch_size,
                    )
            if not rows:
                return
            after = rows[-1]["domain"]
            entries = [
                entry
                for entry in (decode_entry(row["domain"], row["entry"]) for row in rows)
                if entry is not None
            ]
            if entries:
                yield entries
            if len(rows) < batch_size:
                return

    async def purge(self) -> int:
        # Failure records and DANE states go too, so that every purged domain
        # is fetched and evaluated afresh; only policy entries are counted.
        async with self._connection() as conn:
            status = await conn.execute("DELETE FROM mtasts_policy")
            await conn.execute("DELETE FROM mtasts_failures")
            await conn.execute("DELETE FROM mtasts_dane")
        return statements.count(status)

    async def prune(self, older_than: float) -> int:
        # A failure record is kept FAILURE_RETENTION after its retry time, so
        # the next failure continues the backoff; it is not counted.
        async with self._connection() as conn:
            status = await conn.execute(
                "DELETE FROM mtasts_policy WHERE expires_at < $1", float(older_than)
            )
            await conn.execute(
                "DELETE FROM mtasts_failures WHERE retry_at < $1",
                float(older_than) - FAILURE_RETENTION,
            )
            # DANE states go once they expired before older_than, like the entries.
            await conn.execute("DELETE FROM mtasts_dane WHERE expires_at < $1", float(older_than))
        return statements.count(status)

    async def stats(self) -> CacheStats:
        async with self._connection() as conn:
            row = await conn.fetchrow(_STATS)
        return CacheStats(
            int(row["entries"]),
            int(row["failures"]),
            row["oldest"],
            row["newest"],
            int(row["size"]),
        )

    async def get_proactive_ts(self) -> float:
        async with self._connection() as conn:
            value = await conn.fetchval("SELECT value FROM mtasts_meta WHERE name = $1", _PROACTIVE)
        return float(value) if value is not None else 0.0

    async def set_proactive_ts(self, ts: float) -> None:
        async with self._connection() as conn:
            await conn.execute(statements.SET_META, _PROACTIVE, float(ts))

    async def get_failure(self, domain: str) -> FetchFailure | None:
        async with self._connection() as conn:
            data = await conn.fetchval("SELECT data FROM mtasts_failures WHERE domain = $1", domain)
        return decode_failure(domain, data) if isinstance(data, bytes) else None

    async def put_failure(self, failure: FetchFailure) -> None:
        data = encode_failure(failure)
        async with self._connection() as conn:
            await conn.execute(
                statements.PUT_FAILURE, failure.domain, data, float(failure.retry_at)
            )

    async def delete_failure(self, domain: str) -> bool:
        async with self._connection() as conn:
            status = await conn.execute("DELETE FROM mtasts_failures WHERE domain = $1", domain)
        return statements.count(status) > 0

    async def get_dane(self, domain: str) -> DaneState | None:
        async with self._connection() as conn:
            data = await conn.fetchval("SELECT state FROM mtasts_dane WHERE domain = $1", domain)
        return decode_dane(domain, data) if isinstance(data, bytes) else None

    async def put_dane(self, state: DaneState) -> None:
        data = encode_dane(state)
        async with self._connection() as conn:
            await conn.execute(
                statements.PUT_DANE,
                state.domain,
                float(state.evaluated_at),
                float(state.expires_at),
                data,
            )

    async def delete_dane(self, domain: str) -> bool:
        async with self._connection() as conn:
            status = await conn.execute("DELETE FROM mtasts_dane WHERE domain = $1", domain)
        return statements.count(status) > 0

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        async with self._connection() as conn:
            held = await conn.fetchval(statements.ACQUIRE, name, owner, float(ttl))
        return isinstance(held, str) and held == owner

    async def release_lease(self, name: str, owner: str) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "DELETE FROM mtasts_leases WHERE name = $1 AND owner = $2", name, owner
            )
