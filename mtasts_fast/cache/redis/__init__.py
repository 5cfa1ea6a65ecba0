"""Redis backends (``cache.type: redis`` and ``redis_sentinel``), shared by a fleet.

Data layout, the same for both types and kept to our own namespace, so a
database shared with postfix-mta-sts-resolver (one ZSET per raw domain name and
a ``_metadata`` hash) or with anything else is never read or touched:

- ``mtasts:policy:<domain>``: a hash per domain, fields ``v`` (the entry as
  :mod:`mtasts_fast.cache.codec` bytes), ``c`` (``checked_at``) and ``x``
  (the policy's ``expires_at``), both as decimal text that Lua's ``tonumber``
  reads back exactly. A small Lua script compares ``c`` and writes in one step,
  so an older write never replaces a newer one, whichever relay writes last.
- ``mtasts:meta``: a hash, field ``proactive_ts``.
- ``mtasts:failure:<domain>``: a string, the domain's ``FetchFailure`` as
  codec bytes, expiring ``FAILURE_RETENTION`` seconds after its
  ``retry_at`` (a record written later than that is not kept at all): Redis
  forgets it on its own, so ``prune`` leaves failure records alone.
- ``mtasts:dane:<domain>``: a hash per domain like the policies', fields
  ``v`` (the ``DaneState`` as codec bytes), ``c`` (its ``evaluated_at``) and
  ``x`` (its ``expires_at``), written by the same script, so an older
  evaluation never replaces a newer one whichever relay writes last.
- ``mtasts:lease:<name>``: a string, the holder's name, with a millisecond
  TTL of the lease's length. Small Lua scripts take, renew and release it
  in one step each; the expiry is Redis's own clock, so relays whose clocks
  disagree still agree on when a lease has lapsed.

Every policy and DANE key expires (EXPIREAT) ``RETENTION`` seconds (one day,
the margin the periodic prune keeps) after its policy or state does, and at
the earliest ``RETENTION`` seconds after it was written: Redis forgets them on
its own (postfix-mta-sts-resolver's keys live for ever, its issue #109),
``prune`` finds little left to do, an expired policy stays a day for
``mta-sts-cache list`` to show, and an expired DANE state stays as long as
the responder may serve it while revalidating.

Modules: ``store`` (the layout and the commands), ``scripts`` (the Lua
scripts), ``clients`` (how each type connects).

Connections are made on first use, so a server that is down at start-up
does not stop the daemon; every failure to use the server raises
:class:`CacheUnavailable`, and redis-py reconnects once the server is back.
"""

from __future__ import annotations

from mtasts_fast.cache.redis.clients import RedisCache, RedisSentinelCache
from mtasts_fast.cache.redis.store import (
    DANE_PREFIX,
    FAILURE_PREFIX,
    LEASE_PREFIX,
    META_KEY,
    POLICY_PREFIX,
    RETENTION,
)

__all__ = [
    "DANE_PREFIX",
    "FAILURE_PREFIX",
    "LEASE_PREFIX",
    "META_KEY",
    "POLICY_PREFIX",
    "RETENTION",
    "RedisCache",
    "RedisSentinelCache",
]
