"""The one switch between compiled extensions and their pure-Python twins.

``MTASTS_NO_EXTENSIONS=1`` forces the pure-Python implementations (``setup.py``
reads the same variable and then builds nothing). ``MTASTS_REQUIRE_EXTENSIONS=1``
turns a missing compiled module into an import error, so a broken wheel or build
can never pass the test suite silently on the slow path.
"""

from __future__ import annotations

import os

__all__ = ["NO_EXTENSIONS", "REQUIRE_EXTENSIONS"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


NO_EXTENSIONS: bool = _flag("MTASTS_NO_EXTENSIONS")
REQUIRE_EXTENSIONS: bool = _flag("MTASTS_REQUIRE_EXTENSIONS")

if NO_EXTENSIONS and REQUIRE_EXTENSIONS:
    raise ImportError("MTASTS_NO_EXTENSIONS and MTASTS_REQUIRE_EXTENSIONS are both set; choose one")
