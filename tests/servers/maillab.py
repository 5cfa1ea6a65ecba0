"""The mail lab of the end-to-end tests: everything a sending Postfix talks to.

Inside a network namespace of its own (tests/servers/netns.py):

- a DNS server on 127.0.0.53:53 (tests/servers/dns.py) serving MX, A and TXT
  records; the namespace's resolv.conf points at it;
- the HTTPS policy host (tests/servers/https.py, trustme test CA) on
  127.0.0.10:443, serving ``https://mta-sts.<domain>/.well-known/mta-sts.txt``;
- receiving SMTP servers on 127.0.1.x:25 (tests/servers/smtp.py, aiosmtpd), each
  with STARTTLS and a certificate from the test CA for the names it is given,
  or without STARTTLS;
- the daemon (``python -m mtasts_fast``) on 127.0.0.1:8461.

The test module adds the sending Postfix (the host's, or Postfix 3.10 chrooted
into the Debian 13 root) and assigns it to :attr:`MailLab.postfix`; the helpers
here then send mail and read the outcome from Postfix's log::

    with mail_lab("mtasts-e2e", receivers, zones={"tlsrpt": {"tlsrpt": True}}) as lab:
        lab.publish(Destination("enforce-ok.test", "enforce", "mx.enforce-ok.test", GOOD))
        lab.postfix = PostfixInstance(..., netns=lab.netns.name)
        lab.postfix.start()
        recipient, since = lab.send("enforce-ok.test")
        lab.outcome(recipient, since)  # the smtp(8) line with status=sent/deferred
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tests.servers.dns import DnsServer, Zone
from tests.servers.https import Certificates, HttpsServer, Site
from tests.servers.netns import Netns, NetnsDaemon, NetnsLoop
from tests.servers.postfix import PostfixInstance, unavailable

if TYPE_CHECKING:
    # Imported for real inside mail_lab(), so that a missing aiosmtpd skips
    # (or, under MTASTS_REQUIRE_ALL, fails) instead of breaking collection.
    from tests.servers.smtp import Message, Receiver, Transaction

__all__ = [
    "DAEMON_PORT",
    "DNS_IP",
    "HTTPS_IP",
    "SENDER",
    "Destination",
    "MailLab",
    "ReceiverSpec",
    "check_lab_prerequisites",
    "mail_lab",
]

DNS_IP = "127.0.0.53"
HTTPS_IP = "127.0.0.10"
DAEMON_PORT = 8461
SENDER = "sender@sender.mtasts-e2e.test"
POLICY_ID = "e2e20240101"


@dataclass(frozen=True)
class Destination:
    """A mail domain: its policy mode and its MX host (name, listener IP).

    ``policy_mx``: the policy's ``mx`` lines (default: the MX host itself), so
    that a test can publish an MX the policy does not list. ``tlsrpt``: the
    ``rua`` of a ``_smtp._tls`` TXT record (RFC 8460 §3), or None for none.
    """

    domain: str
    mode: str
    mx_host: str
    mx_ip: str
    policy_mx: tuple[str, ...] = ()
    tlsrpt: str | None = None

    def policy_text(self) -> str:
        """The policy served at ``mta-sts.<domain>`` (RFC 8461 §3.2)."""
        mx = "".join(f"mx: {host}\n" for host in (self.policy_mx or (self.mx_host,)))
        return f"version: STSv1\nmode: {self.mode}\n{mx}max_age: 86400\n"

    def policy_lines(self) -> list[str]:
        return self.policy_text().splitlines()


@dataclass(frozen=True)
class ReceiverSpec:
    """An SMTP receiver on ``ip``:25; ``cert_names`` None means no STARTTLS.

    ``untrusted``: the certificate comes from a CA the sender does not trust.
    """

    ip: str
    hostname: str
    cert_names: tuple[str, ...] | None
    untrusted: bool = False


def check_lab_prerequisites() -> None:
    """Skip (or fail under MTASTS_REQUIRE_ALL) when the lab cannot run here."""
    if sys.platform != "linux":
        unavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        unavailable("the delivery test needs root (ip netns add, ports 25 and 443)")
    if shutil.which("ip") is None:
        unavailable("ip (iproute2) is not installed")
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        unavailable("aiosmtpd is not installed (pyproject.toml dependency group `test`)")


def server_context(certs: Certificates, *names: str, untrusted: bool = False) -> ssl.SSLContext:
    """A server TLS context with a certificate from the test CA for ``names``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca = certs.untrusted_ca if untrusted else certs.ca
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


