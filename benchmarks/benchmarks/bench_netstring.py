"""Netstring framing: the parser every request goes through, and the reply encoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from mtasts_fast import netstring

PARSERS: dict[str, type[Any]] = {"py": netstring.NetstringParserPy}
ENCODERS: dict[str, Callable[[bytes], bytes]] = {"py": netstring.encode_py}
if netstring.NetstringParserC is not None and netstring.encode_c is not None:
    PARSERS["c"] = netstring.NetstringParserC
    ENCODERS["c"] = netstring.encode_c
IMPLS = sorted(PARSERS)  # ["c", "py"], or ["py"] without the extensions


def requests(count: int) -> bytes:
    """``count`` framed Postfix requests (``postfix <domain>``), back to back."""
    return b"".join(netstring.encode_py(b"postfix mail-%07d.example.com" % i) for i in range(count))


# One long-lived parser per implementation, as a connection keeps one. Every
# benchmark feeds whole requests, so a parser is back at rest after each call.
_parsers = {impl: cls() for impl, cls in PARSERS.items()}
_chunks = {count: requests(count) for count in (1, 100)}
_head, _tail = _chunks[1][:12], _chunks[1][12:]
_reply = (
    b"OK secure match=mx1.mail-0000001.example.com:.mx.mail-0000001.example.com servername=hostname"
)


class Decode:
    """Parsing requests that arrive whole, one or many per read."""

    params: ClassVar[list[Any]] = [IMPLS, [1, 100]]
    param_names: ClassVar[list[str]] = ["impl", "requests"]

    def time_feed(self, impl: str, count: int) -> None:
        """One ``feed()`` of a chunk holding 1 or 100 complete requests (100 =
        pipelined), on a long-lived parser as a connection uses it."""
        _parsers[impl].feed(_chunks[count])


class DecodeSplit:
    """Parsing a request that arrives in two reads (split inside the payload)."""

    params: ClassVar[list[Any]] = [IMPLS]
    param_names: ClassVar[list[str]] = ["impl"]

    def time_feed_two_parts(self, impl: str) -> None:
        """Two ``feed()`` calls that together complete one request: the
        buffering path a slow or fragmenting client takes."""
        parser = _parsers[impl]
        parser.feed(_head)
        parser.feed(_tail)


class Encode:
    """Framing one reply."""

    params: ClassVar[list[Any]] = [IMPLS]
    param_names: ClassVar[list[str]] = ["impl"]

    def time_encode(self, impl: str) -> None:
        """``encode()`` of a typical 95-byte enforce reply (the responder
        memoises framed replies, so this runs once per cached policy and zone)."""
        ENCODERS[impl](_reply)
