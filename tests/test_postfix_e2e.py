"""End to end: real Postfix delivers real mail under the daemon's MTA-STS answers.

Everything runs inside a network namespace the test creates, so that DNS,
port 25 and port 443 are the test's own and nothing can leak to the internet:

- a DNS server on 127.0.0.53:53 (tests/servers/dns.py) serving
  MX, A and ``_mta-sts`` TXT records; ``/etc/netns/<ns>/resolv.conf`` points at
  it, and ``ip netns exec`` bind-mounts that file over /etc/resolv.conf for
  every process it starts, Postfix's smtp(8) included;
- the HTTPS policy host (tests/servers/https.py, trustme test CA) on 127.0.0.10:443;
- receiving SMTP servers on 127.0.1.x:25 (tests/servers/smtp.py, aiosmtpd), with
  STARTTLS and a certificate from the test CA, with a certificate for the wrong
  name, or without STARTTLS at all;
- the daemon (``python -m mtasts_fast``) on 127.0.0.1:8461;
- a sending Postfix with its own config, queue and log (tests/servers/postfix.py),
  ``smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix`` and
  ``smtp_tls_security_level = may`` as the level for domains without a policy.

The servers run on an event loop in a thread of this process that has
entered the namespace with setns(2) (a network namespace is per thread); the
daemon and Postfix are started with ``ip netns exec``.

Every assertion comes from Postfix's own log and queue and from what the
receivers saw: "nothing sent in clear" means no ``MAIL FROM`` ever reached the
receiver outside TLS. Needs root (``ip netns add``, port 25): skipped without
it, failed instead under ``MTASTS_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import yaml

from tests.servers.dns import DnsServer, Zone
from tests.servers.https import Certificates, HttpsServer, Site
from tests.servers.postfix import PostfixInstance, postfix_program, unavailable

if TYPE_CHECKING:
    # Imported for real inside the fixture, so that a missing aiosmtpd skips
    # (or, under MTASTS_REQUIRE_ALL, fails) instead of breaking collection.
    from tests.servers.smtp import Message, Receiver, Transaction

pytestmark = pytest.mark.slow

_T = TypeVar("_T")

CLONE_NEWNET = 0x40000000  # <sched.h>; os.setns arrives only in Python 3.12
DNS_IP = "127.0.0.53"
HTTPS_IP = "127.0.0.10"
DAEMON_PORT = 8461
POLICY_TABLE = f"socketmap:inet:127.0.0.1:{DAEMON_PORT}:postfix"
TLSRPT_TABLE = f"socketmap:inet:127.0.0.1:{DAEMON_PORT}:tlsrpt"
SENDER = "sender@sender.mtasts-e2e.test"


# --- the network namespace ------------------------------------------------------


def _enter_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def _run(*args: str) -> None:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")


class NetnsLoop:
    """An asyncio loop in a thread living in the namespace; ``call`` runs coroutines there."""

    def __init__(self, netns: str) -> None:
        self._netns = netns
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                _enter_netns(self._netns)
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            loop = asyncio.new_event_loop()
            loop.set_exception_handler(lambda _l, ctx: self.errors.append(str(ctx)))
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"netns-{self._netns}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        if self._loop is None:
            raise RuntimeError("the namespace's event loop did not start")

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None


# --- the lab --------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """A mail domain: its policy mode and the MX host (name, listener IP)."""

    domain: str
    mode: str
    mx_host: str
    mx_ip: str


# One receiver per behaviour, on its own address so that every assertion about
# "what reached this MX" concerns a single test.
GOOD_MX_IP = "127.0.1.1"  # STARTTLS, certificate for the MX names below
WRONG_NAME_MX_IP = "127.0.1.2"  # STARTTLS, certificate for another name
PLAIN_MX_IP = "127.0.1.3"  # no STARTTLS
TESTING_MX_IP = "127.0.1.4"  # STARTTLS, certificate for another name

ENFORCE_OK = Destination("enforce-ok.test", "enforce", "mx.enforce-ok.test", GOOD_MX_IP)
ENFORCE_WRONG_NAME = Destination(
    "enforce-wrong-name.test", "enforce", "mx.enforce-wrong-name.test", WRONG_NAME_MX_IP
)
ENFORCE_PLAIN = Destination("enforce-plain.test", "enforce", "mx.enforce-plain.test", PLAIN_MX_IP)
TESTING_BAD_CERT = Destination(
    "testing-bad-cert.test", "testing", "mx.testing-bad-cert.test", TESTING_MX_IP
)
DAEMON_DOWN = Destination("daemon-down.test", "enforce", "mx.daemon-down.test", GOOD_MX_IP)
# Routed through a second smtp(8) service whose policy table is the daemon's
# `tlsrpt` zone (TLSRPT attributes on).
TLSRPT_ZONE = Destination("tlsrpt-zone.test", "enforce", "mx.tlsrpt-zone.test", GOOD_MX_IP)
DESTINATIONS = (
    ENFORCE_OK,
    ENFORCE_WRONG_NAME,
    ENFORCE_PLAIN,
    TESTING_BAD_CERT,
    DAEMON_DOWN,
    TLSRPT_ZONE,
)
# main.cf transport_maps and the master.cf service behind it.
TLSRPT_TRANSPORT = f"inline:{{ {TLSRPT_ZONE.domain}=smtp-tlsrpt: }}"
TLSRPT_SERVICE = f"smtp-tlsrpt unix - - n - - smtp -o smtp_tls_policy_maps={TLSRPT_TABLE}\n"


class DaemonProcess:
    """``mta-sts-daemon`` run inside the namespace, stoppable and restartable."""

    def __init__(self, netns: str, config: Path, log: Path, probe: Callable[[], bool]) -> None:
        self._cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "mtasts_fast"]
        self._cmd += ["-c", str(config)]
        self._log = log
        self._probe = probe
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as out:
            # ip netns exec execs the command, so this is the daemon's own pid.
            self.proc = subprocess.Popen(self._cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self._probe():
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start listening:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def output(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""


@dataclass
class Lab:
    netns: str
    loop: NetnsLoop
    zone: Zone
    receiver: Receiver
    daemon: DaemonProcess
    postfix: PostfixInstance

    def send(self, dest: Destination) -> tuple[str, int]:
        """Submit one message to a fresh address at ``dest``; (recipient, log position)."""
        recipient = f"user-{secrets.token_hex(4)}@{dest.domain}"
        since = self.postfix.log_size()
        self.postfix.sendmail(SENDER, recipient, f"MTA-STS test for {dest.domain}")
        return recipient, since

    def outcome(self, recipient: str, since: int, timeout: float = 30.0) -> str:
        """The smtp(8) log line that settles ``recipient`` (sent/deferred/bounced)."""
        pattern = rf"^.*postfix/smtp\[\d+\]: \w+: to=<{re.escape(recipient)}>.*status=\w+.*$"
        return self.postfix.wait_for_log(pattern, since=since, timeout=timeout).group(0)

    def listener(self, ip: str) -> tuple[list[Transaction], list[Message]]:
        """(transactions, messages) the receiver saw on ``ip``:25."""
        name = f"{ip}:25"
        transactions = [t for t in self.receiver.transactions() if t.listener == name]
        messages = [m for m in self.receiver.messages() if m.listener == name]
        return transactions, messages

    def diagnostics(self) -> str:
        return (
            f"--- Postfix log ---\n{self.postfix.log()}\n"
            f"--- daemon output ---\n{self.daemon.output()}\n"
            f"--- namespace loop errors ---\n{self.loop.errors}"
        )


def _server_context(certs: Certificates, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs.ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def _publish(zone: Zone, https: HttpsServer, dest: Destination) -> None:
    """MX, A, TXT and the HTTPS policy for ``dest`` (RFC 8461 §3.1, §3.2)."""
    zone.set(dest.domain, "MX", [(10, dest.mx_host)])
    zone.set(dest.mx_host, "A", [dest.mx_ip])
    zone.set(f"_mta-sts.{dest.domain}", "TXT", [[b"v=STSv1; id=e2e20240101;"]])
    zone.set(f"mta-sts.{dest.domain}", "A", [HTTPS_IP])
    policy = f"version: STSv1\nmode: {dest.mode}\nmx: {dest.mx_host}\nmax_age: 86400\n"
    https.set_site(f"mta-sts.{dest.domain}", Site(body=policy.encode()))


def _check_prerequisites() -> None:
    if sys.platform != "linux":
        unavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        unavailable("the delivery test needs root (ip netns add, ports 25 and 443)")
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
    _check_prerequisites()
    from tests.servers.smtp import Receiver

    netns = f"mtasts-e2e-{os.getpid()}-{secrets.token_hex(2)}"
    root = Path(tempfile.mkdtemp(prefix="mtasts-e2e-", dir="/var/tmp"))
    root.chmod(0o755)  # Postfix daemons run as user postfix
    netns_etc = Path("/etc/netns") / netns
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)

        # The namespace, its loopback and its resolv.conf.
        _run("ip", "netns", "add", netns)
        cleanup.callback(_delete_netns, netns)
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        netns_etc.mkdir(parents=True)
        cleanup.callback(_remove_netns_etc, netns_etc)
        # attempts/timeout: a lost answer costs 1 s, not the default 5 s x 2.
        (netns_etc / "resolv.conf").write_text(
            f"nameserver {DNS_IP}\noptions attempts:2 timeout:1\n"
        )

        # DNS, HTTPS policy host and SMTP receivers, all in the namespace.
        loop = NetnsLoop(netns)
        loop.start()
        cleanup.callback(loop.stop)
        certs = Certificates(str(root))
        zone = Zone()
        # Port 53: resolv.conf, which Postfix's resolver reads, has no port.
        dns = DnsServer(zone, host=DNS_IP, port=53)
        https = HttpsServer(certs, HTTPS_IP)
        receiver = Receiver()

        async def start_servers() -> None:
            await dns.start()
            await https.start()
            good = _server_context(
                certs, ENFORCE_OK.mx_host, DAEMON_DOWN.mx_host, TLSRPT_ZONE.mx_host
            )
            wrong = _server_context(certs, "wrong-name.mtasts-e2e.test")
            await receiver.listen(GOOD_MX_IP, 25, hostname="good.receiver.test", tls=good)
            await receiver.listen(WRONG_NAME_MX_IP, 25, hostname="wrong.receiver.test", tls=wrong)
            await receiver.listen(PLAIN_MX_IP, 25, hostname="plain.receiver.test", tls=None)
            await receiver.listen(TESTING_MX_IP, 25, hostname="testing.receiver.test", tls=wrong)

        async def stop_servers() -> None:
            await receiver.close()
            await https.close()
            await dns.close()

        cleanup.callback(lambda: loop.call(stop_servers()))
        loop.call(start_servers())
        for dest in DESTINATIONS:
            _publish(zone, https, dest)

        # The daemon.
        config = root / "mta-sts-daemon.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "host": "127.0.0.1",
                    "port": DAEMON_PORT,
                    "workers": 1,
                    "shutdown_timeout": 2,
                    "nameservers": [DNS_IP],
                    "ca_file": certs.ca_file,
                    "cache": {"type": "internal"},
                    "zones": {"tlsrpt": {"tlsrpt": True}},
                }
            )
        )

        def probe() -> bool:
            async def connect() -> bool:
                try:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", DAEMON_PORT)
                except OSError:
                    return False
                writer.close()
                return True

            return loop.call(connect())

        daemon = DaemonProcess(netns, config, root / "daemon.log", probe)
        cleanup.callback(daemon.stop)
        daemon.start()

        # The sending Postfix.
        postfix = PostfixInstance(
            root / "postfix",
            {
                "myhostname": f"sender-{secrets.token_hex(3)}.mtasts-e2e.test",
                "inet_interfaces": "loopback-only",
                "inet_protocols": "ipv4",
                # MX and A records from DNS (the namespace's resolv.conf), never
                # from /etc/hosts.
                "smtp_host_lookup": "dns",
                "disable_dns_lookups": "no",
                "smtp_dns_support_level": "enabled",
                # Domains without a policy: opportunistic TLS, as most senders.
                "smtp_tls_security_level": "may",
                "smtp_tls_CAfile": certs.ca_file,
                "smtp_tls_policy_maps": POLICY_TABLE,
                "smtp_tls_loglevel": "1",
                "smtp_connect_timeout": "5s",
                "transport_maps": TLSRPT_TRANSPORT,
            },
            netns=netns,
            services=TLSRPT_SERVICE,
        )
        cleanup.callback(postfix.stop)
        postfix.start()
        yield Lab(netns, loop, zone, receiver, daemon, postfix)
        # House rule: an exception the servers' loop swallowed is a failure.
        assert loop.errors == [], loop.errors


def _kill_netns_processes(netns: str) -> None:
    result = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10, check=False
    )
    for pid in result.stdout.split():
        # This process is never listed (only one of its threads entered the
        # namespace), but make sure of it.
        if pid.isdigit() and int(pid) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _delete_netns(netns: str) -> None:
    _kill_netns_processes(netns)
    subprocess.run(["ip", "netns", "delete", netns], capture_output=True, timeout=10, check=False)


def _remove_netns_etc(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # /etc/netns, only if nothing else lives there


# --- the deliveries ---------------------------------------------------------------


def test_enforce_valid_certificate_is_delivered_verified(lab: Lab) -> None:
    recipient, since = lab.send(ENFORCE_OK)
    line = lab.outcome(recipient, since)
    assert "status=sent" in line, lab.diagnostics()
    assert f"relay={ENFORCE_OK.mx_host}[{GOOD_MX_IP}]:25" in line
    # "Verified" is only logged at the verify/secure levels: Postfix applied the
    # daemon's "secure match=..." (at the default level "may" it says "Trusted").
    log = lab.postfix.log_since(since)
    assert f"Verified TLS connection established to {ENFORCE_OK.mx_host}[{GOOD_MX_IP}]:25" in log
    # smtp(8) resolved the MX through the namespace's resolv.conf: our server
    # saw the query (the host's resolver has never heard of .test names).
    assert lab.zone.queries(ENFORCE_OK.domain, "MX") >= 1
    transactions, messages = lab.listener(GOOD_MX_IP)
    delivered = [m for m in messages if recipient in m.recipients]
    assert len(delivered) == 1
    assert delivered[0].tls
    assert all(t.tls for t in transactions)
    assert lab.postfix.wait_queue(recipient, []) == []


def test_enforce_wrong_certificate_name_is_deferred(lab: Lab) -> None:
    recipient, since = lab.send(ENFORCE_WRONG_NAME)
    line = lab.outcome(recipient, since)
    assert "status=deferred" in line, lab.diagnostics()
    assert "dsn=4.7.5" in line
    assert "Server certificate not verified" in line
    # Trusted CA, wrong name: it is the match= list from the policy that failed.
    log = lab.postfix.log_since(since)
    failed = f"server certificate verification failed for {ENFORCE_WRONG_NAME.mx_host}"
    assert re.search(re.escape(failed) + r".*hostname mismatch", log), log
    # Still queued, to be retried (RFC 8461 §5.1: a temporary failure).
    assert lab.postfix.wait_queue(recipient, ["deferred"]) == ["deferred"]
    # TLS was negotiated and then abandoned: no transaction at all reached the
    # MX, in clear or otherwise.
    transactions, messages = lab.listener(WRONG_NAME_MX_IP)
    assert transactions == []
    assert messages == []


def test_enforce_without_starttls_is_deferred_never_sent_in_clear(lab: Lab) -> None:
    recipient, since = lab.send(ENFORCE_PLAIN)
    line = lab.outcome(recipient, since)
    assert "status=deferred" in line, lab.diagnostics()
    assert "TLS is required, but was not offered" in line
    assert lab.postfix.wait_queue(recipient, ["deferred"]) == ["deferred"]
    transactions, messages = lab.listener(PLAIN_MX_IP)
    assert transactions == []
    assert messages == []


def test_testing_mode_bad_certificate_is_still_delivered(lab: Lab) -> None:
    # RFC 8461 §5: in testing mode a validation failure must not stop delivery;
    # the daemon answers NOTFOUND and Postfix uses its own level ("may").
    recipient, since = lab.send(TESTING_BAD_CERT)
    line = lab.outcome(recipient, since)
    assert "status=sent" in line, lab.diagnostics()
    log = lab.postfix.log_since(since)
    assert f"TLS connection established to {TESTING_BAD_CERT.mx_host}[{TESTING_MX_IP}]:25" in log
    assert f"Verified TLS connection established to {TESTING_BAD_CERT.mx_host}" not in log
    _transactions, messages = lab.listener(TESTING_MX_IP)
    assert [m.recipients for m in messages] == [(recipient,)]
    assert messages[0].tls


def test_daemon_down_defers_and_delivers_once_it_is_back(lab: Lab) -> None:
    lab.daemon.stop()
    try:
        recipient, since = lab.send(DAEMON_DOWN)
        line = lab.outcome(recipient, since)
        # A failed policy lookup never means "no policy": Postfix defers
        # rather than deliver with the weaker default level.
        assert "status=deferred" in line, lab.diagnostics()
        assert "dsn=4.7.5" in line
        log = lab.postfix.log_since(since)
        assert f"table {POLICY_TABLE} lookup error" in log
        assert lab.postfix.wait_queue(recipient, ["deferred"]) == ["deferred"]
        assert [m for m in lab.receiver.messages() if recipient in m.recipients] == []
    finally:
        lab.daemon.start()
    since = lab.postfix.log_size()
    lab.postfix.flush()
    line = lab.outcome(recipient, since)
    assert "status=sent" in line, lab.diagnostics()
    log = lab.postfix.log_since(since)
    assert f"Verified TLS connection established to {DAEMON_DOWN.mx_host}[{GOOD_MX_IP}]:25" in log
    delivered = [m for m in lab.receiver.messages() if recipient in m.recipients]
    assert len(delivered) == 1
    assert delivered[0].tls
    assert lab.postfix.wait_queue(recipient, []) == []


def test_tlsrpt_attributes_need_postfix_3_10(lab: Lab) -> None:
    # The reason `tlsrpt` is a per-zone opt-in: Postfix before 3.10 rejects the
    # TLSRPT attributes (policy_type=...) in a TLS policy, and a rejected policy
    # defers every message to the domain. From 3.10 on they are accepted.
    recipient, since = lab.send(TLSRPT_ZONE)
    line = lab.outcome(recipient, since)
    log = lab.postfix.log_since(since)
    _transactions, messages = lab.listener(GOOD_MX_IP)
    delivered = [m for m in messages if recipient in m.recipients]
    if lab.postfix.version() >= (3, 10):
        assert "status=sent" in line, lab.diagnostics()
        assert f"Verified TLS connection established to {TLSRPT_ZONE.mx_host}" in log
        assert len(delivered) == 1
    else:
        assert "status=deferred" in line, lab.diagnostics()
        assert "dsn=4.7.5" in line
        assert 'invalid attribute name: "policy_type"' in log
        assert delivered == []
        assert lab.postfix.wait_queue(recipient, ["deferred"]) == ["deferred"]
