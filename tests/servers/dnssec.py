"""A real DNSSEC-signed DNS tree for the DANE tests: Knot DNS behind Unbound.

The tree hangs from a private trust anchor (``dane.test.`` by default, RFC 6761
§6.2 reserves ``.test``). Every zone a test declares is a child of the anchor
zone, delegated from it by NS records and, when the zone is signed, a DS record
(RFC 4035 §5). Three processes serve it, all on 127.0.0.0/8 by default::

    tree = DnssecTree(tmp_dir)                # DnssecUnavailable if knotd/unbound missing
    zone = tree.zone("good")                  # good.dane.test., signed, DS in the parent
    zone.mx("@", (10, "mx1"), (20, "mx2"))
    zone.a("mx1", "127.0.1.1")
    zone.tlsa("_25._tcp.mx1", tlsa_3_1_1(cert_pem))
    tree.start()                              # sign, write zone files, start the servers
    tree.validating                           # (host, port) of the validating Unbound
    tree.query("good.dane.test", "MX")        # a dns.message.Message, DO and AD set
    tree.stop()

- ``knotd`` (Debian package ``knot``) is the authoritative server for every zone
  of the tree, on ``authoritative`` (127.0.0.21 and a free port).
- ``unbound`` (package ``unbound``) on ``validating`` (127.0.0.22) validates
  from ``trust-anchor: <anchor> DS ...``; a bogus answer is SERVFAIL with an
  Extended DNS Error (RFC 8914) saying why.
- A second ``unbound`` on ``non_validating`` (127.0.0.23) only iterates: it
  hands out bogus data as it gets it, never with the AD bit.

Both resolvers reach Knot through one ``stub-zone`` per zone of the tree, each
pointing at Knot's address and port: a referral's NS address would be port 53,
which only a network namespace gives us. Names outside the anchor are refused,
so nothing ever leaves the machine. With ``netns=NAME`` every process starts
under ``ip netns exec NAME`` and every port defaults to 53, so a stub resolver
that only knows resolv.conf (Postfix's smtp(8)) can use the validating resolver.

Signing is done here, in Python, with ``dns.dnssec.sign_zone`` (one ECDSA P-256
key per zone, flags 257, used as KSK and ZSK, NSEC denial), and Knot serves the
result as it is (``dnssec-signing`` stays off). Knot's own signer would re-sign
whatever it serves, while the failure cases need signatures that are wrong on
purpose (corrupted, expired, a DS for another key); signing offline also needs
no key store or signing policy, and is deterministic and takes milliseconds.

Each zone has a :class:`Signing` mode; :func:`add_dane_catalogue` declares the
fixed cases of :class:`DaneCase` that the DANE tests share.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import hashlib
import itertools
import os
import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import dns.dnssectypes
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rdtypes.ANY.RRSIG
import dns.rdtypes.dnskeybase
import dns.zone
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.servers.netns import enter_netns
from tests.servers.processes import stop_process

with warnings.catch_warnings():
    # dns.dnssec imports dnspython's DSA algorithm module, whose annotations
    # touch cryptography's DSA classes: cryptography 51 warns that DSA is
    # deprecated when they are looked up. The test tree signs with ECDSA
    # P-256 only; the warning says nothing about this code.
    warnings.filterwarnings("ignore", message="DSA is deprecated", category=Warning)
    import dns.dnssec

__all__ = [
    "DEFAULT_ANCHOR",
    "STS_ID",
    "DaneCase",
    "DaneCatalogue",
    "DnssecTree",
    "DnssecUnavailable",
    "Signing",
    "TreeZone",
    "add_dane_catalogue",
    "dnssec_binaries",
    "tlsa_2_1_1",
    "tlsa_3_1_1",
    "tlsa_rdata",
]

_T = TypeVar("_T")

DEFAULT_ANCHOR = "dane.test."
_START_TIMEOUT = 10.0
_TTL = 300
_SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
ResolverName = Literal["validating", "non_validating", "authoritative"]


class DnssecUnavailable(Exception):
    """knotd or unbound is not installed (or ``ip`` for a network namespace)."""


def _program(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))
    if found is None:
        raise DnssecUnavailable(f"{name} not found (Debian package {package})")
    return found


def dnssec_binaries() -> dict[str, str]:
    """Paths of knotd and unbound; :class:`DnssecUnavailable` names the missing one."""
    return {"knotd": _program("knotd", "knot"), "unbound": _program("unbound", "unbound")}


# --- TLSA data from certificates (RFC 6698 §2.1, RFC 7218 acronyms) ---------------


def tlsa_rdata(usage: int, selector: int, mtype: int, cert_pem: bytes | str) -> str:
    """The TLSA rdata text ``"usage selector mtype hex"`` for a PEM certificate.

    selector 0 is the whole certificate, 1 its SubjectPublicKeyInfo (RFC 6698
    §2.1.2); mtype 0 is the data itself, 1 its SHA-256, 2 its SHA-512 (§2.1.3).
    """
    pem = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(pem)
    if selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    elif selector == 1:
        data = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        raise ValueError(f"unknown TLSA selector {selector}")
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    elif mtype != 0:
        raise ValueError(f"unknown TLSA matching type {mtype}")
    return f"{usage} {selector} {mtype} {data.hex()}"


def tlsa_3_1_1(cert_pem: bytes | str) -> str:
    """DANE-EE SPKI SHA2-256 (the usual RFC 7672 §3.1.1 record) for the server's certificate."""
    return tlsa_rdata(3, 1, 1, cert_pem)


