"""Import, before the privilege drop, everything the workers will import (DESIGN.md §9).

The supervisor forks its workers without ``exec``, so every module it has
imported, they have too. After ``-u`` the daemon's user may be unable to read
the installation (a virtualenv or a Python built under ``/root``); a module
imported for the first time after the drop then fails, and did: workers died
with ``ModuleNotFoundError: No module named 'lmdb._envid'`` (issue 16). An
installation replaced under a running daemon (a package upgrade) must not
mix versions in a restarted worker either. So :func:`preload` imports, while
the supervisor can still read everything:

- the worker's code (``mtasts_fast.worker`` and all it imports);
- the cache backend the workers open and its client library (``internal``
  is the LMDB backend, see ``cache.internal_dir``);
- uvloop, unless the workers run asyncio's own loop;
- :data:`LAZY_MODULES`, which libraries import only when a worker first
  takes a particular path.

``tests/test_startup_access.py`` runs the daemon with an import hook set
right after the drop and fails on any module imported for the first time
after it, through lookups that succeed and fail in every way the test world
offers, with several backends, both loops and a reload. What may still be
read after the drop (a reload that switches backends) is checked by
:mod:`mtasts_fast.access`.
"""

from __future__ import annotations

import contextlib
import importlib

from mtasts_fast.cache import create_cache
from mtasts_fast.config import CacheConfig, Config

__all__ = ["LAZY_MODULES", "preload"]

#: Modules imported lazily by a library, with when. Optional ones (absent
#: in some versions of the library) are skipped when missing.
LAZY_MODULES: tuple[tuple[str, bool, str], ...] = (
    # (module, required, when a worker would import it)
    ("lmdb._envid", False, "py-lmdb 3 opens the first environment (the worker's cache)"),
    ("encodings.idna", True, "ssl encodes the policy host name for SNI (the first fetch)"),
    ("encodings.punycode", True, "keys.py checks an A-label (the first xn-- key)"),
    ("idna.uts46data", True, "idna maps a U-label (the first non-ASCII key)"),
)


def preload(config: Config, *, use_uvloop: bool) -> None:
    """Import what the workers of ``config`` will need (before the drop)."""
    import mtasts_fast.worker  # noqa: F401  # the worker's whole code path

    if use_uvloop:
        import uvloop  # noqa: F401
    # Building a backend imports its module and client library; it is not
    # set up. ``internal`` is opened as an LMDB environment by the workers.
    cache = config.cache
    if cache.type == "internal":
        cache = CacheConfig(type="lmdb", options={})
    create_cache(cache, config.filename)
    for name, required, _when in LAZY_MODULES:
        if required:
            importlib.import_module(name)
        else:
            with contextlib.suppress(ModuleNotFoundError):
                importlib.import_module(name)
