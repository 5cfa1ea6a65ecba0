"""Cache benchmarks: LMDB reads and writes by cache size, msgpack entry codec.

asv conventions: ``setup_cache`` runs once per class and its result is passed
to ``setup`` and every benchmark; ``params`` are the cache sizes. The asv
runner in use re-runs ``setup`` before every timed call (asv#966), and the
LMDB ``setup`` copies the whole cache file, which leaves the CPU caches cold:
a single sub-microsecond read timed right after it measured that, not the
read. So each read benchmark times PROBES reads in one call; asv reports the
time per PROBES reads (µs per read = the figure ÷ 1000). A memoised hit
must cost the same at 10³ and 10⁶ entries.
Run by hand without asv::

    python benchmarks/benchmarks/bench_cache.py [entries...]
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
import tempfile
import time
import timeit
from typing import Any, ClassVar

from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.cache.codec import decode_entry, encode_entry
from mtasts_fast.cache.lmdb import LmdbCache
from mtasts_fast.policy import Policy

SIZES = [10**3, 10**5, 10**6]
# Distinct domains the read benchmarks cycle through.
PROBES = 1000


def domain(i: int) -> str:
    return f"mail-{i:07d}.example.com"


def make_entry(name: str, now: float | None = None) -> CacheEntry:
    """A typical policy: two mx patterns, about 190 bytes encoded."""
    now = time.time() if now is None else now
    mx = (f"mx1.{name}", f"*.mx.{name}")
    lines = ("version: STSv1", "mode: enforce", *(f"mx: {m}" for m in mx), "max_age: 604800")
    return CacheEntry(name, "20240101T000000", Policy("enforce", 604800, mx, lines), now, now)


def build(path: str, count: int) -> None:
    """A cache of ``count`` entries at ``path``, loaded in bulk."""

    async def load() -> None:
        cache = LmdbCache({"path": path, "map_size": 4 << 30, "max_entries": 2 * count})
        await cache.setup()
        now = time.time()
        await cache.put_many(make_entry(domain(i), now) for i in range(count))
        await cache.close()

    asyncio.run(load())


def data_size(path: str) -> int:
    """Bytes the data file really occupies on disk."""
    return os.stat(path).st_blocks * 512


class LmdbCacheSuite:
    """Per-operation cost of the LMDB backend at 10³, 10⁵ and 10⁶ entries."""

    params: ClassVar[list[int]] = SIZES
    param_names: ClassVar[list[str]] = ["entries"]
    timeout = 1200  # building 10⁶ entries takes a while

    def setup_cache(self) -> dict[int, str]:
        root = tempfile.mkdtemp(prefix="bench-lmdb-")
        paths = {}
        for count in SIZES:
            paths[count] = os.path.join(root, f"{count}.lmdb")
            build(paths[count], count)
        return paths

    def setup(self, paths: dict[int, str], entries: int) -> None:
        self.loop = asyncio.new_event_loop()
        # put benchmarks grow the cache; work on a copy so each run starts alike.
        self.dir = tempfile.mkdtemp(prefix="bench-lmdb-run-")
        path = os.path.join(self.dir, "cache.lmdb")
        shutil.copyfile(paths[entries], path)
        os.chmod(path, 0o640)
        # Flush the copy now: otherwise the first commit's fsync writes the
        # whole freshly copied file, and the put timings measure the copy.
        with open(path, "rb") as copy:
            os.fsync(copy.fileno())
        self.cache = LmdbCache({"path": path, "map_size": 4 << 30, "max_entries": 2 * entries})
        self.loop.run_until_complete(self.cache.setup())
        step = max(1, entries // PROBES)
        self.hot = [domain(i) for i in range(0, entries, step)][:PROBES]
        self.absent = [f"absent-{i}.example.net" for i in range(PROBES)]
        self.rewrites = itertools.cycle(self.hot)
        self.fresh = (f"new-{i}.example.org" for i in itertools.count())
        for name in self.hot:
            self.cache.get_nowait(name)  # warm the page cache and the memo

    def teardown(self, paths: dict[int, str], entries: int) -> None:
        self.loop.run_until_complete(self.cache.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_get_nowait_hit(self, paths: dict[int, str], entries: int) -> None:
        """PROBES cache hits on the hot path: nothing committed since, so memoised entries."""
        get = self.cache.get_nowait
        for name in self.hot:
            get(name)

    def time_get_nowait_decode(self, paths: dict[int, str], entries: int) -> None:
        """PROBES hits on entries not in the memo: read transaction, get, msgpack decode."""
        get = self.cache.get_nowait
        memo = self.cache._memo
        for name in self.hot:
            memo.pop(name, None)
            get(name)

    def time_get_nowait_miss(self, paths: dict[int, str], entries: int) -> None:
        """PROBES lookups of domains that are not cached."""
        get = self.cache.get_nowait
        for name in self.absent:
            get(name)

    def time_put_replace(self, paths: dict[int, str], entries: int) -> None:
        """Rewrite a cached domain (a revalidation): thread hand-off, commit, fsync."""
        self.loop.run_until_complete(self.cache.put(make_entry(next(self.rewrites))))

    def time_put_new(self, paths: dict[int, str], entries: int) -> None:
        """Add a domain (a fetch of an uncached domain): as above plus a bigger tree."""
        self.loop.run_until_complete(self.cache.put(make_entry(next(self.fresh))))

    def track_disk_bytes_per_entry(self, paths: dict[int, str], entries: int) -> float:
        """On-disk size of the data file divided by the entry count."""
        return data_size(paths[entries]) / entries

    track_disk_bytes_per_entry.unit = "bytes"  # type: ignore[attr-defined]


class CodecSuite:
    """msgpack encoding and decoding of one typical entry."""

    def setup(self) -> None:
        self.entry = make_entry("mail.example.com")
        self.data = encode_entry(self.entry)

    def time_encode(self) -> None:
        """encode_entry: CacheEntry to msgpack bytes."""
        encode_entry(self.entry)

    def time_decode(self) -> None:
        """decode_entry: msgpack bytes to a validated CacheEntry."""
        decode_entry("mail.example.com", self.data)


def _report(sizes: list[int]) -> None:
    """A quick run without asv: µs per call of every benchmark, and disk use."""

    def per_call(func: Any, *args: Any, number: int) -> float:
        return min(timeit.repeat(lambda: func(*args), number=number, repeat=5)) / number * 1e6

    codec = CodecSuite()
    codec.setup()
    print(f"codec encode {per_call(codec.time_encode, number=100_000):.2f} µs")
    print(f"codec decode {per_call(codec.time_decode, number=100_000):.2f} µs")
    suite = LmdbCacheSuite()
    root = tempfile.mkdtemp(prefix="bench-lmdb-")
    try:
        for count in sizes:
            path = os.path.join(root, f"{count}.lmdb")
            started = time.perf_counter()
            build(path, count)
            built = time.perf_counter() - started
            paths = {count: path}
            suite.setup(paths, count)
            try:
                print(
                    f"{count:>8} entries: built in {built:.1f} s, "
                    f"{data_size(path) / 2**20:.1f} MiB on disk "
                    f"({suite.track_disk_bytes_per_entry(paths, count):.0f} B/entry)"
                )
                for name in ("hit", "decode", "miss"):
                    func = getattr(suite, f"time_get_nowait_{name}")
                    cost = per_call(func, paths, count, number=100) / PROBES
                    print(f"  get_nowait {name:<7} {cost:6.2f} µs")
                for name in ("replace", "new"):
                    func = getattr(suite, f"time_put_{name}")
                    print(f"  put {name:<14} {per_call(func, paths, count, number=200):6.1f} µs")
            finally:
                suite.teardown(paths, count)
            os.unlink(path)
            os.unlink(path + "-lock")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    _report([int(arg) for arg in sys.argv[1:]] or SIZES)
