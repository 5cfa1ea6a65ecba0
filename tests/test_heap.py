"""Returning freed C memory to the kernel after fetches (mtasts_fast/heap.py)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import platform
import weakref
from collections.abc import Callable

import pytest

from mtasts_fast import heap
from mtasts_fast.heap import load_malloc_trim, rss_anon_kib, trim_forever


async def _run_for(seconds: float, *args: object, **kwargs: object) -> None:
    task = asyncio.ensure_future(trim_forever(*args, **kwargs))  # type: ignore[arg-type]
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_trims_only_after_activity() -> None:
    activity = 0
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    async def fetch_now_and_then() -> None:
        nonlocal activity
        await asyncio.sleep(0.035)
        activity += 3  # fetches between the second and the fourth tick

    fetching = asyncio.ensure_future(fetch_now_and_then())
    await _run_for(0.2, lambda: activity, 0.02, trim)
    await fetching
    assert calls == [0], "one trim, for the one period with fetches"


async def test_no_activity_no_trim() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    await _run_for(0.1, lambda: 7, 0.01, trim)
    assert calls == []


async def test_returns_at_once_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mtasts_fast.heap.load_malloc_trim", lambda: None)
    await asyncio.wait_for(trim_forever(lambda: 0, 0.01), 1.0)


def test_malloc_trim_gives_freed_heap_memory_back() -> None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        # CI runs on Debian (glibc), where this must run.
        if os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0"):
            pytest.fail("malloc_trim needs glibc on Linux (MTASTS_REQUIRE_ALL is set)")
        pytest.skip("malloc_trim is glibc's")
    trim = load_malloc_trim()
    assert trim is not None
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    # 64 MiB in small blocks (below the mmap threshold, so from the heap),
    # touched so that they are resident; then all freed but the last, which
    # pins the top of the heap so that free() alone cannot shrink it.
    blocks = []
    for _ in range(64 * 16):
        block = libc.malloc(64 * 1024)
        libc.memset(block, 1, 64 * 1024)
        blocks.append(block)
    before_free = rss_anon_kib()
    for block in blocks[:-1]:
        libc.free(block)
    after_free = rss_anon_kib()
    trim(0)
    after_trim = rss_anon_kib()
    libc.free(blocks[-1])
    assert before_free is not None
    assert after_free is not None
    assert after_trim is not None
    assert after_free > before_free - 16 * 1024, "free() alone returned the memory"
    assert after_trim < after_free - 32 * 1024, (before_free, after_free, after_trim)


def test_release_garbage_collects_cycles_and_trims(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    monkeypatch.setattr(heap, "load_malloc_trim", lambda: trim)

    class Node:
        other: object = None

    first, second = Node(), Node()
    first.other, second.other = second, first  # a cycle only the collector frees
    gone = weakref.ref(first)
    del first, second
    heap.release_garbage()
    assert gone() is None
    assert calls == [0]


def _private_dirty_after_collect(fork: Callable[[], int]) -> tuple[int, int]:
    """Fork with ``fork``; the child runs a full collection and reports its
    Private_Dirty (KiB, /proc/self/smaps_rollup) and gc.get_freeze_count()."""
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:  # the child: report, never return into pytest
        code = 1
        try:
            os.close(read_end)
            gc.collect()
            private = 0
            with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
                for line in rollup:
                    if line.startswith("Private_Dirty:"):
                        private = int(line.split()[1])
            os.write(write_end, f"{private} {gc.get_freeze_count()}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        private, frozen = (int(x) for x in pipe.read().split())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return private, frozen


def test_fork_sharing_heap_leaves_inherited_objects_shared() -> None:
    if not os.path.exists("/proc/self/smaps_rollup"):
        # CI runs on Linux, where this must run.
        if os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0"):
            pytest.fail("needs /proc/self/smaps_rollup (MTASTS_REQUIRE_ALL is set)")
        pytest.skip("needs /proc/self/smaps_rollup (Linux)")
    # About 40 MiB of objects the collector tracks, as a supervisor's modules
    # and configuration are: a collection in a child that inherited them
    # writes to every one's header, copying every page that holds them.
    inherited = [[i] for i in range(400_000)]
    assert gc.get_freeze_count() == 0
    plain_private, plain_frozen = _private_dirty_after_collect(os.fork)
    private, frozen = _private_dirty_after_collect(heap.fork_sharing_heap)
    assert plain_frozen == 0
    assert frozen >= len(inherited), "the child did not inherit the objects frozen"
    assert gc.get_freeze_count() == 0, "the parent did not take its objects back"
    # The child that collected over the inherited objects copied their pages
    # (tens of MiB); the one that had them frozen did not.
    assert plain_private - private > 16 * 1024, (plain_private, private)
    del inherited
