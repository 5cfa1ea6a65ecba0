"""A domain's DANE state, as evaluated from DNSSEC-validated DNS and stored in the cache.

RFC 8461 §2: a sender that implements DANE must not let an MTA-STS policy
override a failing DANE validation. Before answering with an MTA-STS policy
the daemon therefore knows, per domain, whether DANE applies (RFC 7672 §2.2):
this module holds that knowledge in the form every cache backend stores and
every worker and host sharing the cache reads.

The decision, per :data:`DECISIONS`:

- ``dane-only``: the MX RRset is secure and every MX host that exists has
  secure addresses and a secure TLSA RRset with at least one usable record
  (RFC 7672 §3.1.1–§3.1.2). Postfix authenticates every host with its TLSA
  records and delivers nowhere else.
- ``dane``: the MX RRset is secure and at least one host has a secure TLSA
  RRset (usable, or all records unusable, which still means "TLS required",
  RFC 7672 §3.1.3), but not all of them. Postfix's ``dane`` level applies DANE
  to the hosts that have TLSA records and opportunistic TLS to the others: one
  reply cannot name a level per host, and ``secure`` for the others would let
  the web PKI override DANE for the rest.
- ``none``: DANE does not apply (insecure MX RRset, or no host with a secure
  TLSA RRset, or a Null MX): the MTA-STS answer stands.
- ``temp``: validation failed somewhere on the path (a bogus answer, SERVFAIL
  or a timeout from the validating resolver): answering with the MTA-STS
  policy could override DANE, so Postfix is told to try again later
  (RFC 7672 §2.2: never downgrade on a failed lookup).

Times are Unix wall-clock seconds, like :class:`~mtasts_fast.cache.CacheEntry`'s,
because states outlive the process and are shared between hosts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DANE",
    "DANE_ONLY",
    "DECISIONS",
    "HOST_STATUSES",
    "NO_DANE",
    "TEMP",
    "DaneHost",
    "DaneState",
]

DANE_ONLY = "dane-only"
DANE = "dane"
NO_DANE = "none"
TEMP = "temp"
#: Every valid :attr:`DaneState.decision`.
DECISIONS = (DANE_ONLY, DANE, NO_DANE, TEMP)

#: Every valid :attr:`DaneHost.status`:
#:
#: - ``dane``: secure addresses and a secure TLSA RRset with a usable record
#:   (usage 2 or 3, selector 0/1, matching type 0/1/2 with data of the right
#:   length; RFC 7672 §3.1.1–§3.1.2);
#: - ``tls-required``: a secure TLSA RRset whose records are all unusable
#:   (RFC 7672 §3.1.3: TLS is required, authentication is not possible);
#: - ``no-tlsa``: secure addresses, and a secure denial of the TLSA RRset;
#: - ``insecure``: an address or TLSA answer that is not secure (no AD bit);
#: - ``missing``: the host name does not exist or has no addresses; it is
#:   skipped, not fatal (one dead MX host must not make a domain TEMP).
HOST_STATUSES = ("dane", "tls-required", "no-tlsa", "insecure", "missing")


@dataclass(frozen=True, slots=True)
class DaneHost:
    """What DNSSEC says about one MX host of a domain with a secure MX RRset."""

    name: str
    """The MX host name as an A-label, without the trailing dot."""
    status: str
    """One of :data:`HOST_STATUSES`."""
    reason: str = ""
    """One human-readable line (shown by ``mta-sts-query`` and ``mta-sts-cache show``)."""


@dataclass(slots=True, eq=False)
class DaneState:
    """One domain's DANE evaluation (DESIGN.md §7)."""

    domain: str
    decision: str
    """One of :data:`DECISIONS`."""
    reason: str
    """Why, in one line: e.g. ``"MX RRset insecure"``, ``"2 of 2 MX hosts have usable TLSA"``,
    ``"TLSA _25._tcp.mx.example: SERVFAIL from the validating resolver"``."""
    hosts: tuple[DaneHost, ...]
    """The MX hosts, in MX preference order (empty unless the MX RRset was secure)."""
    evaluated_at: float
    """When the evaluation ended."""
    expires_at: float
    """When it must be evaluated again: ``evaluated_at`` plus the smallest TTL of the
    answers it used, clamped to a sane range; for ``temp``, a short retry interval."""
    # Framed replies, keyed by whatever the responder renders with; never stored.
    rendered: dict[int, bytes] = field(default_factory=dict, repr=False)

    def same_as(self, other: DaneState) -> bool:
        """True if both hold the same stored data (``rendered`` is not data)."""
        return (
            self.domain == other.domain
            and self.decision == other.decision
            and self.reason == other.reason
            and self.hosts == other.hosts
            and self.evaluated_at == other.evaluated_at
            and self.expires_at == other.expires_at
        )
