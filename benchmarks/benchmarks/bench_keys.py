"""Key normalisation: from a socketmap key to the cache key (``keys.normalise_key``).

``normalise_key`` is Python; its host-name check is the compiled or the pure
``is_valid_hostname``, which is what ``impl`` switches: the ``py`` case runs a
copy of ``normalise_key`` whose globals name the pure check. The responder
memoises the result per raw key, so this is the cost of the first lookup of a
spelling, not of every lookup.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, ClassVar

from mtasts_fast import keys, matcher

KEYS = {
    "plain": b"mail-0000001.example.com",
    "bracket-port": b"[Mail-0000001.Example.COM]:25",
    "u-label": "bücher-0000001.example".encode(),
    "ip-literal": b"[192.0.2.1]",
    "parent": b".example.com",
}


def _with_pure_check() -> Callable[[bytes], str | None]:
    fn = keys.normalise_key
    scope = {**vars(keys), "is_valid_hostname": matcher.is_valid_hostname_py}
    return types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)


NORMALISE = {"py": _with_pure_check()}
if vars(keys)["is_valid_hostname"] is not matcher.is_valid_hostname_py:
    NORMALISE["c"] = keys.normalise_key
IMPLS = sorted(NORMALISE)
for _key in KEYS.values():
    assert len({NORMALISE[i](_key) for i in IMPLS}) == 1


class NormaliseKey:
    """``normalise_key()`` by kind of key."""

    params: ClassVar[list[Any]] = [IMPLS, list(KEYS)]
    param_names: ClassVar[list[str]] = ["impl", "key"]

    def time_normalise(self, impl: str, kind: str) -> None:
        """One ``normalise_key()``: plain name; ``[Name]:25`` (strip, lower-case);
        a U-label (UTS #46 + IDNA 2008 to an A-label); an IP literal and a
        ``.parent`` probe (both rejected early, no DNS)."""
        NORMALISE[impl](KEYS[kind])
