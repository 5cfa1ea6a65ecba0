"""A booted Debian 13 with mtasts-fast installed as README says, and a network of its own.

:func:`started` builds the lab that tests/test_systemd_container.py shares
between its tests:

- an overlay of the Debian 13 root (tests/roots.py) booted with
  ``systemd-nspawn --boot --private-network``: systemd 257 as PID 1, Python
  3.13, Debian's Postfix 3.10 with its default ``master.cf`` (smtp(8)
  chrooted in /var/spool/postfix);
- the test servers on the container's own loopback, run by threads of this
  process that entered its network namespace (tests/servers/netns.py): DNS on
  127.0.0.53:53 (the container's resolv.conf names it, so the daemon and
  Postfix's chrooted smtp(8) both use it), the HTTPS policy host on
  127.0.0.10:443 and a STARTTLS receiver on 127.0.1.1:25, with certificates
  from a trustme CA whose file is copied into the container;
- mtasts-fast installed and started by the commands of README's "Installing
  as a service" (steps 1 to 3), read from README.md and run as they are in
  the container, from an sdist built from this tree. The sdist, because the
  container's Python is 3.13 and ``make wheels`` builds for the host's
  Python (3.11 on Debian 12): pip compiles the extensions there, with the
  build requirements and dependencies from the root's wheelhouse
  (``PIP_NO_INDEX``/``PIP_FIND_LINKS``, .ci/debian13-root) instead of PyPI.

Paths inside the container are written and read through the overlay's
merged tree from the host (:meth:`Lab.file`); commands run inside with
``nsenter`` (tests/roots.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mtasts_fast import __version__
from tests.roots import (
    REPO,
    Container,
    booted_container,
    debian13_root_path,
    debian13_root_problem,
    overlay_root,
    unavailable,
)
from tests.servers.dns import DnsServer, Zone
from tests.servers.https import Certificates, HttpsServer, Site
from tests.servers.netns import NetnsLoop, call_in_netns, enter_netns
from tests.test_workers import ClientLoop, frame, read_reply

if TYPE_CHECKING:
    from tests.servers.smtp import Receiver

__all__ = [
    "CONFIG",
    "ENFORCE",
    "MX_HOST",
    "MX_IP",
    "PORT",
    "UNIX_SOCKET",
    "JournalEntry",
    "Lab",
    "readme_blocks",
    "started",
]


class NetnsClientLoop(ClientLoop):
    """:class:`tests.test_workers.ClientLoop` asking from inside the namespace."""

    def __init__(self, path: str, address: tuple[str, int] | str, payload: bytes) -> None:
        super().__init__(address, payload)
        self.netns = path

    def run(self) -> None:
        enter_netns(self.netns)
        super().run()


README = REPO / "README.md"
README_SECTION = "Installing as a service"
WHEELHOUSE = "/opt/mtasts-wheelhouse"  # .ci/debian13-root
PIP_ENV = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELHOUSE, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

DNS_IP = "127.0.0.53"
HTTPS_IP = "127.0.0.10"
MX_IP = "127.0.1.1"
ENFORCE = "enforce.test"
MX_HOST = f"mx.{ENFORCE}"
CA_FILE = "/etc/ssl/mtasts-test-ca.pem"
CONFIG = "/etc/mta-sts-daemon.yml"
PORT = 8461  # contrib/mta-sts-daemon.socket
UNIX_SOCKET = "/var/spool/postfix/mta-sts/mta-sts-daemon.sock"
UNIT = "mta-sts-daemon.service"
# What the test changes at README's `editor` step: the test network's resolver
# and CA, and a short shutdown_timeout so that restarts take a second.
EDITS: dict[str, Any] = {
    "nameservers": [DNS_IP],
    "ca_file": CA_FILE,
    "shutdown_timeout": 1,
    "workers": 2,
}


def readme_blocks() -> list[list[str]]:
    """The commands of each ```sh block in README's "Installing as a service", in order."""
    text = README.read_text()
    start = text.index(f"\n## {README_SECTION}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else None]
    blocks = re.findall(r"^ *```sh\n(.*?)^ *```$", section, re.M | re.S)
    return [[line.strip() for line in block.splitlines() if line.strip()] for block in blocks]


def readme_block(containing: str) -> list[str]:
    """The README block with a command that contains ``containing``."""
    found = [block for block in readme_blocks() if any(containing in c for c in block)]
    assert len(found) == 1, f"README {README_SECTION!r}: {len(found)} blocks with {containing!r}"
    return [command.replace("VERSION", __version__) for command in found[0]]


def build_sdist(directory: Path) -> Path:
    """The sdist of this tree (setuptools' PEP 517 hook, as ``python -m build`` calls it)."""
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))",
            str(directory),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return directory / result.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class JournalEntry:
    at: float  # CLOCK_REALTIME seconds, comparable with time.time()
    unit: str
    message: str


@dataclass
class Lab:
    container: Container
    root: Path  # the container's / as the host sees it
    netns: str
    loop: NetnsLoop
    zone: Zone
    https: HttpsServer
    receiver: Receiver
    certs: Certificates
    sdist: Path
    settings: dict[str, Any] = field(default_factory=dict)

    # -- commands and files --------------------------------------------------------------

    def run(
        self,
        *argv: str,
        timeout: float = 60,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self.container.run(list(argv), timeout=timeout, input=input, env=env)

    def ok(
        self,
        *argv: str,
        timeout: float = 60,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Run ``argv`` inside the container; its output (fails the test if it fails)."""
        result = self.run(*argv, timeout=timeout, input=input, env=env)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{output}"
        return result.stdout

    def sh(self, script: str, *, timeout: float = 300, env: Mapping[str, str] | None = None) -> str:
        """Run ``script`` with ``sh -e -x`` in /root; its output (fails the test if it fails)."""
        return self.ok("sh", "-e", "-x", "-c", f"cd /root\n{script}", timeout=timeout, env=env)

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def write_config(self, settings: dict[str, Any], path: str = CONFIG) -> None:
        self.write(path, yaml.safe_dump(settings, sort_keys=False))

    # -- systemd ---------------------------------------------------------------------------

    def show(self, unit: str, prop: str) -> str:
        return self.ok("systemctl", "show", "--value", "-p", prop, unit).strip()

    def start(self, *units: str) -> None:
        """``systemctl start``, after clearing the units' start rate limit.

        The tests start and restart the service more often than
        ``StartLimitBurst=`` (5 in 10 s by default) allows; an operator does not.
        """
        self.run("systemctl", "reset-failed", *units)  # fails for units not loaded yet
        self.ok("systemctl", "start", *units)

    def restart(self, unit: str = UNIT) -> None:
        """``systemctl restart``, after clearing the start rate limit (see :meth:`start`)."""
        self.ok("systemctl", "reset-failed", unit)
        self.ok("systemctl", "restart", unit)

    def main_pid(self, unit: str = UNIT) -> int:
        return int(self.show(unit, "MainPID"))

    def worker_pids(self, unit: str = UNIT) -> list[int]:
        """The supervisor's children, as pids inside the container."""
        pid = self.main_pid(unit)
        return [int(p) for p in self.ok("cat", f"/proc/{pid}/task/{pid}/children").split()]

    def uid(self, pid: int) -> int:
        status = self.ok("cat", f"/proc/{pid}/status")
        match = re.search(r"^Uid:\s+(\d+)", status, re.M)
        assert match is not None, status
        return int(match.group(1))

    def cursor(self) -> str:
        """The journal's current end: :meth:`journal` can look only after it."""
        out = self.ok("journalctl", "--quiet", "--lines=0", "--show-cursor", "--no-pager")
        match = re.search(r"-- cursor: (\S+)", out)
        assert match is not None, out
        return match.group(1)

    def journal(self, unit: str = UNIT, after: str | None = None) -> list[JournalEntry]:
        argv = ["journalctl", "--no-pager", "--output=json", f"--unit={unit}"]
        if after is not None:
            argv.append(f"--after-cursor={after}")
        entries = []
        for line in self.ok(*argv).splitlines():
            record = json.loads(line)
            message = record.get("MESSAGE", "")
            if isinstance(message, list):  # not UTF-8: journald stores bytes
                message = bytes(message).decode(errors="replace")
            entries.append(
                JournalEntry(int(record["__REALTIME_TIMESTAMP"]) / 1e6, unit, str(message))
            )
        return entries

    def journal_text(self, unit: str = UNIT, after: str | None = None) -> str:
        return "\n".join(entry.message for entry in self.journal(unit, after))

    def wait_journal(
        self, pattern: str, *, unit: str = UNIT, after: str | None = None, timeout: float = 20
    ) -> JournalEntry:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.journal(unit, after):
                if regex.search(entry.message):
                    return entry
            if time.monotonic() > deadline:
                lines = self.journal_text(unit, after)
                raise AssertionError(f"no journal line of {unit} matches {pattern!r}:\n{lines}")
            time.sleep(0.1)

    def wait_active(self, unit: str = UNIT, timeout: float = 30) -> int:
        """Wait until ``unit`` is active again; its MainPID."""
        deadline = time.monotonic() + timeout
        while self.show(unit, "ActiveState") != "active":
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{unit} not active after {timeout} s:\n{self.journal_text(unit)}"
                )
            time.sleep(0.1)
        return self.main_pid(unit)

    # -- lookups ---------------------------------------------------------------------------

    def _address(self, address: tuple[str, int] | str) -> tuple[str, int] | str:
        # A unix socket is reached through the overlay from here, whatever the netns.
        return str(self.file(address)) if isinstance(address, str) else address

    def ask(self, address: tuple[str, int] | str, payload: bytes, timeout: float = 10) -> bytes:
        """One lookup on a new connection, from inside the container's network."""
        target = self._address(address)

        def lookup() -> bytes:
            family = socket.AF_UNIX if isinstance(target, str) else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(target)
                sock.sendall(frame(payload))
                return read_reply(sock)

        return call_in_netns(self.netns, lookup, timeout=timeout + 5)

    def client_loop(self, address: tuple[str, int] | str, payload: bytes) -> NetnsClientLoop:
        return NetnsClientLoop(self.netns, self._address(address), payload)

    def diagnostics(self) -> str:
        status = self.run("systemctl", "status", "--no-pager", "--lines=0", "mta-sts-daemon*")
        return f"{status.stdout}\n--- journal ---\n{self.journal_text()}"


def _publish(zone: Zone, https: HttpsServer) -> None:
    """``enforce.test``: MX, A, TXT and an enforce policy (RFC 8461 §3.1, §3.2)."""
    zone.set(ENFORCE, "MX", [(10, MX_HOST)])
    zone.set(MX_HOST, "A", [MX_IP])
    zone.set(f"_mta-sts.{ENFORCE}", "TXT", [[b"v=STSv1; id=systemd20240101;"]])
    zone.set(f"mta-sts.{ENFORCE}", "A", [HTTPS_IP])
    policy = f"version: STSv1\nmode: enforce\nmx: {MX_HOST}\nmax_age: 86400\n"
    https.set_site(f"mta-sts.{ENFORCE}", Site(body=policy.encode()))


def _install(lab: Lab) -> None:
    """README steps 1 to 3, command by command, as an operator would type them."""
    lab.file(f"/root/{lab.sdist.name}").write_bytes(lab.sdist.read_bytes())
    commands = [
        *readme_block("python3 -m venv"),
        *readme_block("--check-config"),
        *readme_block("systemctl enable"),
    ]
    script: list[str] = []
    directory: list[str] = []  # the `cd` lines so far: each chunk starts there

    def flush() -> None:
        if script:
            lab.sh("\n".join([*directory, *script]), env=PIP_ENV)
            directory.extend(c for c in script if c.startswith("cd "))
            script.clear()

    for command in commands:
        argv = shlex.split(command, comments=True)
        if argv[:2] == ["apt-get", "install"]:
            # The root's recipe installed them (the container has no network).
            packages = argv[2:]
            lab.ok("dpkg-query", "--show", *packages)
        elif argv[0] == "editor":
            flush()
            settings = yaml.safe_load(lab.file(argv[1]).read_text())
            settings.update(EDITS)
            lab.settings = settings
            lab.write_config(settings, argv[1])
        else:
            script.append(command)
    flush()


@contextlib.contextmanager
def started(scratch: Path) -> Iterator[Lab]:
    """Boot the container, start the test network, install and start mtasts-fast."""
    problem = debian13_root_problem(boot=True)
    if problem is not None:
        unavailable(problem)
    try:
        from tests.servers.smtp import Receiver
    except ImportError:
        unavailable("aiosmtpd is not installed (pyproject.toml dependency group `test`)")
    sdist = build_sdist(scratch / "sdist")
    with contextlib.ExitStack() as stack:
        overlay = stack.enter_context(overlay_root(debian13_root_path(), scratch / "root"))
        try:
            container = stack.enter_context(booted_container(overlay.path))
        except (OSError, RuntimeError, TimeoutError) as exc:
            unavailable(f"the Debian 13 container did not boot: {exc}")
        netns = f"/proc/{container.leader}/ns/net"
        loop = NetnsLoop(netns)
        loop.start()
        stack.callback(loop.stop)
        certs = Certificates(str(scratch))
        zone = Zone()
        dns = DnsServer(zone, host=DNS_IP, port=53)  # resolv.conf has no port
        https = HttpsServer(certs, HTTPS_IP)
        receiver = Receiver()

        async def start_servers() -> None:
            await dns.start()
            await https.start()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            certs.ca.issue_cert(MX_HOST).configure_cert(context)
            await receiver.listen(MX_IP, 25, hostname=MX_HOST, tls=context)

        async def stop_servers() -> None:
            await receiver.close()
            await https.close()
            await dns.close()

        loop.call(start_servers())
        stack.callback(lambda: loop.call(stop_servers()))
        _publish(zone, https)
        lab = Lab(container, overlay.path, netns, loop, zone, https, receiver, certs, sdist)
        lab.write("/etc/resolv.conf", f"nameserver {DNS_IP}\noptions attempts:2 timeout:1\n")
        lab.write(CA_FILE, Path(certs.ca_file).read_text())
        _install(lab)
        yield lab


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def assert_no_errors(entries: Sequence[JournalEntry], allowed: Sequence[str] = ()) -> None:
    """No ERROR/CRITICAL line from the daemon among ``entries``, except ``allowed`` ones."""
    bad = [
        e.message
        for e in entries
        if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", e.message)
        and not any(re.search(pattern, e.message) for pattern in allowed)
    ]
    assert bad == [], "\n".join(bad)
