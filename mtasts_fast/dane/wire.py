"""The DANE lookups' common answers, read without dnspython's message objects.

dnspython turns every message into a graph of immutable objects (names,
rdatasets, enums): about 150 µs of a worker's CPU for a one-record MX answer,
most of what a never-seen domain's DANE evaluation costs. Most domains are
unsigned, and their answers are the simplest a resolver gives. So each
question is built here, byte for byte what ``dns.message.make_query`` would
send, and an answer of exactly one of the shapes below is read here
directly; any other datagram (another id, a truncated, signed, aliased or
failed answer, anything unusual) is read by dnspython as before
(``transport.py``). The shapes are a subset of what dnspython reads, and
``tests/test_dane_wire.py`` checks both readings give the same
:class:`~mtasts_fast.dane.resolver.Answer`, on crafted answers and on the
real resolvers' answers of the DNSSEC test tree.

The shapes (RFC 1035 §4.1, names compressed as §4.1.4 allows):

- header: our id, QR set, opcode QUERY, TC clear, rcode NOERROR or
  NXDOMAIN, one question identical to ours;
- answer: records of the asked type at the asked name only (no CNAME, no
  RRSIG), class IN, each record's data accepted by dnspython's own record
  parser, no two alike; not with NXDOMAIN;
- authority: nothing when there are records; otherwise at most one SOA
  record, at the asked name or one of its parents (the negative TTL, RFC
  2308 §5);
- additional: nothing, or one OPT record (RFC 6891 §6.1.2) with the root as
  owner, no extended rcode, version 0 and no options.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import dns.entropy
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.ttl

__all__ = ["Query", "Simple"]

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_TYPE_CLASS = struct.Struct("!HH")
_IN = 1
_OPT = 41
_SOA = 6
_NXDOMAIN = 3
# RFC 3225 §3: the DO bit, in the OPT record's TTL field.
_DO = 0x8000
# Header bits (RFC 1035 §4.1.1).
_QR, _OPCODE, _TC, _RCODE = 0x8000, 0x7800, 0x0200, 0x000F
# A label that needs no escaping in dnspython's text form ("_" for _25._tcp).
_PLAIN_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}\Z")
# dnspython reads at most 16 pointers in one name; this reads fewer.
_MAX_POINTERS = 8
# RFC 2181 §8: a TTL with the top bit set counts as 0 (dnspython does so).
_TTL_LIMIT = 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class Simple:
    """An answer of one of the simple shapes, as the resolver classifies it."""

    nxdomain: bool
    secure: bool
    """The AD bit."""
    records: tuple[dns.rdata.Rdata, ...]
    """The asked-for RRset, in the answer's order (empty: NODATA or NXDOMAIN)."""
    ttl: int
    """dnspython's ``resolve_chaining().minimum_ttl`` for this answer."""


