"""MX host-pattern matching (RFC 8461 §4.1) and host-name syntax checks.

Everything here works on ASCII host names (A-labels). Callers convert U-labels
first (see ``keys.py``); a non-ASCII name is simply not valid here.

The compiled twin lives in ``_matcher.pyx``; the names at the bottom of this
module are rebound to it unless ``MTASTS_NO_EXTENSIONS`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtasts_fast import _compat

__all__ = [
    "is_valid_hostname",
    "is_valid_hostname_py",
    "is_valid_mx_pattern",
    "is_valid_mx_pattern_py",
    "match_any",
    "match_any_py",
    "mx_matches",
    "mx_matches_py",
]

_MAX_NAME = 253  # RFC 1035 §2.3.4, without the trailing dot
_MAX_LABEL = 63
_LDH = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def is_valid_hostname_py(name: str) -> bool:
    """True if ``name`` is a syntactically valid DNS host name in A-label form.

    Letters, digits and hyphens only (RFC 1123 §2.1), no label empty, longer than
    63 octets or starting/ending with a hyphen, at most 253 octets in all, and
    a last label that is not all digits (so an IPv4 literal is never a host
    name). One trailing dot is tolerated, as in a fully qualified name.
    """
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > _MAX_NAME or not name.isascii():
        return False
    raw = name.encode("ascii")
    for label in raw.split(b"."):
        if not label or len(label) > _MAX_LABEL:
            return False
        if label[0] == 0x2D or label[-1] == 0x2D:  # "-"
            return False
        for octet in label:
            if octet not in _LDH:
                return False
    return not label.isdigit()


def is_valid_mx_pattern_py(pattern: str) -> bool:
    """True if ``pattern`` is a host name or ``*.`` followed by one (RFC 8461 §3.2)."""
    if pattern.startswith("*."):
        pattern = pattern[2:]
    return is_valid_hostname_py(pattern)


def mx_matches_py(host: str, pattern: str) -> bool:
    """True if MX host ``host`` matches policy ``pattern`` (RFC 8461 §4.1).

    Comparison is case-insensitive and ignores one trailing dot on either side.
    ``*.example.com`` matches exactly one extra left-most label: it matches
    ``mail.example.com`` but neither ``example.com`` nor ``a.b.example.com``.
    """
    host = host.lower()
    pattern = pattern.lower()
    if host.endswith("."):
        host = host[:-1]
    if pattern.endswith("."):
        pattern = pattern[:-1]
    if not host or not pattern:
        return False
    if pattern.startswith("*."):
        dot = host.find(".")
        # The wildcard stands for one whole, non-empty label, and something
        # must follow it ("*.." is not a wildcard over the root).
        return len(pattern) > 2 and dot > 0 and host[dot + 1 :] == pattern[2:]
    return host == pattern


def match_any_py(host: str, patterns: Sequence[str]) -> bool:
    """True if ``host`` matches at least one of ``patterns``."""
    return any(mx_matches_py(host, pattern) for pattern in patterns)


is_valid_hostname = is_valid_hostname_py
is_valid_mx_pattern = is_valid_mx_pattern_py
mx_matches = mx_matches_py
match_any = match_any_py

if not _compat.NO_EXTENSIONS:
    try:
        from mtasts_fast._matcher import (
            is_valid_hostname as is_valid_hostname,
        )
        from mtasts_fast._matcher import (
            is_valid_mx_pattern as is_valid_mx_pattern,
        )
        from mtasts_fast._matcher import (
            match_any as match_any,
        )
        from mtasts_fast._matcher import (
            mx_matches as mx_matches,
        )
    except ImportError:
        if _compat.REQUIRE_EXTENSIONS:
            raise
