"""DANE comes first (RFC 8461 §2, RFC 7672; DESIGN.md §7).

``state`` holds the stored model of a domain's DANE evaluation.
"""

from __future__ import annotations

from mtasts_fast.dane.state import DANE, DANE_ONLY, NO_DANE, TEMP, DaneHost, DaneState

__all__ = ["DANE", "DANE_ONLY", "NO_DANE", "TEMP", "DaneHost", "DaneState"]