class Query:
    """One question: its wire form, and the reading of what comes back."""

    def __init__(self, name: str, rdtype: str, payload: int) -> None:
        """``name``: absolute, without the trailing dot ("." for the root)."""
        qtype = dns.rdatatype.from_text(rdtype)
        self._rdtype = qtype
        self._qtype = int(qtype)
        labels = name.split(".") if name not in ("", ".") else []
        plain = bool(labels) and all(_PLAIN_LABEL.match(label) for label in labels)
        qname = b""
        if plain:
            qname = b"".join(bytes((len(x),)) + x.encode("ascii") for x in labels) + b"\0"
        self._message: dns.message.Message | None = None
        if not plain or len(qname) > 255:
            # Not a plain host name: dnspython builds it, and reads every answer.
            query = dns.message.make_query(
                dns.name.from_text(name), qtype, use_edns=0, want_dnssec=True, payload=payload
            )
            query.flags |= dns.flags.AD  # RFC 6840 §5.7
            self._message = query
            self.id = query.id
            self.wire = query.to_wire()
            self._question = b""
            return
        self.id = dns.entropy.random_16()
        self._qname = qname.lower()
        # The name's parents, as wire suffixes: where an SOA may stand.
        self._parents = {self._qname[i:] for i in _label_starts(self._qname)}
        self._question = qname + _TYPE_CLASS.pack(self._qtype, _IN)
        # RFC 1035 §4.1.1: RD; RFC 6840 §5.7: AD; one question, one OPT record
        # (RFC 6891 §6.1.2: owner root, CLASS the payload size, TTL holding
        # extended rcode 0, version 0 and the DO bit).
        self.wire = (
            _HEADER.pack(self.id, dns.flags.RD | dns.flags.AD, 1, 0, 0, 1)
            + self._question
            + b"\0"
            + _RR.pack(_OPT, payload, _DO, 0)
        )

    @property
    def message(self) -> dns.message.Message:
        """The question as dnspython's message (for reading other answers)."""
        if self._message is None:
            self._message = dns.message.from_wire(self.wire)
        return self._message

    def read_simple(self, data: bytes) -> Simple | None:
        """``data`` read, if it is our answer in one of the simple shapes; else None."""
        if not self._question:
            return None
        try:
            return self._read(data)
        except (ValueError, IndexError, struct.error, dns.exception.DNSException):
            return None

    def _read(self, data: bytes) -> Simple | None:
        if len(data) < 12:
            return None
        qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
        if qid != self.id or not flags & _QR or flags & (_OPCODE | _TC) or qdcount != 1:
            return None
        rcode = flags & _RCODE
        if rcode not in (0, _NXDOMAIN):
            return None
        offset = 12 + len(self._question)
        if data[12:offset] != self._question:
            return None
        records: list[dns.rdata.Rdata] = []
        ttl = dns.ttl.MAX_TTL
        for _ in range(ancount):
            owner, offset = _name(data, offset)
            rtype, rclass, rttl, rdlen = _RR.unpack_from(data, offset)
            offset += _RR.size
            if owner != self._qname or rtype != self._qtype or rclass != _IN:
                return None
            record = _rdata(data, offset, rdlen, self._rdtype)
            offset += rdlen
            if record in records:
                return None
            records.append(record)
            ttl = min(ttl, 0 if rttl > _TTL_LIMIT else rttl)
        if records and (rcode == _NXDOMAIN or nscount):
            return None
        soa: tuple[int, int] | None = None
        for _ in range(nscount):
            owner, offset = _name(data, offset)
            rtype, rclass, rttl, rdlen = _RR.unpack_from(data, offset)
            offset += _RR.size
            if rtype != _SOA or rclass != _IN or soa is not None or owner not in self._parents:
                return None
            record = _rdata(data, offset, rdlen, dns.rdatatype.SOA)
            offset += rdlen
            soa = (0 if rttl > _TTL_LIMIT else rttl, record.minimum)  # type: ignore[attr-defined]
        for index in range(arcount):
            owner, offset = _name(data, offset)
            rtype, _payload, rttl, rdlen = _RR.unpack_from(data, offset)
            offset += _RR.size
            # The OPT record's TTL: extended rcode, version, flags (RFC 6891 §6.1.3).
            if index or owner != b"\0" or rtype != _OPT or rdlen or rttl >> 16:
                return None
        if offset > len(data):
            return None
        if not records:
            # dnspython's negative TTL: the SOA's TTL and MINIMUM, or a default.
            if soa is not None:
                ttl = min(ttl, *soa)
            else:
                ttl = min(ttl, dns.message.NEGATIVE_TTL_WITHOUT_SOA)
        return Simple(rcode == _NXDOMAIN, bool(flags & dns.flags.AD), tuple(records), ttl)


def _label_starts(qname: bytes) -> list[int]:
    """The offsets of each label of an uncompressed wire name, and of its root."""
    starts, offset = [], 0
    while True:
        starts.append(offset)
        if qname[offset] == 0:
            return starts
        offset += 1 + qname[offset]


def _name(data: bytes, offset: int) -> tuple[bytes, int]:
    """The name at ``offset``, uncompressed and lower-cased (RFC 4343: ASCII
    only), and the offset after it. ValueError where dnspython's reader
    (``dns.name.from_wire_parser``) would fail too, or might: a pointer must
    point before the previous one (before the name for the first) and its
    target must end before the part of the name that points to it."""
    labels: list[bytes] = []
    size = 1
    biggest = start = offset
    end = len(data)
    after: int | None = None
    pointers = 0
    while True:
        if offset >= end:
            raise ValueError("name runs past its bounds")
        length = data[offset]
        offset += 1
        if length == 0:
            break
        if length < 0x40:
            if offset + length > end:
                raise ValueError("label runs past its bounds")
            labels.append(data[offset : offset + length])
            size += 1 + length
            offset += length
        elif length >= 0xC0:
            if offset >= end:
                raise ValueError("pointer runs past its bounds")
            target = ((length & 0x3F) << 8) | data[offset]
            offset += 1
            pointers += 1
            if target >= biggest or pointers > _MAX_POINTERS:
                raise ValueError("bad pointer")
            biggest = target
            if after is None:
                after = offset
            end = min(end, start)
            offset = start = target
        else:
            raise ValueError("label type")
    if size > 255:
        raise ValueError("name too long")
    name = b"".join(bytes((len(x),)) + x for x in labels) + b"\0"
    return name.lower(), (after if after is not None else offset)


def _rdata(
    data: bytes, offset: int, rdlen: int, rdtype: dns.rdatatype.RdataType
) -> dns.rdata.Rdata:
    """The record's data, parsed by dnspython exactly as its message reader does."""
    if offset + rdlen > len(data):
        raise ValueError("record data runs past the message")
    return dns.rdata.from_wire(dns.rdataclass.IN, rdtype, data, offset, rdlen)
