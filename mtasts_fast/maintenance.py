"""Background housekeeping of the shared cache: drop long-expired policies.

postfix-mta-sts-resolver's sqlite, Redis and PostgreSQL caches only ever grow.
Here every worker prunes now and then; pruning is idempotent, so several
workers or hosts doing it costs a few cheap deletes and needs no lock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from mtasts_fast.cache import Cache

__all__ = ["PRUNE_INTERVAL", "PRUNE_RETENTION", "prune_forever", "prune_once"]

_log = logging.getLogger(__name__)

# How often, and how long after its expiry an entry is kept. An expired entry
# is never served (RFC 8461 §3.2), so one day only leaves room for clock skew
# between hosts and for the operator to look at it with mta-sts-cache.
PRUNE_INTERVAL = 3600.0
PRUNE_RETENTION = 86400.0


async def prune_once(cache: Cache, now: float | None = None) -> int:
    """Delete entries that expired over PRUNE_RETENTION ago; return how many."""
    now = time.time() if now is None else now
    try:
        count = await cache.prune(now - PRUNE_RETENTION)
    except Exception as exc:
        _log.warning("cache prune failed: %s", exc)
        return 0
    if count:
        _log.info("pruned %d long-expired policies from the cache", count)
    return count


async def prune_forever(cache: Cache, interval: float = PRUNE_INTERVAL) -> None:
    """Prune at start-up and then every ``interval`` seconds (±10 % jitter)."""
    while True:
        await prune_once(cache)
        # Jitter keeps the workers of one host (and hosts sharing a cache)
        # from pruning in lock-step.
        await asyncio.sleep(interval * random.uniform(0.9, 1.1))
