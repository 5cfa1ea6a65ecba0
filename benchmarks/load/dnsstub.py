"""The benchmarks' DNS stub: a UDP server on 127.0.0.1 that counts every query and
answers only what it is told to.

- ``DnsStub()`` never answers (what the load benchmarks used before DANE):
  any lookup that leaves a daemon's cache shows up as a counted query and as
  a late or failed reply.
- ``DnsStub(probe_only())`` answers one question: the SOA of the DNSSEC probe
  name (``dnssec_probe_name``, the root by default) with the AD bit set, as a
  validating resolver does (RFC 4035 §3.2.3). mtasts-fast's probe
  (``mtasts_fast/dane/probe.py``) then keeps DANE detection active, which is
  the default configuration ``make bench-load`` measures; every other query
  is counted and left unanswered.
- ``DnsStub(ColdZone(...))`` (``make bench-cold``) answers every name of the
  cold benchmark's generated domains (``ColdZone``'s docstring), all of them
  insecure (no AD bit) except the probe.

The stub counts queries by type and tells the probe's apart (``drain`` and
``drain_types`` return the counts since their last call). The wire format is
written here rather than with dnslib so that this module stays standard-library
only (``runner.py`` imports it, and the peer's launcher imports ``runner.py``
under the peer's venv) and so that the cold benchmark's DNS server costs as
little CPU as a real resolver's cache would: one parse of the question, one
packed answer.
"""

from __future__ import annotations

import collections
import contextlib
import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 15: "MX", 16: "TXT", 28: "AAAA", 52: "TLSA"}
A, SOA, MX, TXT, AAAA, TLSA = 1, 6, 15, 16, 28, 52
NOERROR, NXDOMAIN = 0, 3
TTL = 300  # what the answers say; the negative TTL is the SOA's minimum (RFC 2308 §5)


@dataclass(frozen=True, slots=True)
class Query:
    """The one question of a DNS query."""

    id: int
    rd: bool
    name: str
    """Lower case, without the trailing dot; ``"."`` for the root."""
    qtype: int
    question: bytes
    """The question section as received (echoed in the answer)."""

    @property
    def type_name(self) -> str:
        return TYPES.get(self.qtype, str(self.qtype))


@dataclass(frozen=True, slots=True)
class Answer:
    """What to answer: the records of the asked type at the asked name."""

    rcode: int = NOERROR
    records: tuple[bytes, ...] = ()
    """RDATA of each record (owner: the question's name, type: the question's)."""
    secure: bool = False
    """Set the AD bit."""
    authority: bytes = b""
    """Whole resource records for the authority section (a negative answer's SOA)."""


Answerer = Callable[[Query], Answer | None]
"""What to answer to a query; None: leave it unanswered."""


def parse_query(packet: bytes) -> Query | None:
    """The question of ``packet``; None for anything but a query with one question."""
    if len(packet) < 12:
        return None
    qid, flags, qdcount = struct.unpack_from("!HHH", packet)
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, pos = [], 12
    while True:
        if pos >= len(packet):
            return None
        size = packet[pos]
        if size == 0:
            pos += 1
            break
        if size & 0xC0:  # no compression pointer in a lone question
            return None
        labels.append(packet[pos + 1 : pos + 1 + size])
        pos += 1 + size
    if pos + 4 > len(packet):
        return None
    (qtype,) = struct.unpack_from("!H", packet, pos)
    name = b".".join(labels).decode("ascii", "replace").lower() or "."
    return Query(qid, bool(flags & 0x0100), name, qtype, packet[12 : pos + 4])


def render(query: Query, answer: Answer) -> bytes:
    """The response packet: QR, RA, RD as asked, AD if ``answer.secure``."""
    flags = 0x8080 | (0x0100 if query.rd else 0) | (0x0020 if answer.secure else 0)
    flags |= answer.rcode
    head = struct.pack(
        "!6H", query.id, flags, 1, len(answer.records), 1 if answer.authority else 0, 0
    )
    # Each record's owner is a pointer to the question's name (offset 12).
    fixed = struct.pack("!HHI", query.qtype, 1, TTL)
    records = b"".join(
        b"\xc0\x0c" + fixed + struct.pack("!H", len(rdata)) + rdata for rdata in answer.records
    )
    return head + query.question + records + answer.authority


# --------------------------------------------------------------------------------------
# Record data
# --------------------------------------------------------------------------------------


def wire_name(name: str) -> bytes:
    labels = [x.encode("ascii") for x in name.rstrip(".").split(".") if x]
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"


def rdata_a(address: str) -> bytes:
    return socket.inet_aton(address)


def rdata_txt(*strings: str) -> bytes:
    return b"".join(bytes([len(s)]) + s.encode("ascii") for s in strings)


def rdata_mx(preference: int, exchange: str) -> bytes:
    return struct.pack("!H", preference) + wire_name(exchange)


def rdata_soa(zone: str) -> bytes:
    mname, rname = wire_name(f"ns.{zone}".lstrip(".")), wire_name(f"hostmaster.{zone}".lstrip("."))
    return mname + rname + struct.pack("!5I", 1, 3600, 600, 86400, TTL)