def tlsa_2_1_1(ca_pem: bytes | str) -> str:
    """DANE-TA SPKI SHA2-256 (RFC 7672 §3.1.2) for the issuing CA's certificate."""
    return tlsa_rdata(2, 1, 1, ca_pem)


# --- zones ---------------------------------------------------------------------------


class Signing(enum.Enum):
    """How a zone of the tree is signed and delegated."""

    #: Signed; the parent's DS matches its key: answers validate (AD=1).
    SECURE = "secure"
    #: Not signed, delegated without DS (the parent's NSEC proves there is
    #: none, RFC 4035 §5.2): answers are insecure (AD=0), not bogus.
    INSECURE = "insecure"
    #: Signed, but every RRSIG except the DNSKEY RRset's is corrupted: the
    #: keys validate, every answer from the zone is bogus (SERVFAIL).
    CORRUPT = "corrupt"
    #: Signed with signatures that expired a week ago (inception two months
    #: ago), beyond any resolver's clock-skew allowance: bogus.
    EXPIRED = "expired"
    #: Signed, but the parent's DS digests a key the zone does not have: no
    #: DNSKEY can be authenticated, the whole zone is bogus.
    DS_MISMATCH = "ds-mismatch"


@dataclass
class TreeZone:
    """The records of one zone of the tree, declared before :meth:`DnssecTree.start`.

    Owners are relative to the zone (``"mx1"``, ``"_25._tcp.mx1"``, ``"@"`` for
    the apex) unless they end with a dot; so are names inside record data
    (``"10 mx1"``). SOA, NS and DNSSEC records are added by the tree.
    """

    origin: dns.name.Name
    signing: Signing = Signing.SECURE
    _records: list[tuple[str, str, str, int]] = field(default_factory=list)
    _raw: list[tuple[str, str, bytes, int]] = field(default_factory=list)
    _corrupt: set[tuple[dns.name.Name, dns.rdatatype.RdataType]] = field(default_factory=set)
    _frozen: bool = False

    @property
    def name(self) -> str:
        """The zone's name without the trailing dot, as a mail domain is written."""
        return self.origin.to_text(omit_final_dot=True)

    def fqdn(self, owner: str) -> str:
        """``owner`` as an absolute name without the trailing dot."""
        return self._owner(owner).to_text(omit_final_dot=True)

    def _owner(self, owner: str) -> dns.name.Name:
        return dns.name.from_text(owner, origin=self.origin)

    def add(self, owner: str, rtype: str, *rdatas: str, ttl: int = _TTL) -> TreeZone:
        """Add records of ``rtype`` at ``owner``, each given as zone-file text."""
        if self._frozen:
            raise RuntimeError("the tree has started: zones can no longer change")
        name = self._owner(owner)
        if not name.is_subdomain(self.origin):
            raise ValueError(f"{name} is not in zone {self.origin}")
        for text in rdatas:
            # Parsed now so a typo fails in the test that wrote it.
            dns.rdata.from_text(dns.rdataclass.IN, rtype, text, origin=self.origin)
            self._records.append((owner, rtype, text, ttl))
        return self

    def add_raw(self, owner: str, rtype: str, data: bytes, *, ttl: int = _TTL) -> TreeZone:
        """One record of ``rtype`` given as its wire-format rdata, unchecked.

        For records dnspython refuses to build, e.g. a TLSA record whose
        data has the wrong length for its matching type (RFC 6698 §2.1.3):
        the zone file holds it in RFC 3597 ``\\#`` form, signed like any other.
        """
        if self._frozen:
            raise RuntimeError("the tree has started: zones can no longer change")
        if not self._owner(owner).is_subdomain(self.origin):
            raise ValueError(f"{self._owner(owner)} is not in zone {self.origin}")
        dns.rdatatype.from_text(rtype)
        self._raw.append((owner, rtype, data, ttl))
        return self

    def a(self, owner: str, *addresses: str) -> TreeZone:
        return self.add(owner, "A", *addresses)

    def aaaa(self, owner: str, *addresses: str) -> TreeZone:
        return self.add(owner, "AAAA", *addresses)

    def mx(self, owner: str, *exchanges: tuple[int, str]) -> TreeZone:
        """MX records; ``(0, ".")`` is the Null MX (RFC 7505 §3)."""
        return self.add(owner, "MX", *(f"{pref} {host}" for pref, host in exchanges))

    def txt(self, owner: str, *texts: str) -> TreeZone:
        """One TXT record per text, each as one quoted character-string."""
        quoted = ('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in texts)
        return self.add(owner, "TXT", *quoted)

    def tlsa(self, owner: str, *rdatas: str) -> TreeZone:
        """TLSA records (``owner`` like ``"_25._tcp.mx1"``, RFC 7672 §2.2.3)."""
        return self.add(owner, "TLSA", *rdatas)

    def corrupt_signature(self, owner: str, rtype: str) -> TreeZone:
        """Corrupt the RRSIG over the ``rtype`` RRset at ``owner``: that RRset is bogus."""
        if self.signing is Signing.INSECURE:
            raise ValueError("an unsigned zone has no signature to corrupt")
        self._corrupt.add((self._owner(owner), dns.rdatatype.from_text(rtype)))
        return self


@dataclass
class _Key:
    private: ec.EllipticCurvePrivateKey
    dnskey: dns.rdtypes.ANY.DNSKEY.DNSKEY

    @classmethod
    def generate(cls) -> _Key:
        private = ec.generate_private_key(ec.SECP256R1())
        dnskey = dns.dnssec.make_dnskey(
            private.public_key(),
            dns.dnssectypes.Algorithm.ECDSAP256SHA256,
            # One key as KSK and ZSK (a "CSK"): flags 257 = ZONE | SEP.
            flags=dns.rdtypes.dnskeybase.Flag.ZONE | dns.rdtypes.dnskeybase.Flag.SEP,
        )
        return cls(private, dnskey)

    def ds(self, owner: dns.name.Name) -> dns.rdata.Rdata:
        return dns.dnssec.make_ds(owner, self.dnskey, "SHA256")


def _corrupted(rrsig: dns.rdtypes.ANY.RRSIG.RRSIG) -> dns.rdtypes.ANY.RRSIG.RRSIG:
    # Flipping the first byte of r keeps the RRSIG well formed but makes it
    # fail verification (RFC 4035 §5.3.3).
    sig = rrsig.signature
    broken = rrsig.replace(signature=bytes([sig[0] ^ 0xFF]) + sig[1:])
    assert isinstance(broken, dns.rdtypes.ANY.RRSIG.RRSIG)
    return broken


def _build_zone(
    spec: TreeZone,
    *,
    apex_ns: dns.name.Name,
    extra: Iterable[tuple[dns.name.Name, str, str]],
    key: _Key | None,
) -> dns.zone.Zone:
    """The zone as dnspython data, signed as its :class:`Signing` says."""
    zone = dns.zone.Zone(spec.origin, relativize=False)
    with zone.writer() as txn:

        def put(name: dns.name.Name, rtype: str, text: str, ttl: int) -> None:
            rdata = dns.rdata.from_text(dns.rdataclass.IN, rtype, text, origin=spec.origin)
            txn.add(name, ttl, rdata)

        put(spec.origin, "SOA", f"{apex_ns} hostmaster.{spec.origin} 1 3600 600 86400 {_TTL}", _TTL)
        put(spec.origin, "NS", apex_ns.to_text(), _TTL)
        for name, rtype, text in extra:
            put(name, rtype, text, _TTL)
        for owner, rtype, text, ttl in spec._records:
            put(spec._owner(owner), rtype, text, ttl)
        for owner, rtype, data, ttl in spec._raw:
            generic = dns.rdata.GenericRdata(
                dns.rdataclass.IN, dns.rdatatype.from_text(rtype), data
            )
            txn.add(spec._owner(owner), ttl, generic)
    if key is None:
        return zone

    now = datetime.datetime.now(datetime.UTC)
    if spec.signing is Signing.EXPIRED:
        inception, expiration = now - datetime.timedelta(days=60), now - datetime.timedelta(days=7)
    else:
        # An hour back for clock skew; a month ahead outlives any test run.
        inception, expiration = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)
    dns.dnssec.sign_zone(
        zone,
        keys=[(key.private, key.dnskey)],
        inception=inception,
        expiration=expiration,
    )

    if spec.signing is Signing.CORRUPT or spec._corrupt:
        _corrupt_signatures(zone, spec)
    return zone


