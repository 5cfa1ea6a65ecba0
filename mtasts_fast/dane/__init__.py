"""DANE comes first (RFC 8461 §2, RFC 7672; DESIGN.md §7).

One job per module, in the order a lookup meets them:

- ``state``: the stored model of a domain's DANE evaluation (the four
  decisions, the five host statuses);
- ``wire``: the question's wire form, and the simplest answers read without
  dnspython's message objects (anything else is left to dnspython);
- ``transport``: one DNS exchange (UDP, TCP on truncation, lenient parsing);
- ``resolver``: DNSSEC-aware queries to the configured resolvers (AD bit,
  rcodes, CNAME chains, TTLs);
- ``evaluate``: the RFC 7672 §2.2 walk from MX to TLSA and the decision;
- ``probe``: does the resolver validate? (at start and hourly);
- ``refresher``: coalesced, stored, backed-off evaluations;
- ``reply``: the Postfix reply for a state, memoised on it;
- ``startup``: what a worker says about DANE when it starts;
- ``report``: the DANE part of ``mta-sts-query``.

Only ``state`` is imported here: the cache backends need it, and it pulls
in nothing heavy.
"""

from __future__ import annotations

from mtasts_fast.dane.state import DANE, DANE_ONLY, NO_DANE, TEMP, DaneHost, DaneState

__all__ = ["DANE", "DANE_ONLY", "NO_DANE", "TEMP", "DaneHost", "DaneState"]
