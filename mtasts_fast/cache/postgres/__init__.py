"""PostgreSQL backend (``cache.type: postgres``): one database shared by a fleet.

Options, as validated by the config: every key except ``timeout`` is passed to
``asyncpg.create_pool``, as postfix-mta-sts-resolver does (``dsn``,
``min_size``, ``max_size``, ``server_settings``, ``ssl``...). ``timeout``
(default 5 s) was the old daemon's wait for a pooled connection; here it bounds
the whole call: that wait, a reconnection, and the statement itself.

Our tables sit beside postfix-mta-sts-resolver's ``sts_policy_cache`` and
``proactive_fetch_ts``, which are never read or touched:

- ``mtasts_policy``: ``domain`` (primary key, "C" collation: byte order for
  paging), ``entry`` (the codec bytes), and copies of the entry's
  ``checked_at`` and ``expires_at``, kept as columns so that a write is one
  upsert that never replaces a newer check (whichever host writes last), and
  ``prune`` is one indexed DELETE.
- ``mtasts_meta``: ``name`` → ``value`` (``proactive_ts``).
- ``mtasts_failures``: ``domain`` → ``data`` (a ``FetchFailure`` as codec
  bytes) and a copy of its ``retry_at``, indexed for ``prune``.
- ``mtasts_dane``: ``domain`` → ``state`` (a ``DaneState`` as codec bytes)
  and copies of its ``evaluated_at`` and ``expires_at``: a write is one upsert
  that never replaces a later evaluation, ``prune`` one indexed DELETE.
- ``mtasts_leases``: ``name`` → ``owner`` and ``expires_at``. A lease is
  taken or renewed by one upsert whose ``WHERE`` admits only a free, expired
  or own lease; PostgreSQL locks the conflicting row and judges its latest
  version, so two hosts can never both take it. The clock is the server's
  (``now()``), not the hosts': hosts sharing a database may disagree about
  the time, and a host whose clock ran ahead would otherwise take a lease
  that its holder still counts on.

They live in the first schema of the role's ``search_path`` (set
``server_settings: {search_path: ...}`` to choose another). They are created on
first connection under a transaction-scoped advisory lock, because
``CREATE TABLE IF NOT EXISTS`` run by two sessions at once can fail; if they
already exist nothing is created, so a role without CREATE rights works once
an administrator has made them. (``mtasts_failures``, ``mtasts_leases`` and
``mtasts_dane`` came after the first release: such an administrator must add
them on upgrade, from ``statements.SCHEMA``, or every call fails with
"permission denied"; a role with CREATE rights adds them by itself.)

A server that is down never stops the daemon: ``setup`` logs and returns, and
each call raises :class:`CacheUnavailable` until the server answers again.
After a failure to reach the server, calls fail at once for
``RETRY_INTERVAL`` seconds, then one call at a time tries again — so a server
that drops packets costs one ``timeout`` per interval, not one per lookup.
asyncpg replaces dead pooled connections when they are next acquired, so the
same cache object recovers by itself.
"""

from __future__ import annotations

from mtasts_fast.cache.postgres.store import RETRY_INTERVAL, PostgresCache

__all__ = ["RETRY_INTERVAL", "PostgresCache"]
