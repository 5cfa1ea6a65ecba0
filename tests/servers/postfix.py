"""Real Postfix for the tests: finding its programs and running private instances.

Debian's ``postfix`` package is installed unconfigured (``make deps``, see
``.ci/debian-deps``): there is no ``/etc/postfix/main.cf`` and no system Postfix
running. Every Postfix program here gets ``-c DIR``, a configuration directory of
the test's own, so the host's Postfix set-up is neither needed nor touched.

A missing program skips the test, unless ``MTASTS_REQUIRE_ALL=1`` (CI), which
turns the skip into a failure so a broken install can never pass silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

__all__ = [
    "MASTER_CF",
    "PostfixInstance",
    "postfix_program",
    "postmap_config",
    "require_all",
    "unavailable",
]

# Where Debian installs the administrative programs (root's PATH has it, a
# plain user's may not).
_SBIN = ("/usr/sbin", "/usr/bin")

# compatibility_level as Debian 12's own main.cf sets it: without it Postfix 3.7
# logs a backwards-compatibility warning for every default it would change.
_COMPATIBILITY = "compatibility_level = 3.6\n"


def require_all() -> bool:
    """True under ``MTASTS_REQUIRE_ALL=1``: missing tools fail instead of skipping."""
    return os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it under ``MTASTS_REQUIRE_ALL=1``."""
    if require_all():
        pytest.fail(f"{reason} (MTASTS_REQUIRE_ALL is set; `make deps` as root installs it)")
    pytest.skip(reason)


def postfix_program(name: str) -> str:
    """The path of a Postfix program (``postmap``, ``postfix``...), or skip/fail."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))
    if found is None:
        unavailable(f"Postfix's {name} is not installed (Debian package postfix)")
    return found


def postmap_config(directory: Path) -> Path:
    """A configuration directory with the smallest main.cf postmap accepts."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_settled(directory / "main.cf", _COMPATIBILITY)
    return directory


def _write_settled(path: Path, text: str) -> None:
    """Write a Postfix config file with an mtime in the past.

    Postfix re-reads a configuration file whose mtime is under ~2 s old until
    it stops changing (dict_load_file: "table ... has changed -- waiting"),
    which costs every freshly configured postmap or master 2 s; backdating the
    mtime says "finished writing" honestly.
    """
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


# Every service runs unchrooted (chroot column "n"): a chrooted smtp(8) would
# read <queue>/etc/resolv.conf instead of the namespace's /etc/resolv.conf and
# could not reach a unix-socket socketmap outside the queue directory. Only what
# a sending-only instance needs: no smtpd, no local delivery.
MASTER_CF = """\
# service  type       private unpriv chroot wakeup maxproc command
pickup     unix       n       -      n      60     1       pickup
cleanup    unix       n       -      n      -      0       cleanup
qmgr       unix       n       -      n      300    1       qmgr
tlsmgr     unix       -       -      n      1000?  1       tlsmgr
rewrite    unix       -       -      n      -      -       trivial-rewrite
bounce     unix       -       -      n      -      0       bounce
defer      unix       -       -      n      -      0       bounce
trace      unix       -       -      n      -      0       bounce
verify     unix       -       -      n      -      1       verify
flush      unix       n       -      n      1000?  0       flush
proxymap   unix       -       -      n      -      -       proxymap
smtp       unix       -       -      n      -      -       smtp
showq      unix       n       -      n      -      -       showq
error      unix       -       -      n      -      -       error
retry      unix       -       -      n      -      -       error
discard    unix       -       -      n      -      -       discard
anvil      unix       -       -      n      -      1       anvil
scache     unix       -       -      n      -      1       scache
postlog    unix-dgram n       -      n      -      1       postlogd
"""


