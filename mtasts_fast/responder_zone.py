"""A zone's settings as the responder's hot path wants them (responder.py).

Each socketmap zone (config/zones.py, QUERY and QUERYwithTLSRPT included)
becomes one ZoneView when the responder is built: its lookup counters as
cell indexes, its DANE mode as a small int, and the key that says which
zones can share a rendered reply, so that the per-request path reads
attributes instead of deriving them.
"""

from __future__ import annotations

import dataclasses

from mtasts_fast.config import ZoneConfig
from mtasts_fast.config.zones import TESTING_LEVELS
from mtasts_fast.metrics.worker import LookupCells

__all__ = ["ALL", "DANE_MODES", "PRECEDENCE", "STS_ONLY", "ZoneView", "outcome"]

# ZoneView.dane: which answers consult the domain's DANE state.
STS_ONLY = 0  # dane: off, or DANE detection inactive
PRECEDENCE = 1  # answers that would be MTA-STS "OK secure ..."
ALL = 2  # every answer
DANE_MODES = {"off": STS_ONLY, "precedence": PRECEDENCE, "all": ALL}


def outcome(reply: bytes) -> str:
    """What Postfix is told by a framed reply: "policy", "no-policy" or "temp"."""
    payload = reply[reply.find(b":") + 1 :]
    if payload.startswith(b"OK "):
        return "policy"
    if payload.startswith(b"TEMP"):
        return "temp"
    return "no-policy"


class ZoneView:
    """A zone's settings as the hot path wants them."""

    __slots__ = (
        "config",
        "dane",
        "dane_mode",
        "dane_policy",
        "dane_temp",
        "lookups",
        "memo_no_policy",
        "memo_policy",
        "render_key",
        "strict",
        "timeout",
    )

    def __init__(self, config: ZoneConfig, lookups: LookupCells) -> None:
        self.config = config
        self.timeout = config.timeout
        #: The zone's lookup counters (cell indexes in the worker's region);
        #: the hot path's ones also as attributes of their own, one load nearer.
        self.lookups = lookups
        self.memo_policy = lookups.memo_policy
        self.memo_no_policy = lookups.memo_no_policy
        self.dane_policy = lookups.cell("dane", "policy")
        self.dane_temp = lookups.cell("dane", "temp")
        #: The configured DANE mode, and the one in force (STS_ONLY while
        #: DANE detection is inactive or there is no resolver).
        self.dane_mode = DANE_MODES[config.dane]
        self.dane = STS_ONLY
        # A reply depends on these settings only (reply.render_policy), so
        # zones that agree on them share the rendered reply of an entry. An
        # int key hashes in nanoseconds; the frozen dataclass does not.
        self.render_key = (
            int(config.strict_testing)
            | int(config.require_sni) << 1
            | int(config.tlsrpt) << 2
            | TESTING_LEVELS.index(config.tlsrpt_testing_level) << 3
        )
        # The same zone with strict_testing, for domains whose override says
        # enforce_testing; its render key differs, so both replies coexist.
        self.strict: ZoneView = (
            self
            if config.strict_testing
            else ZoneView(dataclasses.replace(config, strict_testing=True), lookups)
        )
