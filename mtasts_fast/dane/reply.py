"""The Postfix reply for a DANE state, framed and memoised on the state.

``dane-only`` and ``dane`` are Postfix's own levels (postconf(5) "TLS POLICY
TABLE"): with them Postfix looks the TLSA records up itself, host by host,
and authenticates each MX host with them. A ``temp`` state is ``TEMP
<reason>``: Postfix defers the message (4.7.5) and tries again later, rather
than deliver under an MTA-STS policy that could override a DANE policy it
cannot see (RFC 8461 §2, RFC 7672 §2.2). ``none`` has no reply of its own:
the MTA-STS answer stands, which is what the empty marker says.

The reply never depends on the zone (no TLSRPT attributes: at the DANE
levels Postfix reports the TLSA policy itself), so one memoised reply per
state serves every zone.
"""

from __future__ import annotations

from mtasts_fast.dane.state import DANE, DANE_ONLY, TEMP, DaneState
from mtasts_fast.netstring import encode

__all__ = ["MTA_STS", "RENDER_KEY", "dane_reply", "reply_payload"]

#: The memoised "reply" of a state that leaves the MTA-STS answer in place.
MTA_STS = b""

# Postfix logs at most 200 characters of a socketmap reason (dict_sockmap.c).
_REASON_LIMIT = 200
#: The key of the memoised framed reply in :attr:`DaneState.rendered` (the
#: responder reads it inline on the hot path).
RENDER_KEY = 0

_LEVELS = {DANE_ONLY: b"OK dane-only", DANE: b"OK dane"}


def dane_reply(state: DaneState) -> bytes:
    """The framed reply for ``state``, or :data:`MTA_STS` (memoised on the state)."""
    reply = state.rendered.get(RENDER_KEY)
    if reply is None:
        reply = _render(state)
        state.rendered[RENDER_KEY] = reply
    return reply


def reply_payload(state: DaneState) -> bytes:
    """The reply for ``state`` before framing (empty: the MTA-STS answer stands)."""
    level = _LEVELS.get(state.decision)
    if level is not None:
        return level
    if state.decision != TEMP:
        return MTA_STS
    # Printable ASCII only: the reason quotes DNS names and resolver texts.
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in f"DANE: {state.reason}")
    if len(text) > _REASON_LIMIT:
        text = text[: _REASON_LIMIT - 3] + "..."
    return b"TEMP " + text.encode("ascii")


def _render(state: DaneState) -> bytes:
    payload = reply_payload(state)
    return encode(payload) if payload else MTA_STS
