"""Privilege separation of the real ``mta-sts-daemon`` (root only).

What ``tests/test_daemon.py`` already proves (``-u nobody``: all four uids and
gids of the supervisor and its workers, a privileged port, the cache
directory handed to the user, the running-as-root warning) is not repeated.
Here:

- ``-u`` with a ``-g`` other than the user's primary group, started with
  supplementary groups: every uid and gid (real, effective, saved, fs), the
  supplementary list reduced to the one group, no capabilities left;
- ``-g`` alone keeps uid 0, so it gets the running-as-root warning too;
- a unix socket in a root-owned 0755 directory, bound before the drop, with
  its ``owner``/``group``/``mode`` in place before it accepts anything: a
  client outside the group never connects, not even in the moment between
  bind() and chmod(); a client in the group does; a restart after the drop
  (which cannot remove the old socket from a root-owned directory) works;
- the files the daemon creates, started with umask 0 so nothing depends on
  the caller's umask: the pidfile is not writable by others, the LMDB
  directory (0750) and files (0640) belong to the dropped user and give
  nothing to others. Policies are public data, but the cache is the
  daemon's state (and LMDB's lock file holds its reader table), so others
  may neither change nor read it.

Every test needs root (to switch users); without it they skip, and fail
under ``MTASTS_REQUIRE_ALL=1``. The throwaway identities are Debian's
``nobody``/``nogroup`` and the ``daemon`` group.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.socketmap import free_port

REQUIRE_ALL = os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0")
GOOD_REPLY = b"OK secure match=mail.loc servername=hostname"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        if REQUIRE_ALL:
            pytest.fail("the privilege-separation tests need root (MTASTS_REQUIRE_ALL is set)")
        pytest.skip("the privilege-separation tests need root")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A root-owned 0755 directory that the unprivileged users can traverse.

    pytest's own temporary directories are 0700, which would hide the
    config and cache from the user the daemon switches to.
    """
    path = Path(tempfile.mkdtemp(prefix="mtasts-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Daemon:
    """One ``python -m mtasts_fast`` subprocess, its output in a file."""

    def __init__(self, directory: Path, world: Any, **settings: Any) -> None:
        # The run user must read the CA file (a reload loads it again); the
        # test world's is in a root-only directory.
        ca_file = directory / "ca.pem"
        shutil.copy(world.ca_file, ca_file)
        ca_file.chmod(0o644)
        data: dict[str, Any] = {
            "nameservers": [world.nameserver],
            "ca_file": str(ca_file),
            "shutdown_timeout": 2,
            "cache": {"type": "lmdb", "options": {"path": str(directory / "state" / "c.lmdb")}},
        }
        if "path" not in settings:
            data.update(host="127.0.0.1", port=free_port())
        data.update(settings)
        self.settings = data
        self.config = directory / "daemon.yml"
        self.config.write_text(yaml.safe_dump(data))
        self.config.chmod(0o644)
        self.output = directory / "daemon.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, preexec: Callable[[], object] | None = None) -> None:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mtasts_fast", "-c", str(self.config), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.text()}")
            try:
                self.ask(b"postfix .probe", timeout=0.5)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"daemon did not answer: {self.text()}")

    def connect(self, timeout: float) -> socket.socket:
        if "path" in self.settings:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.settings["path"])
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(
            (self.settings["host"], self.settings["port"]), timeout=timeout
        )

    def ask(self, payload: bytes, timeout: float = 10.0) -> bytes:
        with self.connect(timeout) as sock:
            sock.sendall(b"%d:%b," % (len(payload), payload))
            data = b""
            while True:
                head, colon, rest = data.partition(b":")
                if colon and len(rest) > int(head):
                    break
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError(f"closed after {data!r}")
                data += chunk
        assert rest[int(head)] == ord(",")
        return rest[: int(head)]

    def pids(self) -> list[int]:
        assert self.proc is not None
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *map(int, children)]

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def text(self) -> str:
        return self.output.read_text(errors="replace")


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


def status(pid: int) -> dict[str, list[str]]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.split() for k, _, v in (line.partition(":") for line in text.splitlines())}


def free_privileged_port() -> int:
    for port in range(700, 1000):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024")


# --- user, group, supplementary groups, capabilities ---------------------------------


def test_user_and_group_drop_every_id_group_and_capability(
    world: Any, shared: Path, daemons: list[Daemon]
) -> None:
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrnam("daemon").gr_gid
    assert group != nobody.pw_gid  # -g must win over the user's primary group
    port = free_privileged_port()
    daemon = Daemon(shared, world, host="127.0.0.1", port=port, workers=2)
    daemons.append(daemon)
    # Start with supplementary groups, as a root shell or init might: none of
    # them may survive the drop.
    daemon.start("-u", "nobody", "-g", "daemon", preexec=lambda: os.setgroups([0, 4, 27]))
    assert daemon.ask(b"postfix good.loc") == GOOD_REPLY
    pids = daemon.pids()
    assert len(pids) == 3  # the supervisor and both workers
    for pid in pids:
        fields = status(pid)
        assert fields["Uid"] == [str(nobody.pw_uid)] * 4, (pid, fields["Uid"])
        assert fields["Gid"] == [str(group)] * 4, (pid, fields["Gid"])
        assert fields["Groups"] == [str(group)], (pid, fields["Groups"])
        # A uid change away from 0 clears the permitted and effective sets
        # only when no saved uid 0 remains: this proves that too.
        assert int(fields["CapEff"][0], 16) == 0, (pid, fields["CapEff"])
        assert int(fields["CapPrm"][0], 16) == 0, (pid, fields["CapPrm"])
    assert daemon.stop() == 0, daemon.text()


