"""A small DNS server for the tests: UDP and TCP on one port of one address (dnslib).

It answers from an in-memory :class:`Zone` the way a recursive resolver would
for its clients: CNAME chains inside the zone are followed and the chain is put
in the answer, unknown names get NXDOMAIN, names without the asked type get
NODATA. Per name it can also answer with a fixed rcode (SERVFAIL, REFUSED),
delay its answers, or never answer at all (a "blackhole"). Every TTL is 0 so
c-ares never caches an answer and tests see each change at once.

Record types: A, AAAA, CNAME, TXT, MX (the Null MX of RFC 7505 included) and
TLSA (RFC 6698, for DANE). The server listens on 127.0.0.1 and an ephemeral
port unless told otherwise: a stub resolver configured through resolv.conf
(Postfix's smtp(8)) can only reach port 53.

UDP answers larger than 512 bytes are truncated (TC bit) so that a client has
to retry over TCP, as with a real server.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RD, RR, TLSA, TXT, A, DNSRecord

from tests.servers.streams import close_server, serving

__all__ = ["DnsServer", "Zone"]

_UDP_LIMIT = 512  # RFC 1035 §4.2.1; we ignore EDNS to exercise the TCP fallback
_MAX_CHAIN = 8
_NAME_RDATA = {"A": A, "AAAA": AAAA, "CNAME": CNAME}


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass
class _Node:
    # Record data per type, built (and so checked) when the test sets it.
    records: dict[str, list[RD]] = field(default_factory=dict)


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

        Values per type:

        - A, AAAA, CNAME: a string (address or target name);
        - TXT: a sequence of byte strings, one per character-string;
        - MX: ``(preference, exchange)``; ``(0, ".")`` is the Null MX (RFC 7505 §3);
        - TLSA: ``(usage, selector, matching_type, data)`` with ``data`` as bytes
          or as a hex string (RFC 6698 §2.1).

        A value of the wrong shape raises ``ValueError`` here, in the test,
        rather than later in the server's thread.
        """
        rdata = [_rdata(rtype, value) for value in values]
        with self._lock:
            node = self._nodes.setdefault(_norm(name), _Node())
            if rdata:
                node.records[rtype] = rdata
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
        # dnslib copies the request's flags: a query with AD set (RFC 6840
        # §5.7) would come back "authenticated" from a server that validates
        # nothing. Like any non-validating resolver, never set AD or CD.
        reply.header.ad = 0
        reply.header.cd = 0
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
                    for rdata in node.records[qtype]:
                        reply.add_answer(RR(owner, request.q.qtype, rdata=rdata, ttl=0))
                    break
                if "CNAME" in node.records and qtype != "CNAME":
                    cname = node.records["CNAME"][0]
                    reply.add_answer(RR(owner, QTYPE.CNAME, rdata=cname, ttl=0))
                    owner = str(cname)
                    name = _norm(owner)
                    continue
                break  # NODATA
        return reply


def _rdata(rtype: str, value: object) -> RD:
    """dnslib record data for one value of :meth:`Zone.set`."""
    if rtype in _NAME_RDATA:
        if not isinstance(value, str):
            raise ValueError(f"{rtype} value must be a string, not {value!r}")
        return _NAME_RDATA[rtype](value)
    if rtype == "TXT":
        if not isinstance(value, list | tuple):
            raise ValueError(f"TXT value must be a sequence of byte strings, not {value!r}")
        return TXT(list(value))
    if rtype == "MX":
        match value:
            case (int() as preference, str() as exchange) if 0 <= preference <= 0xFFFF:
                # RFC 1035 §3.3.9; "." packs as the root label, the Null MX.
                return MX(exchange, preference)
        raise ValueError(f"MX value must be (preference 0-65535, exchange), not {value!r}")
    if rtype == "TLSA":
        match value:
            case (int() as usage, int() as selector, int() as mtype, bytes() | str() as data) if (
                all(0 <= octet <= 0xFF for octet in (usage, selector, mtype))
            ):
                # RFC 6698 §2.1: three one-octet fields, then the association data.
                try:
                    raw = bytes.fromhex(data) if isinstance(data, str) else data
                except ValueError as exc:
                    raise ValueError(f"TLSA data is not hex: {data!r}") from exc
                return TLSA(usage, selector, mtype, raw)
        raise ValueError(
            f"TLSA value must be (usage, selector, matching type 0-255, bytes or hex), "
            f"not {value!r}"
        )
    raise ValueError(f"record type {rtype!r} is not served by the test DNS server")


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
    """The zone served over UDP and TCP on one port of one IPv4 address.

    ``port=0`` (the default) takes an ephemeral port free for both protocols;
    any other port is bound as given, and ``start`` raises ``OSError`` if
    either protocol cannot have it. After ``start``, ``port`` is the bound port.
    """

    def __init__(self, zone: Zone, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.zone = zone
        self.host = host
        self.port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._pending: set[asyncio.Handle] = set()
        self._tcp_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        udp, tcp = self._bind()
        loop = asyncio.get_running_loop()
        try:
            self._udp, _proto = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
        self.port = udp.getsockname()[1]

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket bound to one port, or ``OSError`` and neither.

        Bound here, synchronously, so that a failure leaves no socket behind
        (a transport closes its socket only on a later turn of the loop) and
        the caller may try the same port again at once.
        """
        # Port 0: a random UDP port, then the same TCP port; retry on a clash.
        attempts = 1 if self.port else 20
        error: OSError | None = None
        for _ in range(attempts):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self.port))
                # As asyncio.start_server would: a TIME_WAIT left by an earlier
                # run must not keep a fixed port (53) from being reused.
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, udp.getsockname()[1]))
            except OSError as exc:
                udp.close()
                tcp.close()
                error = exc
                continue
            return udp, tcp
        assert error is not None
        if self.port:
            raise error
        raise OSError(f"no free UDP+TCP port pair on {self.host}") from error

    async def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self._udp is not None:
            self._udp.close()
        await close_server(self._tcp, self._tcp_tasks)

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
        def send(packet: bytes) -> None:
            if not writer.is_closing():
                writer.write(struct.pack("!H", len(packet)) + packet)

        async with serving(self._tcp_tasks, writer):
            while True:
                head = await reader.readexactly(2)
                (length,) = struct.unpack("!H", head)
                self.handle(await reader.readexactly(length), send, udp=False)
