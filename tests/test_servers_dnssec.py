"""The DNSSEC test tree itself (tests/servers/dnssec.py): Knot, two Unbounds, the DANE cases.

These tests check the fixture the DANE tests stand on, not the daemon: that
secure answers carry AD, insecure ones do not, bogus ones are SERVFAIL from the
validating resolver (for the intended reason, read from the Extended DNS Error)
and plain data from the non-validating one, and that the TLSA records match
the certificates they were computed from.

Needs Debian's knot and unbound (tests/debian-packages.txt): skipped without
them, failed instead under ``MTASTS_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.servers.dnssec import (
    BOGUS_TLSA_HOSTS,
    STS_ID,
    DaneCase,
    DaneCatalogue,
    DnssecTree,
    DnssecUnavailable,
    Signing,
    dnssec_binaries,
    tlsa_2_1_1,
    tlsa_3_1_1,
    tlsa_rdata,
)

REQUIRE_ALL = os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0")
ANCHOR = "dane.test"
STS_IP = "127.0.0.10"


def _unavailable(reason: str) -> NoReturn:
    if REQUIRE_ALL:
        pytest.fail(f"{reason} and MTASTS_REQUIRE_ALL is set (`make deps` as root installs it)")
    pytest.skip(reason)


def _new_tree(directory: Path, **kwargs: object) -> DnssecTree:
    try:
        return DnssecTree(directory, **kwargs)  # type: ignore[arg-type]
    except DnssecUnavailable as exc:
        _unavailable(str(exc))


class Certs:
    """A test CA and the certificate the good MX hosts would present."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.leaf = self.ca.issue_cert("mx1.tlsa-3-1-1.dane.test")
        self.ee_pem = self.leaf.cert_chain_pems[0].bytes()
        self.ca_pem = self.ca.cert_pem.bytes()


@pytest.fixture(scope="module")
def certs() -> Certs:
    return Certs()


@pytest.fixture(scope="module")
def dane(
    tmp_path_factory: pytest.TempPathFactory, certs: Certs
) -> Iterator[tuple[DnssecTree, DaneCatalogue]]:
    """One tree with the whole DANE catalogue, shared by the module."""
    from tests.servers.dnssec import add_dane_catalogue

    tree = _new_tree(tmp_path_factory.mktemp("dnssec"))
    catalogue = add_dane_catalogue(tree, certs.ee_pem, certs.ca_pem, mta_sts_ip=STS_IP)
    tree.start()
    try:
        yield tree, catalogue
    finally:
        tree.stop()


@pytest.fixture
def tree(dane: tuple[DnssecTree, DaneCatalogue]) -> DnssecTree:
    return dane[0]


@pytest.fixture
def catalogue(dane: tuple[DnssecTree, DaneCatalogue]) -> DaneCatalogue:
    return dane[1]


def _answer(response: dns.message.Message, name: str, rdtype: str) -> set[str]:
    """The rdata texts of the ``rdtype`` RRset at ``name`` in the answer section."""
    wanted = dns.rdatatype.from_text(rdtype)
    for rrset in response.answer:
        if rrset.name.to_text(omit_final_dot=True) == name and rrset.rdtype == wanted:
            return {rdata.to_text() for rdata in rrset}
    return set()


# RFC 8914 §4: DNSSEC Bogus, Signature Expired, DNSKEY Missing.
_DNSSEC_EDE = {
    dns.edns.EDECode.DNSSEC_BOGUS,
    dns.edns.EDECode.SIGNATURE_EXPIRED,
    dns.edns.EDECode.DNSKEY_MISSING,
}


def _describe(tree: DnssecTree, response: dns.message.Message) -> str:
    return f"{response}\n{tree.diagnostics()}"


def _ad(response: dns.message.Message) -> bool:
    return bool(response.flags & dns.flags.AD)


# --- TLSA data ---------------------------------------------------------------------


def test_tlsa_3_1_1_is_the_sha256_of_the_servers_public_key(certs: Certs) -> None:
    # Computed from the private key, not from the certificate the helper reads.
    key = serialization.load_pem_private_key(certs.leaf.private_key_pem.bytes(), None)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert tlsa_3_1_1(certs.ee_pem) == f"3 1 1 {hashlib.sha256(spki).hexdigest()}"
    assert tlsa_3_1_1(certs.ee_pem.decode()) == tlsa_3_1_1(certs.ee_pem)