@dataclass
class MailLab:
    """The running lab; :attr:`postfix` is the test module's sending Postfix."""

    root: Path
    netns: Netns
    loop: NetnsLoop
    certs: Certificates
    zone: Zone
    https: HttpsServer
    receiver: Receiver
    daemon: NetnsDaemon
    postfix: PostfixInstance | None = None
    extra_logs: dict[str, Path] = field(default_factory=dict)

    def publish(self, dest: Destination) -> None:
        """MX, A, TXT (and TLSRPT TXT) records and the HTTPS policy of ``dest``."""
        zone = self.zone
        zone.set(dest.domain, "MX", [(10, dest.mx_host)])
        zone.set(dest.mx_host, "A", [dest.mx_ip])
        zone.set(f"_mta-sts.{dest.domain}", "TXT", [[f"v=STSv1; id={POLICY_ID};".encode()]])
        zone.set(f"mta-sts.{dest.domain}", "A", [HTTPS_IP])
        if dest.tlsrpt is not None:
            record = f"v=TLSRPTv1; rua={dest.tlsrpt}"
            zone.set(f"_smtp._tls.{dest.domain}", "TXT", [[record.encode()]])
        self.https.set_site(f"mta-sts.{dest.domain}", Site(body=dest.policy_text().encode()))

    @property
    def mta(self) -> PostfixInstance:
        assert self.postfix is not None, "the test module has not started its Postfix"
        return self.postfix

    def send(self, domain: str, local: str = "user") -> tuple[str, int]:
        """Submit one message to a fresh address at ``domain``; (recipient, log position)."""
        recipient = f"{local}-{secrets.token_hex(4)}@{domain}"
        since = self.mta.log_size()
        self.mta.sendmail(SENDER, recipient, f"MTA-STS test for {domain}")
        return recipient, since

    def outcome(self, recipient: str, since: int, timeout: float = 30.0) -> str:
        """The smtp(8) log line that settles ``recipient`` (sent/deferred/bounced)."""
        pattern = rf"^.*postfix/smtp\[\d+\]: \w+: to=<{re.escape(recipient)}>.*status=\w+.*$"
        return self.mta.wait_for_log(pattern, since=since, timeout=timeout).group(0)

    def listener(self, ip: str) -> tuple[list[Transaction], list[Message]]:
        """(transactions, messages) the receiver saw on ``ip``:25."""
        name = f"{ip}:25"
        transactions = [t for t in self.receiver.transactions() if t.listener == name]
        messages = [m for m in self.receiver.messages() if m.listener == name]
        return transactions, messages

    def delivered(self, recipient: str) -> list[Message]:
        """The messages the receivers accepted for ``recipient``."""
        return [m for m in self.receiver.messages() if recipient in m.recipients]

    def diagnostics(self) -> str:
        parts = [
            f"--- Postfix log ---\n{self.postfix.log() if self.postfix else ''}",
            f"--- daemon output ---\n{self.daemon.output()}",
        ]
        for name, path in self.extra_logs.items():
            text = path.read_text(errors="replace") if path.exists() else "(no file)"
            parts.append(f"--- {name} ---\n{text}")
        parts.append(f"--- namespace loop errors ---\n{self.loop.errors}")
        return "\n".join(parts)


def _daemon_config(
    certs: Certificates, default_zone: Mapping[str, Any], zones: Mapping[str, Any]
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": DAEMON_PORT,
        "workers": 1,
        "shutdown_timeout": 2,
        "nameservers": [DNS_IP],
        "ca_file": certs.ca_file,
        "cache": {"type": "internal"},
    }
    if default_zone:
        config["default_zone"] = dict(default_zone)
    if zones:
        config["zones"] = dict(zones)
    return config


@contextlib.contextmanager
def mail_lab(
    prefix: str,
    receivers: Sequence[ReceiverSpec],
    *,
    default_zone: Mapping[str, Any] | None = None,
    zones: Mapping[str, Any] | None = None,
    workdir: Path | None = None,
) -> Iterator[MailLab]:
    """Start the lab (namespace ``<prefix>-<pid>-<hex>``); tear everything down on exit.

    ``default_zone``, ``zones``: the daemon's settings of those names.
    ``workdir``: where certificates, the daemon's config and log go (a fresh
    directory under /var/tmp, removed on exit, unless given).
    """
    check_lab_prerequisites()
    from tests.servers.smtp import Receiver

    name = f"{prefix}-{os.getpid()}-{secrets.token_hex(2)}"
    with contextlib.ExitStack() as cleanup:
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/var/tmp"))
            cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)  # Postfix daemons run as user postfix
        netns = cleanup.enter_context(Netns(name, nameserver=DNS_IP))

        loop = NetnsLoop(name)
        loop.start()
        cleanup.callback(loop.stop)
        certs = Certificates(str(workdir))
        zone = Zone()
        # Port 53: resolv.conf, which Postfix's resolver reads, has no port.
        dns = DnsServer(zone, host=DNS_IP, port=53)
        https = HttpsServer(certs, HTTPS_IP)
        receiver = Receiver()

        async def start_servers() -> None:
            await dns.start()
            await https.start()
            for spec in receivers:
                tls = None
                if spec.cert_names is not None:
                    tls = server_context(certs, *spec.cert_names, untrusted=spec.untrusted)
                await receiver.listen(spec.ip, 25, hostname=spec.hostname, tls=tls)

        async def stop_servers() -> None:
            await receiver.close()
            await https.close()
            await dns.close()

        cleanup.callback(lambda: loop.call(stop_servers()))
        loop.call(start_servers())

        config = workdir / "mta-sts-daemon.yml"
        config.write_text(yaml.safe_dump(_daemon_config(certs, default_zone or {}, zones or {})))
        daemon = NetnsDaemon(
            name,
            config,
            workdir / "daemon.log",
            lambda: loop.tcp_open("127.0.0.1", DAEMON_PORT),
        )
        cleanup.callback(daemon.stop)
        daemon.start()

        lab = MailLab(workdir, netns, loop, certs, zone, https, receiver, daemon)
        yield lab
        # House rule: an exception the servers' loop swallowed is a failure.
        assert loop.errors == [], loop.errors
