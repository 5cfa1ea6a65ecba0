"""pytest plugin: the DANE test world, a signed DNS tree with MTA-STS beside it.

One :class:`~tests.servers.dnssec.DnssecTree` per session (Knot behind a
validating and a non-validating Unbound, tests/servers/dnssec.py) holding:

- the DANE catalogue (:class:`~tests.servers.dnssec.DaneCase`), every mail
  domain of it with MTA-STS discovery records whose policy host is the test
  world's HTTPS server, serving an ``enforce`` policy naming the domain's MX
  hosts (so the MTA-STS answer alone would be ``OK secure match=...``);
- :class:`Extra` zones for the cases the catalogue lacks: more MX hosts than
  are evaluated, MX hosts that are aliases, a bogus address record, every MX
  host missing, TTLs below and above the clamp.

The daemon under test asks the validating resolver for everything, the
MTA-STS TXT records included, as it would in production.
"""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.servers.dnssec import (
    STS_ID,
    DaneCase,
    DaneCatalogue,
    DnssecTree,
    DnssecUnavailable,
    TreeZone,
    add_dane_catalogue,
    tlsa_3_1_1,
)
from tests.servers.world import World

__all__ = ["PROBE_NAME", "DaneWorld", "Extra", "Silent"]

#: A signed name of the tree, for ``dnssec_probe_name``.
PROBE_NAME = "dane.test"
#: How many MX hosts :attr:`Extra.MANY_MX` has (the daemon evaluates 10).
MANY_MX_HOSTS = 12


class Extra(enum.StrEnum):
    """Zones beyond the catalogue; each value is a zone label under the anchor."""

    #: MANY_MX_HOSTS MX hosts, every one with a good 3 1 1 TLSA.
    MANY_MX = "many-mx"
    #: MX alias1 (CNAME to target1, TLSA at target1) and alias2 (CNAME to
    #: target2, TLSA only at alias2: RFC 7672 §2.2.2's second choice).
    ALIAS_MX = "alias-mx"
    #: MX mx1 in zone ``bogus-a-hosts``, whose A RRSIG is corrupted.
    BOGUS_A = "bogus-a"
    #: MX gone1 and gone2, neither of which exists.
    ALL_MISSING = "all-missing"
    #: One host with a good TLSA; every record with a TTL of 5 s.
    SHORT_TTL = "short-ttl"
    #: One host with a good TLSA; every record with a TTL of two days.
    LONG_TTL = "long-ttl"
    #: mx1: a good TLSA and a 3 1 1 whose digest is 31 bytes; mx2: only the
    #: malformed one (RFC 6698 §2.1.3: unusable, not fatal).
    MALFORMED_TLSA = "malformed-tlsa"


BOGUS_A_HOSTS = "bogus-a-hosts"


class Silent:
    """A UDP socket that reads queries and never answers (a dead resolver)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    """A resolver address that never answers."""
    server = Silent()
    yield server
    server.close()


@dataclass
class DaneWorld:
    world: World
    tree: DnssecTree
    catalogue: DaneCatalogue
    extra: dict[Extra, str]
    ee_pem: bytes

    @property
    def validating(self) -> str:
        """``host:port`` of the validating resolver, for ``nameservers``."""
        host, port = self.tree.validating
        return f"{host}:{port}"

    @property
    def non_validating(self) -> str:
        host, port = self.tree.non_validating
        return f"{host}:{port}"

    def domain(self, case: DaneCase | Extra) -> str:
        if isinstance(case, DaneCase):
            return self.catalogue.domains[case]
        return self.extra[case]

    def sts_reply(self, case: DaneCase | Extra) -> bytes:
        """The MTA-STS answer for ``case``'s domain (its ``enforce`` policy)."""
        return f"OK secure match={_mx_pattern(self.domain(case))} servername=hostname".encode()


def _mx_pattern(domain: str) -> str:
    return f".{domain}" if not domain.startswith("bogus-tlsa.") else ".dane.test"


