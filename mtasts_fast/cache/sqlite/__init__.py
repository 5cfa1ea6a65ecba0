"""SQLite backend (``cache.type: sqlite``): one file shared by the workers of a host.

Options, as validated by the config, with postfix-mta-sts-resolver's names and
meanings: ``filename`` (required; its directory must exist), ``threads`` (pooled
connections, each used by one thread at a time) and ``timeout`` (seconds).

Our tables sit beside postfix-mta-sts-resolver's ``sts_policy_cache``, which is
never read or touched, so both daemons can share one file:

- ``mtasts_policy``: ``domain`` (primary key), ``entry`` (the codec bytes), and
  copies of the entry's ``checked_at`` and ``expires_at``, kept as columns so
  that a write is one upsert that never replaces a newer check, and ``prune``
  is one indexed DELETE.
- ``mtasts_meta``: ``name`` → ``value`` (``proactive_ts``).
- ``mtasts_failures``: ``domain`` → ``data`` (a ``FetchFailure`` as codec
  bytes) and a copy of its ``retry_at``, indexed for ``prune``.
- ``mtasts_dane``: ``domain`` → ``state`` (a ``DaneState`` as codec bytes)
  and copies of its ``evaluated_at`` and ``expires_at``: a write is one upsert
  that never replaces a later evaluation, ``prune`` one indexed DELETE.
- ``mtasts_leases``: ``name`` → ``owner`` and ``expires_at`` (wall-clock
  seconds: the processes share no other clock). A lease is taken or renewed
  by one upsert whose ``WHERE`` admits only a free, expired or own lease,
  inside a ``BEGIN IMMEDIATE`` transaction that reads the owner back, so
  SQLite's single writer lock makes it atomic across processes.

The schema is created on first use, in one ``BEGIN IMMEDIATE`` transaction,
so workers starting together serialise on SQLite's write lock; tables added
by a later release (``mtasts_failures``, ``mtasts_leases``, ``mtasts_dane``)
are added the same way to a file an earlier one made. WAL journal mode lets
readers go on while another process writes; ``synchronous=NORMAL`` makes a
commit a write to the WAL rather than an fsync (a power cut may lose the last
writes, never the file: a cache can afford that).

Every call — waiting for a free connection, then waiting for a lock held by
another process (SQLite's busy timeout) — ends within ``timeout`` seconds, and
raises :class:`CacheUnavailable` if it could not finish (``store``).

Why the standard library's ``sqlite3`` on our own pool rather than aiosqlite:
each call here is one small function run in one thread hop, where aiosqlite
makes a hop per cursor method; and a call that gave up waiting must not hand
its connection to the next caller before the thread has finished with it,
which a :mod:`concurrent.futures` completion callback tells us and aiosqlite's
internal queue does not.
"""

from __future__ import annotations

from mtasts_fast.cache.sqlite.store import FILE_MODE, SqliteCache

__all__ = ["FILE_MODE", "SqliteCache"]