def _corrupt_signatures(zone: dns.zone.Zone, spec: TreeZone) -> None:
    everything = spec.signing is Signing.CORRUPT
    spec_left = set(spec._corrupt)
    for name, node in zone.nodes.items():
        for rdataset in list(node.rdatasets):
            if rdataset.rdtype != dns.rdatatype.RRSIG:
                continue
            covered = rdataset.covers
            wanted = (name, covered) in spec._corrupt
            if everything:
                # The DNSKEY RRset stays valid, so the failure is each data
                # RRset's signature, not the chain of trust.
                wanted = covered != dns.rdatatype.DNSKEY
            if not wanted:
                continue
            broken = dns.rdataset.Rdataset(rdataset.rdclass, rdataset.rdtype, covered, rdataset.ttl)
            for rrsig in rdataset:
                assert isinstance(rrsig, dns.rdtypes.ANY.RRSIG.RRSIG)
                broken.add(_corrupted(rrsig))
            zone.replace_rdataset(name, broken)
            spec_left.discard((name, covered))
    if spec_left:
        missing = ", ".join(f"{n} {dns.rdatatype.to_text(t)}" for n, t in sorted(spec_left))
        raise ValueError(f"corrupt_signature: no such signed RRset in {spec.origin}: {missing}")


# --- processes -----------------------------------------------------------------------


