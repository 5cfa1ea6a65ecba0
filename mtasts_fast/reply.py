"""Render a cached MTA-STS policy as a Postfix ``smtp_tls_policy_maps`` reply.

The reply grammar is Postfix's (postconf(5) "TLS POLICY TABLE"); the choice of
level and attributes follows DESIGN.md §4 "Reply rendering for a zone".
"""

from __future__ import annotations

import logging

from mtasts_fast.config import ZoneConfig
from mtasts_fast.policy import Policy

__all__ = ["NOTFOUND", "REPLY_LIMIT", "render_policy"]

_log = logging.getLogger(__name__)

# Postfix expects the trailing space after NOTFOUND (dict_sockmap.c).
NOTFOUND = b"NOTFOUND "

# Postfix treats a reply payload over 100 000 bytes as a netstring error and so
# as a lookup failure (dict_sockmap.c); stay well below it.
REPLY_LIMIT = 99_000


def _match_list(mx: tuple[str, ...]) -> str:
    # Postfix's ``match=`` is case-insensitive, but a canonical, lower-case,
    # de-duplicated list in policy order makes replies stable and memoisable.
    # ``*.example.com`` is written ``.example.com``: Postfix's form for "a
    # sub-domain of" (RFC 8461 §4.1 narrows that to one label; Postfix ≥ 3.10.5
    # enforces it exactly from the mx_host_pattern attributes).
    seen: dict[str, None] = {}
    for pattern in mx:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            pattern = pattern[1:]
        seen.setdefault(pattern, None)
    return ":".join(seen)


def render_policy(domain: str, policy: Policy, zone: ZoneConfig) -> bytes:
    """Return the reply payload (not yet netstring-framed) for ``policy``.

    ``enforce`` — and ``testing`` when the zone sets ``strict_testing`` — gives
    ``OK secure match=...``; anything else is ``NOTFOUND `` so that Postfix
    applies its own default level (RFC 8461 §5: testing mode must not block
    delivery).
    """
    if policy.mode != "enforce" and not (policy.mode == "testing" and zone.strict_testing):
        return NOTFOUND
    if not policy.mx:
        # policy.py refuses enforce/testing without a usable mx; this guards the
        # invariant because an empty match= makes Postfix defer all mail.
        return NOTFOUND
    head = "OK secure match=" + _match_list(policy.mx)
    if zone.require_sni:
        head += " servername=hostname"
    if not zone.tlsrpt:
        return _checked(head, domain)
    # Postfix ≥ 3.10 TLSRPT attributes (RFC 8460 §4.4); policy_type must come
    # first or Postfix rejects the others.
    parts = [head, "policy_type=sts", "policy_domain=" + domain]
    parts.extend("mx_host_pattern=" + pattern for pattern in policy.mx)
    with_patterns = " ".join(parts)
    # Braces would end Postfix's { name = value } quoting early, so such lines
    # are left out of the report attributes rather than escaped.
    strings = [
        "{ policy_string = " + line + " }"
        for line in policy.lines
        if "{" not in line and "}" not in line
    ]
    full = " ".join([with_patterns, *strings]) if strings else with_patterns
    if len(full.encode()) <= REPLY_LIMIT:
        return full.encode()
    # Report data is optional; the security level is not. Drop the policy
    # strings first, then all TLSRPT attributes, before giving up.
    if len(with_patterns.encode()) <= REPLY_LIMIT:
        return with_patterns.encode()
    return _checked(head, domain)


def _checked(text: str, domain: str) -> bytes:
    data = text.encode()
    if len(data) > REPLY_LIMIT:
        # Only a policy with thousands of mx lines gets here; Postfix would
        # reject the reply and defer every message, so treat it like an
        # unusable policy (RFC 8461 §3.3: deliver as if there were none).
        _log.error(
            "policy of %s is too large to send to Postfix (%d bytes); answering NOTFOUND",
            domain,
            len(data),
        )
        return NOTFOUND
    return data
