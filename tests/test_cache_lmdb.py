"""The ``lmdb`` backend: the shared contract, plus what sharing one file implies.

Other processes are real ones (``subprocess``, never ``fork``: an LMDB
environment must not cross a fork), running the small scripts below.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from mtasts_fast.cache.base import Cache, CacheEntry, CacheUnavailable, FetchFailure
from mtasts_fast.cache.codec import (
    decode_dane,
    decode_entry,
    decode_failure,
    encode_entry,
    encode_failure,
)
from mtasts_fast.cache.lmdb import LmdbCache, _time_key
from mtasts_fast.cache.lmdb import dane as dane_module
from mtasts_fast.dane.state import DaneHost, DaneState
from mtasts_fast.policy import Policy
from tests.cache_contract import (
    DANE_STATES,
    FAILURE_RECORDS,
    POLICY_ENTRIES,
    CachePeer,
    PersistentCacheContract,
    RecordKind,
    assert_same,
    collect,
    make_entry,
    make_failure,
)

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def options(path: str, *, map_size: int = 64 * MiB, max_entries: int = 100_000) -> dict[str, Any]:
    return {"path": path, "map_size": map_size, "max_entries": max_entries}


async def open_cache(path: str, **kwargs: Any) -> LmdbCache:
    cache = LmdbCache(options(path, **kwargs))
    await cache.setup()
    return cache


def lmdb_files(path: str) -> list[Path]:
    if path.endswith("/"):
        return [Path(path, "data.mdb"), Path(path, "lock.mdb")]
    return [Path(path), Path(path + "-lock")]


def raw_env(path: str) -> lmdb.Environment:
    """The environment itself, for a test to look inside (cache closed first)."""
    directory = path.endswith("/")
    return lmdb.Environment(path.rstrip("/"), subdir=directory, max_dbs=4, create=False)


def check_consistency(path: str) -> int:
    """Every entry decodes and is in both indexes exactly once; return the count."""
    return len(check_entries(path))


def check_entries(path: str) -> list[str]:
    """Every entry decodes and is in both indexes exactly once; return the domains."""
    env = raw_env(path)
    try:
        with env.begin() as txn:
            policies = dict(txn.cursor(env.open_db(b"policies", txn, create=False)))
            by_expiry = [k for k, _ in txn.cursor(env.open_db(b"by_expiry", txn, create=False))]
            by_checked = [k for k, _ in txn.cursor(env.open_db(b"by_checked", txn, create=False))]
    finally:
        env.close()
    entries = {k: decode_entry(k.decode(), v) for k, v in policies.items()}
    assert all(e is not None for e in entries.values()), "an entry does not decode"
    assert sorted(k[8:] for k in by_expiry) == sorted(entries)
    assert sorted(k[8:] for k in by_checked) == sorted(entries)
    return sorted(k.decode() for k in entries)


@dataclasses.dataclass(frozen=True)
class Stored:
    """Where the LMDB backend keeps a kind of record beside the policy entries."""

    kind: RecordKind
    records: bytes
    index: bytes
    decode: Callable[[str, bytes], FetchFailure | DaneState | None]
    logged: str
    """What the log line of a full map's eviction calls them."""
    pruner: Callable[[LmdbCache], tuple[object, str]]
    """Where the function that prunes one batch of them is looked up."""


FAILURES = Stored(
    FAILURE_RECORDS,
    b"failures",
    b"failures_by_retry",
    decode_failure,
    "failure records",
    lambda cache: (cache, "_prune_failures_txn"),
)
DANE = Stored(
    DANE_STATES,
    b"dane",
    b"dane_by_expiry",
    decode_dane,
    "DANE states",
    lambda cache: (dane_module, "prune_dane"),
)
STORED = [pytest.param(FAILURES, id="failure-record"), pytest.param(DANE, id="dane-state")]


def check_records(path: str, stored: Stored) -> list[str]:
    """Every record decodes and is indexed by its time; return the domains."""
    env = raw_env(path)
    try:
        with env.begin() as txn:
            records = dict(txn.cursor(env.open_db(stored.records, txn, create=False)))
            index = [k for k, _ in txn.cursor(env.open_db(stored.index, txn, create=False))]
    finally:
        env.close()
    decoded = {k: stored.decode(k.decode(), v) for k, v in records.items()}
    expected = []
    for key, record in decoded.items():
        assert record is not None, f"the record of {key!r} in {stored.records!r} does not decode"
        expected.append(_time_key(stored.kind.indexed_at(record)) + key)
    assert sorted(index) == sorted(expected)
    return sorted(k.decode() for k in decoded)


@dataclasses.dataclass(frozen=True)
class Memoised:
    """A kind of record the LMDB backend memoises for the responder's
    synchronous reads: policy entries and DANE states."""

    kind: RecordKind
    get_nowait: Callable[[LmdbCache, str], Any]
    database: bytes
    memo: Callable[[LmdbCache], dict[str, Any]]
    check: Callable[[str], list[str]]
    """Check its database and indexes, as check_entries does; the domains."""
    peer_put: Callable[[LmdbPeer, Any], Awaitable[None]]
    peer_delete: Callable[[LmdbPeer, str], Awaitable[bool]]


ENTRY_MEMO = Memoised(
    POLICY_ENTRIES,
    lambda cache, domain: cache.get_nowait(domain),
    b"policies",
    lambda cache: cache._memo,
    check_entries,
    lambda peer, entry: peer.put(entry),
    lambda peer, domain: peer.delete(domain),
)
DANE_MEMO = Memoised(
    DANE_STATES,
    lambda cache, domain: cache.get_dane_nowait(domain),
    b"dane",
    lambda cache: cache._dane_memo,
    lambda path: check_records(path, DANE),
    lambda peer, state: peer.put_dane(state),
    lambda peer, domain: peer.delete_dane(domain),
)
MEMOISED = [pytest.param(ENTRY_MEMO, id="policy"), pytest.param(DANE_MEMO, id="dane-state")]