def test_tlsa_2_1_1_names_the_ca_key_not_the_servers(certs: Certs) -> None:
    ca_cert = x509.load_pem_x509_certificate(certs.ca_pem)
    spki = ca_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert tlsa_2_1_1(certs.ca_pem) == f"2 1 1 {hashlib.sha256(spki).hexdigest()}"
    assert tlsa_2_1_1(certs.ca_pem).split()[3] != tlsa_3_1_1(certs.ee_pem).split()[3]


@pytest.mark.parametrize(
    ("selector", "mtype", "digest"),
    [
        pytest.param(0, 0, lambda der: der.hex(), id="full-cert"),
        pytest.param(0, 1, lambda der: hashlib.sha256(der).hexdigest(), id="cert-sha256"),
        pytest.param(0, 2, lambda der: hashlib.sha512(der).hexdigest(), id="cert-sha512"),
    ],
)
def test_tlsa_selector_0_is_the_whole_certificate(certs: Certs, selector, mtype, digest) -> None:
    der = x509.load_pem_x509_certificate(certs.ee_pem).public_bytes(serialization.Encoding.DER)
    assert tlsa_rdata(3, selector, mtype, certs.ee_pem) == f"3 {selector} {mtype} {digest(der)}"


@pytest.mark.parametrize(("selector", "mtype"), [(2, 1), (1, 3)], ids=["selector-2", "mtype-3"])
def test_tlsa_rejects_unknown_parameters(certs: Certs, selector: int, mtype: int) -> None:
    with pytest.raises(ValueError, match="unknown TLSA"):
        tlsa_rdata(3, selector, mtype, certs.ee_pem)


# --- the catalogue through the validating resolver ------------------------------------

Expect = Callable[[Certs, DaneCatalogue, str], set[str]]


def _ee(certs: Certs, _cat: DaneCatalogue, _name: str) -> set[str]:
    return {tlsa_3_1_1(certs.ee_pem)}


def _ta(certs: Certs, _cat: DaneCatalogue, _name: str) -> set[str]:
    return {tlsa_2_1_1(certs.ca_pem)}


def _pkix(certs: Certs, _cat: DaneCatalogue, _name: str) -> set[str]:
    return {tlsa_rdata(0, 0, 1, certs.ca_pem), tlsa_rdata(1, 1, 1, certs.ee_pem)}


def _address(_certs: Certs, cat: DaneCatalogue, name: str) -> set[str]:
    return {cat.addresses[name]}


def _mx(*records: str) -> Expect:
    return lambda _certs, _cat, _name: set(records)


HOSTS = f"{BOGUS_TLSA_HOSTS}.{ANCHOR}"

