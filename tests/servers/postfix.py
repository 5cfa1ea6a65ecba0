"""Real Postfix for the tests: finding its programs and running private instances.

Debian's ``postfix`` package is installed unconfigured (``make deps``, see
``.ci/debian-deps``): there is no ``/etc/postfix/main.cf`` and no system Postfix
running. Every Postfix program here gets ``-c DIR``, a configuration directory of
the test's own, so the host's Postfix set-up is neither needed nor touched.

A missing program skips the test, unless ``MTASTS_REQUIRE_ALL=1`` (CI), which
turns the skip into a failure so a broken install can never pass silently.

:class:`PostfixInstance` also runs the Postfix of another Debian release
chrooted into its root (``chroot=``, e.g. Postfix 3.10 from the Debian 13 root
of tests/roots.py): its paths are then the paths Postfix sees inside the
chroot, and every program is the chroot's own.
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


# The environment of a chrooted Postfix program: nothing of ours leaks in.
_CHROOT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C")


class PostfixInstance:
    """A private Postfix (own config, queue, data directory and log file).

    ``settings`` are main.cf parameters added to (or replacing) the base ones.
    ``netns``: start the master inside that network namespace with
    ``ip netns exec``, which also bind-mounts ``/etc/netns/<name>/resolv.conf``
    over ``/etc/resolv.conf`` for it and every process it spawns (a chroot
    reads its own ``/etc/resolv.conf``: the caller writes it).
    ``services``: master.cf lines appended to :data:`MASTER_CF`.
    ``chroot``: a root directory (an overlay of tests/roots.py, with /proc and
    /dev) whose Postfix to run; ``root`` is then the instance directory as seen
    inside it, and :meth:`host_path` turns such a path into the host's.
    """

    def __init__(
        self,
        root: Path,
        settings: Mapping[str, str],
        *,
        netns: str | None = None,
        services: str = "",
        chroot: Path | None = None,
    ) -> None:
        self.chroot = chroot
        self.root = root
        self.config_dir = root / "conf"
        self.queue_dir = root / "queue"
        self.data_dir = root / "data"
        self.maillog = root / "maillog"
        self.netns = netns
        self.services = services
        self._postfix = self._program("postfix")
        self._sendmail = self._program("sendmail")
        self._postqueue = self._program("postqueue")
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

    def host_path(self, path: Path) -> Path:
        """Where a path as Postfix sees it is on the host (the same without a chroot)."""
        if self.chroot is None:
            return path
        return self.chroot / path.relative_to("/")

    def _program(self, name: str) -> str:
        if self.chroot is None:
            return postfix_program(name)
        for directory in _SBIN:
            if os.access(self.chroot / directory.lstrip("/") / name, os.X_OK):
                return f"{directory}/{name}"
        unavailable(f"Postfix's {name} is missing in {self.chroot}")

    def _mail_owner_ids(self) -> tuple[int, int]:
        """uid and gid of the mail_owner where Postfix runs (the chroot's passwd)."""
        passwd = self.host_path(Path("/etc/passwd"))
        owner = self.main_cf["mail_owner"]
        for line in passwd.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[0] == owner:
                return int(fields[2]), int(fields[3])
        raise LookupError(f"no user {owner} in {passwd}")

    def write_config(self) -> None:
        # Postfix programs run as the mail_owner must be able to reach the
        # directories, whatever the umask and the parent's mode.
        root = self.host_path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        for directory in (self.config_dir, self.queue_dir, self.data_dir):
            self.host_path(directory).mkdir(exist_ok=True)
        # master creates its lock file there as the mail_owner.
        os.chown(self.host_path(self.data_dir), *self._mail_owner_ids())
        # compatibility_level from the settings replaces the default one.
        lines = [] if "compatibility_level" in self.main_cf else [_COMPATIBILITY.rstrip("\n")]
        lines.extend(f"{name} = {value}" for name, value in self.main_cf.items())
        _write_settled(self.host_path(self.config_dir / "main.cf"), "\n".join(lines) + "\n")
        _write_settled(self.host_path(self.config_dir / "master.cf"), MASTER_CF + self.services)
        self.host_path(self.maillog).touch()

    def _local(self) -> list[str]:
        """The prefix of a command run where Postfix is (in the chroot, if any)."""
        if self.chroot is None:
            return []
        return ["chroot", str(self.chroot), "/usr/bin/env", "-i", *_CHROOT_ENV]

    def _prefix(self) -> list[str]:
        netns = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*netns, *self._local()]

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
            text = self.host_path(self.queue_dir / "pid" / "master.pid").read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def stop(self) -> None:
        """``postfix stop``; the master is killed if it is still there after."""
        pid = self.master_pid()
        if pid is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._run([*self._local(), self._postfix, "-c", str(self.config_dir), "stop"])
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            # The children notice a dead master through their status pipe
            # and exit by themselves.
            os.kill(pid, signal.SIGKILL)

    def version(self) -> tuple[int, ...]:
        """Postfix's mail_version as numbers, e.g. (3, 7, 11)."""
        postconf = self._program("postconf")
        result = self._run(
            [*self._local(), postconf, "-c", str(self.config_dir), "-h", "mail_version"]
        )
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
            [
                *self._local(),
                self._sendmail,
                "-C",
                str(self.config_dir),
                "-f",
                sender,
                "--",
                recipient,
            ],
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
        result = self._run([*self._local(), self._postqueue, "-c", str(self.config_dir), "-j"])
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
        result = self._run([*self._local(), self._postqueue, "-c", str(self.config_dir), "-f"])
        if result.returncode != 0:
            raise RuntimeError(f"postqueue -f failed ({result.returncode}): {result.stderr}")

    # --- the log ---

    def log(self) -> str:
        try:
            return self.host_path(self.maillog).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        """A position in the log; pass it as ``since`` to look only at what follows."""
        try:
            return self.host_path(self.maillog).stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, since: int) -> str:
        try:
            with self.host_path(self.maillog).open("rb") as f:
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
