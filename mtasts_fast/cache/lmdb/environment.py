"""Opening the LMDB environment: its files, their modes, its flags, its map size.

Files
    ``path`` names a directory (LMDB's ``data.mdb`` and ``lock.mdb`` inside it)
    if it exists as one or ends with ``/``; otherwise it names the data file
    and LMDB adds ``<path>-lock`` beside it. Missing parent directories are
    created with mode 0750 and files with 0640 (less if the umask says so);
    world bits on existing files are removed, because the lock file's reader
    table must not be writable by strangers and the domain list is private.

Durability
    ``sync=True, metasync=False``: each commit flushes the data pages once and
    skips the separate flush of the meta page. A ``kill -9`` of any process at
    any moment leaves a consistent cache whatever the flags (the page cache
    survives the process, commits are a single meta-page switch, a dead
    writer's robust mutex is recovered and its reader slots are reaped by
    ``reader_check``). Power loss can at worst undo the last commit, which for
    a cache only costs a refetch; ``sync=False`` would risk corruption on
    power loss, so it is not used. The lock is never disabled.

    ``durable=False`` (the ``internal`` cache, a throw-away environment in a
    private temporary directory) skips the flushes altogether: the data is
    meant to be lost at a restart anyway, and on a disk-backed directory a
    flush per commit would make every write wait for the disk.

Map size
    A write that does not fit even after evicting (``writes``) doubles the
    map, up to MAP_GROWTH_LIMIT times the configured ``map_size``. Other
    processes adopt a grown map when LMDB tells them (``MapResizedError``).
    The map is only ever replaced on the event loop's thread while the
    writer thread is idle, because LMDB forbids remapping while a
    transaction of the process is running.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import NamedTuple

import lmdb

from mtasts_fast.cache.lmdb.commit_counter import CommitCounter
from mtasts_fast.cache.lmdb.layout import MAX_DBS, Databases

__all__ = ["MAP_GROWTH_LIMIT", "OpenEnvironment", "adopt_map_size", "grow_map", "open_environment"]

# The backend's one logger, named for the package: log lines and logging
# configuration name the backend, not the module.
_log = logging.getLogger("mtasts_fast.cache.lmdb")

FILE_MODE = 0o640
DIR_MODE = 0o750
# Every worker and every mta-sts-cache command holds reader slots; the table
# lives in the lock file and is sized by the first process that opens it.
MAX_READERS = 512
# The map may grow to this many times the configured map_size.
MAP_GROWTH_LIMIT = 4


class OpenEnvironment(NamedTuple):
    """An environment just opened, with what the cache reads from it once."""

    env: lmdb.Environment
    page_size: int
    dbs: Databases
    commits: CommitCounter


def split_path(path: str) -> tuple[str, bool]:
    """The path to hand to LMDB and whether it is a directory (``subdir``)."""
    if path.endswith("/") or os.path.isdir(path):
        return path.rstrip("/") or "/", True
    return path, False


def make_dirs(directory: str) -> None:
    """Create ``directory`` and its missing ancestors, each with DIR_MODE."""
    missing: list[str] = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for name in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another process meanwhile
            os.mkdir(name, DIR_MODE)


def restrict(filename: str) -> None:
    """Remove world permission bits from one of our files."""
    try:
        mode = os.stat(filename).st_mode
    except FileNotFoundError:
        return
    if mode & 0o007:
        os.chmod(filename, mode & 0o770)
        _log.warning("removed world permissions from %s", filename)


def open_environment(
    configured_path: str, map_size: int, *, durable: bool = True
) -> OpenEnvironment:
    """Open (creating if needed) the environment at ``configured_path``."""
    path, subdir = split_path(configured_path)
    if subdir:
        make_dirs(path)
        files = [os.path.join(path, "data.mdb"), os.path.join(path, "lock.mdb")]
    else:
        make_dirs(os.path.dirname(os.path.abspath(path)))
        files = [path, path + "-lock"]
    env = lmdb.Environment(
        path,
        map_size=map_size,
        subdir=subdir,
        mode=FILE_MODE,
        sync=durable,
        metasync=False,
        # Lookups hit random pages; readahead would only evict useful ones.
        readahead=False,
        max_readers=MAX_READERS,
        max_dbs=MAX_DBS,
        # One spare transaction: each read's ``begin`` reuses its reader slot.
        max_spare_txns=1,
        lock=True,
    )
    try:
        for filename in files:
            restrict(filename)
        # Slots left behind by killed processes would pin old pages.
        env.reader_check()
        page_size = env.stat()["psize"]
        dbs = Databases.open(env)
        commits = CommitCounter(files[0], page_size, env)
    except BaseException:
        env.close()
        raise
    return OpenEnvironment(env, page_size, dbs, commits)


def adopt_map_size(env: lmdb.Environment, path: str) -> None:
    """Take over the larger map another process has grown (writer idle)."""
    env.set_mapsize(0)
    _log.info("LMDB cache %s: adopted map size %d", path, env.info()["map_size"])


def grow_map(env: lmdb.Environment, path: str, configured: int) -> bool:
    """Double the map, up to its limit; False if it cannot grow."""
    current = env.info()["map_size"]
    limit = configured * MAP_GROWTH_LIMIT
    if current >= limit:
        return False
    new_size = min(current * 2, limit)
    try:
        env.set_mapsize(new_size)
    except lmdb.Error as exc:
        _log.error("LMDB cache %s: cannot grow the map to %d bytes: %s", path, new_size, exc)
        return False
    _log.warning(
        "LMDB cache %s is full: map size raised from %d to %d bytes "
        "(raise cache.map_size to keep this from happening)",
        path,
        current,
        new_size,
    )
    return True
