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
    ``OK secure match=...``. A ``testing`` policy in a TLSRPT zone whose
    ``tlsrpt_testing_level`` names a level gives ``OK <level>`` with the TLSRPT
    attributes: Postfix then reports the sessions under the STS policy without
    enforcing it. Anything else is ``NOTFOUND `` so that Postfix applies its own
    default level (RFC 8461 §5: testing mode must not block delivery). The
    README's "Postfix 3.10 and TLSRPT" table gives the reasons per state.
    """
    enforced = policy.mode == "enforce" or (policy.mode == "testing" and zone.strict_testing)
    if enforced:
        if not policy.mx:
            # policy.py refuses enforce/testing without a usable mx; this guards
            # the invariant because an empty match= makes Postfix defer all mail.
            return NOTFOUND
        head = "OK secure match=" + _match_list(policy.mx)
    elif policy.mode == "testing" and zone.tlsrpt and zone.tlsrpt_testing_level != "notfound":
        # Report only: match= is invalid at these levels (smtp_tls_policy.c
        # tls_policy_lookup_one), and none of them checks the MX name.
        head = "OK " + zone.tlsrpt_testing_level
    else:
        return NOTFOUND
    if zone.require_sni:
        head += " servername=hostname"
    if not zone.tlsrpt:
        return _checked(head, domain)
    attributes = _tlsrpt_attributes(domain, policy, REPLY_LIMIT - len(head.encode()) - 1)
    if attributes is not None:
        return f"{head} {attributes}".encode()
    if not enforced:
        # The level was named only to carry the report: without the attributes
        # Postfix's own level (NOTFOUND) is the answer, and never lower.
        return NOTFOUND
    # Report data is optional; the security level is not.
    return _checked(head, domain)


def _tlsrpt_attributes(domain: str, policy: Policy, room: int) -> str | None:
    """Postfix ≥ 3.10's TLSRPT attributes (RFC 8460 §4.4) in ``room`` bytes, or None.

    ``policy_type`` comes first: any other of them without it makes Postfix
    reject the policy. Postfix 3.10.0 to 3.10.5 crash (a null pointer in
    smtp_tlsrpt.c, fixed 20251027) on ``policy_type=sts`` without at least one
    ``policy_string`` and one ``mx_host_pattern``: such a reply is never sent.
    ``policy_ttl`` is deprecated (Postfix HISTORY 20250205) and ``policy_failure``
    makes Postfix fail the certificate check (tls_client.c ``ffail_type``):
    neither is ever sent.

    Every ``mx_host_pattern`` must fit, since from 3.10.5 on Postfix refuses an
    MX host that matches none; a policy too long for the reply limit (a thousand
    ``mx`` lines) keeps the policy strings that fit, in order, and at least one.
    """
    if not policy.mx:
        return None
    parts = ["policy_type=sts", "policy_domain=" + domain]
    parts.extend("mx_host_pattern=" + pattern for pattern in policy.mx)
    text = " ".join(parts)
    used = len(text.encode())
    strings: list[str] = []
    for line in policy.lines:
        # Braces would end Postfix's { name = value } quoting early, so such
        # lines are left out of the report attributes rather than escaped.
        if "{" in line or "}" in line:
            continue
        item = " { policy_string = " + line + " }"
        size = len(item.encode())
        if used + size > room:
            break
        strings.append(item)
        used += size
    if not strings:
        return None
    return text + "".join(strings)


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