def _in_netns(netns: str | None, fn: Callable[[], _T]) -> _T:
    """``fn()``, run in a fresh thread inside ``netns`` (a namespace is per thread)."""
    if netns is None:
        return fn()
    result: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            enter_netns(netns)
            result.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host`` (a DNS server wants both)."""
    for _attempt in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port free for UDP and TCP on {host}")


def _log_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.log"


def _tail(path: Path, size: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-size:].decode(errors="replace")


class _Server:
    """One server process in the foreground, its output in ``<name>.out``."""

    def __init__(self, name: str, argv: list[str], directory: Path) -> None:
        self.name = name
        self.argv = argv
        self.output = directory / f"{name}.out"
        self.log = _log_file(directory, name)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def spawn(self) -> None:
        with self.output.open("ab") as out:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self, probe: Callable[[], bool], deadline: float) -> None:
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.diagnostics()}")
            with contextlib.suppress(OSError, dns.exception.DNSException):
                if probe():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer:\n{self.diagnostics()}")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)

    def diagnostics(self) -> str:
        return (
            f"--- {self.name}: {' '.join(self.argv)}\n"
            f"--- {self.output.name}\n{_tail(self.output)}\n"
            f"--- {self.log.name}\n{_tail(self.log)}"
        )


# --- the tree ------------------------------------------------------------------------


def _probe(host: str, port: int, qname: str, rdtype: str, rdclass: str = "IN") -> bool:
    """True once the server at ``host``:``port`` answers the query at all."""
    query = dns.message.make_query(qname, rdtype, rdclass)
    response = dns.query.udp(query, host, port=port, timeout=0.2)
    return response.id == query.id


def _all_loaded(host: str, port: int, waiting: set[dns.name.Name]) -> bool:
    """True once Knot answers with authority for every zone in ``waiting``.

    knotd loads its zones in the background after it binds: a resolver that
    asked too early would get REFUSED and cache the failure.
    """
    for origin in sorted(waiting):
        query = dns.message.make_query(origin, "SOA")
        query.flags &= ~dns.flags.RD
        response = dns.query.udp(query, host, port=port, timeout=0.2)
        if response.rcode() != dns.rcode.NOERROR or not response.flags & dns.flags.AA:
            return False
        waiting.discard(origin)
    return True


class DnssecTree:
    """Signed zones under one trust anchor, Knot serving them, two Unbound resolvers.

    ``authoritative``, ``validating`` and ``non_validating`` are ``(host,
    port)`` to listen on; port 0 picks a free one (53 under ``netns``, where
    the addresses are the namespace's own). The configuration, zone files,
    pidfiles and logs of every process live in ``directory``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        anchor: str = DEFAULT_ANCHOR,
        authoritative: tuple[str, int] = ("127.0.0.21", 0),
        validating: tuple[str, int] = ("127.0.0.22", 0),
        non_validating: tuple[str, int] = ("127.0.0.23", 0),
        netns: str | None = None,
    ) -> None:
        self.binaries = dnssec_binaries()
        #: What every server's command line starts with.
        self._prefix: list[str] = []
        if netns is not None:
            self.binaries["ip"] = _program("ip", "iproute2")
            # ip netns exec execs the command: the pid stays the server's own.
            self._prefix = [self.binaries["ip"], "netns", "exec", netns]
        self.directory = Path(directory)
        self.netns = netns
        self.anchor = dns.name.from_text(anchor)
        self.authoritative = authoritative
        self.validating = validating
        self.non_validating = non_validating
        #: The anchor zone itself, where the delegations go (add records freely).
        self.apex = TreeZone(self.anchor)
        self._zones: dict[dns.name.Name, TreeZone] = {}
        self._servers: list[_Server] = []
        #: ``"<anchor> DS ..."``, as the validating resolver is configured; set by start().
        self.trust_anchor = ""
        #: Seconds start() took (signing included), for the curious.
        self.start_seconds = 0.0

    # --- declaring zones ---

    def zone(self, label: str, signing: Signing = Signing.SECURE) -> TreeZone:
        """A new zone ``<label>.<anchor>``, delegated from the anchor zone."""
        origin = dns.name.from_text(label, origin=self.anchor)
        if origin in self._zones or origin == self.anchor:
            raise ValueError(f"zone {origin} exists already")
        for other in self._zones:
            # Every zone is delegated from the anchor zone itself: one under
            # another would sit below that one's delegation, out of sight.
            if origin.is_subdomain(other) or other.is_subdomain(origin):
                raise ValueError(f"zone {origin} would nest with zone {other}")
        zone = TreeZone(origin, signing)
        self._zones[origin] = zone
        return zone

    def domain(self, label: str) -> str:
        """``<label>.<anchor>`` without the trailing dot (a name that may not exist)."""
        return dns.name.from_text(label, origin=self.anchor).to_text(omit_final_dot=True)

    @property
    def zones(self) -> list[TreeZone]:
        return [self.apex, *self._zones.values()]

    # --- lifecycle ---

    def start(self) -> None:
        """Sign and write every zone, start Knot, then both resolvers; wait until they answer."""
        if self._servers:
            raise RuntimeError("a tree starts once")
        began = time.monotonic()
        for spec in self.zones:
            spec._frozen = True
        self.directory.mkdir(parents=True, exist_ok=True)
        self.authoritative = self._port(self.authoritative)
        self.validating = self._port(self.validating)
        self.non_validating = self._port(self.non_validating)
        try:
            self._write_zones()
            auth = self._knot()
            auth.spawn()
            self._servers.append(auth)
            deadline = time.monotonic() + _START_TIMEOUT
            host, port = self.authoritative
            waiting = {spec.origin for spec in self.zones}
            auth.wait_ready(lambda: self._call(lambda: _all_loaded(host, port, waiting)), deadline)
            resolvers = [
                self._unbound("unbound-validating", self.validating, validate=True),
                self._unbound("unbound-plain", self.non_validating, validate=False),
            ]
            for resolver in resolvers:
                resolver.spawn()
                self._servers.append(resolver)
            for resolver, endpoint in zip(
                resolvers, (self.validating, self.non_validating), strict=True
            ):
                resolver.wait_ready(self._version_probe(*endpoint), deadline)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop every process; their files stay for :meth:`diagnostics`."""
        for server in reversed(self._servers):
            server.stop()

    def __enter__(self) -> DnssecTree:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while all three processes run."""
        return len(self._servers) == 3 and all(s.running for s in self._servers)

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running servers by name (knotd, unbound-validating, ...)."""
        return {s.name: s.pid for s in self._servers if s.pid is not None}

    def diagnostics(self) -> str:
        """The tails of every process's output and log, for a failure message."""
        return "\n".join(s.diagnostics() for s in self._servers) or "(tree not running)"

    def _port(self, endpoint: tuple[str, int]) -> tuple[str, int]:
        host, port = endpoint
        if port:
            return endpoint
        if self.netns is not None:
            return (host, 53)
        return (host, _free_port(host))

    def _call(self, fn: Callable[[], _T]) -> _T:
        return _in_netns(self.netns, fn)

    def _version_probe(self, host: str, port: int) -> Callable[[], bool]:
        # Unbound answers this CHAOS query itself, touching no cache.
        return lambda: self._call(lambda: _probe(host, port, "version.server.", "TXT", "CH"))

    # --- queries ---

    def query(
        self,
        name: str,
        rdtype: str,
        *,
        via: ResolverName = "validating",
        dnssec: bool = True,
        timeout: float = 5.0,
    ) -> dns.message.Message:
        """Ask one of the servers (in the namespace, if any); TCP when UDP is truncated.

        With ``dnssec`` the query has DO set (RFC 4035 §3.2.1) and AD set, which
        asks for the AD bit even from a client that does not want the
        signatures (RFC 6840 §5.7).
        """
        host, port = getattr(self, via)
        query = dns.message.make_query(name, rdtype, want_dnssec=dnssec)
        if dnssec:
            query.flags |= dns.flags.AD
        if via == "authoritative":
            query.flags &= ~dns.flags.RD

        def ask() -> dns.message.Message:
            response, _tcp = dns.query.udp_with_fallback(query, host, port=port, timeout=timeout)
            return response

        return self._call(ask)

    # --- files ---

    def _write_zones(self) -> None:
        zones_dir = self.directory / "zones"
        zones_dir.mkdir(exist_ok=True)
        host = self.authoritative[0]
        ns = dns.name.from_text("ns", origin=self.anchor)
        delegations: list[tuple[dns.name.Name, str, str]] = [(ns, "A", host)]
        for spec in self._zones.values():
            key = None if spec.signing is Signing.INSECURE else _Key.generate()
            delegations.append((spec.origin, "NS", ns.to_text()))
            if key is not None:
                # DS_MISMATCH: the parent publishes the digest of a key the
                # child never uses (RFC 4035 §5.2: no DNSKEY matches, bogus).
                ds_key = _Key.generate() if spec.signing is Signing.DS_MISMATCH else key
                delegations.append((spec.origin, "DS", ds_key.ds(spec.origin).to_text()))
            zone = _build_zone(spec, apex_ns=ns, extra=(), key=key)
            self._write_zone(zone, zones_dir)
        anchor_key = _Key.generate()
        zone = _build_zone(self.apex, apex_ns=ns, extra=delegations, key=anchor_key)
        self._write_zone(zone, zones_dir)
        self.trust_anchor = f"{self.anchor} DS {anchor_key.ds(self.anchor)}"

    @staticmethod
    def _write_zone(zone: dns.zone.Zone, directory: Path) -> None:
        assert zone.origin is not None
        path = directory / f"{zone.origin.to_text(omit_final_dot=True)}.zone"
        zone.to_file(str(path), relativize=False, sorted=True)

    def _knot(self) -> _Server:
        run = self.directory / "knot"
        (run / "db").mkdir(parents=True, exist_ok=True)
        host, port = self.authoritative
        zones = "".join(f"  - domain: {spec.origin}\n" for spec in self.zones)
        config = self.directory / "knot.conf"
        config.write_text(
            "server:\n"
            f'    rundir: "{run}"\n'
            f'    pidfile: "{run}/knotd.pid"\n'
            f"    listen: {host}@{port}\n"
            # The machine has two cores and the zones are tiny.
            "    udp-workers: 1\n"
            "    tcp-workers: 1\n"
            "    background-workers: 1\n"
            "database:\n"
            f'    storage: "{run}/db"\n'
            "log:\n"
            f'  - target: "{_log_file(self.directory, "knotd")}"\n'
            "    any: info\n"
            "template:\n"
            "  - id: default\n"
            f'    storage: "{self.directory / "zones"}"\n'
            '    file: "%s.zone"\n'
            # Serve the files as they are: signed here, never re-signed,
            # never rewritten, nothing kept in a journal.
            "    dnssec-signing: off\n"
            "    zonefile-load: whole\n"
            "    zonefile-sync: -1\n"
            "    journal-content: none\n"
            f"zone:\n{zones}"
        )
        argv = [*self._prefix, self.binaries["knotd"], "-c", str(config)]
        return _Server("knotd", argv, self.directory)

    def _unbound(self, name: str, endpoint: tuple[str, int], *, validate: bool) -> _Server:
        run = self.directory / name
        run.mkdir(exist_ok=True)
        host, port = endpoint
        auth_host, auth_port = self.authoritative
        if validate:
            dnssec = (
                '    module-config: "validator iterator"\n'
                f'    trust-anchor: "{self.trust_anchor}"\n'
                # Log why an answer is bogus (val-log-level 2: the reason and
                # the server it came from) and say it in the answer (RFC 8914).
                "    val-log-level: 2\n"
                "    ede: yes\n"
                # No RFC 8145 key-tag report queries into the tree.
                "    trust-anchor-signaling: no\n"
            )
        else:
            dnssec = '    module-config: "iterator"\n'
        stubs = "".join(
            f'stub-zone:\n    name: "{spec.origin}"\n    stub-addr: {auth_host}@{auth_port}\n'
            for spec in self.zones
        )
        config = self.directory / f"{name}.conf"
        config.write_text(
            "server:\n"
            f"    interface: {host}\n"
            f"    port: {port}\n"
            "    do-ip4: yes\n"
            "    do-ip6: no\n"
            "    access-control: 127.0.0.0/8 allow\n"
            # Run as whoever started it, in place: no chroot, no setuid.
            '    username: ""\n'
            '    chroot: ""\n'
            f'    directory: "{run}"\n'
            f'    pidfile: "{run}/unbound.pid"\n'
            "    use-syslog: no\n"
            f'    logfile: "{_log_file(self.directory, name)}"\n'
            "    log-time-ascii: yes\n"
            "    log-servfail: yes\n"
            "    verbosity: 1\n"
            "    num-threads: 1\n"
            "    so-reuseport: no\n"
            "    outgoing-range: 64\n"
            "    num-queries-per-thread: 64\n"
            # Knot is on 127.0.0.0/8, which Unbound refuses to query by default.
            "    do-not-query-localhost: no\n"
            # Relaxed QNAME minimisation, as Unbound ships it: the resolvers
            # the daemon meets in production do it too.
            "    qname-minimisation: yes\n"
            # Nothing outside the tree is ever looked up (no root priming, no
            # internet); the anchor overrides Unbound's default static test. zone.
            '    local-zone: "." refuse\n'
            f'    local-zone: "{self.anchor}" transparent\n'
            f"{dnssec}"
            "remote-control:\n"
            "    control-enable: no\n"
            f"{stubs}"
        )
        argv = [*self._prefix, self.binaries["unbound"], "-d", "-c", str(config)]
        return _Server(name, argv, self.directory)


