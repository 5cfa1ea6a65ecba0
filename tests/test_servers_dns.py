"""The test DNS server (tests/servers/dns.py) answers as the other tests assume.

Queried with dnslib's own client (a blocking socket, run in a thread so the
server keeps turning on the test's loop), over UDP and TCP.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from dnslib import QTYPE, RCODE, DNSLabel, DNSRecord

from tests.servers.dns import DnsServer, Zone

pytestmark = pytest.mark.both_loops

# A SHA-256 digest as TLSA association data (RFC 6698 §2.1.3, matching type 1).
DIGEST = bytes(range(32))


async def ask(
    server: DnsServer, name: str, rtype: str, *, tcp: bool = False, host: str | None = None
) -> bytes:
    """The raw answer of ``server`` to one question."""
    question = DNSRecord.question(name, rtype)
    return await asyncio.to_thread(
        question.send, host or server.host, server.port, tcp=tcp, timeout=5
    )


async def query(server: DnsServer, name: str, rtype: str, *, tcp: bool = False) -> DNSRecord:
    return DNSRecord.parse(await ask(server, name, rtype, tcp=tcp))


@pytest.fixture
def zone() -> Zone:
    return Zone()


@pytest.fixture
async def server(zone: Zone) -> AsyncIterator[DnsServer]:
    instance = DnsServer(zone)
    await instance.start()
    yield instance
    await instance.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free for both UDP and TCP on ``host`` a moment ago."""
    while True:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        ):
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            try:
                tcp.bind((host, port))
            except OSError:
                continue
            return port


# --- MX ----------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [pytest.param(False, id="udp"), pytest.param(True, id="tcp")])
async def test_mx_records_in_the_order_set(server: DnsServer, zone: Zone, tcp: bool) -> None:
    zone.set("mail.example", "MX", [(20, "backup.mail.example"), (10, "mx.mail.example")])
    reply = await query(server, "MAIL.example.", "MX", tcp=tcp)
    assert reply.header.rcode == RCODE.NOERROR
    assert [(rr.rtype, str(rr.rname)) for rr in reply.rr] == [
        (QTYPE.MX, "MAIL.example."),
        (QTYPE.MX, "MAIL.example."),
    ]
    assert [(rr.rdata.preference, str(rr.rdata.label)) for rr in reply.rr] == [
        (20, "backup.mail.example."),
        (10, "mx.mail.example."),
    ]
    assert zone.queries("mail.example", "MX") == 1


async def test_null_mx_is_preference_zero_and_the_root(server: DnsServer, zone: Zone) -> None:
    zone.set("nomail.example", "MX", [(0, ".")])
    raw = await ask(server, "nomail.example", "MX")
    reply = DNSRecord.parse(raw)
    assert len(reply.rr) == 1
    assert reply.rr[0].rdata.preference == 0
    assert reply.rr[0].rdata.label == DNSLabel(".")
    # RFC 7505 §3: RDATA is exactly a zero preference and the root label, so
    # the answer ends with RDLENGTH 3, preference 0, one zero octet.
    assert raw.endswith(b"\x00\x03" + b"\x00\x00" + b"\x00")


async def test_mx_after_a_cname(server: DnsServer, zone: Zone) -> None:
    zone.set("alias.example", "CNAME", ["real.example"])
    zone.set("real.example", "MX", [(5, "mx.real.example")])
    reply = await query(server, "alias.example", "MX")
    assert [(QTYPE[rr.rtype], str(rr.rname), str(rr.rdata)) for rr in reply.rr] == [
        ("CNAME", "alias.example.", "real.example."),
        ("MX", "real.example.", "5 mx.real.example."),
    ]


async def test_empty_mx_list_leaves_the_name_with_nodata(server: DnsServer, zone: Zone) -> None:
    zone.set("gone.example", "MX", [(10, "mx.gone.example")])
    zone.set("gone.example", "MX", [])
    reply = await query(server, "gone.example", "MX")
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.rr == []


# --- TLSA --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [pytest.param(DIGEST, id="bytes"), pytest.param(DIGEST.hex().upper(), id="hex")]
)
@pytest.mark.parametrize("tcp", [pytest.param(False, id="udp"), pytest.param(True, id="tcp")])
async def test_tlsa_records(server: DnsServer, zone: Zone, data: bytes | str, tcp: bool) -> None:
    name = "_25._tcp.mx.example"
    zone.set(name, "TLSA", [(3, 1, 1, data), (2, 0, 2, b"\xab" * 64)])
    reply = await query(server, name, "TLSA", tcp=tcp)
    assert reply.header.rcode == RCODE.NOERROR
    assert [rr.rtype for rr in reply.rr] == [52, 52]  # RFC 6698 §7.1
    fields = [
        (rr.rdata.cert_usage, rr.rdata.selector, rr.rdata.matching_type, rr.rdata.cert_data)
        for rr in reply.rr
    ]
    assert fields == [(3, 1, 1, DIGEST), (2, 0, 2, b"\xab" * 64)]
    assert zone.queries(name, "TLSA") == 1