SECURE = [
    pytest.param(
        "tlsa-3-1-1.dane.test",
        "MX",
        _mx("10 mx1.tlsa-3-1-1.dane.test.", "20 mx2.tlsa-3-1-1.dane.test."),
        id="3-1-1-mx",
    ),
    pytest.param("mx1.tlsa-3-1-1.dane.test", "A", _address, id="3-1-1-a"),
    pytest.param("_25._tcp.mx1.tlsa-3-1-1.dane.test", "TLSA", _ee, id="3-1-1-tlsa-mx1"),
    pytest.param("_25._tcp.mx2.tlsa-3-1-1.dane.test", "TLSA", _ee, id="3-1-1-tlsa-mx2"),
    pytest.param("_25._tcp.mx1.tlsa-2-1-1.dane.test", "TLSA", _ta, id="2-1-1-tlsa-mx1"),
    pytest.param("_25._tcp.mx2.tlsa-2-1-1.dane.test", "TLSA", _ta, id="2-1-1-tlsa-mx2"),
    pytest.param("_25._tcp.mx1.mixed.dane.test", "TLSA", _ee, id="mixed-tlsa-mx1"),
    pytest.param("mx2.mixed.dane.test", "A", _address, id="mixed-a-mx2"),
    pytest.param("implicit-mx.dane.test", "A", _address, id="implicit-mx-a"),
    pytest.param("_25._tcp.implicit-mx.dane.test", "TLSA", _ee, id="implicit-mx-tlsa"),
    pytest.param("no-tlsa.dane.test", "MX", _mx("10 mx1.no-tlsa.dane.test."), id="no-tlsa-mx"),
    pytest.param("_25._tcp.mx1.pkix-only.dane.test", "TLSA", _pkix, id="pkix-only-tlsa"),
    # The bogus TLSA's neighbours all validate: the MX, the host's A, the other host.
    pytest.param(
        "bogus-tlsa.dane.test",
        "MX",
        _mx(f"10 mx1.{HOSTS}.", f"20 mx2.{HOSTS}."),
        id="bogus-tlsa-mx",
    ),
    pytest.param(f"mx1.{HOSTS}", "A", _address, id="bogus-tlsa-a-mx1"),
    pytest.param(f"_25._tcp.mx2.{HOSTS}", "TLSA", _ee, id="bogus-tlsa-good-tlsa-mx2"),
    pytest.param(
        "nxdomain-mx.dane.test",
        "MX",
        _mx("10 missing.nxdomain-mx.dane.test.", "20 mx2.nxdomain-mx.dane.test."),
        id="nxdomain-mx-mx",
    ),
    pytest.param("_25._tcp.mx2.nxdomain-mx.dane.test", "TLSA", _ee, id="nxdomain-mx-tlsa-mx2"),
    pytest.param("null-mx.dane.test", "MX", _mx("0 ."), id="null-mx"),
    # MTA-STS discovery records beside the DANE ones (RFC 8461 §3.1).
    pytest.param(
        "_mta-sts.tlsa-3-1-1.dane.test", "TXT", _mx(f'"v=STSv1; id={STS_ID};"'), id="sts-txt"
    ),
    pytest.param("mta-sts.mixed.dane.test", "A", _mx(STS_IP), id="sts-host-a"),
]


@pytest.mark.parametrize(("name", "rdtype", "expect"), SECURE)
def test_secure_answer_has_ad(
    tree: DnssecTree, certs: Certs, catalogue: DaneCatalogue, name: str, rdtype: str, expect: Expect
) -> None:
    response = tree.query(name, rdtype)
    assert response.rcode() == dns.rcode.NOERROR, _describe(tree, response)
    assert _ad(response), _describe(tree, response)
    assert _answer(response, name, rdtype) == expect(certs, catalogue, name)


@pytest.mark.parametrize(("name", "rdtype", "expect"), SECURE[:4])
def test_non_validating_resolver_never_sets_ad(
    tree: DnssecTree, certs: Certs, catalogue: DaneCatalogue, name: str, rdtype: str, expect: Expect
) -> None:
    response = tree.query(name, rdtype, via="non_validating")
    assert response.rcode() == dns.rcode.NOERROR, _describe(tree, response)
    assert not _ad(response), _describe(tree, response)
    assert _answer(response, name, rdtype) == expect(certs, catalogue, name)


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        pytest.param("_25._tcp.mx2.mixed.dane.test", "TLSA", "NXDOMAIN", id="mixed-no-tlsa-mx2"),
        pytest.param("_25._tcp.mx1.no-tlsa.dane.test", "TLSA", "NXDOMAIN", id="no-tlsa"),
        pytest.param("implicit-mx.dane.test", "MX", "NOERROR", id="implicit-mx-no-mx"),
        pytest.param("null-mx.dane.test", "A", "NOERROR", id="null-mx-no-a"),
        pytest.param("mx1.tlsa-3-1-1.dane.test", "AAAA", "NOERROR", id="no-aaaa"),
        # An empty non-terminal: names exist below it, none at it.
        pytest.param("_tcp.mx1.tlsa-3-1-1.dane.test", "TXT", "NOERROR", id="empty-non-terminal"),
        pytest.param("missing.nxdomain-mx.dane.test", "A", "NXDOMAIN", id="missing-mx-host-a"),
        pytest.param(
            "missing.nxdomain-mx.dane.test", "AAAA", "NXDOMAIN", id="missing-mx-host-aaaa"
        ),
        pytest.param("nxdomain.dane.test", "MX", "NXDOMAIN", id="nxdomain-mx"),
        pytest.param("nxdomain.dane.test", "A", "NXDOMAIN", id="nxdomain-a"),
    ],
)
def test_secure_denial_has_ad(tree: DnssecTree, name: str, rdtype: str, rcode: str) -> None:
    # NODATA and NXDOMAIN proven by the signed NSEC chain (RFC 4035 §3.1.3).
    response = tree.query(name, rdtype)
    assert response.rcode() == dns.rcode.from_text(rcode), _describe(tree, response)
    assert _ad(response), _describe(tree, response)
    assert not response.answer