# --- the DANE catalogue --------------------------------------------------------------


class DaneCase(enum.StrEnum):
    """The fixed DANE cases; each value is a zone label under the anchor.

    Hosts are ``mx1.<domain>`` and ``mx2.<domain>`` unless said otherwise; a
    "good" TLSA is ``3 1 1`` for the end-entity certificate at ``_25._tcp.<host>``.
    """

    #: MX mx1, mx2; both with a good 3 1 1 TLSA.
    TLSA_3_1_1 = "tlsa-3-1-1"
    #: MX mx1, mx2; both with 2 1 1 for the issuing CA (DANE-TA).
    TLSA_2_1_1 = "tlsa-2-1-1"
    #: MX mx1 with a good TLSA, mx2 without any (secure NODATA).
    MIXED = "mixed"
    #: No MX RRset: A at the domain and a good TLSA at ``_25._tcp.<domain>``
    #: (RFC 5321 §5.1 implicit MX, RFC 7672 §2.2.1).
    IMPLICIT_MX = "implicit-mx"
    #: Secure MX mx1 with an A record and no TLSA.
    NO_TLSA = "no-tlsa"
    #: MX mx1 with only PKIX-usage TLSA: 0 0 1 (CA certificate), 1 1 1 (end
    #: entity), which RFC 7672 §3.1.3 says SMTP must treat as unusable.
    PKIX_ONLY = "pkix-only"
    #: Unsigned zone delegated without DS, with MX mx1, A and a 3 1 1 TLSA
    #: that is insecure and so must not be used (RFC 7672 §2.2).
    INSECURE = "insecure"
    #: Zone with every RRSIG but the DNSKEY's corrupted; MX mx1, A, TLSA.
    CORRUPT_SIG = "corrupt-sig"
    #: Zone whose signatures all expired; MX mx1, A, TLSA.
    EXPIRED_SIG = "expired-sig"
    #: Zone whose parent DS matches none of its keys; MX mx1, A, TLSA.
    DS_MISMATCH = "ds-mismatch"
    #: Secure MX to two hosts in the zone ``bogus-tlsa-hosts``: mx1 there has
    #: a TLSA RRset whose RRSIG is corrupted (bogus, its A is fine), mx2 a good one.
    BOGUS_TLSA = "bogus-tlsa"
    #: MX 10 ``missing.<domain>`` (signed NXDOMAIN), MX 20 mx2 with a good TLSA.
    NXDOMAIN_MX = "nxdomain-mx"
    #: ``MX 0 .``: the domain accepts no mail (RFC 7505 §3).
    NULL_MX = "null-mx"
    #: No such domain: a signed NXDOMAIN from the anchor zone.
    NXDOMAIN = "nxdomain"


