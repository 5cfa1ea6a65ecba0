"""What counting costs on the hot path: ``python benchmarks/metrics_cost.py``.

Measured in one process, best of several repeats, nanoseconds per call:

1. One increment, four ways: an item of a plain Python list (private to
   the process: lost with it), an item of a ``memoryview`` over an anonymous
   shared ``mmap``, ``CounterArrayPy.inc`` (the pure-Python twin, a method
   around that memoryview) and ``CounterArrayC.inc`` (the compiled twin,
   what workers use).
2. ``Responder.answer()`` of a memoised LMDB hit (the hot path: split the
   request, zone, memoised key, memoised entry stamped with LMDB's commit id,
   memoised reply), with the lookup counted into a worker's shared region
   (compiled twin, then pure-Python twin), against the same hot path without
   counting (``_Uncounted.answer`` below: the code as it was before the
   metrics, kept here as the baseline).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import shutil
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Coroutine
from typing import Any

from mtasts_fast import counters
from mtasts_fast.cache.lmdb import LmdbCache
from mtasts_fast.config import Config
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.metrics.layout import Layout
from mtasts_fast.metrics.region import Region
from mtasts_fast.metrics.worker import WorkerMetrics
from mtasts_fast.responder import _MISSING, NOTFOUND_REPLY, Responder

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "benchmarks"))
from bench_cache import make_entry

DOMAIN = "mail-0000001.example.com"
PAYLOAD = b"postfix " + DOMAIN.encode()
REPEAT = 9
NUMBER = 200_000


def best_ns(func: Callable[[], object], number: int = NUMBER) -> float:
    return min(timeit.repeat(func, number=number, repeat=REPEAT)) / number * 1e9


class _Uncounted(Responder):
    """The hot path exactly as before the metrics: no count anywhere."""

    def answer(self, payload: bytes) -> bytes | Coroutine[Any, Any, bytes]:
        map_name, _, raw_key = payload.partition(b" ")
        zone = self._zones.get(map_name, self._default_zone)
        domain = self._keys.get(raw_key, _MISSING)
        if domain is _MISSING:
            domain = self._normalise(raw_key)
        if domain is None:
            return NOTFOUND_REPLY
        assert isinstance(domain, str)
        if self._sync_reads:
            try:
                entry = self._cache.get_nowait(domain)
            except Exception:
                return self._answer_slow(domain, zone)
            now = self._clock()
            if entry is not None:
                if now < entry.expires_at:
                    if now - entry.checked_at > self._grace:
                        self._revalidate_soon(entry, zone, now)
                    reply = entry.rendered.get(zone.render_key)
                    if reply is not None:
                        return reply
                    return self._framed(entry, zone)
            elif self.refresher.in_backoff(domain, now):
                return NOTFOUND_REPLY
        return self._answer_slow(domain, zone)


def increments() -> dict[str, float]:
    shared = mmap.mmap(-1, mmap.PAGESIZE)
    view = memoryview(shared).cast("Q")
    plain = [0] * 64
    results = {"python list item += 1 (private)": best_ns_stmt("plain[5] += 1", plain=plain)}
    results["memoryview(mmap) item += 1"] = best_ns_stmt("view[5] += 1", view=view)
    py = counters.CounterArrayPy(shared)
    results["CounterArrayPy.inc (pure twin)"] = best_ns_stmt("inc(5)", inc=py.inc)
    if counters.CounterArrayC is not None:
        c = counters.CounterArrayC(shared)
        results["CounterArrayC.inc (compiled twin)"] = best_ns_stmt("inc(5)", inc=c.inc)
        c.release()
    results["nothing (loop overhead)"] = best_ns_stmt("pass")
    py.release()
    view.release()
    shared.close()
    return results


def best_ns_stmt(stmt: str, **names: object) -> float:
    return (
        min(timeit.repeat(stmt, globals=names, number=NUMBER * 5, repeat=REPEAT))
        / (NUMBER * 5)
        * 1e9
    )


def answers() -> dict[str, float]:
    root = tempfile.mkdtemp(prefix="metrics-cost-")
    try:
        return asyncio.run(_answers(os.path.join(root, "cache.lmdb")))
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _answers(path: str) -> dict[str, float]:
    config = Config.default()
    cache = LmdbCache({"path": path})
    await cache.setup()
    now = time.time()
    await cache.put(make_entry(DOMAIN, now))
    fetcher = PolicyFetcher()  # never used: every lookup is a memoised hit
    layout = Layout.for_config(config)
    regions = {"c": Region(layout)}
    responders: dict[str, Responder] = {"off": _Uncounted(config, cache, fetcher)}
    if counters.CounterArrayC is not None:
        responders["on (compiled twin)"] = Responder(
            config, cache, fetcher, metrics=WorkerMetrics(regions["c"])
        )
    py_region = Region(layout, array=counters.CounterArrayPy)
    regions["py"] = py_region
    responders["on (pure-Python twin)"] = Responder(
        config, cache, fetcher, metrics=WorkerMetrics(py_region)
    )
    for responder in responders.values():
        reply = responder.answer(PAYLOAD)
        assert isinstance(reply, bytes), reply
        assert b":OK secure" in reply, reply
    results: dict[str, float] = {}
    # Interleaved rounds, so that a burst of load on the machine hits all alike.
    for _ in range(3):
        for name, responder in responders.items():
            cost = best_ns(lambda r=responder: r.answer(PAYLOAD))
            results[name] = min(results.get(name, cost), cost)
    counted = sum(
        region.cells.get(i) for region in regions.values() for i, _ in layout.indexed_cells()
    )
    assert counted > 0
    for responder in responders.values():
        await responder.close()
    await cache.close()
    for region in regions.values():
        region.close()
    return results


def main() -> None:
    print(f"Python {sys.version.split()[0]}, best of {REPEAT} x {NUMBER} calls")
    print("\nOne increment:")
    for name, ns in increments().items():
        print(f"  {name:<40} {ns:6.1f} ns")
    print("\nResponder.answer(), memoised LMDB hit:")
    results = answers()
    base = results["off"]
    for name, ns in results.items():
        extra = "" if name == "off" else f"   (+{ns - base:5.1f} ns)"
        print(f"  metrics {name:<32} {ns:6.1f} ns{extra}")


if __name__ == "__main__":
    main()
