"""How the load benchmarks fill the daemons' caches, without any network.

Every domain ``dNNNNNNN.bench.test`` has the same ``enforce`` policy shape
(README.md, "How the caches are seeded"):

- ``make_domains`` / ``domain_record``: the records, in ``mta-sts-cache``'s
  JSON-lines export format; ``our_reply``: what mtasts-fast answers for one;
- ``seed_peer_sqlite``: the peer's ``sqlite`` cache, written with its schema;
- ``launch_main``: the ``run.py _launch-ours`` / ``_launch-peer`` launchers,
  which run a daemon's unmodified ``main`` with its in-memory cache filled
  through the cache's own API right after ``setup()``;
- ``dane_state`` / ``seed_dane``: every domain's DANE state, ``none`` (an
  insecure MX RRset: the MTA-STS answer stands), through ``put_dane``
  (``run.py _seed-dane``; the launcher puts them into the in-memory cache);
- ``seed_lmdb``: our LMDB cache through ``put_many`` (``scaling.py _seed-lmdb``).

Standard library only at module level: the peer's launcher runs under the
peer's venv, ``seed_lmdb`` under ours.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

MAX_AGE = 86_400
# How long a seeded DANE state stays valid. A real evaluation keeps one for at
# most DANE_TTL_MAX (an hour); the states are seeded once before the runs, and
# one that expired during them would be re-evaluated (DNS queries, the slow
# path): like cache_grace, a bench setting that keeps every lookup a hit.
DANE_VALID = 86_400
# scaling.py's LMDB caches: room for 10⁶ entries and their two index records
# with headroom (a full cache would evict 1 % per put, turning lookups into
# misses); the map is a sparse file on Linux, only written pages take space.
MAX_ENTRIES = 2_000_000
MAP_SIZE = 4 << 30


# --------------------------------------------------------------------------------------
# The domains
# --------------------------------------------------------------------------------------


def domain_record(i: int) -> dict[str, Any]:
    """Domain number ``i`` with its policy, in ``mta-sts-cache``'s JSON-lines format."""
    domain = f"d{i:07d}.bench.test"
    mx = [f"mx1.{domain}", f"*.mail.{domain}"]
    lines = ["version: STSv1", "mode: enforce", *(f"mx: {m}" for m in mx), f"max_age: {MAX_AGE}"]
    return {
        "format": 1,
        "domain": domain,
        "policy_id": f"bench{i}",
        "mode": "enforce",
        "max_age": MAX_AGE,
        "mx": mx,
        "lines": lines,
        "fetched_at": 0.0,
        "checked_at": 0.0,  # set to "now" when seeded
    }


def make_domains(n: int) -> list[dict[str, Any]]:
    return [domain_record(i) for i in range(n)]


def our_reply(record: dict[str, Any]) -> str:
    # mtasts_fast/reply.py: lower-case, policy order, "*.x" written ".x".
    match = ":".join(m[1:] if m.startswith("*.") else m for m in record["mx"])
    return f"OK secure match={match} servername=hostname"


def key_line(record: dict[str, Any]) -> str:
    """A line of loadgen's keys file: the domain and the reply expected from us."""
    return f"{record['domain']}\t{our_reply(record)}\n"


def write_keys(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w") as fh:
        fh.writelines(map(key_line, records))


def peer_policy_body(record: dict[str, Any]) -> dict[str, Any]:
    # The dict the peer's parser builds from a policy file (mx first, then the
    # other keys in file order; max_age is stored as an int).
    return {
        "mx": list(record["mx"]),
        "version": "STSv1",
        "mode": record["mode"],
        "max_age": record["max_age"],
    }


def write_seed(path: Path, records: list[dict[str, Any]], now: float | None = None) -> None:
    """JSON lines; with ``now``, every entry fetched and checked at that time."""
    stamps = {} if now is None else {"fetched_at": now, "checked_at": now}
    with path.open("w") as fh:
        for r in records:
            fh.write(json.dumps({**r, **stamps}) + "\n")


def read_seed(path: str) -> list[dict[str, Any]]:
    return list(iter_seed(path))


def iter_seed(path: str) -> Iterator[dict[str, Any]]:
    """The records of a seed file, one at a time."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def seed_peer_sqlite(filename: Path, records: list[dict[str, Any]]) -> None:
    # Imported here, not at the top: the launchers import this module into the
    # daemon they start, whose resident memory the benchmarks measure.
    import sqlite3

    """Write the peer's schema (sqlite_cache.py 1.5.1) and one fresh row per domain."""
    now = int(time.time())
    db = sqlite3.connect(filename)
    with db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "create table if not exists proactive_fetch_ts "
            "(id integer primary key, last_fetch_ts integer)"
        )
        db.execute(
            "create table if not exists sts_policy_cache "
            "(domain text, ts integer, pol_id text, pol_body text)"
        )
        db.execute(
            "create unique index if not exists sts_policy_domain on sts_policy_cache (domain)"
        )
        db.execute(
            "create index if not exists sts_policy_domain_ts on sts_policy_cache (domain, ts)"
        )
        db.executemany(
            "insert into sts_policy_cache (domain, ts, pol_id, pol_body) values (?, ?, ?, ?)",
            ((r["domain"], now, r["policy_id"], json.dumps(peer_policy_body(r))) for r in records),
        )
    db.close()


