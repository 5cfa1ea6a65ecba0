"""What DANE precedence costs a cached lookup: ``Responder.answer`` on a memoised LMDB hit.

One process, one LMDB cache holding PROBES domains, each with an enforce
MTA-STS policy and a DANE state; one responder per zone setting, all on the
same cache. Every round times each variant on the same PROBES payloads
(after a warm-up that fills both memos and every memoised reply), the
variants interleaved, and keeps each variant's best round: on a shared
two-core machine the minimum is the figure least disturbed by neighbours.

- ``off``: ``dane: off``, today's hot path (the baseline);
- ``precedence-sts``: the MTA-STS answer stands (the DANE state is ``none``):
  one more memoised read, the empty memoised DANE reply;
- ``precedence-dane``: the DANE answer (``OK dane-only``) replaces it;
- ``precedence-notfound``: a ``testing`` policy (NOTFOUND): no DANE read.

Run::

    .venv/bin/python benchmarks/dane/hot_path.py [--probes N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.cache.lmdb import LmdbCache
from mtasts_fast.config import Config
from mtasts_fast.dane.resolver import DaneResolver
from mtasts_fast.dane.state import DANE_ONLY, NO_DANE, DaneHost, DaneState
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.policy import Policy
from mtasts_fast.responder import Responder

VARIANTS = ("off", "precedence-sts", "precedence-dane", "precedence-notfound")


def _policy(mode: str, name: str) -> Policy:
    mx = (f"mx1.{name}", f"*.mx.{name}")
    lines = ("version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), "max_age: 604800")
    return Policy(mode, 604800, mx, lines)


async def _seed(cache: LmdbCache, probes: int) -> dict[str, list[bytes]]:
    now = time.time()
    payloads: dict[str, list[bytes]] = {v: [] for v in VARIANTS}
    entries = []
    for i in range(probes):
        for kind, mode, decision in (
            ("sts", "enforce", NO_DANE),
            ("dane", "enforce", DANE_ONLY),
            ("notfound", "testing", NO_DANE),
        ):
            name = f"{kind}-{i:06d}.example.com"
            entries.append(CacheEntry(name, "20240101T000000", _policy(mode, name), now, now))
            hosts = (DaneHost(f"mx1.{name}", "dane", "TLSA usable"),)
            state = DaneState(name, decision, "bench", hosts, now, now + 86400)
            await cache.put_dane(state)
            if kind == "sts":
                payloads["off"].append(b"off " + name.encode())
            payloads[f"precedence-{kind}"].append(b"precedence " + name.encode())
    await cache.put_many(entries)
    return payloads


def _time(answer: Any, payloads: list[bytes]) -> float:
    started = time.perf_counter_ns()
    for payload in payloads:
        answer(payload)
    return (time.perf_counter_ns() - started) / len(payloads)


async def main(probes: int, rounds: int) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="bench-dane-")
    try:
        cache = LmdbCache({"path": os.path.join(directory, "cache.lmdb")})
        await cache.setup()
        payloads = await _seed(cache, probes)
        config = Config.from_mapping(
            {"zones": {"off": {"dane": "off"}, "precedence": {"dane": "precedence"}}}
        )
        # The resolver is never asked: every state is fresh.
        responder = Responder(
            config, cache, PolicyFetcher(), resolver=DaneResolver(["127.0.0.1:9"])
        )
        for variant in VARIANTS:
            for payload in payloads[variant]:
                reply = responder.answer(payload)
                assert isinstance(reply, bytes), (variant, reply)
        expected = {
            "off": b"OK secure",
            "precedence-sts": b"OK secure",
            "precedence-dane": b"OK dane-only",
            "precedence-notfound": b"NOTFOUND",
        }
        for variant, head in expected.items():
            reply = responder.answer(payloads[variant][0])
            assert isinstance(reply, bytes), (variant, reply)
            assert head in reply, (variant, reply)
        best: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(rounds):
            for variant in VARIANTS:
                best[variant].append(_time(responder.answer, payloads[variant]))
        await responder.close()
        await cache.close()
        return {v: min(times) for v, times in best.items()} | {
            f"{v} (median)": statistics.median(times) for v, times in best.items()
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    results = asyncio.run(main(args.probes, args.rounds))
    base = results["off"]
    print(f"Responder.answer, memoised LMDB hit, {args.probes} domains, best of {args.rounds}:")
    for variant in VARIANTS:
        ns = results[variant]
        median = results[f"{variant} (median)"]
        print(
            f"  {variant:22} {ns:7.0f} ns  (median {median:5.0f} ns)  {ns - base:+5.0f} ns vs off"
        )
