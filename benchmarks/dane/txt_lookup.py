"""CPU per TXT lookup: aiodns (c-ares, the MTA-STS path) vs dnspython (the DANE path).

Issue 12 asks whether the MTA-STS TXT lookup should stay on aiodns once
dnspython is a dependency. Both ask the same local resolver (Unbound in front
of Knot, tests/servers/dnssec.py, answering from its cache after the first
query) for the same ``_mta-sts`` TXT record; the resolver runs in other
processes, so this process's CPU time (``time.process_time``) is the client's
cost alone: building the query, the socket work in the event loop, parsing.

- ``aiodns``: ``DNSResolver.query_dns(name, "TXT")``, what fetcher.py does;
- ``dnspython``: ``DaneResolver.query(name, "TXT")``, what the DANE
  evaluation does (AD and DO set, so the answer carries an RRSIG to parse);
- ``dnspython-plain``: dnspython's own ``asyncquery.udp`` without DO (the
  least a dnspython TXT lookup could cost).

Each is timed sequentially (one query in flight) and with 64 in flight, under
uvloop, best of ``--rounds``. Run::

    .venv/bin/python benchmarks/dane/txt_lookup.py [--queries N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import aiodns  # noqa: E402
import dns.asyncquery  # noqa: E402
import dns.message  # noqa: E402
import uvloop  # noqa: E402

from mtasts_fast.dane.resolver import DaneResolver  # noqa: E402
from tests.servers.dnssec import DnssecTree  # noqa: E402

NAME = "_mta-sts.bench.dane.test"


def _tree(directory: str) -> DnssecTree:
    tree = DnssecTree(directory)
    zone = tree.zone("bench")
    zone.txt("_mta-sts", "v=STSv1; id=20240101T000000;")
    return tree


async def _measure(ask: Callable[[], Awaitable[object]], queries: int, parallel: int) -> float:
    """CPU microseconds per query, ``parallel`` queries in flight."""
    await ask()  # warm: the resolver's cache, the client's lazy set-up
    semaphore = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with semaphore:
            await ask()

    started = time.process_time()
    await asyncio.gather(*(one() for _ in range(queries)))
    return (time.process_time() - started) / queries * 1e6


async def main(server: tuple[str, int], queries: int, rounds: int) -> dict[str, list[float]]:
    host, port = server
    channel = aiodns.DNSResolver(nameservers=[f"{host}:{port}"])
    dane = DaneResolver([f"{host}:{port}"])

    async def with_aiodns() -> object:
        return await channel.query_dns(NAME, "TXT")

    async def with_dnspython() -> object:
        answer = await dane.query(NAME, "TXT", 4)
        assert answer.records, answer
        return answer

    async def with_dnspython_plain() -> object:
        query = dns.message.make_query(NAME, "TXT")
        return await dns.asyncquery.udp(query, host, port=port, timeout=4)

    variants = {
        "aiodns": with_aiodns,
        "dnspython": with_dnspython,
        "dnspython-plain": with_dnspython_plain,
    }
    results: dict[str, list[float]] = {}
    for parallel in (1, 64):
        for name, ask in variants.items():
            results[f"{name} x{parallel}"] = [
                await _measure(ask, queries, parallel) for _ in range(rounds)
            ]
    await channel.close()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-txt-") as directory:
        tree = _tree(directory)
        with tree:
            results = uvloop.run(main(tree.validating, args.queries, args.rounds))
    print(
        f"CPU per TXT lookup (client side, uvloop), {args.queries} queries, best of {args.rounds}:"
    )
    for name, values in results.items():
        print(f"  {name:22} {min(values):7.1f} µs")