async def test_tlsa_wire_format(server: DnsServer, zone: Zone) -> None:
    zone.set("_25._tcp.mx.example", "TLSA", [(3, 1, 1, DIGEST)])
    raw = await ask(server, "_25._tcp.mx.example", "TLSA")
    # RFC 6698 §2.1: usage, selector, matching type (one octet each), then the
    # association data; RDLENGTH counts all of it.
    assert raw.endswith((3 + len(DIGEST)).to_bytes(2, "big") + bytes([3, 1, 1]) + DIGEST)


async def test_tlsa_nodata_beside_an_address(server: DnsServer, zone: Zone) -> None:
    # An MX host without TLSA records: its name exists, the TLSA RRset does not.
    zone.set("mx.example", "A", ["192.0.2.1"])
    zone.touch("_25._tcp.mx.example")
    reply = await query(server, "_25._tcp.mx.example", "TLSA")
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.rr == []
    reply = await query(server, "_25._tcp.other.example", "TLSA")
    assert reply.header.rcode == RCODE.NXDOMAIN


async def test_servfail_for_a_tlsa_name(server: DnsServer, zone: Zone) -> None:
    # What a validating resolver answers for a bogus RRset (RFC 7672 §2.2).
    zone.set("_25._tcp.mx.example", "TLSA", [(3, 1, 1, DIGEST)])
    zone.set_rcode("_25._tcp.mx.example", "SERVFAIL")
    reply = await query(server, "_25._tcp.mx.example", "TLSA")
    assert reply.header.rcode == RCODE.SERVFAIL
    assert reply.rr == []


# --- bad values fail in the test, not in the server's thread ---------------------


@pytest.mark.parametrize(
    ("rtype", "value"),
    [
        pytest.param("MX", ("mx.example", 10), id="mx-swapped"),
        pytest.param("MX", (65536, "mx.example"), id="mx-preference-too-big"),
        pytest.param("MX", (10, "mx.example", 1), id="mx-three-fields"),
        pytest.param("TLSA", (3, 1, 1), id="tlsa-no-data"),
        pytest.param("TLSA", (256, 1, 1, DIGEST), id="tlsa-usage-too-big"),
        pytest.param("TLSA", (3, 1, 1, "not hex"), id="tlsa-bad-hex"),
        pytest.param("A", ["192.0.2.1"], id="a-not-a-string"),
        pytest.param("TXT", b"v=STSv1", id="txt-not-a-sequence"),
        pytest.param("SRV", (0, 0, 25, "mx.example"), id="unserved-type"),
    ],
)
def test_bad_values_raise_at_set(zone: Zone, rtype: str, value: object) -> None:
    with pytest.raises(ValueError, match=rtype if rtype != "SRV" else "not served"):
        zone.set("bad.example", rtype, [value])
    # Nothing was stored: the name does not even exist.
    assert zone.lookup_a("bad.example") is None


# --- what the other tests already rely on ------------------------------------------


async def test_cname_chain_is_followed_and_shown(server: DnsServer, zone: Zone) -> None:
    zone.set("one.example", "CNAME", ["two.example"])
    zone.set("two.example", "CNAME", ["three.example"])
    zone.set("three.example", "A", ["192.0.2.3"])
    reply = await query(server, "one.example", "A")
    assert [(QTYPE[rr.rtype], str(rr.rname), str(rr.rdata)) for rr in reply.rr] == [
        ("CNAME", "one.example.", "two.example."),
        ("CNAME", "two.example.", "three.example."),
        ("A", "three.example.", "192.0.2.3"),
    ]
    assert zone.lookup_a("one.example") == "192.0.2.3"
    # Asked for the CNAME itself, the chain is not followed.
    reply = await query(server, "one.example", "CNAME")
    assert [str(rr.rdata) for rr in reply.rr] == ["two.example."]


async def test_nodata_and_nxdomain(server: DnsServer, zone: Zone) -> None:
    zone.set("host.example", "A", ["192.0.2.1"])
    nodata = await query(server, "host.example", "MX")
    assert (nodata.header.rcode, nodata.rr) == (RCODE.NOERROR, [])
    missing = await query(server, "nohost.example", "MX")
    assert (missing.header.rcode, missing.rr) == (RCODE.NXDOMAIN, [])


