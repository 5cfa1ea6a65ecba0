"""One DNS exchange with one resolver: UDP, and TCP when the answer is truncated.

dnspython's query functions would do, but for one thing: they parse every
record strictly, and dnspython refuses a TLSA record whose data has the wrong
length for its matching type (31 bytes for a SHA-256, say). A whole answer
would then be unreadable, and one malformed record would make its domain
``temp`` where RFC 7672 §3.1 (and Postfix) simply skip the record as
unusable. Here the answer is parsed with ``continue_on_error``: a record that
does not parse is left out and counted in :attr:`Exchange.malformed`.

The UDP socket is connected to the resolver, so the kernel drops datagrams
from any other address or port; a datagram that is not the answer to our
question (another id, another question) is ignored and the wait goes on.
Only the configured resolver's answer is read, and its AD bit trusted
(RFC 7672 §2.1).

An answer of the simplest shapes (wire.py: no signatures, no aliases, one
RRset or a plain denial) is read without dnspython's message objects, with
the same outcome; everything else as described above.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message

from mtasts_fast.dane.wire import Query, Simple

__all__ = ["Exchange", "exchange"]

_TCP_LIMIT = 65_535


@dataclass(frozen=True, slots=True)
class Exchange:
    response: dns.message.Message | None
    """The answer as dnspython read it (None when ``simple`` holds it)."""
    simple: Simple | None
    """The answer, when it was of a shape wire.py reads."""
    malformed: int
    """Records of the answer section that could not be parsed (left out)."""
    tcp: bool


@dataclass(frozen=True, slots=True)
class _Reply:
    response: dns.message.Message | None
    simple: Simple | None
    malformed: int
    truncated: bool


def _parse(data: bytes, query: Query) -> _Reply | None:
    simple = query.read_simple(data)
    if simple is not None:
        return _Reply(None, simple, 0, truncated=False)
    try:
        response = dns.message.from_wire(data, continue_on_error=True, ignore_trailing=True)
    except dns.exception.DNSException:
        return None  # not even a header and a question: not an answer
    if not query.message.is_response(response):
        return None
    truncated = bool(response.flags & dns.flags.TC)
    return _Reply(response, None, len(getattr(response, "errors", ())), truncated)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, query: Query) -> None:
        self.query = query
        self.answer: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.answer.done():
            return
        parsed = _parse(data, self.query)
        if parsed is not None:
            self.answer.set_result(parsed)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on a connected socket: nobody listens there.
        if not self.answer.done():
            self.answer.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionError("socket closed"))


async def _udp(host: str, port: int, query: Query) -> _Reply:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Datagrams(query), remote_addr=(host, port), family=family
    )
    try:
        transport.sendto(query.wire)
        return await protocol.answer
    finally:
        transport.close()


async def _tcp(host: str, port: int, query: Query) -> _Reply:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        wire = query.wire
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            parsed = _parse(await reader.readexactly(length), query)
            if parsed is not None:
                return parsed
    finally:
        writer.close()


async def exchange(host: str, port: int, query: Query, timeout: float) -> Exchange:
    """Ask ``query`` of ``host``:``port``; TimeoutError, OSError or EOFError on failure."""
    async with asyncio.timeout(timeout):
        reply = await _udp(host, port, query)
        if not reply.truncated:
            return Exchange(reply.response, reply.simple, reply.malformed, tcp=False)
        # RFC 7766 §5: a truncated answer is asked again over TCP.
        reply = await _tcp(host, port, query)
        return Exchange(reply.response, reply.simple, reply.malformed, tcp=True)
