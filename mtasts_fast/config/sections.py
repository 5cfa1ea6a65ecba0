"""Mappings of the file checked against a schema: known keys, typo hints, key paths."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from .values import Parse, describe, fail

_T = TypeVar("_T")

_NOT_A_STRING_KEY = (
    "keys must be strings (an unquoted number, null, yes/no or on/off is not one; quote it)"
)


def _key_text(key: object) -> str:
    return key if isinstance(key, str) else describe(key)


def join_path(path: str, key: object) -> str:
    """The dotted key path of ``key`` inside the section at ``path``."""
    return f"{path}.{_key_text(key)}" if path else _key_text(key)


def suggest(key: str, known: Collection[str]) -> str | None:
    """A "did you mean" for a misspelt key, if one of ``known`` is close."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean {close[0]!r}?" if close else None


class Section:
    """A mapping from the file whose keys have been checked against a schema."""

    __slots__ = ("items", "path")

    def __init__(
        self,
        value: object,
        path: str,
        known: Collection[str],
        *,
        open_ended: bool = False,
        hint: Callable[[str], str | None] | None = None,
    ) -> None:
        # `key:` with nothing under it (every sub-key commented out) is null
        # in YAML; treat it as an empty section rather than an error.
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            fail(path, f"expected a mapping, got {describe(value)}")
        for key in value:
            if not isinstance(key, str):
                fail(join_path(path, key), _NOT_A_STRING_KEY)
            if key in known or open_ended:
                continue
            extra = hint(key) if hint else None
            if extra is None:
                extra = suggest(key, known)
            fail(join_path(path, key), f"unknown key ({extra})" if extra else "unknown key")
        self.items: Mapping[str, object] = value
        self.path = path

    def key_path(self, key: str) -> str:
        return join_path(self.path, key)

    def get(self, key: str, parse: Parse[_T], default: _T) -> _T:
        if key not in self.items:
            return default
        return parse(self.items[key], self.key_path(key))

    def optional(self, key: str, parse: Parse[_T]) -> _T | None:
        """For keys whose default is "not set": absent or null gives None."""
        value = self.items.get(key)
        return None if value is None else parse(value, self.key_path(key))

    def required(self, key: str, parse: Parse[_T], why: str) -> _T:
        if self.items.get(key) is None:
            fail(self.key_path(key), why)
        return parse(self.items[key], self.key_path(key))

    def extras(self, known: Collection[str]) -> dict[str, Any]:
        """The keys not in ``known``, copied so the caller's data stays its own."""
        return {k: copy.deepcopy(v) for k, v in self.items.items() if k not in known}
