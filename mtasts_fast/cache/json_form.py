"""The cached records as JSON: ``mta-sts-cache`` export/import, ``list --json``, ``show --json``.

A policy entry has an export format (``EXPORT_FORMAT``) because
``mta-sts-cache export`` files outlive the release that wrote them and are
read back by ``import``. Failure records and DANE states are only shown:
they are never exported, because they describe the last few minutes or hours
of DNS and HTTPS, not a policy a domain published; a new cache learns them
again at the next lookup, which is always safe.
"""

from __future__ import annotations

from typing import Any

from mtasts_fast.cache.base import CacheEntry, FetchFailure
from mtasts_fast.dane.state import DaneState
from mtasts_fast.keys import normalise_key
from mtasts_fast.policy import MODES, Policy

__all__ = ["EXPORT_FORMAT", "dane_to_json", "entry_from_json", "entry_to_json", "failure_to_json"]

EXPORT_FORMAT = 1


def entry_to_json(entry: CacheEntry) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "domain": entry.domain,
        "policy_id": entry.policy_id,
        "mode": entry.policy.mode,
        "max_age": entry.policy.max_age,
        "mx": list(entry.policy.mx),
        "lines": list(entry.policy.lines),
        "fetched_at": entry.fetched_at,
        "checked_at": entry.checked_at,
    }


def entry_from_json(data: Any) -> CacheEntry:
    """Rebuild an exported entry; ValueError/TypeError/KeyError if it is not one."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("format") != EXPORT_FORMAT:
        raise ValueError(f"unknown export format {data.get('format')!r}")
    domain = normalise_key(str(data["domain"]).encode())
    if domain is None or domain != data["domain"]:
        raise ValueError(f"invalid domain {data['domain']!r}")
    mode, max_age = data["mode"], data["max_age"]
    if mode not in MODES or type(max_age) is not int or max_age < 0:
        raise ValueError("invalid mode or max_age")
    mx, lines = data["mx"], data["lines"]
    if not all(isinstance(x, str) for x in [*mx, *lines]):
        raise TypeError("mx and lines must be lists of strings")
    policy = Policy(mode=mode, max_age=max_age, mx=tuple(mx), lines=tuple(lines))
    policy_id = data["policy_id"]
    if not isinstance(policy_id, str):
        raise TypeError("policy_id must be a string")
    return CacheEntry(
        domain, policy_id, policy, float(data["fetched_at"]), float(data["checked_at"])
    )


def failure_to_json(failure: FetchFailure) -> dict[str, Any]:
    return {
        "result_type": failure.result_type,
        "stage": failure.stage,
        "reason": failure.reason,
        "failed_at": failure.failed_at,
        "retry_at": failure.retry_at,
        "attempts": failure.attempts,
    }


def dane_to_json(state: DaneState) -> dict[str, Any]:
    """A DANE state (DESIGN.md §7): the decision, why, and each MX host in MX order."""
    return {
        "decision": state.decision,
        "reason": state.reason,
        "hosts": [
            {"name": host.name, "status": host.status, "reason": host.reason}
            for host in state.hosts
        ],
        "evaluated_at": state.evaluated_at,
        "expires_at": state.expires_at,
    }