def test_group_alone_keeps_root_and_warns(world: Any, shared: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon(shared, world)
    daemons.append(daemon)
    daemon.start("-g", "daemon")
    gid = str(grp.getgrnam("daemon").gr_gid)
    for pid in daemon.pids():
        fields = status(pid)
        assert fields["Uid"] == ["0"] * 4
        assert fields["Gid"] == [gid] * 4
    assert daemon.ask(b"postfix good.loc") == GOOD_REPLY
    assert daemon.stop() == 0
    assert "running as root" in daemon.text()


# --- unix socket in a root-owned directory ------------------------------------------------

_PROBER = r"""
import errno, json, os, socket, sys, time
path, stop = sys.argv[1], sys.argv[2]
seen = {}
deadline = time.monotonic() + 60
while not os.path.exists(stop) and time.monotonic() < deadline:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        outcome = errno.errorcode.get(exc.errno, str(exc.errno))
    else:
        outcome = "connected"
    finally:
        sock.close()
    seen[outcome] = seen.get(outcome, 0) + 1
print(json.dumps(seen))
"""


def _reachable_by_others(path: str) -> bool:
    """True if a user with no rights of its own can execute ``path``."""
    real = Path(os.path.realpath(path))
    if not real.is_file() or not real.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)


def _python_for_nobody() -> str:
    # The test's own interpreter may live under /root (pyenv), out of reach
    # once the prober has switched to nobody; the system one will do.
    for candidate in (sys.executable, "/usr/bin/python3"):
        if _reachable_by_others(candidate):
            return candidate
    if REQUIRE_ALL:
        pytest.fail("no Python interpreter executable by nobody (install python3)")
    pytest.skip("no Python interpreter executable by nobody")


def _prober(path: Path, stop: Path, extra_groups: list[int]) -> subprocess.Popen[str]:
    """A client running as ``nobody`` that tries to connect, as fast as it can."""
    nobody = pwd.getpwnam("nobody")
    return subprocess.Popen(
        [_python_for_nobody(), "-I", "-c", _PROBER, str(path), str(stop)],
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=extra_groups,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_unix_socket_in_root_owned_directory(
    world: Any, shared: Path, daemons: list[Daemon]
) -> None:
    run_dir = shared / "run"
    run_dir.mkdir(mode=0o755)
    assert run_dir.stat().st_uid == 0
    path = run_dir / "mta-sts.sock"
    group = grp.getgrnam("daemon").gr_gid
    daemon = Daemon(
        shared, world, path=str(path), owner="daemon", group="daemon", mode="0660", workers=2
    )
    daemons.append(daemon)
    stop = shared / "stop-probing"
    # Started before the daemon: it watches the whole life of the socket file,
    # including the moment between bind() and chmod().
    outsider = _prober(path, stop, extra_groups=[])
    time.sleep(0.3)
    daemon.start("-u", "nobody")
    member = _prober(path, stop, extra_groups=[group])
    time.sleep(0.5)
    stop.touch()
    outsider_seen = json.loads(outsider.communicate(timeout=30)[0])
    member_seen = json.loads(member.communicate(timeout=30)[0])

    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_uid, st.st_gid) == (pwd.getpwnam("daemon").pw_uid, group)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert "connected" not in outsider_seen, outsider_seen
    assert outsider_seen.get("EACCES", 0) > 0, outsider_seen
    assert member_seen.get("connected", 0) > 0, member_seen
    assert daemon.ask(b"postfix good.loc") == GOOD_REPLY

    assert daemon.stop() == 0, daemon.text()
    # Running as nobody, the daemon cannot unlink from a root-owned directory;
    # whatever it left there, the next start (as root, before its drop) must
    # take the path over.
    daemon.start("-u", "nobody")
    assert daemon.ask(b"postfix good.loc") == GOOD_REPLY
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert daemon.stop() == 0, daemon.text()


# --- files the daemon creates --------------------------------------------------------------


def test_created_files_have_safe_permissions_under_umask_0(
    world: Any, shared: Path, daemons: list[Daemon]
) -> None:
    nobody = pwd.getpwnam("nobody")
    state = shared / "state"
    daemon = Daemon(
        shared,
        world,
        workers=2,
        cache={"type": "lmdb", "options": {"path": str(state / "cache.lmdb")}},
    )
    daemons.append(daemon)
    pidfile = shared / "daemon.pid"
    daemon.start("-u", "nobody", "-p", str(pidfile), preexec=lambda: os.umask(0))
    assert daemon.ask(b"postfix good.loc") == GOOD_REPLY  # the cache has been written

    st = pidfile.stat()
    assert pidfile.read_text().strip() == str(daemon.pids()[0])
    assert st.st_uid == 0  # written as root, before the drop
    assert stat.S_IMODE(st.st_mode) & 0o022 == 0, oct(st.st_mode)

    st = state.stat()
    assert st.st_uid == nobody.pw_uid
    assert stat.S_IMODE(st.st_mode) == 0o750, oct(st.st_mode)
    files = sorted(state.iterdir())
    assert {f.name for f in files} == {"cache.lmdb", "cache.lmdb-lock"}
    for path in files:
        st = path.stat()
        assert st.st_uid == nobody.pw_uid, path
        assert stat.S_IMODE(st.st_mode) & 0o007 == 0, (path, oct(st.st_mode))
        assert stat.S_IMODE(st.st_mode) & 0o020 == 0, (path, oct(st.st_mode))
    assert daemon.stop() == 0, daemon.text()