@pytest.mark.parametrize(
    ("name", "rdtype", "expect"),
    [
        pytest.param("insecure.dane.test", "MX", _mx("10 mx1.insecure.dane.test."), id="mx"),
        pytest.param("mx1.insecure.dane.test", "A", _address, id="a"),
        pytest.param("_25._tcp.mx1.insecure.dane.test", "TLSA", _ee, id="tlsa"),
    ],
)
def test_insecure_zone_answers_without_ad(
    tree: DnssecTree, certs: Certs, catalogue: DaneCatalogue, name: str, rdtype: str, expect: Expect
) -> None:
    response = tree.query(name, rdtype)
    assert response.rcode() == dns.rcode.NOERROR, _describe(tree, response)
    assert not _ad(response), _describe(tree, response)
    assert _answer(response, name, rdtype) == expect(certs, catalogue, name)


# What Unbound's Extended DNS Error text (RFC 8914 §2) says went wrong. The code
# alone is not enough: once a zone's key is marked bad, later answers from the
# zone say "DNSSEC Bogus" (6) whatever the first failure was, though the text
# still quotes it.
CRYPTO = "signature crypto failed"
EXPIRED = "signature expired"
NO_KEY = "no keys have a DS"

BOGUS = [
    pytest.param("corrupt-sig.dane.test", "MX", CRYPTO, id="corrupt-sig-mx"),
    pytest.param("mx1.corrupt-sig.dane.test", "A", CRYPTO, id="corrupt-sig-a"),
    pytest.param("_25._tcp.mx1.corrupt-sig.dane.test", "TLSA", CRYPTO, id="corrupt-sig-tlsa"),
    pytest.param("expired-sig.dane.test", "MX", EXPIRED, id="expired-sig-mx"),
    pytest.param("_25._tcp.mx1.expired-sig.dane.test", "TLSA", EXPIRED, id="expired-sig-tlsa"),
    pytest.param("ds-mismatch.dane.test", "MX", NO_KEY, id="ds-mismatch-mx"),
    pytest.param("_25._tcp.mx1.ds-mismatch.dane.test", "TLSA", NO_KEY, id="ds-mismatch-tlsa"),
    pytest.param(f"_25._tcp.mx1.{HOSTS}", "TLSA", CRYPTO, id="bogus-tlsa"),
]


@pytest.mark.parametrize(("name", "rdtype", "reason"), BOGUS)
def test_bogus_answer_is_servfail_for_the_intended_reason(
    tree: DnssecTree, name: str, rdtype: str, reason: str
) -> None:
    response = tree.query(name, rdtype)
    assert response.rcode() == dns.rcode.SERVFAIL, _describe(tree, response)
    assert not response.answer
    errors = [o for o in response.options if isinstance(o, dns.edns.EDEOption)]
    assert len(errors) == 1, _describe(tree, response)
    assert errors[0].code in _DNSSEC_EDE, _describe(tree, response)
    assert f"<{name}. {rdtype} IN>" in (errors[0].text or ""), _describe(tree, response)
    assert reason in (errors[0].text or ""), _describe(tree, response)
    # val-log-level 2 logs the same for whoever reads a failed test's output.
    log = (tree.directory / "unbound-validating.log").read_text()
    assert f"validation failure <{name}. {rdtype} IN>" in log


@pytest.mark.parametrize(("name", "rdtype", "reason"), BOGUS)
def test_non_validating_resolver_hands_out_bogus_data(
    tree: DnssecTree, certs: Certs, name: str, rdtype: str, reason: str
) -> None:
    del reason
    response = tree.query(name, rdtype, via="non_validating")
    assert response.rcode() == dns.rcode.NOERROR, _describe(tree, response)
    assert not _ad(response), _describe(tree, response)
    answer = _answer(response, name, rdtype)
    if rdtype == "TLSA":
        assert answer == {tlsa_3_1_1(certs.ee_pem)}
    else:
        assert answer


