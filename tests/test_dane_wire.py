"""The DANE lookups' own reading of simple answers (mtasts_fast/dane/wire.py).

Whatever wire.py reads itself must come out exactly as dnspython's reading
(``transport._parse`` then ``resolver._classify``) of the same bytes; whatever
it does not read is left to dnspython. Checked on crafted answers (each shape,
and each way of leaving it) and on every answer the real resolvers give during
the DANE evaluations of the DNSSEC test tree's catalogue.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from mtasts_fast.dane import transport
from mtasts_fast.dane.evaluate import evaluate
from mtasts_fast.dane.resolver import Answer, DaneResolver, _classify, _simple
from mtasts_fast.dane.wire import Query
from tests.dane_world import DaneWorld, Extra
from tests.servers.dnssec import DaneCase
from tests.servers.world import World

NAME = "mail.Example.org"


def _readings(
    query: Query, data: bytes, name: str, rdtype: str
) -> tuple[Answer | None, Answer | None]:
    """(wire.py's answer or None, dnspython's answer or None: not an answer to us)."""
    simple = query.read_simple(data)
    ours = _simple(name, rdtype, simple, "s") if simple is not None else None
    try:
        response = dns.message.from_wire(data, continue_on_error=True, ignore_trailing=True)
    except dns.exception.DNSException:
        return ours, None
    if not query.message.is_response(response):
        return ours, None
    theirs, pending = _classify(name, rdtype, response, "s")
    if ours is not None:
        assert pending is None
    malformed = len(getattr(response, "errors", ()))
    if malformed:
        theirs = dataclasses.replace(theirs, malformed=malformed)
    return ours, theirs


# --- the question ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        pytest.param("example.com", "MX", id="mx"),
        pytest.param("_25._tcp.mx1.Example.ORG", "TLSA", id="tlsa-mixed-case"),
        pytest.param("a-b.c", "A", id="a"),
        pytest.param("x" * 63 + ".example", "AAAA", id="long-label"),
    ],
)
def test_the_question_is_what_dnspython_would_send(name: str, rdtype: str) -> None:
    query = Query(name, rdtype, 1232)
    theirs = dns.message.make_query(
        dns.name.from_text(name),
        dns.rdatatype.from_text(rdtype),
        use_edns=0,
        want_dnssec=True,
        payload=1232,
    )
    theirs.flags |= dns.flags.AD
    theirs.id = query.id
    assert query.wire == theirs.to_wire()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(".", id="root"),
        pytest.param("a b.example", id="space"),
        pytest.param("a\\.b.example", id="escaped-dot"),
        pytest.param("é.example", id="u-label"),
    ],
)
def test_other_names_are_left_to_dnspython(name: str) -> None:
    query = Query(name, "MX", 1232)
    response = dns.message.make_response(query.message)
    assert query.message.to_wire() == query.wire
    assert query.read_simple(response.to_wire()) is None


def test_a_name_over_255_octets_fails_as_with_dnspython() -> None:
    with pytest.raises(dns.name.NameTooLong):
        Query(".".join(["x" * 60] * 5), "MX", 1232)


# --- crafted answers --------------------------------------------------------------------


def _response(
    query: Query, *, flags: int = 0, rcode: dns.rcode.Rcode = dns.rcode.NOERROR
) -> dns.message.Message:
    response = dns.message.make_response(query.message)
    response.flags |= flags
    response.set_rcode(rcode)
    return response


def _mx(name: str, ttl: int, *texts: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(name + ".", ttl, "IN", "MX", *texts)


def _soa(owner: str, ttl: int, minimum: int) -> dns.rrset.RRset:
    text = f"ns.{owner}. admin.{owner}. 1 3600 600 86400 {minimum}"
    return dns.rrset.from_text(owner + ".", ttl, "IN", "SOA", text)


def data_one(q: Query) -> bytes:
    r = _response(q)
    r.answer.append(_mx(NAME, 300, "10 mx1.example.org."))
    return r.to_wire()


def data_secure_two(q: Query) -> bytes:
    r = _response(q, flags=dns.flags.AD)
    r.answer.append(_mx(NAME, 300, "10 mx1.example.org.", "20 mail.example.org."))
    return r.to_wire()


def data_two_ttls(q: Query) -> bytes:
    r = _response(q)
    r.answer.append(_mx(NAME, 300, "10 mx1.example.org."))
    r.answer.append(_mx(NAME, 100, "20 mx2.example.org."))
    return r.to_wire()


def data_owner_case(q: Query) -> bytes:
    r = _response(q)
    r.answer.append(_mx(NAME.upper(), 300, "10 mx1.example.org."))
    return r.to_wire()


def data_no_opt(q: Query) -> bytes:
    r = _response(q)
    r.use_edns(False)
    r.answer.append(_mx(NAME, 300, "10 mx1.example.org."))
    return r.to_wire()


def data_trailing(q: Query) -> bytes:
    return data_one(q) + b"\x00junk"


def data_ttl_top_bit(q: Query) -> bytes:
    wire = bytearray(data_one(q))
    # The MX record's TTL: after the header, the question and its owner pointer.
    at = 12 + len(q.wire) - 12 - 11 + 2 + 4
    assert wire[at : at + 4] == struct.pack("!I", 300)
    wire[at : at + 4] = struct.pack("!I", 0x80000001)
    return bytes(wire)


def data_nodata_parent_soa(q: Query) -> bytes:
    r = _response(q)
    r.authority.append(_soa("Example.org", 600, 120))
    return r.to_wire()


def data_nodata_own_soa(q: Query) -> bytes:
    r = _response(q, flags=dns.flags.AD)
    r.authority.append(_soa(NAME, 60, 3600))
    return r.to_wire()


def data_nodata_bare(q: Query) -> bytes:
    return _response(q).to_wire()


def data_nxdomain(q: Query) -> bytes:
    r = _response(q, rcode=dns.rcode.NXDOMAIN)
    r.authority.append(_soa("org", 900, 900))
    return r.to_wire()


def data_duplicate(q: Query) -> bytes:
    r = _response(q)
    r.answer.append(_mx(NAME, 300, "10 mx1.example.org."))
    r.answer.append(_mx(NAME, 300, "10 MX1.example.org."))
    return r.to_wire()


def data_unrelated_soa(q: Query) -> bytes:
    r = _response(q)
    r.authority.append(_soa("example.net", 600, 120))
    return r.to_wire()


def data_data_with_ns(q: Query) -> bytes:
    r = _response(q)
    r.answer.append(_mx(NAME, 300, "10 mx1.example.org."))
    r.authority.append(dns.rrset.from_text("example.org.", 300, "IN", "NS", "ns.example.org."))
    return r.to_wire()


def data_nxdomain_with_answer(q: Query) -> bytes:
    r = _response(q, rcode=dns.rcode.NXDOMAIN)
    r.answer.append(_mx(NAME, 300, "10 mx1.example.org."))
    return r.to_wire()


def data_cname(q: Query) -> bytes:
    r = _response(q)
    r.answer.append(dns.rrset.from_text(NAME + ".", 300, "IN", "CNAME", "other.example.org."))
    r.answer.append(_mx("other.example.org", 300, "10 mx1.example.org."))
    return r.to_wire()


def data_rrsig(q: Query) -> bytes:
    r = _response(q, flags=dns.flags.AD)
    r.answer.append(_mx(NAME, 300, "10 mx1.example.org."))
    r.answer.append(
        dns.rrset.from_text(
            NAME + ".",
            300,
            "IN",
            "RRSIG",
            "MX 13 3 300 20300101000000 20200101000000 12345 example.org. "
            "dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgaXQgcGFyc2VzIGZpbmUgYXMgYmFzZTY0",
        )
    )
    return r.to_wire()


def data_truncated_flag(q: Query) -> bytes:
    return _response(q, flags=dns.flags.TC).to_wire()


def data_servfail_ede(q: Query) -> bytes:
    r = _response(q, rcode=dns.rcode.SERVFAIL)
    r.use_edns(0, options=[dns.edns.EDEOption(dns.edns.EDECode.DNSSEC_BOGUS, "sig")])
    return r.to_wire()


def data_opt_option(q: Query) -> bytes:
    r = _response(q)
    r.use_edns(0, options=[dns.edns.EDEOption(dns.edns.EDECode.OTHER, "note")])
    r.answer.append(_mx(NAME, 300, "10 mx1.example.org."))
    return r.to_wire()


def data_extended_rcode(q: Query) -> bytes:
    r = _response(q)
    r.set_rcode(dns.rcode.BADVERS)
    return r.to_wire()


def data_question_case(q: Query) -> bytes:
    r = _response(q)
    wire = bytearray(r.to_wire())
    wire[13:17] = wire[13:17].upper()  # DNS 0x20: the resolver changed the question's case
    return bytes(wire)


def data_other_id(q: Query) -> bytes:
    r = _response(q)
    r.id = (q.id + 1) % 65536
    r.answer.append(_mx(NAME, 300, "10 mx1.example.org."))
    return r.to_wire()


def data_cut(q: Query) -> bytes:
    return data_secure_two(q)[:-5]


def data_forward_pointer(q: Query) -> bytes:
    wire = bytearray(data_one(q))
    owner = 12 + len(q.wire) - 12 - 11
    assert wire[owner] == 0xC0
    wire[owner + 1] = owner  # points at itself: not backwards
    return bytes(wire)


def data_malformed_rdata(q: Query) -> bytes:
    wire = bytearray(data_one(q))
    rd = 12 + len(q.wire) - 12 - 11 + 2 + 8
    length = struct.unpack_from("!H", wire, rd)[0]
    struct.pack_into("!H", wire, rd, length - 1)  # the exchange runs past its record
    return bytes(wire)


READ_HERE: list[Callable[[Query], bytes]] = [
    data_one,
    data_secure_two,
    data_two_ttls,
    data_owner_case,
    data_no_opt,
]
READ_HERE += [data_trailing, data_ttl_top_bit, data_nodata_parent_soa, data_nodata_own_soa]
READ_HERE += [data_nodata_bare, data_nxdomain]
LEFT_TO_DNSPYTHON: list[Callable[[Query], bytes]] = [
    data_duplicate,
    data_unrelated_soa,
    data_data_with_ns,
]
LEFT_TO_DNSPYTHON += [data_nxdomain_with_answer, data_cname, data_rrsig, data_truncated_flag]
LEFT_TO_DNSPYTHON += [data_servfail_ede, data_opt_option, data_extended_rcode]
LEFT_TO_DNSPYTHON += [data_question_case, data_other_id, data_cut, data_forward_pointer]
LEFT_TO_DNSPYTHON += [data_malformed_rdata]


def _ids(cases: list[Callable[[Query], bytes]]) -> list[str]:
    return [f.__name__.removeprefix("data_").replace("_", "-") for f in cases]


@pytest.mark.parametrize("make", READ_HERE, ids=_ids(READ_HERE))
def test_simple_answers_are_read_as_dnspython_reads_them(make: Callable[[Query], bytes]) -> None:
    query = Query(NAME, "MX", 1232)
    ours, theirs = _readings(query, make(query), NAME, "MX")
    assert ours is not None
    assert ours == theirs


@pytest.mark.parametrize("make", LEFT_TO_DNSPYTHON, ids=_ids(LEFT_TO_DNSPYTHON))
def test_other_answers_are_left_to_dnspython(make: Callable[[Query], bytes]) -> None:
    query = Query(NAME, "MX", 1232)
    ours, _theirs = _readings(query, make(query), NAME, "MX")
    assert ours is None


def test_a_negative_ttl_is_the_soas_smaller_figure() -> None:
    query = Query(NAME, "MX", 1232)
    ours, _ = _readings(query, data_nodata_parent_soa(query), NAME, "MX")
    assert ours is not None
    assert ours.ttl == 120
    ours, _ = _readings(query, data_nodata_bare(query), NAME, "MX")
    assert ours is not None
    assert ours.ttl == dns.message.NEGATIVE_TTL_WITHOUT_SOA


# --- the real resolvers' answers --------------------------------------------------------


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Query, bytes]]:
    """Every datagram or TCP message a DANE query reads, with its question."""
    seen: list[tuple[Query, bytes]] = []
    real = transport._parse

    def recording(data: bytes, query: Query) -> object:
        seen.append((query, data))
        return real(data, query)

    monkeypatch.setattr(transport, "_parse", recording)
    return seen


@pytest.mark.both_loops
async def test_every_answer_of_the_dane_catalogue_reads_the_same(
    dane_world: DaneWorld, world: World, recorded: list[tuple[Query, bytes]]
) -> None:
    domains = [dane_world.domain(case) for case in DaneCase]
    domains += [dane_world.domain(extra) for extra in Extra]
    for server in (dane_world.validating, dane_world.non_validating):
        resolver = DaneResolver([server])
        for domain in domains:
            await evaluate(domain, resolver, 4)
    # The world's plain DNS server: unsigned answers, NODATA, NXDOMAIN.
    plain = DaneResolver([world.nameserver])
    for name in ("good.loc", "mta-sts.good.loc", "nxdomain-here.loc"):
        for rdtype in ("MX", "A", "AAAA"):
            await plain.query(name, rdtype, 4)
    read_here = 0
    for query, data in recorded:
        name = dns.message.from_wire(query.wire).question[0].name.to_text(omit_final_dot=True)
        rdtype = dns.rdatatype.to_text(dns.message.from_wire(query.wire).question[0].rdtype)
        ours, theirs = _readings(query, data, name, rdtype)
        if ours is not None:
            read_here += 1
            assert ours == theirs, (name, rdtype)
    # Signed answers carry RRSIGs and go to dnspython; the insecure zone's
    # and the plain server's are read here.
    assert read_here >= 10
    assert read_here < len(recorded)
