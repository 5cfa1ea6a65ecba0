"""Can the daemon's user read what it needs once privileges are dropped? (DESIGN.md §9)

Checked by the supervisor right after the drop, so ``os.access`` answers
for that user (real IDs, ACLs and all). What it must read or write:

- the installation: every directory it imported a module from, except the
  interpreter's standard library (see below), because a reload may import
  a cache backend and its client library from there;
- the configuration file and the overrides file, read again on SIGHUP;
- the CA file, loaded again at a reload;
- the cache: the LMDB directory and files (the workers open them after the
  drop), the sqlite database's directory.

The first problem found is one line naming the path, the user and what
blocks it (an ancestor directory it cannot search, say); the daemon then
exits 2 instead of forking workers that would fail one by one.

Everything the workers need from the standard library is imported before
the drop (:mod:`mtasts_fast.preload`), and a Python built under ``/root``
(pyenv) is common and works: an unreadable standard library is a warning,
naming what would fail (a reload needing a module not imported yet).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass

from mtasts_fast.config import Config

__all__ = ["Access", "check_access"]

# Where the standard library and the packages are. Read when this module is
# imported, before the privilege drop: sysconfig imports its platform data
# lazily, from the standard library itself.
_PATHS = sysconfig.get_paths()


@dataclass(frozen=True, slots=True)
class Access:
    """The outcome: ``problem`` (exit 2) or None, and warnings to log."""

    problem: str | None
    warnings: tuple[str, ...]


def _user() -> str:
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
    return f"{name} (uid {uid})"


def _blocker(path: str) -> str:
    """Why ``path`` is out of reach: the first ancestor that cannot be searched."""
    current = os.path.dirname(path)
    ancestors = []
    while True:
        ancestors.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for ancestor in reversed(ancestors):
        if not os.access(ancestor, os.X_OK):
            return f"{ancestor} is not searchable by that user"
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {_name(st.st_uid)}:{_group(st.st_gid)}"


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _line(path: str, verb: str, what: str, advice: str) -> str:
    who = f"user {_user()}, who runs the daemon"
    return f"{path}: not {verb} by {who} ({what}): {_blocker(path)}; {advice}"


# -- the installation ---------------------------------------------------------------------


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _module_directories() -> list[str]:
    directories: set[str] = set()
    for name, module in list(sys.modules.items()):
        if name == "__main__":
            continue  # the mta-sts-daemon script: run already, never imported again
        filename = getattr(module, "__file__", None)
        if isinstance(filename, str):
            directories.add(os.path.dirname(os.path.abspath(filename)))
    return sorted(directories)


def _standard_library(directory: str) -> bool:
    paths = _PATHS
    if any(_inside(directory, paths[key]) for key in ("purelib", "platlib")):
        return False
    parts = directory.split("/")
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return _inside(directory, paths["stdlib"])


def _installation() -> Iterator[tuple[str, bool]]:
    """(directory, is the standard library) for every directory modules came from.

    Each sys.path entry first, then the package directories under it, so a
    problem names the top-most directory that has it.
    """
    directories = _module_directories()
    roots = [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)]
    seen: set[str] = set()
    for root in sorted(set(roots), key=roots.index):
        inside = [d for d in directories if _inside(d, root)]
        if not inside:
            continue
        for directory in (root, *inside):
            if directory not in seen:
                seen.add(directory)
                yield directory, _standard_library(directory)
    for directory in directories:
        if directory not in seen:
            seen.add(directory)
            yield directory, _standard_library(directory)


# -- the files named by the configuration -------------------------------------------------


def _cache_paths(config: Config) -> Iterator[tuple[str, bool]]:
    """(path, is a directory) the workers write in: each must exist or be creatable."""
    options = config.cache.options
    if config.cache.type == "lmdb":
        path = str(options["path"])
        if path.endswith("/") or os.path.isdir(path):
            directory = path.rstrip("/") or "/"
            yield directory, True
            yield os.path.join(directory, "data.mdb"), False
            yield os.path.join(directory, "lock.mdb"), False
        else:
            yield os.path.dirname(os.path.abspath(path)), True
            yield path, False
            yield path + "-lock", False
    elif config.cache.type == "sqlite":
        filename = str(options["filename"])
        yield os.path.dirname(os.path.abspath(filename)), True
        yield filename, False


def _nearest_existing(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def check_access(config: Config, overrides: str | None = None) -> Access:
    """Check, as the user the daemon now runs as, everything listed in the module doc."""
    warnings: list[str] = []
    for directory, stdlib in _installation():
        if os.access(directory, os.R_OK | os.X_OK):
            continue
        if stdlib:
            if not warnings:
                warnings.append(
                    _line(
                        directory,
                        "readable",
                        "the Python standard library",
                        "what the workers use was imported before the privilege drop, but a "
                        "reload that needs a module not imported yet (another cache type) "
                        "will fail; install Python where that user can read it",
                    )
                )
            continue
        return Access(
            _line(
                directory,
                "readable",
                "the installed daemon and the packages it imports",
                "install mtasts-fast where that user can read it "
                "(e.g. make VENV=/opt/mta-sts venv), or run it as another user",
            ),
            tuple(warnings),
        )
    files = [
        (config.filename, "the configuration file, read again on SIGHUP"),
        (overrides, "the policy overrides file, read again on SIGHUP"),
        (config.ca_file, "ca_file, loaded again at a reload"),
    ]
    for path, what in files:
        if path is not None and not os.access(path, os.R_OK):
            advice = "make it readable by that user (e.g. its group, mode 0640)"
            return Access(_line(path, "readable", what, advice), tuple(warnings))
    for path, is_directory in _cache_paths(config):
        existing = _nearest_existing(path)
        if existing != os.path.abspath(path) and not is_directory:
            continue  # created with the directory checked just before
        wanted = os.R_OK | os.W_OK | (os.X_OK if os.path.isdir(existing) else 0)
        if not os.access(existing, wanted):
            return Access(
                _line(
                    existing,
                    "writable",
                    "the cache the workers open",
                    "give that user the directory (chown) or choose another cache.options path",
                ),
                tuple(warnings),
            )
    return Access(None, tuple(warnings))