class PostfixInstance:
    """A private Postfix (own config, queue, data directory and log file).

    ``settings`` are main.cf parameters added to (or replacing) the base ones.
    ``netns``: start the master inside that network namespace with
    ``ip netns exec``, which also bind-mounts ``/etc/netns/<name>/resolv.conf``
    over ``/etc/resolv.conf`` for it and every process it spawns.
    ``services``: master.cf lines appended to :data:`MASTER_CF`.
    """

    def __init__(
        self,
        root: Path,
        settings: Mapping[str, str],
        *,
        netns: str | None = None,
        services: str = "",
    ) -> None:
        self.root = root
        self.config_dir = root / "conf"
        self.queue_dir = root / "queue"
        self.data_dir = root / "data"
        self.maillog = root / "maillog"
        self.netns = netns
        self.services = services
        self._postfix = postfix_program("postfix")
        self._sendmail = postfix_program("sendmail")
        self._postqueue = postfix_program("postqueue")
        self.main_cf: dict[str, str] = {
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.maillog),
            # This instance only sends: nothing is delivered locally and no
            # alias database is needed.
            "mydestination": "",
            "local_transport": "error:local delivery is disabled in this test instance",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            **settings,
        }

    def write_config(self) -> None:
        # Postfix programs run as the mail_owner must be able to reach the
        # directories, whatever the umask and the parent's mode.
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for directory in (self.config_dir, self.queue_dir, self.data_dir):
            directory.mkdir(exist_ok=True)
        # master creates its lock file there as the mail_owner.
        shutil.chown(self.data_dir, user=self.main_cf["mail_owner"])
        lines = [_COMPATIBILITY.rstrip("\n")]
        lines.extend(f"{name} = {value}" for name, value in self.main_cf.items())
        _write_settled(self.config_dir / "main.cf", "\n".join(lines) + "\n")
        _write_settled(self.config_dir / "master.cf", MASTER_CF + self.services)
        self.maillog.touch()

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def _run(self, args: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self) -> None:
        """``postfix -c DIR start`` (postfix-script creates the queue directories)."""
        self.write_config()
        result = self._run([*self._prefix(), self._postfix, "-c", str(self.config_dir), "start"])
        if result.returncode != 0:
            raise RuntimeError(
                f"postfix start failed ({result.returncode}): {result.stdout}{result.stderr}"
                f"\nmaillog:\n{self.log()}"
            )

    def master_pid(self) -> int | None:
        try:
            text = (self.queue_dir / "pid" / "master.pid").read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def stop(self) -> None:
        """``postfix stop``; the master is killed if it is still there after."""
        pid = self.master_pid()
        if pid is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._run([self._postfix, "-c", str(self.config_dir), "stop"])
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            # The children notice a dead master through their status pipe
            # and exit by themselves.
            os.kill(pid, signal.SIGKILL)

    def version(self) -> tuple[int, ...]:
        """Postfix's mail_version as numbers, e.g. (3, 7, 11)."""
        postconf = postfix_program("postconf")
        result = self._run([postconf, "-c", str(self.config_dir), "-h", "mail_version"])
        return tuple(int(part) for part in re.findall(r"\d+", result.stdout)[:3])

    # --- mail ---

    def sendmail(self, sender: str, recipient: str, subject: str) -> str:
        """Submit a message through sendmail(1)/postdrop; returns its Message-ID."""
        message_id = f"<{uuid.uuid4().hex}@mtasts-fast.test>"
        text = (
            f"From: {sender}\nTo: {recipient}\nSubject: {subject}\n"
            f"Message-ID: {message_id}\n\nSent by the mtasts-fast delivery test.\n"
        )
        result = subprocess.run(
            [self._sendmail, "-C", str(self.config_dir), "-f", sender, "--", recipient],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"sendmail failed ({result.returncode}): {result.stderr}")
        return message_id

    def queue(self) -> list[dict[str, Any]]:
        """``postqueue -j``: one JSON object per queued message."""
        result = self._run([self._postqueue, "-c", str(self.config_dir), "-j"])
        if result.returncode != 0:
            raise RuntimeError(f"postqueue -j failed ({result.returncode}): {result.stderr}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def queued_for(self, recipient: str) -> list[dict[str, Any]]:
        """Queue entries that still have ``recipient`` to deliver."""
        return [
            entry
            for entry in self.queue()
            if any(r.get("address") == recipient for r in entry.get("recipients", ()))
        ]

    def wait_queue(
        self, recipient: str, expected: Sequence[str], timeout: float = 10.0
    ) -> list[str]:
        """The queues holding ``recipient`` once they are ``expected`` (or at timeout).

        smtp(8) logs a delivery's outcome before qmgr(8) has moved or removed the
        queue file, so a look at the queue right after the log line can race.
        """
        deadline = time.monotonic() + timeout
        while True:
            names = [entry["queue_name"] for entry in self.queued_for(recipient)]
            if names == list(expected) or time.monotonic() > deadline:
                return names
            time.sleep(0.1)

    def flush(self) -> None:
        """``postqueue -f``: attempt delivery of everything queued now."""
        result = self._run([self._postqueue, "-c", str(self.config_dir), "-f"])
        if result.returncode != 0:
            raise RuntimeError(f"postqueue -f failed ({result.returncode}): {result.stderr}")

    # --- the log ---

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        """A position in the log; pass it as ``since`` to look only at what follows."""
        try:
            return self.maillog.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, since: int) -> str:
        try:
            with self.maillog.open("rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, *, since: int = 0, timeout: float = 30.0) -> re.Match[str]:
        """The first match of ``pattern`` (a regex, multi-line) logged after ``since``."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_since(since))
            if match is not None:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no log line matching {pattern!r} within {timeout} s; "
                    f"Postfix logged:\n{self.log_since(since)}"
                )
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
