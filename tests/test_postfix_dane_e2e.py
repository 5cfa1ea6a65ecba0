"""End to end: real Postfix delivers (or defers) under the daemon's DANE answers.

The layout of test_postfix_e2e.py, with a DNSSEC-signed tree instead of the
plain DNS server, all inside a network namespace the test creates:

- Knot serving the signed zones, the validating Unbound on 127.0.0.22:53 and
  a non-validating one on 127.0.0.23:53 (tests/servers/dnssec.py);
  ``/etc/netns/<ns>/resolv.conf`` names the validating one, so Postfix's
  smtp(8) asks it, with ``smtp_dns_support_level = dnssec``;
- the HTTPS policy host on 127.0.0.10:443: every domain here publishes an
  ``enforce`` MTA-STS policy, and every receiving MX presents a certificate
  from the test CA that Postfix trusts (``smtp_tls_CAfile``), valid for its
  name: the web PKI alone would let every message through;
- receiving SMTP servers with STARTTLS on 127.0.1.x:25 (tests/servers/smtp.py);
- the daemon on 127.0.0.1:8461 asking the validating resolver, with the
  default ``dane: precedence``, and a zone ``legacy`` with ``dane: off``;
- a sending Postfix. Two more smtp(8) services: ``smtp-nodnssec`` with
  ``smtp_dns_support_level = enabled`` (the setting DANE answers need is
  missing), and ``smtp-legacy`` whose policy table is the ``legacy`` zone
  (today's MTA-STS answers, for comparison).

The cases of issue 12: (a) a DANE domain whose MX presents the certificate
its TLSA record names is delivered, "Verified" by DANE; (b) an MTA-STS
``enforce`` domain whose TLSA records do not match the certificate, which is
valid for the web PKI, is deferred (MTA-STS does not override the failing
DANE validation; with ``dane: off`` it would have gone out); (c) bogus DNSSEC
on the TLSA lookup is deferred; (d) an insecure domain with MTA-STS behaves as
today; (e) without ``smtp_dns_support_level = dnssec`` Postfix defers
``dane-only`` as a configuration error and lowers ``dane`` to ``may``.

Runs in one twin's pass only (the daemon's parsers are the subject of the
other tests; this one is about Postfix), like the other slow end-to-end test
it is marked ``slow``. Needs root, Postfix, knot and unbound: skipped without
them, failed instead under ``MTASTS_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import ssl
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from mtasts_fast import _compat
from tests.servers.dnssec import DnssecTree, DnssecUnavailable, Signing, TreeZone, tlsa_3_1_1
from tests.servers.https import Certificates, HttpsServer, Site
from tests.servers.netns import Netns, NetnsDaemon, NetnsLoop
from tests.servers.postfix import PostfixInstance, postfix_program, unavailable

if TYPE_CHECKING:
    from tests.servers.smtp import Message, Receiver, Transaction

pytestmark = pytest.mark.slow

VALIDATING_IP = "127.0.0.22"
HTTPS_IP = "127.0.0.10"
DAEMON_PORT = 8461
POLICY_TABLE = f"socketmap:inet:127.0.0.1:{DAEMON_PORT}:postfix"
LEGACY_TABLE = f"socketmap:inet:127.0.0.1:{DAEMON_PORT}:legacy"
SENDER = "sender@sender.mtasts-dane-e2e.test"
STS_ID = "danee2e1"


@dataclass(frozen=True)
class Destination:
    """A mail domain of the tree: its zone label and MX hosts (label, IP, TLSA?)."""

    label: str
    hosts: tuple[tuple[str, str, bool], ...]
    signing: Signing = Signing.SECURE

    @property
    def domain(self) -> str:
        return f"{self.label}.dane.test"

    def mx(self, index: int = 0) -> str:
        return f"{self.hosts[index][0]}.{self.domain}"

    def ip(self, index: int = 0) -> str:
        return self.hosts[index][1]


# (a) TLSA matches the certificate.
DANE_OK = Destination("dane-ok", (("mx1", "127.0.1.1", True),))
# (b) TLSA names another key; the certificate is valid for the web PKI.
DANE_MISMATCH = Destination("dane-mismatch", (("mx1", "127.0.1.2", True),))
# (c) The MX host's TLSA RRset is bogus (zone bogus-tlsa-hosts, see below).
BOGUS_TLSA = Destination("bogus-tlsa", ())
BOGUS_HOSTS = Destination("bogus-tlsa-hosts", (("mx1", "127.0.1.3", True),))
# (d) Not signed: MTA-STS as today.
INSECURE_STS = Destination("insecure-sts", (("mx1", "127.0.1.4", False),), Signing.INSECURE)
# (e) dane-only and dane through an smtp(8) without DNSSEC lookups.
NODNSSEC_ONLY = Destination("nodnssec-only", (("mx1", "127.0.1.5", True),))
NODNSSEC_MIXED = Destination(
    "nodnssec-mixed", (("mx1", "127.0.1.6", True), ("mx2", "127.0.1.7", False))
)
MAIL_DOMAINS = (DANE_OK, DANE_MISMATCH, BOGUS_TLSA, INSECURE_STS, NODNSSEC_ONLY, NODNSSEC_MIXED)
RECEIVING = (DANE_OK, DANE_MISMATCH, BOGUS_HOSTS, INSECURE_STS, NODNSSEC_ONLY, NODNSSEC_MIXED)

# main.cf transport_maps and the master.cf services behind it. A recipient
# address key routes that one address (the legacy comparison of case b).
LEGACY_RECIPIENT = f"legacy@{DANE_MISMATCH.domain}"
TRANSPORTS = (
    f"inline:{{ {NODNSSEC_ONLY.domain}=smtp-nodnssec:, {NODNSSEC_MIXED.domain}=smtp-nodnssec:, "
    f"{LEGACY_RECIPIENT}=smtp-legacy: }}"
)
SERVICES = (
    "smtp-nodnssec unix - - n - - smtp -o smtp_dns_support_level=enabled\n"
    f"smtp-legacy unix - - n - - smtp -o smtp_tls_policy_maps={LEGACY_TABLE}\n"
)


def _declare(tree: DnssecTree, dest: Destination, tlsa: dict[str, str]) -> TreeZone:
    zone = tree.zone(dest.label, dest.signing)
    for label, ip, with_tlsa in dest.hosts:
        zone.a(label, ip)
        if with_tlsa:
            zone.tlsa(f"_25._tcp.{label}", tlsa[f"{label}.{dest.domain}"])
    if dest is not BOGUS_HOSTS:
        zone.txt("_mta-sts", f"v=STSv1; id={STS_ID};")
        zone.a("mta-sts", HTTPS_IP)
    return zone


def _server_context(
    cert_pem_out: dict[str, bytes], certs: Certificates, name: str
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf = certs.ca.issue_cert(name)
    leaf.configure_cert(ctx)
    cert_pem_out[name] = leaf.cert_chain_pems[0].bytes()
    return ctx


@dataclass
class Lab:
    netns: str
    loop: NetnsLoop
    tree: DnssecTree
    receiver: Receiver
    daemon: NetnsDaemon
    postfix: PostfixInstance

    def send(self, recipient: str) -> int:
        """Submit one message to ``recipient``; the log position before it."""
        since = self.postfix.log_size()
        self.postfix.sendmail(SENDER, recipient, f"DANE test for {recipient}")
        return since

    def outcome(self, recipient: str, since: int, timeout: float = 30.0) -> str:
        """The smtp(8) log line that settles ``recipient`` (sent/deferred/bounced)."""
        pattern = rf"^.*postfix/smtp\[\d+\]: \w+: to=<{re.escape(recipient)}>.*status=\w+.*$"
        return self.postfix.wait_for_log(pattern, since=since, timeout=timeout).group(0)

    def listener(self, ip: str) -> tuple[list[Transaction], list[Message]]:
        name = f"{ip}:25"
        transactions = [t for t in self.receiver.transactions() if t.listener == name]
        messages = [m for m in self.receiver.messages() if m.listener == name]
        return transactions, messages

    def diagnostics(self) -> str:
        return (
            f"--- Postfix log ---\n{self.postfix.log()}\n"
            f"--- daemon output ---\n{self.daemon.output()}\n"
            f"--- DNS ---\n{self.tree.diagnostics()}\n"
            f"--- namespace loop errors ---\n{self.loop.errors}"
        )


def _check_prerequisites() -> None:
    if sys.platform != "linux":
        unavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        unavailable("the delivery test needs root (ip netns add, ports 25, 53 and 443)")
    if shutil.which("ip") is None:
        unavailable("ip (iproute2) is not installed")
    for program in ("postfix", "sendmail", "postqueue"):
        postfix_program(program)
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        unavailable("aiosmtpd is not installed (pyproject.toml dependency group `test`)")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if _compat.NO_EXTENSIONS:
        # Postfix is the subject here, not the parsers: one pass is enough.
        pytest.skip("runs in the compiled pass only (MTASTS_NO_EXTENSIONS=1)")
    _check_prerequisites()
    from tests.servers.smtp import Receiver

    netns = f"mtasts-dane-{os.getpid()}-{secrets.token_hex(2)}"
    root = Path(tempfile.mkdtemp(prefix="mtasts-dane-e2e-", dir="/var/tmp"))
    root.chmod(0o755)  # Postfix daemons run as user postfix
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        # The validating resolver, on port 53 as resolv.conf needs it.
        cleanup.enter_context(Netns(netns, nameserver=VALIDATING_IP))

        loop = NetnsLoop(netns)
        loop.start()
        cleanup.callback(loop.stop)
        certs = Certificates(str(root))
        https = HttpsServer(certs, HTTPS_IP)
        receiver = Receiver()
        pems: dict[str, bytes] = {}
        contexts = {
            dest.ip(i): _server_context(pems, certs, dest.mx(i))
            for dest in RECEIVING
            for i in range(len(dest.hosts))
        }
        # (b): the TLSA record names a key the MX does not have.
        other = certs.ca.issue_cert("someone-else.dane.test").cert_chain_pems[0].bytes()
        tlsa = {name: tlsa_3_1_1(pem) for name, pem in pems.items()}
        tlsa[DANE_MISMATCH.mx()] = tlsa_3_1_1(other)

        try:
            tree = DnssecTree(root / "tree", netns=netns)
        except DnssecUnavailable as exc:
            unavailable(str(exc))
        for dest in (*MAIL_DOMAINS, BOGUS_HOSTS):
            zone = _declare(tree, dest, tlsa)
            if dest is BOGUS_TLSA:
                zone.mx("@", (10, f"{BOGUS_HOSTS.mx()}."))
            elif dest is not BOGUS_HOSTS:
                zone.mx("@", *((10 * (i + 1), label) for i, (label, _, _) in enumerate(dest.hosts)))
            if dest is BOGUS_HOSTS:
                zone.corrupt_signature("_25._tcp.mx1", "TLSA")
        tree.start()
        cleanup.callback(tree.stop)

        async def start_servers() -> None:
            await https.start()
            for ip, ctx in contexts.items():
                await receiver.listen(ip, 25, hostname=f"receiver-{ip}.test", tls=ctx)

        async def stop_servers() -> None:
            await receiver.close()
            await https.close()

        cleanup.callback(lambda: loop.call(stop_servers()))
        loop.call(start_servers())
        for dest in MAIL_DOMAINS:
            hosts = (
                [BOGUS_HOSTS.mx()]
                if dest is BOGUS_TLSA
                else [dest.mx(i) for i in range(len(dest.hosts))]
            )
            policy = "version: STSv1\nmode: enforce\n" + "".join(f"mx: {h}\n" for h in hosts)
            https.set_site(
                f"mta-sts.{dest.domain}", Site(body=(policy + "max_age: 86400\n").encode())
            )

        config = root / "mta-sts-daemon.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "host": "127.0.0.1",
                    "port": DAEMON_PORT,
                    "workers": 1,
                    "shutdown_timeout": 2,
                    "nameservers": [VALIDATING_IP],
                    "dnssec_probe_name": "dane.test",
                    "ca_file": certs.ca_file,
                    "cache": {"type": "internal"},
                    "zones": {"legacy": {"dane": "off"}},
                }
            )
        )

        def probe() -> bool:
            return loop.tcp_open("127.0.0.1", DAEMON_PORT)

        daemon = NetnsDaemon(netns, config, root / "daemon.log", probe)
        cleanup.callback(daemon.stop)
        daemon.start()

        postfix = PostfixInstance(
            root / "postfix",
            {
                "myhostname": f"sender-{secrets.token_hex(3)}.mtasts-dane-e2e.test",
                "inet_interfaces": "loopback-only",
                "inet_protocols": "ipv4",
                "smtp_host_lookup": "dns",
                "disable_dns_lookups": "no",
                # The first step of a DANE set-up (README "DANE").
                "smtp_dns_support_level": "dnssec",
                "smtp_tls_security_level": "may",
                "smtp_tls_CAfile": certs.ca_file,
                "smtp_tls_policy_maps": POLICY_TABLE,
                "smtp_tls_loglevel": "1",
                "smtp_connect_timeout": "5s",
                "transport_maps": TRANSPORTS,
            },
            netns=netns,
            services=SERVICES,
        )
        cleanup.callback(postfix.stop)
        postfix.start()
        yield Lab(netns, loop, tree, receiver, daemon, postfix)
        assert loop.errors == [], loop.errors


def _recipient(dest: Destination) -> str:
    return f"user-{secrets.token_hex(4)}@{dest.domain}"


def _delivered(lab: Lab, ip: str, recipient: str) -> list[Message]:
    return [m for m in lab.listener(ip)[1] if recipient in m.recipients]


def test_a_dane_domain_is_delivered_verified_by_dane(lab: Lab) -> None:
    recipient = _recipient(DANE_OK)
    since = lab.send(recipient)
    line = lab.outcome(recipient, since)
    assert "status=sent" in line, lab.diagnostics()
    assert f"relay={DANE_OK.mx()}[{DANE_OK.ip()}]:25" in line
    log = lab.postfix.log_since(since)
    assert f"Verified TLS connection established to {DANE_OK.mx()}[{DANE_OK.ip()}]:25" in log
    delivered = _delivered(lab, DANE_OK.ip(), recipient)
    assert len(delivered) == 1
    assert delivered[0].tls
    # The daemon answered dane-only, and said why.
    assert f"DANE: {DANE_OK.domain} is dane-only: the MX host has usable TLSA" in (
        lab.daemon.output()
    )


def test_b_failing_dane_is_not_overridden_by_mta_sts(lab: Lab) -> None:
    recipient = _recipient(DANE_MISMATCH)
    since = lab.send(recipient)
    line = lab.outcome(recipient, since)
    assert "status=deferred" in line, lab.diagnostics()
    assert "dsn=4.7.5" in line
    assert "Server certificate not verified" in line
    # Postfix checked the certificate against the TLSA record, not the web PKI.
    assert (
        f"server certificate verification failed for {DANE_MISMATCH.mx()}"
        f"[{DANE_MISMATCH.ip()}]:25: num=65:no matching DANE TLSA records"
    ) in lab.postfix.log_since(since)
    assert lab.postfix.wait_queue(recipient, ["deferred"]) == ["deferred"]
    assert _delivered(lab, DANE_MISMATCH.ip(), recipient) == []
    # With dane: off (the old daemon's answers) the same certificate passes
    # the web PKI check of the MTA-STS policy and the message goes out.
    since = lab.send(LEGACY_RECIPIENT)
    line = lab.outcome(LEGACY_RECIPIENT, since)
    assert "status=sent" in line, lab.diagnostics()
    assert f"Verified TLS connection established to {DANE_MISMATCH.mx()}" in (
        lab.postfix.log_since(since)
    )


def test_c_bogus_dnssec_is_deferred(lab: Lab) -> None:
    recipient = _recipient(BOGUS_TLSA)
    since = lab.send(recipient)
    line = lab.outcome(recipient, since)
    assert "status=deferred" in line, lab.diagnostics()
    assert "dsn=4.7.5" in line
    log = lab.postfix.log_since(since)
    # Postfix logs the daemon's TEMP reason.
    assert (
        f"{POLICY_TABLE} socketmap server temporary error: "
        "DANE: TLSA _25._tcp.mx1.bogus-tlsa-hosts.dane.test: SERVFAIL"
    ) in log, log
    assert lab.postfix.wait_queue(recipient, ["deferred"]) == ["deferred"]
    assert lab.listener(BOGUS_HOSTS.ip()) == ([], [])


def test_d_insecure_domain_with_mta_sts_is_as_before(lab: Lab) -> None:
    recipient = _recipient(INSECURE_STS)
    since = lab.send(recipient)
    line = lab.outcome(recipient, since)
    assert "status=sent" in line, lab.diagnostics()
    log = lab.postfix.log_since(since)
    # "Verified" at the secure level: the MTA-STS answer, web PKI and name.
    assert f"Verified TLS connection established to {INSECURE_STS.mx()}" in log
    assert len(_delivered(lab, INSECURE_STS.ip(), recipient)) == 1


def test_e_without_dnssec_lookups_dane_only_is_a_configuration_error(lab: Lab) -> None:
    recipient = _recipient(NODNSSEC_ONLY)
    since = lab.send(recipient)
    line = lab.outcome(recipient, since)
    assert "status=deferred" in line, lab.diagnostics()
    assert "dsn=4.7.5" in line
    log = lab.postfix.log_since(since)
    assert f"{NODNSSEC_ONLY.domain}: dane-only configured with dnssec lookups disabled" in log
    assert _delivered(lab, NODNSSEC_ONLY.ip(), recipient) == []


def test_e_without_dnssec_lookups_dane_becomes_may(lab: Lab) -> None:
    recipient = _recipient(NODNSSEC_MIXED)
    since = lab.send(recipient)
    line = lab.outcome(recipient, since)
    assert "status=sent" in line, lab.diagnostics()
    log = lab.postfix.log_since(since)
    assert f"{NODNSSEC_MIXED.domain}: dane configured with dnssec lookups disabled" in log
    # Opportunistic TLS: not "Verified" (no DANE, no MTA-STS check either).
    assert "Verified TLS connection" not in log
    assert re.search(r"(Trusted|Untrusted) TLS connection established", log), log