def run_script(script: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# A child process that imports nothing from tests/ (pytest is slow to import).
PRELUDE = """
import asyncio, json, sys, time
from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.cache.lmdb import LmdbCache
from mtasts_fast.policy import Policy

def entry(domain, checked_at=None, pid="1"):
    now = time.time()
    mx = ("mx." + domain,)
    lines = ("version: STSv1", "mode: enforce", "mx: mx." + domain, "max_age: 86400")
    policy = Policy("enforce", 86400, mx, lines)
    return CacheEntry(domain, pid, policy, now, now if checked_at is None else checked_at)
"""

# argv: path, my prefix, the other's prefix, count
SHARE_SCRIPT = (
    PRELUDE
    + """
async def main(path, me, other, count):
    cache = LmdbCache({"path": path, "map_size": 64 << 20, "max_entries": 1_000_000})
    await cache.setup()
    for i in range(count):
        await cache.put(entry(f"{me}{i}.example"))
        # Both race on one key; the newest check must win wherever it is written.
        await cache.put(entry("shared.example", checked_at=1000.0 + i, pid=me))
        cache.get_nowait(f"{other}{i}.example")
    seen = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = sum(cache.get_nowait(f"{other}{i}.example") is not None for i in range(count))
        if seen == count:
            break
        await asyncio.sleep(0.01)
    print(json.dumps({"seen": seen}))
    await cache.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""
)

# argv: path, seed. Writes, rewrites, deletes and prunes until killed.
WRITER_SCRIPT = (
    PRELUDE
    + """
import random

async def main(path, seed):
    rng = random.Random(seed)
    cache = LmdbCache({"path": path, "map_size": 64 << 20, "max_entries": 300})
    await cache.setup()
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        action = rng.random()
        domain = f"k{rng.randrange(400)}.example"
        if action < 0.8:
            await cache.put(entry(domain))
        elif action < 0.95:
            await cache.delete(domain)
        elif action < 0.98:
            await cache.set_proactive_ts(float(i))
        else:
            await cache.prune(time.time() - 10)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""
)

# argv: path, seconds. Holds LMDB's writer lock for that long.
LOCK_HOLDER_SCRIPT = """
import sys, time, lmdb
env = lmdb.Environment(sys.argv[1], subdir=False, max_dbs=4)
with env.begin(write=True):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""

# argv: path, count. Opens with a much larger map than the parent and fills it.
GROW_SCRIPT = (
    PRELUDE
    + """
async def main(path, count):
    cache = LmdbCache({"path": path, "map_size": 64 << 20, "max_entries": 1_000_000})
    await cache.setup()
    await cache.put_many(entry(f"g{i}.example") for i in range(count))
    await cache.close()
    print("done", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""
)

# argv: path. Answers one JSON call per stdin line, ["method", [args...]],
# with one JSON line holding the result (a FetchFailure or a DaneState as a
# list of fields, a DaneState's hosts as lists too; an entry to put goes as
# its domain and its codec bytes in base64).
PEER_SCRIPT = (
    PRELUDE
    + """
import base64, dataclasses
from mtasts_fast.cache.base import FetchFailure
from mtasts_fast.cache.codec import decode_entry
from mtasts_fast.dane.state import DaneHost, DaneState

def dane_state(domain, decision, reason, hosts, evaluated_at, expires_at):
    hosts = tuple(DaneHost(*host) for host in hosts)
    return DaneState(domain, decision, reason, hosts, evaluated_at, expires_at)

def dane_fields(s):
    hosts = [[h.name, h.status, h.reason] for h in s.hosts]
    return [s.domain, s.decision, s.reason, hosts, s.evaluated_at, s.expires_at]

async def main(path):
    cache = LmdbCache({"path": path, "map_size": 64 << 20, "max_entries": 100_000})
    await cache.setup()
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        method, args = json.loads(line)
        if method == "put":
            args = [decode_entry(args[0], base64.b64decode(args[1]))]
        elif method == "put_failure":
            args = [FetchFailure(*args[0])]
        elif method == "put_dane":
            args = [dane_state(*args[0])]
        result = await getattr(cache, method)(*args)
        if isinstance(result, FetchFailure):
            result = dataclasses.astuple(result)
        elif isinstance(result, DaneState):
            result = dane_fields(result)
        print(json.dumps(result), flush=True)
    await cache.close()

asyncio.run(main(sys.argv[1]))
"""
)

# argv: path, owner, holds, marker file. After "go" on stdin, tries to take
# the lease until it has held it `holds` times (for at most a minute). While
# it holds the lease it holds the marker file too, created with O_EXCL: a
# second holder at the same moment finds it there.
RACE_SCRIPT = (
    PRELUDE
    + """
import os

async def main(path, owner, holds, marker):
    cache = LmdbCache({"path": path, "map_size": 64 << 20, "max_entries": 1000})
    await cache.setup()
    print("ready", flush=True)
    sys.stdin.readline()
    held = refused = overlaps = lost = 0
    deadline = time.monotonic() + 60
    while held < holds and time.monotonic() < deadline:
        if not await cache.acquire_lease("race", owner, 30.0):
            refused += 1
            continue
        held += 1
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            overlaps += 1
            fd = None
        time.sleep(0.002)  # work done under the lease
        if not await cache.acquire_lease("race", owner, 30.0):  # a renewal
            lost += 1
        if fd is not None:
            os.close(fd)
            os.unlink(marker)
        await cache.release_lease("race", owner)
        await asyncio.sleep(0.001)  # let the others have a turn
    result = {"held": held, "refused": refused, "overlaps": overlaps, "lost": lost}
    print(json.dumps(result), flush=True)
    await cache.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
"""
)


def dane_fields(state: DaneState) -> list[Any]:
    """A DaneState as JSON for the peer process (``rendered`` is not data)."""
    hosts = [[h.name, h.status, h.reason] for h in state.hosts]
    return [state.domain, state.decision, state.reason, hosts, state.evaluated_at, state.expires_at]


class LmdbPeer:
    """Another process with the same LMDB file open, driven over its stdin.

    One process cannot open an LMDB environment twice, and sharing between
    processes is the point anyway.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._lock = asyncio.Lock()  # one call on the pipe at a time

    @classmethod
    async def start(cls, path: str) -> LmdbPeer:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PEER_SCRIPT,
            path,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        peer = cls(process)
        assert await peer._answer() == "ready"
        return peer

    async def _answer(self) -> Any:
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 60)
        assert line, "the peer process died"
        return json.loads(line)

    async def _call(self, method: str, *args: Any) -> Any:
        assert self._process.stdin is not None
        async with self._lock:
            self._process.stdin.write(json.dumps([method, args]).encode() + b"\n")
            await self._process.stdin.drain()
            return await self._answer()

    async def put(self, entry: CacheEntry) -> None:
        await self._call("put", entry.domain, base64.b64encode(encode_entry(entry)).decode())

    async def delete(self, domain: str) -> bool:
        result: bool = await self._call("delete", domain)
        return result

    async def get_dane(self, domain: str) -> DaneState | None:
        fields = await self._call("get_dane", domain)
        if fields is None:
            return None
        domain, decision, reason, hosts, evaluated_at, expires_at = fields
        return DaneState(
            domain, decision, reason, tuple(DaneHost(*h) for h in hosts), evaluated_at, expires_at
        )

    async def put_dane(self, state: DaneState) -> None:
        await self._call("put_dane", dane_fields(state))

    async def delete_dane(self, domain: str) -> bool:
        result: bool = await self._call("delete_dane", domain)
        return result

    async def get_failure(self, domain: str) -> FetchFailure | None:
        fields = await self._call("get_failure", domain)
        return None if fields is None else FetchFailure(*fields)

    async def put_failure(self, failure: FetchFailure) -> None:
        await self._call("put_failure", dataclasses.astuple(failure))

    async def delete_failure(self, domain: str) -> bool:
        result: bool = await self._call("delete_failure", domain)
        return result

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        result: bool = await self._call("acquire_lease", name, owner, ttl)
        return result

    async def release_lease(self, name: str, owner: str) -> None:
        await self._call("release_lease", name, owner)

    async def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        assert await asyncio.wait_for(self._process.wait(), 60) == 0


@pytest.fixture(params=["file", "directory"])
def cache_path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A path that does not exist yet, below a directory that does not either."""
    if request.param == "file":
        return str(tmp_path / "missing" / "cache.lmdb")
    return str(tmp_path / "missing" / "cache") + "/"


@pytest.mark.both_loops
class TestLmdbCache(PersistentCacheContract):
    @pytest.fixture
    async def cache(self, cache_path: str) -> AsyncIterator[LmdbCache]:
        cache = await open_cache(cache_path)
        yield cache
        await cache.close()

    async def reopen(self, cache: Cache) -> Cache:
        assert isinstance(cache, LmdbCache)
        await cache.close()
        return await open_cache(cache.path)

    async def open_peer(self, cache: Cache) -> CachePeer:
        assert isinstance(cache, LmdbCache)
        return await LmdbPeer.start(cache.path)


# -- files on disk -------------------------------------------------------------


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Let the modes LmdbCache asks for show through unchanged."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("no_umask")
async def test_creates_parents_and_private_files(cache_path: str, tmp_path: Path) -> None:
    cache = await open_cache(cache_path)
    await cache.put(make_entry("example.com"))
    await cache.close()
    created = [tmp_path / "missing"]
    if cache_path.endswith("/"):
        created.append(Path(cache_path))
    for directory in created:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750, directory
    for filename in lmdb_files(cache_path):
        assert stat.S_IMODE(filename.stat().st_mode) == 0o640, filename


@pytest.mark.usefixtures("no_umask")
async def test_world_bits_removed_from_existing_files(
    cache_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await open_cache(cache_path)
    await cache.close()
    for filename in lmdb_files(cache_path):
        filename.chmod(0o666)
    cache = await open_cache(cache_path)
    await cache.close()
    for filename in lmdb_files(cache_path):
        assert stat.S_IMODE(filename.stat().st_mode) == 0o660, filename
    assert "removed world permissions" in caplog.text


async def test_existing_directory_is_used_as_directory(tmp_path: Path) -> None:
    cache = await open_cache(str(tmp_path))
    await cache.put(make_entry("example.com"))
    await cache.close()
    assert (tmp_path / "data.mdb").is_file()
    assert (tmp_path / "lock.mdb").is_file()


async def test_unusable_path_is_cache_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = LmdbCache(options(str(blocker / "cache.lmdb")))
    with pytest.raises(CacheUnavailable, match="cannot open the LMDB cache"):
        await cache.setup()
    await cache.close()


async def test_second_open_in_one_process_is_refused(tmp_path: Path) -> None:
    # LMDB's locks belong to the process: a second environment on the same
    # files would silently share them, and closing it would release them.
    path = str(tmp_path / "cache.lmdb")
    cache = await open_cache(path)
    try:
        with pytest.raises(CacheUnavailable, match="already open"):
            await open_cache(path)
        await cache.put(make_entry("example.com"))
        assert cache.get_nowait("example.com") is not None
    finally:
        await cache.close()


async def test_purge_empties_the_indexes_too(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.lmdb")
    cache = await open_cache(path)
    try:
        await cache.put_many(make_entry(f"d{i}.example") for i in range(50))
        await cache.set_proactive_ts(5.0)
        assert await cache.purge() == 50
        assert await cache.get_proactive_ts() == 5.0
    finally:
        await cache.close()
    assert check_consistency(path) == 0


# -- undecodable values ---------------------------------------------------------


@pytest.mark.parametrize("memoised", MEMOISED)
async def test_undecodable_value_reads_as_missing_and_is_replaced(
    tmp_path: Path, memoised: Memoised
) -> None:
    path = str(tmp_path / "cache.lmdb")
    kind = memoised.kind
    cache = await open_cache(path)
    await cache.put(make_entry("good.example"))
    await kind.put(cache, kind.make("good.example"))  # for entries, a later check
    await cache.close()
    env = lmdb.Environment(path, subdir=False, max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"bad.example", b"\xc1 not msgpack", db=env.open_db(memoised.database, txn))
        txn.put(b"future.example", b"\x92\x02\xa1x", db=env.open_db(memoised.database, txn))
    env.close()

    cache = await open_cache(path)
    try:
        assert memoised.get_nowait(cache, "bad.example") is None
        assert memoised.get_nowait(cache, "future.example") is None
        assert await kind.get(cache, "bad.example") is None
        assert await kind.get(cache, "future.example") is None
        batches = await collect(cache, 10)
        assert [e.domain for b in batches for e in b] == ["good.example"]
        # A write replaces the unreadable value whatever its times (1973).
        await kind.put(cache, kind.make_at("bad.example", 1e8))
        got = memoised.get_nowait(cache, "bad.example")
        assert got is not None
        assert kind.indexed_at(got) == 1e8
        assert await kind.delete(cache, "future.example") is False
        assert await kind.get(cache, "good.example") is not None
    finally:
        await cache.close()
    assert memoised.check(path) == ["bad.example", "good.example"]


@pytest.mark.parametrize("memoised", MEMOISED)
async def test_a_memoised_hit_is_the_same_object_until_changed(
    tmp_path: Path, memoised: Memoised
) -> None:
    # The responder keeps rendered replies on what it read: a repeated hit
    # must return that very object.
    now = time.time()
    kind = memoised.kind
    cache = await open_cache(str(tmp_path / "cache.lmdb"))
    try:
        await kind.put(cache, kind.make_at("example.com", now + 3600))
        first = memoised.get_nowait(cache, "example.com")
        assert first is not None
        first.rendered[0] = b"memoised reply"
        assert memoised.get_nowait(cache, "example.com") is first
        assert await kind.get(cache, "example.com") is first
        # A newer record is a new object, with nothing rendered on it yet.
        await kind.put(cache, kind.make_at("example.com", now + 7200))
        second = memoised.get_nowait(cache, "example.com")
        assert second is not None
        assert second is not first
        assert kind.indexed_at(second) == now + 7200
        assert second.rendered == {}
    finally:
        await cache.close()


@pytest.mark.parametrize("layout", ["file", "directory"])
async def test_commit_counter_reads_lmdbs_last_transaction_id(tmp_path: Path, layout: str) -> None:
    path = str(tmp_path / "cache.lmdb") + ("/" if layout == "directory" else "")
    cache = await open_cache(path)
    try:
        assert cache._env is not None
        assert cache._commits is not None
        for i in range(3):
            assert cache._commits.value() == cache._env.info()["last_txnid"]
            await cache.put(make_entry(f"d{i}.example"))
        assert cache._commits.value() == cache._env.info()["last_txnid"]
    finally:
        await cache.close()


class _NoReads:
    """An environment stand-in that fails any read transaction."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a read transaction was opened")


@pytest.mark.parametrize("memoised", MEMOISED)
async def test_a_memoised_hit_opens_no_transaction_until_something_is_committed(
    tmp_path: Path, memoised: Memoised
) -> None:
    kind = memoised.kind
    other = DANE_MEMO if memoised is ENTRY_MEMO else ENTRY_MEMO
    cache = await open_cache(str(tmp_path / "cache.lmdb"))
    try:
        await kind.put(cache, kind.make("example.com"))
        first = memoised.get_nowait(cache, "example.com")
        assert first is not None
        real = cache._env
        assert real is not None
        cache._env = _NoReads(real)  # type: ignore[assignment]
        try:
            assert memoised.get_nowait(cache, "example.com") is first
            assert await kind.get(cache, "example.com") is first
        finally:
            cache._env = real
        # Any commit, even of the other kind, makes the next hit read again
        # (and find its bytes unchanged: the same object).
        await other.kind.put(cache, other.kind.make("example.com"))
        cache._env = _NoReads(real)  # type: ignore[assignment]
        try:
            with pytest.raises(AssertionError, match="read transaction"):
                memoised.get_nowait(cache, "example.com")
        finally:
            cache._env = real
        assert memoised.get_nowait(cache, "example.com") is first
        # The two kinds are memoised apart.
        theirs = other.get_nowait(cache, "example.com")
        assert theirs is not None
        assert theirs is not first
        assert other.get_nowait(cache, "example.com") is theirs
    finally:
        await cache.close()


@pytest.mark.parametrize("memoised", MEMOISED)
async def test_memoised_hits_see_writes_and_deletes_of_other_processes(
    tmp_path: Path, memoised: Memoised
) -> None:
    path = str(tmp_path / "cache.lmdb")
    kind = memoised.kind
    cache = await open_cache(path)
    peer = await LmdbPeer.start(path)
    try:
        now = time.time()
        await kind.put(cache, kind.make_at("example.com", now + 3600))
        for _ in range(2):  # memoised and stamped
            got = memoised.get_nowait(cache, "example.com")
            assert got is not None
            assert kind.indexed_at(got) == now + 3600
        await memoised.peer_put(peer, kind.make_at("example.com", now + 7200))
        got = memoised.get_nowait(cache, "example.com")
        assert got is not None
        assert kind.indexed_at(got) == now + 7200
        assert await memoised.peer_delete(peer, "example.com") is True
        assert memoised.get_nowait(cache, "example.com") is None
        assert "example.com" not in memoised.memo(cache)
    finally:
        await peer.close()
        await cache.close()


async def test_commit_counter_refuses_a_file_it_does_not_recognise(tmp_path: Path) -> None:
    from mtasts_fast.cache.lmdb import _CommitCounter

    filename = tmp_path / "not-lmdb"
    filename.write_bytes(b"\0" * 8192)
    # The magic number is checked first, so no environment is needed.
    counter = _CommitCounter(str(filename), 4096, None)  # type: ignore[arg-type]
    assert counter.value() is None
    counter.close()


@pytest.mark.parametrize(
    "domain",
    [pytest.param("", id="empty"), pytest.param("x" * 600, id="over-lmdb-key-limit")],
)
@pytest.mark.parametrize("memoised", MEMOISED)
async def test_unstorable_keys(tmp_path: Path, domain: str, memoised: Memoised) -> None:
    kind = memoised.kind
    cache = await open_cache(str(tmp_path / "cache.lmdb"))
    try:
        assert memoised.get_nowait(cache, domain) is None
        await kind.put(cache, kind.make(domain))
        assert await kind.get(cache, domain) is None
        assert await kind.delete(cache, domain) is False
    finally:
        await cache.close()


async def test_put_many(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.lmdb")
    cache = await open_cache(path)
    try:
        await cache.put(make_entry("d0001.example", pid="newer", fetched_at=2000.0))
        await cache.put_many(
            make_entry(f"d{i:04d}.example", fetched_at=1000.0) for i in range(2500)
        )
        await cache.put_many([make_entry("", fetched_at=1000.0)])  # skipped, logged
        assert len([e for b in await collect(cache, 1000) for e in b]) == 2500
        kept = await cache.get("d0001.example")
        assert kept is not None
        assert kept.policy_id == "newer"
    finally:
        await cache.close()
    assert check_consistency(path) == 2500


# -- size bounds: max_entries ---------------------------------------------------


async def test_eviction_takes_expired_first_then_oldest_checked(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.lmdb")
    now = time.time()
    cache = await open_cache(path, max_entries=5)  # a batch of one entry
    try:
        for i in range(4):
            await cache.put(make_entry(f"live{i}.example", fetched_at=now - 100 + i))
        # Checked most recently of all, but its policy has expired.
        await cache.put(
            make_entry("expired.example", max_age=10, fetched_at=now - 1000, checked_at=now)
        )
        await cache.put(make_entry("new1.example", fetched_at=now))
        assert await cache.get("expired.example") is None
        assert all([await cache.get(f"live{i}.example") for i in range(4)])

        # No expired entry left: the least recently checked goes, and a
        # revalidation (a newer checked_at) counts as a use.
        old = make_entry("live0.example", fetched_at=now - 100, checked_at=now + 1)
        await cache.put(old)
        await cache.put(make_entry("new2.example", fetched_at=now))
        assert await cache.get("live1.example") is None
        assert await cache.get("live0.example") is not None
        await cache.put(make_entry("new3.example", fetched_at=now))
        assert await cache.get("live2.example") is None
        # Rewriting an existing domain never evicts.
        await cache.put(make_entry("new3.example", fetched_at=now + 5))
        names = sorted(e.domain for b in await collect(cache, 100) for e in b)
        assert names == [
            "live0.example",
            "live3.example",
            "new1.example",
            "new2.example",
            "new3.example",
        ]
    finally:
        await cache.close()
    assert check_consistency(path) == 5


async def test_eviction_in_batches_of_one_percent(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.lmdb")
    cache = await open_cache(path, max_entries=500)
    try:
        await cache.put_many(
            make_entry(f"d{i:03d}.example", fetched_at=1e9 + i) for i in range(500)
        )
        await cache.put(make_entry("one-more.example", fetched_at=2e9))
        remaining = sorted(e.domain for b in await collect(cache, 1000) for e in b)
        assert len(remaining) == 496  # 5 oldest evicted, 1 added
        assert remaining[0] == "d005.example"
        assert "one-more.example" in remaining
    finally:
        await cache.close()
    assert check_consistency(path) == 496


async def test_lowered_max_entries_shrinks_on_next_new_domain(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.lmdb")
    cache = await open_cache(path, max_entries=1000)
    await cache.put_many(make_entry(f"d{i:03d}.example", fetched_at=1e9 + i) for i in range(300))
    await cache.close()
    cache = await open_cache(path, max_entries=100)
    try:
        await cache.put(make_entry("new.example", fetched_at=2e9))
    finally:
        await cache.close()
    assert check_consistency(path) == 100


async def test_expired_entries_are_served_until_pruned(tmp_path: Path) -> None:
    # The responder, not the cache, decides what an expired entry is worth.
    now = time.time()
    cache = await open_cache(str(tmp_path / "cache.lmdb"))
    try:
        await cache.put(make_entry("expired.example", max_age=10, fetched_at=now - 60))
        got = cache.get_nowait("expired.example")
        assert got is not None
        assert got.expires_at < now
        assert await cache.prune(now) == 1
        assert cache.get_nowait("expired.example") is None
    finally:
        await cache.close()


async def test_prune_works_in_several_transactions(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.lmdb")
    now = time.time()
    cache = await open_cache(path, max_entries=10_000)
    try:
        await cache.put_many(
            make_entry(f"old{i}.example", max_age=1, fetched_at=now - 100 - i) for i in range(2500)
        )
        await cache.put(make_entry("fresh.example"))
        assert await cache.prune(now) == 2500
    finally:
        await cache.close()
    assert check_consistency(path) == 1


# -- size bounds: map_size ------------------------------------------------------


def big_entry(domain: str, size: int) -> CacheEntry:
    lines = tuple(f"ext{i}: {'x' * 1000}" for i in range(size // 1000))
    policy = Policy("enforce", 86400, (f"mx.{domain}",), lines)
    now = time.time()
    return CacheEntry(domain, "1", policy, now, now)


async def test_full_map_evicts_grows_then_drops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "cache.lmdb")
    caplog.set_level(logging.INFO, logger="mtasts_fast.cache.lmdb")
    cache = await open_cache(path, map_size=MiB, max_entries=1_000_000)
    try:
        # About 2 KiB per entry, 4 MiB of policies for a 1 MiB map: old entries
        # make room (evicted early enough that evicting stays possible).
        for i in range(2000):
            await cache.put(big_entry(f"d{i:04d}.example", 2000))
        assert await cache.get("d1999.example") is not None
        assert await cache.get("d0000.example") is None
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

        # Larger than the whole map: evicting cannot help, growing does.
        await cache.put(big_entry("large.example", 3 * MiB // 2))
        assert await cache.get("large.example") is not None
        assert "map full, evicted" in caplog.text
        assert "map size raised from 1048576 to 2097152 bytes" in caplog.text
        assert "map size raised from 2097152 to 4194304 bytes" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

        # Larger than the map may ever grow: dropped with one error line.
        await cache.put(big_entry("huge.example", 5 * MiB))
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert "dropped the write of the policy of huge.example" in errors[0].getMessage()
        assert await cache.get("huge.example") is None

        # And the cache keeps working.
        for i in range(200):
            await cache.put(big_entry(f"e{i:04d}.example", 2000))
        assert await cache.get("e0199.example") is not None
        await cache.set_proactive_ts(7.0)
        assert await cache.get_proactive_ts() == 7.0
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    finally:
        await cache.close()
    assert check_consistency(path) > 100


async def test_map_grown_by_another_process_is_adopted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mtasts_fast.cache.lmdb")
    path = str(tmp_path / "cache.lmdb")
    cache = await open_cache(path, map_size=MiB)
    try:
        await cache.put(make_entry("mine.example"))
        assert cache.get_nowait("mine.example") is not None
        child = run_script(GROW_SCRIPT, path, "6000")
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        assert out.strip() == "done"
        # The data now reaches far beyond this process's 1 MiB map, which can
        # only be replaced while no write of this process is in progress.
        async with cache._write_lock:
            assert cache.get_nowait("g5999.example") is None
        assert "adopted" not in caplog.text
        assert cache.get_nowait("g5999.example") is not None
        assert "adopted map size 67108864" in caplog.text
        assert cache.get_nowait("mine.example") is not None
        await cache.put(make_entry("mine2.example"))
        assert await cache.get("mine2.example") is not None
    finally:
        await cache.close()
    assert check_consistency(path) == 6002


# -- several processes ---------------------------------------------------------


async def test_two_processes_share_the_cache(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.lmdb")
    count = 300
    children = [
        run_script(SHARE_SCRIPT, path, "a", "b", str(count)),
        run_script(SHARE_SCRIPT, path, "b", "a", str(count)),
    ]
    results = []
    for child in children:
        out, _ = await asyncio.to_thread(child.communicate, timeout=120)
        assert child.returncode == 0
        results.append(json.loads(out))
    assert results == [{"seen": count}, {"seen": count}]
    cache = await open_cache(path)
    try:
        for prefix in "ab":
            for i in range(count):
                assert cache.get_nowait(f"{prefix}{i}.example") is not None
        shared = cache.get_nowait("shared.example")
        assert shared is not None
        assert shared.checked_at == 1000.0 + count - 1
    finally:
        await cache.close()
    assert check_consistency(path) == 2 * count + 1


@pytest.mark.slow
async def test_kill_9_of_writers_leaves_a_consistent_cache(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.lmdb")
    rng = random.Random(8461)
    for seed in range(20):
        child = run_script(WRITER_SCRIPT, path, str(seed))
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
    count = check_consistency(path)
    assert 0 < count <= 300
    cache = await open_cache(path, max_entries=300)
    try:
        seen = [e for b in await collect(cache, 100) for e in b]
        assert len(seen) == count
        await cache.put(make_entry("after.example"))
        assert await cache.get("after.example") is not None
        await cache.set_proactive_ts(1.5)
        assert await cache.get_proactive_ts() == 1.5
    finally:
        await cache.close()
    check_consistency(path)


async def test_waiting_for_another_writer_does_not_block_the_loop(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.lmdb")
    cache = await open_cache(path)
    try:
        await cache.put(make_entry("before.example"))
        holder = run_script(LOCK_HOLDER_SCRIPT, path, "1.0")
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                # Reads never wait for a writer.
                assert cache.get_nowait("before.example") is not None
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        started = time.monotonic()
        await cache.put(make_entry("after.example"))
        waited = time.monotonic() - started
        ticker.cancel()
        holder.wait(timeout=10)
        holder.stdout.close()
        assert waited > 0.5  # the put really waited for the other process
        assert ticks > 20  # while the loop kept running and reading
        assert cache.get_nowait("after.example") is not None
    finally:
        await cache.close()


# -- failure records and leases -------------------------------------------------


# The named databases of earlier releases: the first (policy entries), the
# previous one (failure records too); each added what the next one opens.
_FIRST_RELEASE_DBS = (b"policies", b"meta", b"by_expiry", b"by_checked")
_PREVIOUS_RELEASE_DBS = (*_FIRST_RELEASE_DBS, b"failures", b"failures_by_retry")


@pytest.mark.parametrize(
    ("databases", "gains"),
    [
        pytest.param(_FIRST_RELEASE_DBS, FAILURES, id="first-release-gains-failures"),
        pytest.param(_PREVIOUS_RELEASE_DBS, DANE, id="previous-release-gains-dane-states"),
    ],
)
async def test_file_of_an_earlier_release_gains_the_new_databases(
    tmp_path: Path, databases: tuple[bytes, ...], gains: Stored
) -> None:
    path = str(tmp_path / "cache.lmdb")
    entry = make_entry("old.example")
    failure = make_failure("old.example")
    env = lmdb.Environment(path, subdir=False, max_dbs=len(databases))
    with env.begin(write=True) as txn:
        dbs = {name: env.open_db(name, txn) for name in databases}
        txn.put(b"old.example", encode_entry(entry), db=dbs[b"policies"])
        txn.put(_time_key(entry.expires_at) + b"old.example", b"", db=dbs[b"by_expiry"])
        txn.put(_time_key(entry.checked_at) + b"old.example", b"", db=dbs[b"by_checked"])
        txn.put(b"proactive_ts", struct.pack(">d", 42.0), db=dbs[b"meta"])
        if b"failures" in dbs:
            txn.put(b"old.example", encode_failure(failure), db=dbs[b"failures"])
            index_key = _time_key(failure.retry_at) + b"old.example"
            txn.put(index_key, b"", db=dbs[b"failures_by_retry"])
    env.close()

    kind = gains.kind
    record = kind.make("old.example")
    cache = await open_cache(path)
    try:
        assert_same(cache.get_nowait("old.example"), entry)
        assert await cache.get_proactive_ts() == 42.0
        if b"failures" in databases:
            assert await cache.get_failure("old.example") == failure
        assert await kind.get(cache, "old.example") is None
        await kind.put(cache, record)
        assert_same(await kind.get(cache, "old.example"), record)
        assert await cache.acquire_lease("refresh", "new-release", 60)
    finally:
        await cache.close()
    assert check_records(path, gains) == ["old.example"]
    # A process of that release (as many databases as it had, at most) still
    # opens the file and reads its own data.
    env = lmdb.Environment(path, subdir=False, max_dbs=len(databases), create=False)
    try:
        with env.begin() as txn:
            dbs = {name: env.open_db(name, txn, create=False) for name in databases}
            assert txn.get(b"old.example", db=dbs[b"policies"]) == encode_entry(entry)
    finally:
        env.close()
    assert check_consistency(path) == 1


@pytest.mark.parametrize("stored", STORED)
async def test_records_are_bounded_earliest_first(tmp_path: Path, stored: Stored) -> None:
    # Failure records go oldest retry time first, DANE states soonest expiry first.
    path = str(tmp_path / "cache.lmdb")
    now = time.time()
    kind = stored.kind
    cache = await open_cache(path, max_entries=5)  # a batch of one
    try:
        for i in range(5):
            await cache.put(make_entry(f"e{i}.example"))
            await kind.put(cache, kind.make_at(f"r{i}.example", now + 100 + i))
        # Rewritten with a later time: r0 is no longer the first to go.
        await kind.put(cache, kind.make_at("r0.example", now + 1000))
        await kind.put(cache, kind.make_at("new.example", now + 50))
        assert await kind.get(cache, "r1.example") is None
        # These records and policies are bounded separately.
        assert len([e for b in await collect(cache, 10) for e in b]) == 5
    finally:
        await cache.close()
    assert check_records(path, stored) == [
        "new.example",
        "r0.example",
        "r2.example",
        "r3.example",
        "r4.example",
    ]
    assert check_consistency(path) == 5


@pytest.mark.parametrize("stored", STORED)
async def test_records_are_pruned_in_several_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stored: Stored
) -> None:
    path = str(tmp_path / "cache.lmdb")
    now = time.time()
    kind = stored.kind
    monkeypatch.setattr("mtasts_fast.cache.lmdb.store.WRITE_BATCH", 3)
    cache = await open_cache(path)
    transactions = 0
    owner, name = stored.pruner(cache)
    prune_batch = getattr(owner, name)

    def counting(*args: Any) -> Any:
        nonlocal transactions
        transactions += 1
        return prune_batch(*args)

    monkeypatch.setattr(owner, name, counting)
    try:
        for i in range(10):
            await kind.put(cache, kind.make_at(f"stale{i}.example", 1000.0 + i))
        await kind.put(cache, kind.make_at("kept.example", now + 60))
        # A record rewritten with a later time is judged by the new one.
        await kind.put(cache, kind.make_at("moved.example", 1000.0))
        await kind.put(cache, kind.make_at("moved.example", now + 60))
        assert await cache.prune(now) == 0  # no policy entries
        assert transactions >= 4
    finally:
        await cache.close()
    assert check_records(path, stored) == ["kept.example", "moved.example"]


@pytest.mark.parametrize("stored", STORED)
async def test_purge_empties_the_record_index_and_keeps_leases(
    tmp_path: Path, stored: Stored
) -> None:
    path = str(tmp_path / "cache.lmdb")
    cache = await open_cache(path)
    try:
        for i in range(20):
            await stored.kind.put(cache, stored.kind.make(f"r{i}.example"))
        await cache.put(make_entry("a.example"))
        assert await cache.acquire_lease("refresh", "worker-1", 60)
        assert await cache.purge() == 1
        assert not await cache.acquire_lease("refresh", "worker-2", 60)
    finally:
        await cache.close()
    assert check_records(path, stored) == []
    assert check_consistency(path) == 0


@pytest.mark.parametrize("stored", STORED)
async def test_full_map_evicts_records_before_growing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, stored: Stored
) -> None:
    caplog.set_level(logging.INFO, logger="mtasts_fast.cache.lmdb")
    path = str(tmp_path / "cache.lmdb")
    now = time.time()
    kind = stored.kind
    names = [f"r{i}.example" for i in range(5)]  # the earliest time first
    cache = await open_cache(path, map_size=MiB)
    try:
        for i, name in enumerate(names):
            await kind.put(cache, kind.make_at(name, now + 100 + i))
        # Larger than the map: evicting is tried before growing.
        await cache.put(big_entry("large.example", 3 * MiB // 2))
        assert await cache.get("large.example") is not None
        assert f" 1 {stored.logged}" in caplog.text  # a batch of one of five
        assert await kind.get(cache, names[0]) is None
    finally:
        await cache.close()
    left = check_records(path, stored)
    assert left == names[len(names) - len(left) :]  # the latest times stay
    check_consistency(path)


async def test_lease_taken_by_one_process_at_a_time(tmp_path: Path) -> None:
    # Real processes racing for one lease: LMDB's writer lock must make
    # reading, judging and rewriting it one step.
    path = str(tmp_path / "cache.lmdb")
    marker = str(tmp_path / "holder")
    cache = await open_cache(path)  # made once, so that the children race only on the lease
    await cache.close()
    children = [
        run_script(RACE_SCRIPT, path, f"worker-{n}", "30", marker, stdin=subprocess.PIPE)
        for n in range(3)
    ]
    for child in children:
        assert child.stdout is not None
        assert await asyncio.to_thread(child.stdout.readline) == "ready\n"
    for child in children:  # go, all at once
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, _ = await asyncio.to_thread(child.communicate, timeout=300)
        assert child.returncode == 0
        results.append(json.loads(out))
    assert [r["overlaps"] for r in results] == [0, 0, 0], results
    assert [r["lost"] for r in results] == [0, 0, 0], results
    assert [r["held"] for r in results] == [30, 30, 30], results
    assert sum(r["refused"] for r in results) > 0, results  # they did contend
    cache = await open_cache(path)
    try:
        assert await cache.acquire_lease("race", "parent", 60)  # released by all
    finally:
        await cache.close()


async def test_concurrent_writes_are_committed_together_in_order(tmp_path: Path) -> None:
    # Group commit: writes asked for while one is on the writer thread go in
    # one transaction, in the order asked, each seeing the ones before it.
    cache = await open_cache(str(tmp_path / "cache.lmdb"))
    try:
        env = cache._require_env()
        before = env.info()["last_txnid"]
        domains = [f"d{i}.example" for i in range(50)]
        await asyncio.gather(
            *(cache.put(make_entry(d, pid=str(i))) for i, d in enumerate(domains)),
            cache.put(make_entry("d0.example", pid="last")),  # after the first: wins
        )
        commits = env.info()["last_txnid"] - before
        assert commits <= 2  # 51 writes: one batch (or the first alone, then the rest)
        assert [cache.get_nowait(d) is not None for d in domains] == [True] * 50
        first = cache.get_nowait("d0.example")
        assert first is not None
        assert first.policy_id == "last"
        leases = await asyncio.gather(
            cache.acquire_lease("pass", "a", 60), cache.acquire_lease("pass", "b", 60)
        )
        assert list(leases) == [True, False]  # the second saw the first's lease
    finally:
        await cache.close()


async def test_a_failing_write_in_a_batch_fails_alone(tmp_path: Path) -> None:
    # One job raising aborts the shared transaction; every job is then run in
    # its own, so the others are stored and only its caller sees the error.
    cache = await open_cache(str(tmp_path / "cache.lmdb"))
    try:

        def broken(txn: Any) -> None:
            txn.put(b"x", b"y", db=cache._require_dbs().policies)
            raise ValueError("broken job")

        blocker = cache.put(make_entry("first.example"))  # holds the writer meanwhile
        outcomes = await asyncio.gather(
            blocker,
            cache.put(make_entry("a.example")),
            cache._write(broken, "a broken job"),
            cache.put(make_entry("b.example")),
            return_exceptions=True,
        )
        assert list(outcomes[:2]) == [None, None]
        assert outcomes[3] is None
        assert isinstance(outcomes[2], ValueError)
        assert cache.get_nowait("a.example") is not None
        assert cache.get_nowait("b.example") is not None
        assert await cache.get("x") is None  # the broken job's write was rolled back
    finally:
        await cache.close()


async def test_a_write_cancelled_before_it_ran_is_not_written(tmp_path: Path) -> None:
    cache = await open_cache(str(tmp_path / "cache.lmdb"))
    try:
        first = asyncio.ensure_future(cache.put(make_entry("first.example")))
        await asyncio.sleep(0)  # on the writer thread now
        second = asyncio.ensure_future(cache.put(make_entry("second.example")))
        await asyncio.sleep(0)  # queued behind it
        second.cancel()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        await cache.put(make_entry("third.example"))
        assert cache.get_nowait("second.example") is None
        assert cache.get_nowait("third.example") is not None
    finally:
        await cache.close()
