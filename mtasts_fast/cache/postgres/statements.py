"""The tables and the statements of the PostgreSQL backend (see the package doc)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ACQUIRE",
    "PUT_DANE",
    "PUT_FAILURE",
    "SCHEMA",
    "SET_META",
    "UPSERT",
    "count",
    "ensure_schema",
]

# What an administrator runs for a role without CREATE rights (package doc).
SCHEMA = """
CREATE TABLE IF NOT EXISTS mtasts_policy (
    domain TEXT COLLATE "C" PRIMARY KEY,
    checked_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    entry BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS mtasts_policy_expires_at ON mtasts_policy (expires_at);
CREATE TABLE IF NOT EXISTS mtasts_meta (
    name TEXT PRIMARY KEY,
    value DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS mtasts_failures (
    domain TEXT COLLATE "C" PRIMARY KEY,
    data BYTEA NOT NULL,
    retry_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS mtasts_failures_retry_at ON mtasts_failures (retry_at);
CREATE TABLE IF NOT EXISTS mtasts_leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS mtasts_dane (
    domain TEXT COLLATE "C" PRIMARY KEY,
    evaluated_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    state BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS mtasts_dane_expires_at ON mtasts_dane (expires_at);
"""
_SCHEMA_PRESENT = """
SELECT to_regclass('mtasts_policy') IS NOT NULL
   AND to_regclass('mtasts_policy_expires_at') IS NOT NULL
   AND to_regclass('mtasts_meta') IS NOT NULL
   AND to_regclass('mtasts_failures') IS NOT NULL
   AND to_regclass('mtasts_failures_retry_at') IS NOT NULL
   AND to_regclass('mtasts_leases') IS NOT NULL
   AND to_regclass('mtasts_dane') IS NOT NULL
   AND to_regclass('mtasts_dane_expires_at') IS NOT NULL
"""
# Any fixed number will do; "mtasts" in ASCII.
_SCHEMA_LOCK = 0x6D7461737473

UPSERT = """
INSERT INTO mtasts_policy AS stored (domain, checked_at, expires_at, entry)
VALUES ($1, $2, $3, $4)
ON CONFLICT (domain) DO UPDATE SET
    checked_at = excluded.checked_at,
    expires_at = excluded.expires_at,
    entry = excluded.entry
WHERE excluded.checked_at >= stored.checked_at
"""
SET_META = """
INSERT INTO mtasts_meta (name, value) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET value = excluded.value
"""
# A DANE state never replaces one evaluated later (another worker or host).
PUT_DANE = """
INSERT INTO mtasts_dane AS stored (domain, evaluated_at, expires_at, state)
VALUES ($1, $2, $3, $4)
ON CONFLICT (domain) DO UPDATE SET
    evaluated_at = excluded.evaluated_at,
    expires_at = excluded.expires_at,
    state = excluded.state
WHERE excluded.evaluated_at >= stored.evaluated_at
"""
PUT_FAILURE = """
INSERT INTO mtasts_failures (domain, data, retry_at) VALUES ($1, $2, $3)
ON CONFLICT (domain) DO UPDATE SET data = excluded.data, retry_at = excluded.retry_at
"""
# $1 name, $2 owner, $3 ttl in seconds. A row comes back if $2 holds the
# lease now: it was free, expired, or already $2's (then renewed).
ACQUIRE = """
INSERT INTO mtasts_leases AS held (name, owner, expires_at)
VALUES ($1, $2, extract(epoch FROM now())::double precision + $3::double precision)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE held.owner = excluded.owner OR held.expires_at <= extract(epoch FROM now())::double precision
RETURNING owner
"""


async def ensure_schema(conn: Any) -> None:
    if await conn.fetchval(_SCHEMA_PRESENT):
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        await conn.execute(SCHEMA)


def count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3".
    return int(status.rpartition(" ")[2])
