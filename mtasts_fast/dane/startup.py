"""What a worker says about DANE when it starts (one worker says it: worker 1).

- ``dane: off`` in a zone: its answers may let MTA-STS override DANE, which
  RFC 8461 §2 forbids; said as a warning, once per start.
- A resolver that is not on loopback: the AD bit it sets travels over a
  network nobody authenticates (RFC 7672 §2.1 asks for a trusted path;
  Postfix's DANE documentation for a resolver on the same host).
- Postfix must do DNSSEC lookups itself for DANE answers to mean anything:
  with ``smtp_dns_support_level`` other than ``dnssec``, Postfix defers every
  message answered ``dane-only`` (a configuration error, 4.7.5) and lowers
  ``dane`` to ``may`` (``dane_init()`` in Postfix's
  ``src/smtp/smtp_tls_policy.c``). The daemon cannot see Postfix's settings,
  so it reminds.
"""

from __future__ import annotations

import logging

from mtasts_fast.config import Config
from mtasts_fast.dane.resolver import DaneResolver

__all__ = ["log_start_notes"]

_log = logging.getLogger("mtasts_fast.dane")


def log_start_notes(config: Config, resolver: DaneResolver | None) -> None:
    """Log the DANE warnings and reminders for ``config`` (module docstring)."""
    off = [
        name
        for name, zone in (("default_zone", config.default_zone), *config.zones.items())
        if zone.dane == "off"
    ]
    if off:
        _log.warning(
            "dane: off in %s: MTA-STS answers there may override DANE, which RFC 8461 §2 "
            "forbids (use dane: precedence, the default)",
            ", ".join(f"zone {name}" if name != "default_zone" else name for name in off),
        )
    if resolver is None:
        return
    remote = resolver.remote()
    if remote:
        _log.warning(
            "resolver %s is not on this host: the AD bit it sets crosses the network "
            "unauthenticated, so DANE detection trusts that network (RFC 7672 §2.1); "
            "run a validating resolver on loopback",
            ", ".join(remote),
        )
    _log.info(
        "DANE answers (dane-only, dane) need smtp_dns_support_level = dnssec in Postfix's "
        "main.cf: without it Postfix defers mail answered dane-only as a configuration error "
        "and lowers dane to may"
    )