@pytest.mark.parametrize("tcp", [pytest.param(False, id="udp"), pytest.param(True, id="tcp")])
async def test_never_claims_an_authenticated_answer(
    server: DnsServer, zone: Zone, tcp: bool
) -> None:
    # A query with AD and CD set (RFC 6840 §5.7, §5.9) must not get them back:
    # this server validates nothing, and the DANE tests read the AD bit.
    zone.set("host.example", "A", ["192.0.2.1"])
    question = DNSRecord.question("host.example", "A")
    question.header.ad = 1
    question.header.cd = 1
    raw = await asyncio.to_thread(question.send, server.host, server.port, tcp=tcp, timeout=5)
    reply = DNSRecord.parse(raw)
    assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.1"]
    assert (reply.header.ad, reply.header.cd) == (0, 0)


@pytest.mark.parametrize(
    ("rtype", "values"),
    [
        pytest.param("TXT", [[b"x" * 100] for _ in range(8)], id="txt"),
        # A full certificate as association data (usage 3, selector 0, type 0).
        pytest.param("TLSA", [(3, 0, 0, b"\x30" * 600)], id="tlsa"),
        # Distinct first labels: name compression cannot shrink the answer.
        pytest.param("MX", [(i, f"{'m' * 40}{i}.example") for i in range(12)], id="mx"),
    ],
)
async def test_large_udp_answer_is_truncated_and_whole_over_tcp(
    server: DnsServer, zone: Zone, rtype: str, values: list[object]
) -> None:
    zone.set("big.example", rtype, values)
    udp = await query(server, "big.example", rtype)
    assert udp.header.tc == 1  # RFC 1035 §4.2.1: 512 octets over UDP
    assert udp.rr == []
    tcp = await query(server, "big.example", rtype, tcp=True)
    assert tcp.header.tc == 0
    assert len(tcp.rr) == len(values)


# --- where it listens ----------------------------------------------------------------


async def test_default_port_is_ephemeral_and_shared_by_udp_and_tcp(zone: Zone) -> None:
    zone.set("host.example", "A", ["192.0.2.1"])
    first, second = DnsServer(zone), DnsServer(zone)
    await first.start()
    try:
        await second.start()
        try:
            assert first.port != 0
            assert second.port not in (0, first.port)
            for server in (first, second):
                for tcp in (False, True):
                    reply = await query(server, "host.example", "A", tcp=tcp)
                    assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.1"]
        finally:
            await second.close()
    finally:
        await first.close()


async def test_port_option_binds_that_port(zone: Zone) -> None:
    zone.set("host.example", "A", ["192.0.2.1"])
    port = free_port()
    server = DnsServer(zone, port=port)
    assert server.port == port
    await server.start()
    try:
        assert server.port == port
        for tcp in (False, True):
            reply = await query(server, "host.example", "A", tcp=tcp)
            assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.1"]
    finally:
        await server.close()


async def test_host_option_binds_that_address_only(zone: Zone) -> None:
    zone.set("host.example", "A", ["192.0.2.1"])
    server = DnsServer(zone, host="127.0.0.2")
    await server.start()
    try:
        for tcp in (False, True):
            raw = await ask(server, "host.example", "A", tcp=tcp, host="127.0.0.2")
            assert [str(rr.rdata) for rr in DNSRecord.parse(raw).rr] == ["192.0.2.1"]
        with pytest.raises(ConnectionRefusedError):
            await ask(server, "host.example", "A", tcp=True, host="127.0.0.1")
    finally:
        await server.close()


@pytest.mark.parametrize(
    "held", [pytest.param(socket.SOCK_DGRAM, id="udp"), pytest.param(socket.SOCK_STREAM, id="tcp")]
)
async def test_busy_port_fails_and_leaves_nothing_bound(zone: Zone, held: int) -> None:
    zone.set("host.example", "A", ["192.0.2.1"])
    port = free_port()
    server = DnsServer(zone, port=port)
    with socket.socket(socket.AF_INET, held) as holder:
        holder.bind(("127.0.0.1", port))
        if held == socket.SOCK_STREAM:
            holder.listen()
        # A fixed port is never swapped for another one.
        with pytest.raises(OSError, match="in use"):
            await server.start()
    # The half that did bind was released at once: the port is free again.
    await server.start()
    try:
        reply = await query(server, "host.example", "A", tcp=True)
        assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.1"]
    finally:
        await server.close()
