"""``cache: {type: internal}`` with several workers: one cache, one answer per domain.

The old daemon's ``internal`` cache lives in its one process; with one such
cache per worker, a worker that had not fetched a policy itself answered
``NOTFOUND`` for it once the policy host went away (issue 16). The daemon's
workers now share one throw-away LMDB environment in a private directory of
the supervisor (mtasts_fast/cache/internal_dir.py). These tests run the real
daemon with two workers and find out from /proc which worker answered each
connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from mtasts_fast.cache.internal_dir import (
    DIR_PREFIX,
    LOCK_NAME,
    MAP_BYTES_PER_ENTRY,
    MIN_MAP_SIZE,
    InternalDirectory,
    candidate_bases,
    remove_stale,
)
from mtasts_fast.cache.lmdb import LmdbCache
from mtasts_fast.cache.lmdb.layout import FAILURES, POLICIES
from mtasts_fast.config import CacheConfig
from tests.servers.daemon import DaemonProcess, frame, recv_netstring, serving_pid
from tests.servers.world import World

GOOD = b"OK secure match=mail.loc servername=hostname"
NOTFOUND = b"NOTFOUND "
DIRECTORY_LINE = r"internal cache: (\S+) "
# Connections held open at once: the kernel spreads them over the workers'
# SO_REUSEPORT sockets by a hash of the address pair, so both get plenty.
CONNECTIONS = 200

LOOPS = [pytest.param((), id="uvloop"), pytest.param(("--disable-uvloop",), id="asyncio")]


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        pids = daemon.worker_pids() if daemon.alive() else []
        daemon.stop()
        for pid in pids:  # workers stop without their supervisor; make sure
            with_kill(pid)


def with_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _start(
    daemons: list[DaemonProcess],
    directory: Path,
    world: World,
    args: tuple[str, ...] = (),
    **settings: object,
) -> DaemonProcess:
    directory.mkdir(parents=True, exist_ok=True)
    settings = {"workers": 2, "cache": {"type": "internal"}, **settings}
    daemon = DaemonProcess(directory, world, args=args, **settings)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_for_log(r"2 workers answering on")
    return daemon


def _ask_all(
    daemon: DaemonProcess, payload: bytes, pids: list[int]
) -> collections.Counter[tuple[int | None, bytes]]:
    """Ask ``payload`` once on each of CONNECTIONS connections held open together."""
    counts: collections.Counter[tuple[int | None, bytes]] = collections.Counter()
    socks = [daemon.connect() for _ in range(CONNECTIONS)]
    try:
        for sock in socks:
            sock.sendall(frame(payload))
        for sock in socks:
            reply = recv_netstring(sock)
            counts[(serving_pid(sock, pids), reply)] += 1
    finally:
        for sock in socks:
            sock.close()
    return counts


@pytest.mark.parametrize("args", LOOPS)
def test_a_policy_one_worker_cached_is_served_by_every_worker_after_it_vanished(
    world: World, tmp_path: Path, daemons: list[DaemonProcess], args: tuple[str, ...]
) -> None:
    domain = world.fresh_domain("shared")
    world.add_domain(domain, policy=World.policy_text("enforce", ["mail.loc"]))
    # cache_grace 0: every hit also re-checks the TXT record in the background,
    # and every one of those checks fails once the domain is gone.
    daemon = _start(daemons, tmp_path / "d", world, args, cache_grace=0)
    pids = daemon.worker_pids()
    assert len(pids) == 2
    payload = b"postfix " + domain.encode()

    with daemon.connect() as first:
        first.sendall(frame(payload))
        assert recv_netstring(first) == GOOD
        fetched_by = serving_pid(first, pids)
    assert fetched_by in pids
    # The TXT record (NXDOMAIN now) and the policy host both vanish.
    world.remove(domain)

    rounds = [_ask_all(daemon, payload, pids) for _ in range(2)]
    for number, counts in enumerate(rounds, start=1):
        per_worker = {pid: sum(n for (p, _), n in counts.items() if p == pid) for pid in pids}
        replies: collections.Counter[bytes] = collections.Counter()
        for (_, reply), n in counts.items():
            replies[reply] += n
        print(
            f"\nconsistency round {number} ({args or 'uvloop'}): {CONNECTIONS} connections; "
            f"per worker {per_worker} (worker {fetched_by} fetched the policy); "
            f"replies {dict(replies)}"
        )
        assert replies == {GOOD: CONNECTIONS}, (counts, daemon.log_text()[-3000:])
        # Both workers answered many of them: the one that fetched and the other.
        assert all(n >= CONNECTIONS // 10 for n in per_worker.values()), per_worker
        assert None not in per_worker
    # One fetch in all: the other worker never fetched, it read the shared cache.
    assert world.https_requests(domain) == 1


def _directory(daemon: DaemonProcess) -> Path:
    return Path(daemon.wait_for_log(DIRECTORY_LINE).group(1))


def _table_entries(directory: Path, table: bytes) -> int:
    env = lmdb.open(str(directory), readonly=True, max_dbs=8, subdir=True)
    try:
        with env.begin() as txn:
            db = env.open_db(table, txn=txn, create=False)
            return int(txn.stat(db)["entries"])
    finally:
        env.close()


def test_internal_memory_is_bounded_by_cache_size_across_workers(
    world: World, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    size = 20
    daemon = _start(
        daemons, tmp_path / "d", world, cache={"type": "internal", "options": {"cache_size": size}}
    )
    directory = _directory(daemon)
    with_policy = []
    for _ in range(3 * size):
        domain = world.fresh_domain("bound")
        world.add_domain(domain, policy=World.policy_text("enforce", ["mail.loc"]))
        with_policy.append(domain)
    without = [world.fresh_domain("nopolicy") for _ in range(3 * size)]
    # A new connection per lookup: both workers fill the one cache.
    for domain in with_policy:
        assert daemon.ask(b"postfix " + domain.encode()) == GOOD
    for domain in without:
        assert daemon.ask(b"postfix " + domain.encode()) == NOTFOUND
    # Each reply went out after its policy or failure record was written.
    policies = _table_entries(directory, POLICIES)
    failures = _table_entries(directory, FAILURES)
    data_size = (directory / "data.mdb").stat().st_size
    map_size = max(MIN_MAP_SIZE, size * MAP_BYTES_PER_ENTRY)
    print(
        f"\nbound: cache_size {size}, {len(with_policy)} policies and {len(without)} "
        f"no-policy domains asked through 2 workers: {policies} policies and "
        f"{failures} failure records kept, data file {data_size} bytes (map {map_size})"
    )
    assert 0 < policies <= size
    assert 0 < failures <= size
    assert data_size <= map_size
    # The most recent ones are the ones kept: still answered without a fetch.
    recent = with_policy[-1]
    before = world.https_requests(recent)
    assert daemon.ask(b"postfix " + recent.encode()) == GOOD
    assert world.https_requests(recent) == before


def test_the_directory_is_private_survives_killed_workers_and_goes_at_exit(
    world: World, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    daemon = _start(daemons, tmp_path / "d", world)
    directory = _directory(daemon)
    info = directory.stat()
    assert directory.name.startswith(DIR_PREFIX)
    assert str(directory.parent) == candidate_bases()[0]
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.geteuid()
    domain = world.fresh_domain("kill")
    world.add_domain(domain, policy=World.policy_text("enforce", ["mail.loc"]))
    assert daemon.ask(b"postfix " + domain.encode()) == GOOD
    world.remove(domain)
    # Both workers killed: their replacements open the same environment.
    old = set(daemon.worker_pids())
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not (len(daemon.worker_pids()) == 2 and not old & set(daemon.worker_pids())):
        assert time.monotonic() < deadline, daemon.log_text()[-2000:]
        time.sleep(0.05)
    for _ in range(20):
        assert daemon.ask(b"postfix " + domain.encode()) == GOOD
    assert directory.is_dir()
    daemon.stop()
    assert not directory.exists()


def test_a_killed_supervisor_leaves_the_directory_and_the_next_start_removes_it(
    world: World, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    first = _start(daemons, tmp_path / "first", world)
    left = _directory(first)
    pids = first.worker_pids()
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait()
    deadline = time.monotonic() + 10
    while any(
        Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        for pid in pids
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert left.is_dir()
    second = _start(daemons, tmp_path / "second", world)
    assert not left.exists()
    assert re.search(
        rf"removed {re.escape(str(left))}, the internal cache of a daemon", second.log_text()
    )
    # The running daemon's own directory is not touched by a third start.
    own = _directory(second)
    third = _start(daemons, tmp_path / "third", world)
    assert own.is_dir()
    assert _directory(third) != own


# -- InternalDirectory in this process ---------------------------------------------------------


def test_stale_directories_are_removed_only_when_abandoned(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    live = InternalDirectory([str(base)])
    live_path = Path(live.cache_config(CacheConfig("internal", {"cache_size": 10})).options["path"])
    dead = base / f"{DIR_PREFIX}dead"
    dead.mkdir(mode=0o700)
    (dead / LOCK_NAME).touch()
    young = base / f"{DIR_PREFIX}young"  # no lock file yet: a supervisor starting now
    young.mkdir(mode=0o700)
    other = base / "not-ours"
    other.mkdir()
    link = base / f"{DIR_PREFIX}link"
    link.symlink_to(dead)
    removed = remove_stale(str(base))
    assert removed == [str(dead)]
    for kept in (live_path, young, other):
        assert kept.is_dir(), kept
    assert link.is_symlink()
    old = time.time() - 3600
    os.utime(young, (old, old))
    assert remove_stale(str(base)) == [str(young)]
    live.remove()
    assert not live_path.exists()


def test_an_unwritable_base_is_skipped(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    usable = tmp_path / "usable"
    usable.mkdir()
    internal = InternalDirectory([str(missing), str(usable)])
    cache = internal.cache_config(CacheConfig("internal", {"cache_size": 10}))
    assert cache.type == "lmdb"
    assert cache.options["path"].startswith(str(usable) + "/" + DIR_PREFIX)
    assert cache.options["max_entries"] == 10
    assert cache.options["durable"] is False
    # Other types are left as they are, and nothing more is created.
    lmdb_config = CacheConfig("lmdb", {"path": "x"})
    assert internal.cache_config(lmdb_config) is lmdb_config
    internal.remove()
    with pytest.raises(OSError, match="cannot create the internal cache directory"):
        InternalDirectory([str(missing)]).cache_config(CacheConfig("internal", {"cache_size": 1}))


def test_a_worker_does_not_inherit_the_lock(tmp_path: Path) -> None:
    internal = InternalDirectory([str(tmp_path)])
    internal.cache_config(CacheConfig("internal", {"cache_size": 10}))
    assert internal.path is not None
    pid = os.fork()
    if pid == 0:  # the "worker": its copy of the descriptor is closed at fork
        os._exit(0 if internal._lock_fd is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not remove_stale(str(tmp_path))  # still held by this process
    internal.remove()


def test_the_shared_environment_opens_without_flushes(tmp_path: Path) -> None:
    internal = InternalDirectory([str(tmp_path)])
    config = internal.cache_config(CacheConfig("internal", {"cache_size": 10}))

    async def roundtrip() -> None:
        cache = LmdbCache(config.options)
        await cache.setup()
        try:
            assert cache._env is not None
            assert cache._env.flags()["sync"] is False
        finally:
            await cache.close()

    asyncio.run(roundtrip())
    internal.remove()


def test_the_directory_belongs_to_the_user_the_daemon_runs_as(
    world: World, daemons: list[DaemonProcess]
) -> None:
    if os.geteuid() != 0:
        if os.environ.get("MTASTS_REQUIRE_ALL") == "1":
            pytest.fail("needs root")
        pytest.skip("needs root")
    nobody = pwd.getpwnam("nobody")
    # Where nobody can read the configuration and the CA file (a reload does).
    shared = Path(tempfile.mkdtemp(prefix="mtasts-internal-"))
    try:
        shared.chmod(0o755)
        ca_file = shared / "ca.pem"
        shutil.copy(world.ca_file, ca_file)
        ca_file.chmod(0o644)
        daemon = DaemonProcess(
            shared,
            world,
            args=("-u", "nobody"),
            workers=2,
            ca_file=str(ca_file),
            cache={"type": "internal"},
        )
        daemons.append(daemon)
        daemon.start()
        daemon.wait_for_log(r"2 workers answering on")
        directory = _directory(daemon)
        info = directory.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, 0o700)
        assert daemon.ask(b"postfix good.loc") == GOOD
        daemon.stop()
        assert not directory.exists()  # removed by the supervisor, as nobody
    finally:
        shutil.rmtree(shared, ignore_errors=True)