# --------------------------------------------------------------------------------------
# Launchers (run inside the daemon's own interpreter)
# --------------------------------------------------------------------------------------


def _fill_after_setup(cache: Any, fill: Callable[[], Awaitable[int]], what: str) -> Any:
    """``cache`` whose ``setup()`` is followed by ``fill()``, which returns how many
    entries it stored (said in the daemon's log)."""
    setup = cache.setup

    async def setup_and_fill() -> None:
        await setup()
        count = await fill()
        print(f"launcher: {count} entries {what}", file=sys.stderr, flush=True)

    cache.setup = setup_and_fill
    return cache


def launch_ours(args: argparse.Namespace) -> int:
    """Run ``mta-sts-daemon`` with its internal cache filled from the seed file.

    The seed is read inside the fill, in the worker that sets the cache up,
    one record at a time, and nothing of it is kept: the launcher's own data
    must not show up as the supervisor's or a worker's resident memory (the
    benchmarks measure it). The worker collects and trims its heap once it
    has started, after the fill.
    """
    import mtasts_fast.cache as cache_module
    from mtasts_fast import daemon

    try:
        from mtasts_fast.cache.json_form import entry_from_json
    except ImportError:  # a tree from before json_form.py (a --variant)
        from mtasts_fast.cachecli import entry_from_json

    # A tree from before DANE has no states to store.
    with_dane = has_dane()
    original = cache_module.create_cache

    def create_cache(config: Any, filename: str) -> Any:
        cache = original(config, filename)

        async def fill() -> int:
            now = time.time()  # fresh at start-up
            count = 0
            for record in iter_seed(args.seed):
                record["fetched_at"] = record["checked_at"] = now
                await cache.put(entry_from_json(record))
                if with_dane:
                    await cache.put_dane(dane_state(record["domain"], now))
                count += 1
            return count

        what = (
            "and as many DANE states " if with_dane else ""
        ) + f"put into the {config.type} cache"
        return _fill_after_setup(cache, fill, what)

    cache_module.create_cache = create_cache
    return daemon.main(["-c", args.config, *args.daemon_args])


def launch_peer(args: argparse.Namespace) -> int:
    """Run the peer's ``mta-sts-daemon`` main with a dead DNS server and, for
    ``--seed``, its internal cache filled through its own ``set``."""
    import aiodns
    from postfix_mta_sts_resolver import daemon, utils  # type: ignore[import-not-found]
    from postfix_mta_sts_resolver.base_cache import CacheEntry  # type: ignore[import-not-found]

    dns = [args.dns]
    resolver_init = aiodns.DNSResolver.__init__

    def init(self: Any, nameservers: Any = None, *rest: Any, **kw: Any) -> None:
        resolver_init(self, dns, *rest, **kw)

    aiodns.DNSResolver.__init__ = init  # type: ignore[method-assign]

    if args.seed:
        seed = args.seed
        original = utils.create_cache

        def create_cache(cache_type: str, options: Any) -> Any:
            cache = original(cache_type, options)

            async def fill() -> int:
                # Read here, one record at a time, as ours is (launch_ours).
                now = time.time()
                count = 0
                for r in iter_seed(seed):
                    body = peer_policy_body(r)
                    await cache.set(r["domain"], CacheEntry(now, r["policy_id"], body))
                    count += 1
                return count

            return _fill_after_setup(cache, fill, f"set in the {cache_type} cache")

        utils.create_cache = create_cache
    sys.argv = ["mta-sts-daemon", "-c", args.config, *args.daemon_args]
    return int(daemon.main())


