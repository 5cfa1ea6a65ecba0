"""MX host matching (RFC 8461 §4.1) and host-name syntax checks."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

from mtasts_fast import _compat, matcher


def _compiled() -> ModuleType | None:
    if _compat.NO_EXTENSIONS:
        return None
    try:
        from mtasts_fast import _matcher
    except ImportError:
        return None
    return _matcher


_C = _compiled()
IMPLS = ["c", "py"] if _C is not None else ["py"]


def function(impl: str, name: str) -> Callable[..., Any]:
    """The pure (``matcher.<name>_py``) or compiled (``_matcher.<name>``) function."""
    return getattr(_C if impl == "c" else matcher, name if impl == "c" else f"{name}_py")  # type: ignore[no-any-return]


def patterns(count: int) -> list[str]:
    """``count`` policy patterns, alternating exact names and ``*.`` wildcards."""
    return [f"*.mx{i}.example.com" if i % 2 else f"mx{i}.example.com" for i in range(count)]


def last_only_host(pats: list[str]) -> str:
    """A host that matches the last pattern only (one wildcard label, or other case)."""
    last = pats[-1]
    return "a." + last[2:] if last.startswith("*.") else last.upper()


_FN = {
    (impl, name): function(impl, name)
    for impl in IMPLS
    for name in ("match_any", "is_valid_hostname", "is_valid_mx_pattern")
}
_PATTERNS = {count: patterns(count) for count in (1, 5, 20)}
_HOSTS = {count: last_only_host(pats) for count, pats in _PATTERNS.items()}
for _impl in IMPLS:
    for _count, _pats in _PATTERNS.items():
        assert _FN[_impl, "match_any"](_HOSTS[_count], _pats)
        assert not _FN[_impl, "match_any"]("mail.other.example.net", _pats)


class MatchAny:
    """Checking an MX host against a policy's patterns."""

    params: ClassVar[list[Any]] = [IMPLS, [1, 5, 20]]
    param_names: ClassVar[list[str]] = ["impl", "patterns"]

    def time_match_last(self, impl: str, count: int) -> None:
        """``match_any()`` for a host that matches only the last of 1/5/20
        patterns (case differs, or one wildcard label), i.e. the full scan."""
        _FN[impl, "match_any"](_HOSTS[count], _PATTERNS[count])

    def time_no_match(self, impl: str, count: int) -> None:
        """``match_any()`` for a host that matches none of 1/5/20 patterns."""
        _FN[impl, "match_any"]("mail.other.example.net", _PATTERNS[count])


class Hostname:
    """Host-name and MX-pattern syntax checks (used on keys and policy lines)."""

    params: ClassVar[list[Any]] = [IMPLS]
    param_names: ClassVar[list[str]] = ["impl"]

    def time_is_valid_hostname(self, impl: str) -> None:
        """``is_valid_hostname()`` of a 26-character, 5-label host name."""
        _FN[impl, "is_valid_hostname"]("gmail-smtp-in.l.google.com")

    def time_is_valid_mx_pattern(self, impl: str) -> None:
        """``is_valid_mx_pattern()`` of a ``*.`` wildcard pattern."""
        _FN[impl, "is_valid_mx_pattern"]("*.mail.protection.outlook.com")