def test_names_outside_the_tree_are_refused(tree: DnssecTree) -> None:
    # Nothing leaves the machine: no root priming, no query to the internet.
    for via in ("validating", "non_validating"):
        response = tree.query("example.com", "A", via=via)
        assert response.rcode() == dns.rcode.REFUSED, _describe(tree, response)


# --- the catalogue's own bookkeeping and the authoritative server ------------------


def test_catalogue_names_are_stable(catalogue: DaneCatalogue) -> None:
    assert catalogue.domains == {case: f"{case.value}.{ANCHOR}" for case in DaneCase}
    # Every mail domain that exists publishes MTA-STS discovery records.
    assert set(catalogue.mta_sts) == {
        domain for case, domain in catalogue.domains.items() if case is not DaneCase.NXDOMAIN
    }
    assert catalogue.mx_hosts[DaneCase.TLSA_3_1_1] == (
        "mx1.tlsa-3-1-1.dane.test",
        "mx2.tlsa-3-1-1.dane.test",
    )
    assert catalogue.mx_hosts[DaneCase.IMPLICIT_MX] == ("implicit-mx.dane.test",)
    assert catalogue.mx_hosts[DaneCase.BOGUS_TLSA] == (f"mx1.{HOSTS}", f"mx2.{HOSTS}")
    assert catalogue.mx_hosts[DaneCase.NXDOMAIN_MX] == (
        "missing.nxdomain-mx.dane.test",
        "mx2.nxdomain-mx.dane.test",
    )
    assert catalogue.mx_hosts[DaneCase.NULL_MX] == catalogue.mx_hosts[DaneCase.NXDOMAIN] == ()
    # Every host that exists has an address of its own; the missing one has none.
    assert "missing.nxdomain-mx.dane.test" not in catalogue.addresses
    assert len(set(catalogue.addresses.values())) == len(catalogue.addresses)


def _signed_by(response: dns.message.Message, name: str, rdtype: str) -> bool:
    covered = dns.rdatatype.from_text(rdtype)
    return any(
        rrset.rdtype == dns.rdatatype.RRSIG
        and rrset.covers == covered
        and rrset.name.to_text(omit_final_dot=True) == name
        for rrset in response.answer
    )


def test_knot_serves_signatures_and_delegations(tree: DnssecTree) -> None:
    signed = tree.query("tlsa-3-1-1.dane.test", "MX", via="authoritative")
    assert signed.flags & dns.flags.AA, _describe(tree, signed)
    assert _signed_by(signed, "tlsa-3-1-1.dane.test", "MX")
    unsigned = tree.query("insecure.dane.test", "MX", via="authoritative")
    assert unsigned.flags & dns.flags.AA, _describe(tree, unsigned)
    assert _answer(unsigned, "insecure.dane.test", "MX")
    assert not _signed_by(unsigned, "insecure.dane.test", "MX")
    # The anchor zone holds a DS for the signed child, none for the unsigned one.
    ds = tree.query("tlsa-3-1-1.dane.test", "DS", via="authoritative")
    assert _answer(ds, "tlsa-3-1-1.dane.test", "DS")
    no_ds = tree.query("insecure.dane.test", "DS", via="authoritative")
    assert no_ds.rcode() == dns.rcode.NOERROR
    assert not no_ds.answer


def test_trust_anchor_is_the_anchor_zones_ds(tree: DnssecTree) -> None:
    assert tree.trust_anchor.startswith(f"{ANCHOR}. DS ")
    ds = tree.query(ANCHOR, "DNSKEY", via="authoritative")
    assert _signed_by(ds, ANCHOR, "DNSKEY")
    config = (tree.directory / "unbound-validating.conf").read_text()
    assert f'trust-anchor: "{tree.trust_anchor}"' in config
    assert "domain-insecure" not in config
    assert "trust-anchor" not in (tree.directory / "unbound-plain.conf").read_text()


# --- lifecycle -----------------------------------------------------------------------


