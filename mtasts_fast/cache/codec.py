"""Serialize cache entries with msgpack, with a format version.

Layout (format 1): a msgpack array
``[1, policy_id, mode, max_age, [mx...], [lines...], fetched_at, checked_at]``.
The domain is the key, so it is not repeated in the value. A reader that meets
another format version, or bytes that do not decode, treats the entry as
missing: the policy is fetched again, which is always safe. Failure records,
leases and DANE states (below) follow the same rules.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mtasts_fast.cache.base import CacheEntry, FetchFailure
from mtasts_fast.dane.state import DECISIONS, HOST_STATUSES, DaneHost, DaneState
from mtasts_fast.policy import MODES, Policy

__all__ = [
    "DANE_FORMAT_VERSION",
    "FORMAT_VERSION",
    "decode_dane",
    "decode_entry",
    "decode_failure",
    "decode_lease",
    "encode_dane",
    "encode_entry",
    "encode_failure",
    "encode_lease",
]

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


# A failure record (format 1):
# ``[1, result_type, stage, reason, failed_at, retry_at, attempts]``.


def encode_failure(failure: FetchFailure) -> bytes:
    data = msgpack.packb(
        [
            FORMAT_VERSION,
            failure.result_type,
            failure.stage,
            failure.reason,
            float(failure.failed_at),
            float(failure.retry_at),
            int(failure.attempts),
        ],
        use_bin_type=True,
    )
    assert isinstance(data, bytes)
    return data


def decode_failure(domain: str, data: bytes) -> FetchFailure | None:
    """The failure stored as ``data``, or None if unreadable (then: no backoff)."""
    try:
        value: Any = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not isinstance(value, list) or len(value) != 7 or value[0] != FORMAT_VERSION:
        return None
    _, result_type, stage, reason, failed_at, retry_at, attempts = value
    if not (
        isinstance(result_type, str)
        and isinstance(stage, str)
        and isinstance(reason, str)
        and isinstance(failed_at, float)
        and isinstance(retry_at, float)
        and type(attempts) is int
    ):
        return None
    return FetchFailure(domain, result_type, stage, reason, failed_at, retry_at, attempts)


# A lease (format 1): ``[1, owner, expires_at]``.


def encode_lease(owner: str, expires_at: float) -> bytes:
    data = msgpack.packb([FORMAT_VERSION, owner, float(expires_at)], use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def decode_lease(data: bytes) -> tuple[str, float] | None:
    """``(owner, expires_at)``, or None if unreadable (then the lease counts as free)."""
    try:
        value: Any = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or value[0] != FORMAT_VERSION
        or not isinstance(value[1], str)
        or not isinstance(value[2], float)
    ):
        return None
    return value[1], value[2]


# A DANE state, with a version number of its own, so that its layout can
# change without making every cached policy unreadable (format 1):
# ``[1, decision, reason, [[host, status, reason]...], evaluated_at, expires_at]``.
# An unreadable state, or one with a decision or host status this release does
# not know, reads as missing: the domain is evaluated again, which is always
# safe (the responder never answers from a state it cannot read).
DANE_FORMAT_VERSION = 1


def encode_dane(state: DaneState) -> bytes:
    data = msgpack.packb(
        [
            DANE_FORMAT_VERSION,
            state.decision,
            state.reason,
            [[host.name, host.status, host.reason] for host in state.hosts],
            float(state.evaluated_at),
            float(state.expires_at),
        ],
        use_bin_type=True,
    )
    assert isinstance(data, bytes)
    return data


def decode_dane(domain: str, data: bytes) -> DaneState | None:
    """The DANE state stored as ``data``, or None if unreadable or of another format."""
    try:
        value: Any = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not isinstance(value, list) or len(value) != 6 or value[0] != DANE_FORMAT_VERSION:
        return None
    _, decision, reason, hosts, evaluated_at, expires_at = value
    if not (
        decision in DECISIONS
        and isinstance(reason, str)
        and isinstance(hosts, list)
        and isinstance(evaluated_at, float)
        and isinstance(expires_at, float)
    ):
        return None
    decoded: list[DaneHost] = []
    for host in hosts:
        if not (
            isinstance(host, list)
            and len(host) == 3
            and isinstance(host[0], str)
            and host[1] in HOST_STATUSES
            and isinstance(host[2], str)
        ):
            return None
        decoded.append(DaneHost(host[0], host[1], host[2]))
    return DaneState(domain, decision, reason, tuple(decoded), evaluated_at, expires_at)
