"""The DANE resolver (mtasts_fast/dane/resolver.py) against real servers.

The signed tree's validating Unbound gives secure, insecure, denied and bogus
answers; the test world's DNS server (no DNSSEC, 512-byte UDP answers, CNAME
chains, fixed rcodes) the rest; a socket that never answers plays a dead
resolver, and one that answers from the wrong address plays a forger.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rrset
import pytest

from mtasts_fast.dane.resolver import DaneResolver, Status, parse_servers, system_servers
from tests.dane_world import DaneWorld, Extra, Silent
from tests.servers.world import World

pytestmark = pytest.mark.both_loops


class Forger:
    """Answers every query with a secure-looking A record, from ``reply_from``.

    ``spoof=True`` sends the answer from another socket (another port) than
    the one the query went to: a forged answer a client must drop.
    """

    def __init__(self, *, spoof: bool) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.spoof = spoof
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AD
            response.answer.append(
                dns.rrset.from_text(query.question[0].name, 300, "IN", "A", "192.0.2.66")
            )
            (self.other if self.spoof else self.sock).sendto(response.to_wire(), peer)
            self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        self.other.close()


def _validating(dane_world: DaneWorld) -> DaneResolver:
    return DaneResolver([dane_world.validating])


# --- the statuses, with and without the AD bit ------------------------------------------


async def test_secure_data(dane_world: DaneWorld) -> None:
    resolver = _validating(dane_world)
    answer = await resolver.query("tlsa-3-1-1.dane.test", "MX", 4)
    assert answer.status is Status.DATA
    assert answer.secure
    assert sorted(r.to_text() for r in answer.records) == [
        "10 mx1.tlsa-3-1-1.dane.test.",
        "20 mx2.tlsa-3-1-1.dane.test.",
    ]
    assert 0 < answer.ttl <= 300  # the zone's TTL, counted down by Unbound
    assert answer.canonical == "tlsa-3-1-1.dane.test"
    assert answer.server == dane_world.validating
    assert resolver.queries == 1
    assert answer.describe() == "MX tlsa-3-1-1.dane.test: 2 records, secure"


@pytest.mark.parametrize(
    ("name", "rdtype", "status"),
    [
        pytest.param("implicit-mx.dane.test", "MX", Status.NODATA, id="nodata"),
        pytest.param("nxdomain.dane.test", "MX", Status.NXDOMAIN, id="nxdomain"),
        pytest.param("_25._tcp.mx1.no-tlsa.dane.test", "TLSA", Status.NXDOMAIN, id="no-tlsa"),
    ],
)
async def test_secure_denial_has_the_negative_ttl(
    dane_world: DaneWorld, name: str, rdtype: str, status: Status
) -> None:
    answer = await _validating(dane_world).query(name, rdtype, 4)
    assert answer.status is status
    assert answer.secure
    assert answer.records == ()
    # RFC 2308 §5: min(SOA TTL, SOA MINIMUM), both 300 in the tree.
    assert 0 < answer.ttl <= 300


async def test_insecure_zone_has_no_ad(dane_world: DaneWorld) -> None:
    answer = await _validating(dane_world).query("_25._tcp.mx1.insecure.dane.test", "TLSA", 4)
    assert answer.status is Status.DATA
    assert not answer.secure
    assert answer.describe().endswith("1 record, insecure")


async def test_non_validating_resolver_never_gives_ad(dane_world: DaneWorld) -> None:
    resolver = DaneResolver([dane_world.non_validating])
    answer = await resolver.query("_25._tcp.mx1.tlsa-3-1-1.dane.test", "TLSA", 4)
    assert answer.status is Status.DATA
    assert not answer.secure


async def test_bogus_answer_is_servfail_with_the_resolvers_reason(dane_world: DaneWorld) -> None:
    answer = await _validating(dane_world).query("corrupt-sig.dane.test", "MX", 4)
    assert answer.status is Status.SERVFAIL
    assert answer.failed
    assert not answer.records
    # Unbound's Extended DNS Error (RFC 8914) says why (the text only the
    # first time: later answers come from its cache of bogus data).
    assert answer.detail.startswith("EDE 6 (DNSSEC Bogus)")
    assert answer.describe().startswith(
        f"MX corrupt-sig.dane.test: SERVFAIL from {dane_world.validating} (EDE 6 (DNSSEC Bogus)"
    )


async def test_other_rcode_is_an_error(dane_world: DaneWorld) -> None:
    # The tree's resolvers refuse names outside it.
    answer = await _validating(dane_world).query("example.com", "MX", 4)
    assert answer.status is Status.ERROR
    assert answer.detail.startswith("REFUSED")


async def test_alias_is_followed_and_its_target_named(dane_world: DaneWorld) -> None:
    domain = dane_world.domain(Extra.ALIAS_MX)
    answer = await _validating(dane_world).query(f"alias1.{domain}", "A", 4)
    assert answer.status is Status.DATA
    assert answer.secure
    assert answer.name == f"alias1.{domain}"
    assert answer.canonical == f"target1.{domain}"
    assert [r.to_text() for r in answer.records] == ["127.0.2.101"]


# --- the test world's plain DNS server: TCP, chains, rcodes -------------------------------


async def test_truncated_udp_answer_is_asked_again_over_tcp(world: World) -> None:
    # big-txt.loc's TXT is over 512 bytes: the server sets TC on UDP.
    answer = await DaneResolver([world.nameserver]).query("_mta-sts.big-txt.loc", "TXT", 4)
    assert answer.status is Status.DATA
    assert not answer.secure
    assert "id=bigtxt" in answer.records[0].to_text()


async def test_cname_chain_in_the_answer(world: World) -> None:
    answer = await DaneResolver([world.nameserver]).query("_mta-sts.cname.loc", "TXT", 4)
    assert answer.status is Status.DATA
    assert answer.canonical == "sts.cname-target.loc"


async def test_chain_to_nodata_without_soa_asks_the_target(world: World) -> None:
    # The answer ends at a CNAME with no SOA: the stub asks for the target.
    resolver = DaneResolver([world.nameserver])
    answer = await resolver.query("_mta-sts.cname-nodata.loc", "TXT", 4)
    assert answer.status is Status.NODATA
    assert answer.canonical == "nodata.cname-target.loc"
    assert answer.name == "_mta-sts.cname-nodata.loc"
    assert resolver.queries == 2


async def test_cname_loop_is_an_error(world: World) -> None:
    answer = await DaneResolver([world.nameserver]).query("_mta-sts.cname-loop.loc", "TXT", 4)
    assert answer.status is Status.ERROR


@pytest.mark.parametrize(
    ("name", "status"),
    [
        pytest.param("_mta-sts.servfail.loc", Status.SERVFAIL, id="servfail"),
        pytest.param("_mta-sts.refused.loc", Status.ERROR, id="refused"),
    ],
)
async def test_rcodes(world: World, name: str, status: Status) -> None:
    answer = await DaneResolver([world.nameserver]).query(name, "TXT", 4)
    assert answer.status is status
    assert answer.failed


# --- several resolvers, dead resolvers, forged answers ------------------------------------


async def test_dead_resolver_times_out_within_the_timeout(silent: Silent) -> None:
    started = time.monotonic()
    answer = await DaneResolver([silent.address]).query("tlsa-3-1-1.dane.test", "MX", 0.6)
    elapsed = time.monotonic() - started
    assert answer.status is Status.TIMEOUT
    assert answer.failed
    assert 0.5 < elapsed < 1.5
    assert answer.describe() == (f"MX tlsa-3-1-1.dane.test: no answer ({silent.address} timed out)")


async def test_next_resolver_answers_when_the_first_is_dead(
    dane_world: DaneWorld, silent: Silent
) -> None:
    resolver = DaneResolver([silent.address, dane_world.validating])
    answer = await resolver.query("tlsa-3-1-1.dane.test", "MX", 2)
    assert answer.status is Status.DATA
    assert answer.secure
    assert answer.server == dane_world.validating


async def test_next_resolver_answers_when_the_first_fails(
    dane_world: DaneWorld, world: World
) -> None:
    name = "tlsa-2-1-1.dane.test"
    world.set_rcode(name, "SERVFAIL")
    try:
        resolver = DaneResolver([world.nameserver, dane_world.validating])
        answer = await resolver.query(name, "MX", 4)
    finally:
        world.set_rcode(name, None)
    assert answer.status is Status.DATA
    assert answer.server == dane_world.validating


async def test_failure_of_every_resolver_is_the_last_rcode(world: World, silent: Silent) -> None:
    resolver = DaneResolver([world.nameserver, silent.address])
    answer = await resolver.query("_mta-sts.servfail.loc", "TXT", 1)
    assert answer.status is Status.SERVFAIL


@pytest.mark.parametrize("spoof", [False, True], ids=["from-the-resolver", "from-elsewhere"])
async def test_only_the_configured_resolvers_answer_counts(spoof: bool) -> None:
    # RFC 7672 §2.1: the AD bit is trusted from the configured resolver only;
    # an answer from another address (a forger racing it) is dropped.
    forger = Forger(spoof=spoof)
    try:
        answer = await DaneResolver([forger.address]).query("mx.example.test", "A", 0.6)
    finally:
        forger.close()
    assert forger.answered >= 1
    if spoof:
        assert answer.status is Status.TIMEOUT
    else:
        assert answer.status is Status.DATA
        assert answer.secure


# --- which resolvers ------------------------------------------------------------------


async def test_parse_servers() -> None:
    assert parse_servers(["127.0.0.1", "127.0.0.2:5353", "[::1]:53", "::1"]) == (
        ("127.0.0.1", 53),
        ("127.0.0.2", 5353),
        ("::1", 53),
        ("::1", 53),
    )
    with pytest.raises(ValueError, match="not an IP address"):
        parse_servers(["resolver.example"])


async def test_system_servers_come_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.test\nnameserver 192.0.2.53\nnameserver ::1\n")
    assert system_servers(str(conf)) == (("192.0.2.53", 53), ("::1", 53))
    resolver = DaneResolver(resolv_conf=str(conf))
    assert resolver.servers == (("192.0.2.53", 53), ("::1", 53))
    # RFC 7672 §2.1: only the one off this host is worth a warning.
    assert resolver.remote() == ["192.0.2.53:53"]
    assert resolver.describe() == "192.0.2.53:53, [::1]:53"


async def test_resolv_conf_is_read_as_the_c_library_reads_it(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\n; comment\nnameserver\nnameserver resolver.example\n"
        "  nameserver   192.0.2.1   # trailing\nnameserver fe80::1%lo\noptions rotate\n"
    )
    assert system_servers(str(conf)) == (("192.0.2.1", 53), ("fe80::1%lo", 53))


async def test_without_nameserver_lines_the_local_host_is_asked(tmp_path: Path) -> None:
    # As the C library's stub resolver does (resolv.conf(5)).
    conf = tmp_path / "resolv.conf"
    conf.write_text("options edns0\n")
    assert system_servers(str(conf)) == (("127.0.0.1", 53),)
    assert system_servers(str(tmp_path / "missing")) == (("127.0.0.1", 53),)


async def test_configured_servers_win_over_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\n")
    resolver = DaneResolver(["127.0.0.53:5300"], resolv_conf=str(conf))
    assert resolver.servers == (("127.0.0.53", 5300),)
    assert resolver.remote() == []
