"""What a policy fetch ends with: :class:`FetchResult` and its :class:`Outcome`.

The result types are RFC 8460 §4.3's names where one exists; ``dns-error``
and ``dns-timeout`` are ours (RFC 8460 has no result type for a failed
discovery).

:class:`Failure` and :class:`Progress` are the fetch's own bookkeeping: a stage
raises Failure to end the fetch with a ready result, and Progress keeps what
the stages have learnt so far for whichever result comes next.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mtasts_fast.policy import Policy

__all__ = ["Failure", "FetchResult", "Outcome", "Progress"]


class Outcome(enum.Enum):
    POLICY = "policy"
    """A valid policy was fetched (``policy`` is set)."""
    NOT_CHANGED = "not-changed"
    """The TXT id equals the known id (or, for fetch_txt_id, a valid id exists)."""
    NO_POLICY = "no-policy"
    """The domain has no available policy (RFC 8461 §3.1)."""
    FAILED = "failed"
    """Discovery or fetch failed; ``result_type`` says how."""


@dataclass(frozen=True, slots=True)
class FetchResult:
    outcome: Outcome
    policy_id: str | None = None
    """The TXT id (POLICY, NOT_CHANGED; FAILED after a valid TXT record)."""
    policy: Policy | None = None
    """POLICY only."""
    stage: str = ""
    """Where it ended: ``"dns"``, ``"txt"``, ``"https"`` or ``"policy"``."""
    reason: str = ""
    """One human-readable line."""
    result_type: str | None = None
    """FAILED only: ``dns-error``, ``dns-timeout``, ``sts-policy-fetch-error``,
    ``sts-policy-invalid`` or ``sts-webpki-invalid``."""
    warnings: tuple[str, ...] = ()
    """Policy problems that did not invalidate it (dropped mx, clamped max_age...)."""
    txt_records: tuple[str, ...] = ()
    """Every TXT record seen at ``_mta-sts.<domain>``, strings joined; a record
    with non-ASCII bytes is shown with backslash escapes and was not parsed."""


class Failure(Exception):
    """Ends a fetch early with a ready FetchResult."""

    def __init__(self, result: FetchResult) -> None:
        super().__init__(result.reason)
        self.result = result


@dataclass
class Progress:
    """What a fetch has done so far, to classify a timeout and keep the id."""

    stage: str = "dns"
    policy_id: str | None = None
    txt_records: tuple[str, ...] = ()
