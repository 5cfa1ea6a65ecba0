"""Serialize cache entries with msgpack, with a format version.

Layout (format 1): a msgpack array
``[1, policy_id, mode, max_age, [mx...], [lines...], fetched_at, checked_at]``.
The domain is the key, so it is not repeated in the value. A reader that meets
another format version, or bytes that do not decode, treats the entry as
missing: the policy is fetched again, which is always safe.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.policy import MODES, Policy

__all__ = ["FORMAT_VERSION", "decode_entry", "encode_entry"]

FORMAT_VERSION = 1


def encode_entry(entry: CacheEntry) -> bytes:
    policy = entry.policy
    data = msgpack.packb(
        [
            FORMAT_VERSION,
            entry.policy_id,
            policy.mode,
            policy.max_age,
            list(policy.mx),
            list(policy.lines),
            float(entry.fetched_at),
            float(entry.checked_at),
        ],
        use_bin_type=True,
    )
    assert isinstance(data, bytes)
    return data


def decode_entry(domain: str, data: bytes) -> CacheEntry | None:
    """The entry stored as ``data``, or None if it is unreadable or of another format."""
    try:
        value: Any = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not isinstance(value, list) or len(value) != 8 or value[0] != FORMAT_VERSION:
        return None
    _, policy_id, mode, max_age, mx, lines, fetched_at, checked_at = value
    if not (
        isinstance(policy_id, str)
        and mode in MODES
        and type(max_age) is int
        and isinstance(mx, list)
        and all(isinstance(m, str) for m in mx)
        and isinstance(lines, list)
        and all(isinstance(line, str) for line in lines)
        and isinstance(fetched_at, float)
        and isinstance(checked_at, float)
    ):
        return None
    policy = Policy(mode=mode, max_age=max_age, mx=tuple(mx), lines=tuple(lines))
    return CacheEntry(domain, policy_id, policy, fetched_at, checked_at)