def _extra_zones(tree: DnssecTree, ee: str, sts_ip: str) -> dict[Extra, str]:
    zones: dict[Extra, str] = {}

    def zone(extra: Extra) -> TreeZone:
        new = tree.zone(extra.value)
        new.txt("_mta-sts", f"v=STSv1; id={STS_ID};")
        new.a("mta-sts", sts_ip)
        zones[extra] = new.name
        return new

    many = zone(Extra.MANY_MX)
    many.mx("@", *((10 + i, f"mx{i}") for i in range(MANY_MX_HOSTS)))
    for i in range(MANY_MX_HOSTS):
        many.a(f"mx{i}", f"127.0.2.{i + 1}")
        many.tlsa(f"_25._tcp.mx{i}", ee)

    alias = zone(Extra.ALIAS_MX)
    alias.mx("@", (10, "alias1"), (20, "alias2"))
    alias.add("alias1", "CNAME", "target1")
    alias.a("target1", "127.0.2.101")
    alias.tlsa("_25._tcp.target1", ee)
    alias.add("alias2", "CNAME", "target2")
    alias.a("target2", "127.0.2.102")
    alias.tlsa("_25._tcp.alias2", ee)

    hosts = tree.zone(BOGUS_A_HOSTS)
    hosts.a("mx1", "127.0.2.103")
    hosts.tlsa("_25._tcp.mx1", ee)
    hosts.corrupt_signature("mx1", "A")
    zone(Extra.BOGUS_A).mx("@", (10, f"mx1.{hosts.name}."))

    zone(Extra.ALL_MISSING).mx("@", (10, "gone1"), (20, "gone2"))

    malformed = zone(Extra.MALFORMED_TLSA)
    malformed.mx("@", (10, "mx1"), (20, "mx2"))
    short_digest = bytes([3, 1, 1]) + bytes(range(31))
    for host, address in (("mx1", "127.0.2.105"), ("mx2", "127.0.2.106")):
        malformed.a(host, address)
        malformed.add_raw(f"_25._tcp.{host}", "TLSA", short_digest)
    malformed.tlsa("_25._tcp.mx1", ee)

    for extra, ttl in ((Extra.SHORT_TTL, 5), (Extra.LONG_TTL, 2 * 86400)):
        timed = zone(extra)
        timed.add("@", "MX", "10 mx1", ttl=ttl)
        timed.add("mx1", "A", "127.0.2.104", ttl=ttl)
        # An AAAA too: a NODATA answer would carry the SOA minimum (300 s).
        timed.add("mx1", "AAAA", "::1", ttl=ttl)
        timed.add("_25._tcp.mx1", "TLSA", ee, ttl=ttl)
    return zones


@pytest.fixture(scope="session")
def dane_world(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaneWorld]:
    """The tree, started once per session; skipped (or failed) without knot/unbound."""
    try:
        tree = DnssecTree(tmp_path_factory.mktemp("dane-tree"))
    except DnssecUnavailable as exc:
        if os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0"):
            pytest.fail(f"{exc} and MTASTS_REQUIRE_ALL is set (`make deps` as root installs it)")
        pytest.skip(str(exc))
    leaf = world.certs.ca.issue_cert("mx1.tlsa-3-1-1.dane.test")
    ee_pem = leaf.cert_chain_pems[0].bytes()
    catalogue = add_dane_catalogue(
        tree, ee_pem, world.certs.ca.cert_pem.bytes(), mta_sts_ip=world.https_ip
    )
    extra = _extra_zones(tree, tlsa_3_1_1(ee_pem), world.https_ip)
    for domain in (*catalogue.mta_sts, *extra.values()):
        # The policy host's site (the world's DNS records it also adds are
        # never asked: the daemon asks the tree).
        world.add_domain(
            domain,
            txt=[f"v=STSv1; id={STS_ID};"],
            policy=world.policy_text("enforce", [f"*{_mx_pattern(domain)}"]),
        )
    tree.start()
    try:
        yield DaneWorld(world, tree, catalogue, extra, ee_pem)
    finally:
        tree.stop()