def has_dane() -> bool:
    """Whether the mtasts_fast this interpreter imports stores DANE states."""
    try:
        from mtasts_fast.dane.state import DaneState  # noqa: F401
    except ImportError:
        return False
    return True


def dane_state(domain: str, now: float) -> Any:
    """``domain``'s DANE state ``none`` as an evaluation of an insecure MX RRset stores it
    (``mtasts_fast/dane/evaluate.py``), valid for ``DANE_VALID`` seconds from ``now``."""
    from mtasts_fast.dane.state import NO_DANE, DaneState

    reason = f"MX RRset of {domain} is insecure (no AD bit)"
    return DaneState(domain, NO_DANE, reason, (), now, now + DANE_VALID)


def seed_dane(argv: list[str]) -> int:
    """``run.py _seed-dane --config CFG --seed FILE``: every seeded domain's DANE state
    ``none``, stored through ``put_dane`` into the cache that CFG configures; prints JSON."""
    import asyncio

    from mtasts_fast.cache import create_cache
    from mtasts_fast.config import Config

    sp = argparse.ArgumentParser(prog="run.py _seed-dane")
    sp.add_argument("--config", required=True)
    sp.add_argument("--seed", required=True)
    sargs = sp.parse_args(argv)
    if not has_dane():
        print(json.dumps({"states": 0, "why": "this tree has no DANE states"}))
        return 0
    config = Config.from_yaml(sargs.config)
    now = time.time()
    states = [dane_state(r["domain"], now) for r in read_seed(sargs.seed)]

    async def fill() -> float:
        cache = create_cache(config.cache, config.filename)
        await cache.setup()
        try:
            t0 = time.monotonic()
            for state in states:
                await cache.put_dane(state)
            return time.monotonic() - t0
        finally:
            await cache.close()

    seconds = asyncio.run(fill())
    print(json.dumps({"states": len(states), "seconds": round(seconds, 2)}))
    return 0


def launch_main(command: str, argv: list[str]) -> int:
    """``run.py _launch-ours|_launch-peer --config CFG [--seed FILE] [--dns ADDR] [ARGS]``."""
    lp = argparse.ArgumentParser(prog=f"run.py {command}")
    lp.add_argument("--config", required=True)
    lp.add_argument("--seed")
    lp.add_argument("--dns")
    lp.add_argument("daemon_args", nargs="*")
    largs = lp.parse_args(argv)
    return launch_ours(largs) if command == "_launch-ours" else launch_peer(largs)


# --------------------------------------------------------------------------------------
# LMDB through put_many (runs under the project's venv: imports mtasts_fast)
# --------------------------------------------------------------------------------------


def seed_lmdb(path: str, count: int) -> int:
    """Fill a new LMDB cache with domains 0..count-1 through ``put_many``; print JSON."""
    import asyncio

    import lmdb

    from mtasts_fast.cache.base import CacheEntry
    from mtasts_fast.cache.lmdb import LmdbCache
    from mtasts_fast.policy import Policy

    now = time.time()

    def entries() -> Iterator[CacheEntry]:
        # Built directly rather than through mta-sts-cache's JSON import, whose
        # per-domain validation would take most of the time for 10⁶ generated,
        # known-valid names.
        for r in map(domain_record, range(count)):
            policy = Policy(r["mode"], r["max_age"], tuple(r["mx"]), tuple(r["lines"]))
            yield CacheEntry(r["domain"], r["policy_id"], policy, now, now)

    async def fill() -> float:
        cache = LmdbCache({"path": path, "map_size": MAP_SIZE, "max_entries": MAX_ENTRIES})
        await cache.setup()
        try:
            t0 = time.monotonic()
            await cache.put_many(entries())
            return time.monotonic() - t0
        finally:
            await cache.close()

    seconds = asyncio.run(fill())
    env = lmdb.open(path, readonly=True, max_dbs=8, lock=False)
    try:
        with env.begin() as txn:
            stored = txn.stat(env.open_db(b"policies", txn=txn, create=False))["entries"]
    finally:
        env.close()
    data = Path(path) / "data.mdb"
    print(
        json.dumps(
            {
                "entries": stored,
                "seconds": round(seconds, 2),
                "file_mib": round(data.stat().st_blocks * 512 / 2**20, 1),
            }
        )
    )
    return 0 if stored == count else 1
