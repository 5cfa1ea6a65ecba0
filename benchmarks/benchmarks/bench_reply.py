"""Reply rendering, and the whole cached-lookup path short of the socket."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from mtasts_fast import netstring
from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.cache.internal import InternalCache
from mtasts_fast.config import Config, ZoneConfig
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.policy import Policy
from mtasts_fast.reply import render_policy
from mtasts_fast.responder import Responder

DOMAIN = "mail-0000001.example.com"
NOW = 4_000_000_000.0  # the responder's clock; the entry is fresh for ever


def make_policy(mx_count: int) -> Policy:
    mx = tuple(f"*.MX{i}.{DOMAIN}" if i % 2 else f"mx{i}.{DOMAIN}" for i in range(mx_count))
    lines = ("version: STSv1", "mode: enforce", *(f"mx: {m}" for m in mx), "max_age: 604800")
    return Policy("enforce", 604800, mx, lines)


POLICIES = {count: make_policy(count) for count in (1, 3, 20)}
ZONES = {"plain": ZoneConfig(), "tlsrpt": ZoneConfig(tlsrpt=True)}


def _responder() -> Responder:
    cache = InternalCache(10_000)
    asyncio.run(cache.put(CacheEntry(DOMAIN, "id1", make_policy(2), NOW, NOW)))
    # The fetcher is never used: every lookup is a fresh cache hit.
    return Responder(Config.default(), cache, PolicyFetcher(), clock=lambda: NOW - 1)


RESPONDER = _responder()
PAYLOAD = b"postfix " + DOMAIN.encode()
REQUEST = netstring.encode_py(PAYLOAD)
PARSERS: dict[str, Any] = {"py": netstring.NetstringParserPy()}
if netstring.NetstringParserC is not None:
    PARSERS["c"] = netstring.NetstringParserC()
IMPLS = sorted(PARSERS)
_first = RESPONDER.answer(PAYLOAD)  # fills the key and reply memos
assert isinstance(_first, bytes), _first
assert b":OK secure match=" in _first, _first


class Render:
    """``render_policy()``: a policy to reply bytes (once per policy and zone;
    the responder memoises the framed result)."""

    params: ClassVar[list[Any]] = [[1, 3, 20], list(ZONES)]
    param_names: ClassVar[list[str]] = ["mx", "zone"]

    def time_render(self, mx_count: int, zone: str) -> None:
        """An enforce reply with 1/3/20 patterns (lower-cased, de-duplicated);
        ``tlsrpt`` adds the Postfix 3.10 TLSRPT attributes and policy strings."""
        render_policy(DOMAIN, POLICIES[mx_count], ZONES[zone])


class Answer:
    """The per-request Python work for a domain in the ``internal`` cache."""

    params: ClassVar[list[Any]] = [IMPLS]
    param_names: ClassVar[list[str]] = ["impl"]

    def time_answer(self, impl: str) -> None:
        """``Responder.answer()`` of one parsed payload: split the request,
        pick the zone, memoised key normalisation, cache read, freshness
        check, memoised framed reply (the same for both ``impl``)."""
        RESPONDER.answer(PAYLOAD)

    def time_feed_and_answer(self, impl: str) -> None:
        """``feed()`` one framed request to the ``impl`` parser, then
        ``answer()`` it: the Python work of one ``data_received`` call,
        short of the transport's write."""
        for payload in PARSERS[impl].feed(REQUEST):
            RESPONDER.answer(payload)
