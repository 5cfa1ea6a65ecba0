"""The daemon's ``internal`` cache: one throw-away LMDB environment for all its workers.

postfix-mta-sts-resolver's ``internal`` cache is an LRU inside its one
process. An LRU inside each of our workers would let two workers give two
answers for one domain: the one that fetched the policy answers ``secure``,
the other fetches again and, if the policy host is gone by then, answers
``NOTFOUND`` — the downgrade MTA-STS exists to prevent (RFC 8461 §3.3, §5.1;
DESIGN.md §5 "one answer per domain whatever worker is asked"). So the
supervisor turns ``internal`` into an LMDB environment (the ``lmdb`` backend,
unchanged) in a private directory of its own, which every worker opens:

Where
    ``$RUNTIME_DIRECTORY`` when systemd sets it (``RuntimeDirectory=``: a
    tmpfs that systemd removes when the service stops), else ``/dev/shm``
    (tmpfs), else the temporary directory (``$TMPDIR`` or ``/tmp``): the
    first that exists and that the daemon's user may write in. On a tmpfs
    the cache is memory, like an in-process cache, and never touches a disk.

What
    A directory ``mtasts-fast-internal.XXXXXXXX`` made with mode 0700 by the
    supervisor after the privilege drop, so owned by the user the daemon runs
    as and by nobody else; LMDB's files inside. The environment is opened
    with ``durable=False``: nothing is flushed, because nothing is meant to
    survive a restart (the old daemon's ``internal`` did not either).

How big
    ``cache_size`` policies (``max_entries``) and as many fetch-failure
    records, for all workers together, evicting the expired and the least
    recently checked first (``cache.lmdb.eviction``); the map may use
    MAP_BYTES_PER_ENTRY per entry (at least MIN_MAP_SIZE), and only the pages
    actually written take memory. Each worker also memoises at most
    ``cache_size`` decoded entries (``cache.lmdb.reads``).

Until when
    The supervisor removes the directory when it exits, whatever happened to
    its workers (a worker killed with SIGKILL leaves LMDB consistent; its
    replacement opens the same environment). A supervisor that is itself
    killed cannot: it holds an ``flock`` on LOCK_NAME inside the directory
    for as long as it lives (its workers close their inherited copy at fork,
    so the lock is the supervisor's alone), and the next start removes every
    directory of this name owned by the same user whose lock is free.
    ``RemoveIPC=`` (implied by systemd's ``DynamicUser=``) also removes a
    service user's files in ``/dev/shm`` when the service stops.

``InternalCache`` (an in-process LRU) stays for what lives in one process:
the refresher's fallback while a shared backend is down, and the tests.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from types import MappingProxyType

from mtasts_fast.config import CacheConfig

__all__ = ["DIR_PREFIX", "InternalDirectory", "candidate_bases", "internal_options"]

_log = logging.getLogger("mtasts_fast.cache.internal")

DIR_PREFIX = "mtasts-fast-internal."
LOCK_NAME = "supervisor.lock"
# A small LMDB map fills up at once; a large one costs address space only.
MIN_MAP_SIZE = 4 << 20
# Two pages per cached domain: its policy and a failure record, each with
# their index entries, fit in far less; eviction keeps free pages anyway.
MAP_BYTES_PER_ENTRY = 8 << 10
# A directory without its lock file is stale only once it is this old: a
# supervisor that has just created it has not taken the lock yet.
_LOCKLESS_GRACE = 60.0


def candidate_bases(environ: os._Environ[str] | dict[str, str] | None = None) -> list[str]:
    """Where the directory may go, best first (see the module doc, "Where")."""
    env = os.environ if environ is None else environ
    bases: list[str] = []
    runtime = env.get("RUNTIME_DIRECTORY", "")
    if runtime:
        # systemd lists several directories separated by colons.
        bases.append(runtime.split(":")[0])
    bases.append("/dev/shm")
    bases.append(tempfile.gettempdir())
    return list(dict.fromkeys(bases))  # without repeats, in order


def internal_options(directory: str, cache_size: int) -> dict[str, object]:
    """The ``lmdb`` backend options of the ``internal`` cache in ``directory``."""
    return {
        "path": directory.rstrip("/") + "/",
        "map_size": max(MIN_MAP_SIZE, cache_size * MAP_BYTES_PER_ENTRY),
        "max_entries": cache_size,
        "durable": False,
    }


class InternalDirectory:
    """The supervisor's private directory for the ``internal`` cache.

    Nothing is created until :meth:`cache_config` first meets ``internal``
    (at start, or at a reload that switches to it); :meth:`remove` deletes it.
    """

    def __init__(self, bases: Sequence[str] | None = None) -> None:
        self._bases = list(bases) if bases is not None else None
        self.path: str | None = None
        self._lock_fd: int | None = None
        os.register_at_fork(after_in_child=self._forget_lock)

    def cache_config(self, cache: CacheConfig) -> CacheConfig:
        """The cache the workers open for ``cache``: ``internal`` becomes LMDB here.

        Raises OSError when no directory can be created.
        """
        if cache.type != "internal":
            return cache
        path = self.path if self.path is not None else self._create()
        options = internal_options(path, int(cache.options["cache_size"]))
        return CacheConfig(type="lmdb", options=MappingProxyType(options))

    def _create(self) -> str:
        bases = self._bases if self._bases is not None else candidate_bases()
        for base in bases:
            remove_stale(base)
        problems: list[str] = []
        for base in bases:
            if not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
                problems.append(f"{base}: not a directory this user may write in")
                continue
            try:
                path = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base)  # mode 0700
            except OSError as exc:
                problems.append(f"{base}: {exc.strerror or exc}")
                continue
            try:
                self._lock_fd = _take_lock(path)
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
                raise
            self.path = path
            _log.info("internal cache: %s (shared by every worker, removed at exit)", path)
            return path
        raise OSError(
            errno.ENOENT, "cannot create the internal cache directory: " + "; ".join(problems)
        )

    def remove(self) -> None:
        """Delete the directory and release the lock (the supervisor, at exit)."""
        path, self.path = self.path, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
            _log.debug("internal cache %s removed", path)
        self._forget_lock()

    def _forget_lock(self) -> None:
        # In a forked worker: closing the inherited descriptor does not
        # release the supervisor's flock (only the last one closed does), so
        # the lock keeps meaning "the supervisor is alive".
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _take_lock(directory: str) -> int:
    # Locked under another name, then renamed: LOCK_NAME never exists
    # unlocked, so another start's clean-up cannot take this directory for
    # an abandoned one (until the rename, the lock-less grace protects it).
    fd, temporary = tempfile.mkstemp(prefix=".lock.", dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(temporary, os.path.join(directory, LOCK_NAME))
    except OSError:
        os.close(fd)
        raise
    return fd


def remove_stale(base: str) -> list[str]:
    """Remove the directories in ``base`` left behind by dead supervisors of this user."""
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(base) if n.startswith(DIR_PREFIX)]
    except OSError:
        return removed
    uid = os.geteuid()
    for name in names:
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        # Only real directories of our own user: /dev/shm and /tmp are
        # shared, and a name alone proves nothing.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        if not _abandoned(path, st):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            removed.append(path)
            _log.warning(
                "removed %s, the internal cache of a daemon that did not stop cleanly", path
            )
    return removed


def _abandoned(path: str, st: os.stat_result) -> bool:
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return time.time() - st.st_mtime > _LOCKLESS_GRACE
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its supervisor is alive
    finally:
        os.close(fd)
    return True