def soa_record(zone: str) -> bytes:
    """A whole SOA resource record for an authority section."""
    rdata = rdata_soa(zone)
    return wire_name(zone) + struct.pack("!HHIH", SOA, 1, TTL, len(rdata)) + rdata


# --------------------------------------------------------------------------------------
# Answerers
# --------------------------------------------------------------------------------------


def never(_query: Query) -> Answer | None:
    return None


def probe_answer(query: Query, probe_name: str) -> Answer | None:
    """The validated SOA of the DNSSEC probe name, or None for any other question."""
    if query.qtype == SOA and query.name == probe_name:
        return Answer(records=(rdata_soa("" if probe_name == "." else probe_name),), secure=True)
    return None


def probe_only(probe_name: str = ".") -> Answerer:
    """Answers the DNSSEC probe (secure), nothing else."""
    return lambda query: probe_answer(query, probe_name)


class ColdZone:
    """Every name of the cold benchmark's domains ``c<N>.<suffix>``, insecure.

    - ``_mta-sts.<domain>`` TXT: ``v=STSv1; id=<id>;`` (RFC 8461 §3.1);
    - ``mta-sts.<domain>`` A: the HTTPS policy host's address; AAAA: NODATA;
    - ``<domain>`` MX: ``10 mx1.<domain>`` (insecure: RFC 7672 §2.2.1 stops
      there, DANE does not apply);
    - ``mx1.<domain>`` A 127.0.0.1, AAAA NODATA; ``_25._tcp.mx1.<domain>``
      TLSA: NODATA (a daemon that looks further than the insecure MX RRset
      gets answers too);
    - the DNSSEC probe name's SOA, secure; anything else: NXDOMAIN.

    Negative answers carry the zone's SOA (RFC 2308 §3).
    """

    def __init__(self, suffix: str, https_ip: str, policy_id: str, probe_name: str = ".") -> None:
        self.suffix = suffix
        self.probe_name = probe_name
        self._txt = (rdata_txt(f"v=STSv1; id={policy_id};"),)
        self._https = (rdata_a(https_ip),)
        self._local = (rdata_a("127.0.0.1"),)
        self._soa = soa_record(suffix)
        self._pattern = re.compile(
            r"(?:(_mta-sts|mta-sts|mx1|_25\._tcp\.mx1)\.)?(c\d+)\." + re.escape(suffix)
        )

    def __call__(self, query: Query) -> Answer | None:
        probe = probe_answer(query, self.probe_name)
        if probe is not None:
            return probe
        found = self._pattern.fullmatch(query.name)
        if found is None:
            return Answer(rcode=NXDOMAIN, authority=self._soa)
        prefix, qtype = found.group(1), query.qtype
        records: tuple[bytes, ...] = ()
        if prefix == "_mta-sts" and qtype == TXT:
            records = self._txt
        elif prefix == "mta-sts" and qtype == A:
            records = self._https
        elif prefix is None and qtype == MX:
            records = (rdata_mx(10, f"mx1.{found.group(2)}.{self.suffix}"),)
        elif prefix == "mx1" and qtype == A:
            records = self._local
        if records:
            return Answer(records=records)
        return Answer(authority=self._soa)  # NODATA


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class DnsStub:
    """A UDP DNS server on 127.0.0.1 (ephemeral port) in a thread of this process.

    Counts each query by type; a query for the DNSSEC probe (SOA of the probe
    name) is counted apart, in :attr:`probes`.
    """

    def __init__(self, answerer: Answerer = never, probe_name: str = ".") -> None:
        self._answerer = answerer
        self._probe_name = probe_name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._lock = threading.Lock()
        self._types: collections.Counter[str] = collections.Counter()
        self._by_name: collections.Counter[tuple[str, str]] = collections.Counter()
        self.count_names: frozenset[str] = frozenset()
        """Types whose queries are also counted per name (``drain_names``)."""
        #: Probe queries received, and answered, since the start.
        self.probes = 0
        self.probes_answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-stub", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sock, answerer = self.sock, self._answerer
        while not self._stop.is_set():
            try:
                packet, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = parse_query(packet)
            if query is None:
                continue
            answer = answerer(query)
            probe = query.qtype == SOA and query.name == self._probe_name
            with self._lock:
                if probe:
                    self.probes += 1
                    self.probes_answered += answer is not None
                else:
                    self._types[query.type_name] += 1
                    if query.type_name in self.count_names:
                        self._by_name[(query.type_name, query.name)] += 1
            if answer is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(render(query, answer), peer)

    def drain(self) -> int:
        """Queries other than the probe's since the last ``drain``/``drain_types``."""
        return sum(self.drain_types().values())

    def drain_types(self) -> dict[str, int]:
        """Like ``drain``, by query type."""
        with self._lock:
            types = dict(self._types)
            self._types.clear()
        return types

    def drain_names(self) -> dict[tuple[str, str], int]:
        """Queries per (type, name) for the types in :attr:`count_names`, since the last call."""
        with self._lock:
            names = dict(self._by_name)
            self._by_name.clear()
        return names

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
