"""A small DNS server for the tests: UDP and TCP on one 127.0.0.1 port (dnslib).

It answers from an in-memory :class:`Zone` the way a recursive resolver would
for its clients: CNAME chains inside the zone are followed and the chain is put
in the answer, unknown names get NXDOMAIN, names without the asked type get
NODATA. Per name it can also answer with a fixed rcode (SERVFAIL, REFUSED),
delay its answers, or never answer at all (a "blackhole"). Every TTL is 0 so
c-ares never caches an answer and tests see each change at once.

UDP answers larger than 512 bytes are truncated (TC bit) so that a client has
to retry over TCP, as with a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, TXT, A, DNSRecord

__all__ = ["DnsServer", "Zone"]

_UDP_LIMIT = 512  # RFC 1035 §4.2.1; we ignore EDNS to exercise the TCP fallback
_MAX_CHAIN = 8
_RDATA = {"A": A, "AAAA": AAAA, "CNAME": CNAME}


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass
class _Node:
    records: dict[str, list[object]] = field(default_factory=dict)


class Zone:
    """Thread-safe table of records, overrides and query counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        self._rcodes: dict[str, int] = {}
        self._stalls: dict[str, float | None] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        # Message ids per (name, type): a resolver's retransmission of one
        # query reuses its id, so these count the queries meant, not sent.
        self._ids: dict[tuple[str, str], set[int]] = {}

    # --- editing (any thread) ---

    def set(self, name: str, rtype: str, values: Sequence[object]) -> None:
        """Replace the ``rtype`` records of ``name``; an empty list keeps the name.

        TXT values are sequences of byte strings (one per character-string);
        A, AAAA and CNAME values are strings.
        """
        with self._lock:
            node = self._nodes.setdefault(_norm(name), _Node())
            if values:
                node.records[rtype] = list(values)
            else:
                node.records.pop(rtype, None)

    def touch(self, name: str) -> None:
        """Make ``name`` exist (NODATA rather than NXDOMAIN for missing types)."""
        with self._lock:
            self._nodes.setdefault(_norm(name), _Node())

    def delete(self, name: str) -> None:
        """Remove ``name`` and every override on it (it becomes NXDOMAIN)."""
        with self._lock:
            self._nodes.pop(_norm(name), None)
            self._rcodes.pop(_norm(name), None)
            self._stalls.pop(_norm(name), None)

    def set_rcode(self, name: str, rcode: str | None) -> None:
        """Answer every query for ``name`` with ``rcode`` (e.g. ``"SERVFAIL"``)."""
        with self._lock:
            if rcode is None:
                self._rcodes.pop(_norm(name), None)
            else:
                self._rcodes[_norm(name)] = getattr(RCODE, rcode)

    def stall(self, name: str, seconds: float | None) -> None:
        """Delay answers for ``name`` by ``seconds``; ``None`` never answers."""
        with self._lock:
            self._stalls[_norm(name)] = seconds

    def unstall(self, name: str) -> None:
        with self._lock:
            self._stalls.pop(_norm(name), None)

    def total_queries(self) -> int:
        """Every query received so far, whatever the name and type."""
        with self._lock:
            return sum(self._counts.values())

    def queries(self, name: str, rtype: str) -> int:
        with self._lock:
            return self._counts[(_norm(name), rtype)]

    def distinct_queries(self, name: str, rtype: str) -> int:
        """Queries with distinct message ids (retransmissions counted once)."""
        with self._lock:
            return len(self._ids.get((_norm(name), rtype), ()))

    def lookup_a(self, name: str) -> str | None:
        """The first A record of ``name`` after CNAMEs, or None."""
        with self._lock:
            current = _norm(name)
            for _ in range(_MAX_CHAIN):
                node = self._nodes.get(current)
                if node is None:
                    return None
                if "A" in node.records:
                    return str(node.records["A"][0])
                if "CNAME" not in node.records:
                    return None
                current = _norm(str(node.records["CNAME"][0]))
            return None

    # --- answering (server thread) ---

    def stall_for(self, name: str) -> tuple[bool, float | None]:
        """(stalled?, seconds) for a query name."""
        with self._lock:
            key = _norm(name)
            if key in self._stalls:
                return True, self._stalls[key]
            return False, None

    def answer(self, request: DNSRecord) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname)
        qtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
        with self._lock:
            name = _norm(qname)
            self._counts[(name, qtype)] += 1
            self._ids.setdefault((name, qtype), set()).add(request.header.id)
            if name in self._rcodes:
                reply.header.rcode = self._rcodes[name]
                return reply
            owner = qname
            for _ in range(_MAX_CHAIN):
                node = self._nodes.get(name)
                if node is None:
                    reply.header.rcode = RCODE.NXDOMAIN
                    break
                if qtype in node.records:
                    for value in node.records[qtype]:
                        reply.add_answer(
                            RR(owner, request.q.qtype, rdata=_rdata(qtype, value), ttl=0)
                        )
                    break
                if "CNAME" in node.records and qtype != "CNAME":
                    target = str(node.records["CNAME"][0])
                    reply.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAME(target), ttl=0))
                    owner, name = target, _norm(target)
                    continue
                break  # NODATA
        return reply


def _rdata(qtype: str, value: object) -> object:
    if qtype == "TXT":
        assert isinstance(value, list | tuple)
        return TXT(list(value))
    return _RDATA[qtype](value)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        def send(packet: bytes) -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.sendto(packet, addr)

        self._server.handle(data, send, udp=True)


class DnsServer:
    """The zone served over UDP and TCP on one port of 127.0.0.1."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.host = "127.0.0.1"
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._pending: set[asyncio.Handle] = set()
        self._tcp_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Take a random UDP port, then the same TCP port; retry on a clash.
        for _ in range(20):
            transport, _proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, 0)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                transport.close()
                continue
            self._udp = transport
            self.port = port
            return
        raise OSError("no free UDP+TCP port pair on 127.0.0.1")

    async def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tcp_tasks):
            task.cancel()
        if self._tcp_tasks:
            await asyncio.gather(*self._tcp_tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    def handle(self, data: bytes, send: object, *, udp: bool) -> None:
        try:
            request = DNSRecord.parse(data)
        except Exception:  # a garbled packet: drop it like a real server
            return
        stalled, seconds = self.zone.stall_for(str(request.q.qname))
        if stalled and seconds is None:
            return
        reply = self.zone.answer(request)
        packet = reply.pack()
        if udp and len(packet) > _UDP_LIMIT:
            truncated = request.reply()
            truncated.header.tc = 1
            truncated.header.rcode = reply.header.rcode
            packet = truncated.pack()
        assert callable(send)
        if stalled and seconds:
            loop = asyncio.get_running_loop()

            def later() -> None:
                self._pending.discard(handle)
                send(packet)

            handle = loop.call_later(seconds, later)
            self._pending.add(handle)
        else:
            send(packet)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_tasks.add(task)

        def send(packet: bytes) -> None:
            if not writer.is_closing():
                writer.write(struct.pack("!H", len(packet)) + packet)

        try:
            while True:
                head = await reader.readexactly(2)
                (length,) = struct.unpack("!H", head)
                self.handle(await reader.readexactly(length), send, udp=False)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # only close() cancels us; end quietly
        finally:
            self._tcp_tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