def test_small_tree_starts_fast_and_stops_cleanly(tmp_path: Path, certs: Certs) -> None:
    tree = _new_tree(tmp_path)
    zone = tree.zone("one")
    zone.mx("@", (10, "mx"))
    zone.a("mx", "127.0.1.1")
    zone.tlsa("_25._tcp.mx", tlsa_3_1_1(certs.ee_pem))
    zone.aaaa("mx", "::1")
    zone.txt("@", "v=spf1 -all", 'say "hi" \\o/')
    with tree:
        assert tree.running
        assert tree.start_seconds < 5, tree.diagnostics()
        response = tree.query("_25._tcp.mx.one.dane.test", "TLSA")
        assert _ad(response), _describe(tree, response)
        assert _answer(tree.query("mx.one.dane.test", "AAAA"), "mx.one.dane.test", "AAAA") == {
            "::1"
        }
        txt = tree.query("one.dane.test", "TXT")
        assert _ad(txt), _describe(tree, txt)
        assert _answer(txt, "one.dane.test", "TXT") == {'"v=spf1 -all"', '"say \\"hi\\" \\\\o/"'}
        pids = tree.pids
        assert set(pids) == {"knotd", "unbound-validating", "unbound-plain"}
        with pytest.raises(RuntimeError, match="can no longer change"):
            zone.a("late", "127.0.1.2")
    assert not tree.running
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # The logs outlive the processes, for failure messages.
    assert "knotd.log" in tree.diagnostics()
    assert (tmp_path / "knotd.log").stat().st_size > 0


def test_corrupting_a_missing_rrset_is_an_error(tmp_path: Path) -> None:
    tree = _new_tree(tmp_path)
    tree.zone("typo").corrupt_signature("_25._tcp.mx1", "TLSA")
    with pytest.raises(ValueError, match=r"no such signed RRset.*_25\._tcp\.mx1"):
        tree.start()
    assert not tree.pids


def test_zones_do_not_nest(tmp_path: Path) -> None:
    tree = _new_tree(tmp_path)
    tree.zone("b")
    with pytest.raises(ValueError, match="exists already"):
        tree.zone("b")
    with pytest.raises(ValueError, match="nest"):
        tree.zone("a.b")


def test_insecure_zone_has_no_signature_to_corrupt(tmp_path: Path) -> None:
    zone = _new_tree(tmp_path).zone("plain", Signing.INSECURE)
    with pytest.raises(ValueError, match="unsigned"):
        zone.corrupt_signature("@", "SOA")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def test_tree_runs_on_port_53_in_a_network_namespace(tmp_path: Path, certs: Certs) -> None:
    """The layout an end-to-end test uses: resolv.conf can only name port 53."""
    if sys.platform != "linux" or os.geteuid() != 0:
        _unavailable("a network namespace needs root on Linux")
    if shutil.which("ip") is None:
        _unavailable("ip (Debian package iproute2) is not installed")
    netns = f"mtasts-dnssec-{os.getpid()}-{secrets.token_hex(2)}"
    _ip("netns", "add", netns)
    try:
        _ip("-n", netns, "link", "set", "lo", "up")
        tree = _new_tree(tmp_path, netns=netns)
        zone = tree.zone("ns-only")
        zone.mx("@", (10, "mx"))
        zone.a("mx", "127.0.1.1")
        zone.tlsa("_25._tcp.mx", tlsa_3_1_1(certs.ee_pem))
        with tree:
            assert tree.validating == ("127.0.0.22", 53)
            assert tree.authoritative == ("127.0.0.21", 53)
            response = tree.query("_25._tcp.mx.ns-only.dane.test", "TLSA")
            assert _ad(response), _describe(tree, response)
            assert _answer(response, "_25._tcp.mx.ns-only.dane.test", "TLSA") == {
                tlsa_3_1_1(certs.ee_pem)
            }
            # Only inside the namespace: on the host the address is still free.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(tree.validating)
    finally:
        _ip("netns", "delete", netns)


def test_missing_server_names_its_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the fixtures turn into a skip, or a failure under MTASTS_REQUIRE_ALL.
    monkeypatch.setattr(shutil, "which", lambda *_args, **_kwargs: None)
    with pytest.raises(DnssecUnavailable, match=r"knotd not found \(Debian package knot\)"):
        dnssec_binaries()