#: The zone holding the MX hosts of :attr:`DaneCase.BOGUS_TLSA`.
BOGUS_TLSA_HOSTS = "bogus-tlsa-hosts"


#: The policy id of the ``_mta-sts`` TXT records :func:`add_dane_catalogue`
#: publishes when given ``mta_sts_ip``.
STS_ID = "dane20240101"


@dataclass(frozen=True)
class DaneCatalogue:
    """What :func:`add_dane_catalogue` published.

    ``mx_hosts[case]`` are the hosts a sender connects to, in MX preference
    order (the domain itself for the implicit MX, none for the Null MX and
    NXDOMAIN, and ``missing.<domain>`` included though it does not exist);
    ``addresses`` maps every host that has an A record to its IPv4 address.
    ``mta_sts`` lists the domains that got MTA-STS discovery records.
    """

    domains: dict[DaneCase, str]
    mx_hosts: dict[DaneCase, tuple[str, ...]]
    addresses: dict[str, str]
    ee_tlsa: str
    ta_tlsa: str
    mta_sts: tuple[str, ...] = ()


def _sequential_addresses() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda _host: f"127.0.1.{next(counter)}"


def add_dane_catalogue(
    tree: DnssecTree,
    ee_cert_pem: bytes | str,
    ca_cert_pem: bytes | str,
    *,
    address: Callable[[str], str] | None = None,
    mta_sts_ip: str | None = None,
) -> DaneCatalogue:
    """Declare every :class:`DaneCase` zone in ``tree`` (before it starts).

    ``ee_cert_pem`` is the certificate the good MX hosts present (it gets
    3 1 1 and 1 1 1 records), ``ca_cert_pem`` the CA that issued it (2 1 1
    and 0 0 1). ``address(host)`` gives each host's A record; by default
    127.0.1.1, 127.0.1.2, ... in declaration order.

    With ``mta_sts_ip``, every mail domain also publishes MTA-STS discovery
    records (RFC 8461 §3.1): TXT ``_mta-sts.<domain>`` ``v=STSv1; id=``
    :data:`STS_ID` and A ``mta-sts.<domain>`` -> ``mta_sts_ip`` (an HTTPS
    policy host, tests/servers/https.py), signed like the rest of the zone.
    """
    address = address or _sequential_addresses()
    ee = tlsa_3_1_1(ee_cert_pem)
    ta = tlsa_2_1_1(ca_cert_pem)
    domains: dict[DaneCase, str] = {}
    mx_hosts: dict[DaneCase, tuple[str, ...]] = {}
    addresses: dict[str, str] = {}
    sts: list[str] = []

    def host(zone: TreeZone, label: str, *tlsa: str) -> str:
        name = zone.fqdn(label)
        addresses[name] = address(name)
        zone.a(label, addresses[name])
        if tlsa:
            zone.tlsa(f"_25._tcp.{name}.", *tlsa)
        return name

    def mail_zone(case: DaneCase, signing: Signing = Signing.SECURE) -> TreeZone:
        zone = tree.zone(case.value, signing)
        domains[case] = zone.name
        if mta_sts_ip is not None:
            zone.txt("_mta-sts", f"v=STSv1; id={STS_ID};")
            zone.a("mta-sts", mta_sts_ip)
            sts.append(zone.name)
        return zone

    def two_hosts(case: DaneCase, tlsa1: tuple[str, ...], tlsa2: tuple[str, ...]) -> None:
        zone = mail_zone(case)
        zone.mx("@", (10, "mx1"), (20, "mx2"))
        mx_hosts[case] = (host(zone, "mx1", *tlsa1), host(zone, "mx2", *tlsa2))

    def one_host(case: DaneCase, signing: Signing, *tlsa: str) -> None:
        zone = mail_zone(case, signing)
        zone.mx("@", (10, "mx1"))
        mx_hosts[case] = (host(zone, "mx1", *tlsa),)

    two_hosts(DaneCase.TLSA_3_1_1, (ee,), (ee,))
    two_hosts(DaneCase.TLSA_2_1_1, (ta,), (ta,))
    two_hosts(DaneCase.MIXED, (ee,), ())

    zone = mail_zone(DaneCase.IMPLICIT_MX)
    mx_hosts[DaneCase.IMPLICIT_MX] = (host(zone, "@", ee),)

    one_host(DaneCase.NO_TLSA, Signing.SECURE)
    pkix = (tlsa_rdata(0, 0, 1, ca_cert_pem), tlsa_rdata(1, 1, 1, ee_cert_pem))
    one_host(DaneCase.PKIX_ONLY, Signing.SECURE, *pkix)
    one_host(DaneCase.INSECURE, Signing.INSECURE, ee)
    one_host(DaneCase.CORRUPT_SIG, Signing.CORRUPT, ee)
    one_host(DaneCase.EXPIRED_SIG, Signing.EXPIRED, ee)
    one_host(DaneCase.DS_MISMATCH, Signing.DS_MISMATCH, ee)

    hosts = tree.zone(BOGUS_TLSA_HOSTS)
    bogus, good = host(hosts, "mx1", ee), host(hosts, "mx2", ee)
    hosts.corrupt_signature("_25._tcp.mx1", "TLSA")
    zone = mail_zone(DaneCase.BOGUS_TLSA)
    zone.mx("@", (10, f"{bogus}."), (20, f"{good}."))
    mx_hosts[DaneCase.BOGUS_TLSA] = (bogus, good)

    zone = mail_zone(DaneCase.NXDOMAIN_MX)
    zone.mx("@", (10, "missing"), (20, "mx2"))
    mx_hosts[DaneCase.NXDOMAIN_MX] = (zone.fqdn("missing"), host(zone, "mx2", ee))

    zone = mail_zone(DaneCase.NULL_MX)
    zone.mx("@", (0, "."))
    mx_hosts[DaneCase.NULL_MX] = ()

    # Declared nowhere: the anchor zone's NSEC chain proves it absent.
    domains[DaneCase.NXDOMAIN] = tree.domain(DaneCase.NXDOMAIN.value)
    mx_hosts[DaneCase.NXDOMAIN] = ()

    return DaneCatalogue(domains, mx_hosts, addresses, ee_tlsa=ee, ta_tlsa=ta, mta_sts=tuple(sts))
