"""Socket activation without systemd: a parent passes listening sockets as systemd does.

:func:`mtasts_fast.activation.listen_fds` is checked against sd_listen_fds(3)'s
rules in-process; the rest runs the real daemon under a small launcher that
plays systemd's part: it holds the listening sockets, moves them to
descriptors 3, 4, ... in the child, sets ``LISTEN_PID`` (its own pid, which
exec keeps), ``LISTEN_FDS`` and ``LISTEN_FDNAMES``, and execs the daemon. The
test keeps its own copy of every socket, as systemd keeps the socket unit's,
so a stopped daemon's port still accepts. The booted-systemd version of all
this is tests/test_systemd_container.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mtasts_fast.activation import ActivationError, listen_fds
from tests.servers.world import World
from tests.socketmap import free_port
from tests.test_workers import (
    GOOD,
    ClientLoop,
    Daemon,
    Started,
    ask,
    connect,
    daemon_config,
    frame,
    read_reply,
)

# systemd's part: descriptors to 3.., LISTEN_* set, exec (the pid stays the same).
LAUNCHER = r"""
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",") if fd]
# Out of the way first, so that moving one to 3+i never overwrites another.
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)  # inheritable, as systemd passes them
    os.close(fd)
os.environ["LISTEN_PID"] = sys.argv[3] or str(os.getpid())
os.environ["LISTEN_FDS"] = str(len(fds))
if sys.argv[2] != "-":
    os.environ["LISTEN_FDNAMES"] = sys.argv[2]
os.execv(sys.argv[4], sys.argv[4:])
"""
O_CLOEXEC = 0o2000000  # <fcntl.h>, as /proc/PID/fdinfo/FD shows the flags (octal)


# -- listen_fds: sd_listen_fds(3) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, [], id="not-activated"),
        pytest.param({"LISTEN_FDS": "2"}, [], id="no-listen-pid"),
        pytest.param({"LISTEN_PID": "4242", "LISTEN_FDS": "2"}, [], id="for-another-process"),
        pytest.param({"LISTEN_PID": "100", "LISTEN_FDS": "0"}, [], id="zero-fds"),
        pytest.param(
            {"LISTEN_PID": "100", "LISTEN_FDS": "2"},
            [(3, "unknown"), (4, "unknown")],
            id="no-names",
        ),
        pytest.param(
            {"LISTEN_PID": "100", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "tcp:postfix"},
            [(3, "tcp"), (4, "postfix")],
            id="names",
        ),
        pytest.param(
            {"LISTEN_PID": "100", "LISTEN_FDS": "2", "LISTEN_FDNAMES": ":postfix"},
            [(3, "unknown"), (4, "postfix")],
            id="empty-name",
        ),
    ],
)
def test_listen_fds_follows_sd_listen_fds(
    environ: dict[str, str], expected: list[tuple[int, str]]
) -> None:
    env = {"PATH": "/bin", **environ}
    assert listen_fds(env, pid=100) == expected
    # Always unset, as sd_listen_fds(unset_environment=1): nothing started
    # later may take the descriptors for its own.
    assert env == {"PATH": "/bin"}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, "LISTEN_PID='x'", id="bad-pid"),
        pytest.param({"LISTEN_PID": "0", "LISTEN_FDS": "1"}, "LISTEN_PID='0'", id="pid-zero"),
        pytest.param({"LISTEN_PID": "100", "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1'", id="bad-fds"),
        pytest.param(
            {"LISTEN_PID": "100", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "one"},
            "LISTEN_FDNAMES names 1 descriptor(s), LISTEN_FDS=2",
            id="names-count",
        ),
    ],
)
def test_malformed_variables_are_an_error(environ: dict[str, str], message: str) -> None:
    env = dict(environ)
    with pytest.raises(ActivationError, match=re.escape(message)):
        listen_fds(env, pid=100)
    assert env == {}


def test_listen_fds_unsets_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", "1")  # init's: not ours
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "x")
    assert listen_fds() == []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        assert name not in os.environ
    # os.environ's removal is the C environment's too (what a child inherits).
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(k for k in os.environ if 'LISTEN' in k))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "[]"


# -- the daemon under a launcher that plays systemd ----------------------------------------------


def _tcp_listener(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def _unix_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(128)
    return sock


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def _socket_inodes(pid: int) -> set[int]:
    found = set()
    for entry in os.scandir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(entry.path)
            if target.startswith("socket:["):
                found.add(int(target[len("socket:[") : -1]))
    return found


@pytest.fixture
def activate(world: World, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``activate(sockets, names, **settings)``: the daemon with ``sockets`` passed."""
    started = Started()

    def _start(
        sockets: Sequence[socket.socket],
        names: str = "-",
        *,
        listen_pid: str = "",
        wait: bool = True,
        **settings: Any,
    ) -> Daemon:
        config, data = daemon_config(world, tmp_path, **{"cache": {"type": "internal"}, **settings})
        fds = [sock.fileno() for sock in sockets]
        command = [sys.executable, "-m", "mtasts_fast", "-c", str(config)]
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), names, listen_pid, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=fds,
        )
        return started.add(proc, config, data, wait=wait)

    yield _start
    started.end()


def test_passed_tcp_and_unix_sockets_are_served_by_every_worker(
    activate: Callable[..., Daemon], tmp_path: Path
) -> None:
    path = tmp_path / "passed.sock"
    with _tcp_listener() as tcp, _unix_listener(path) as unix:
        port = tcp.getsockname()[1]
        d = activate([tcp, unix], "tcp:postfix", port=port, workers=2)
        line = d.wait_for(r"socket activation: .*").group(0)
        assert line == (
            f"socket activation: serving the 2 sockets systemd passed (tcp, postfix): "
            f"127.0.0.1:{port}, unix:{path}; the configured host/port (127.0.0.1:{port}) "
            "is among them"
        )
        assert "socket activation" not in "".join(re.findall(r"WARNING.*", d.output))
        for _ in range(10):
            assert ask(("127.0.0.1", port), b"postfix good.loc") == GOOD
            assert ask(str(path), b"postfix good.loc") == GOOD
        # Every worker holds both passed sockets (one group, shared).
        workers = d.worker_pids()
        assert len(workers) == 2
        for pid in workers:
            assert {_inode(tcp), _inode(unix)} <= _socket_inodes(pid)
        # Close-on-exec from now on (systemd passed them without it).
        for fd in (3, 4):
            fdinfo = Path(f"/proc/{d.proc.pid}/fdinfo/{fd}").read_text()
            flags = re.search(r"^flags:\s+(\d+)", fdinfo, re.M)
            assert flags is not None, fdinfo
            assert int(flags.group(1), 8) & O_CLOEXEC
        assert d.stop() == 0, d.output
        # Not ours to remove: systemd's socket unit owns the file.
        assert path.exists()


def test_a_restart_refuses_nothing_while_the_parent_holds_the_sockets(
    activate: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The daemon's restart window: connections wait in the kernel's backlog."""
    path = tmp_path / "passed.sock"
    with _tcp_listener() as tcp, _unix_listener(path) as unix:
        port = tcp.getsockname()[1]
        first = activate([tcp, unix], port=port, workers=1)
        loops = [
            ClientLoop(("127.0.0.1", port), b"postfix good.loc"),
            ClientLoop(str(path), b"postfix good.loc"),
        ]
        for loop in loops:
            loop.start()
        time.sleep(0.3)
        assert first.stop() == 0, first.output
        # Nobody serves now; a connection is still accepted (queued) and its
        # question answered by the next daemon.
        waiting = connect(("127.0.0.1", port), timeout=20)
        waiting.sendall(frame(b"postfix good.loc"))
        second = activate([tcp, unix], port=port, workers=1)
        assert read_reply(waiting) == GOOD
        waiting.close()
        time.sleep(0.3)
        for loop in loops:
            loop.finish()
        for loop in loops:
            assert (loop.refused, loop.failures) == (0, []), second.output
            assert {reply for _, reply in loop.replies} == {GOOD}
        assert second.stop() == 0, second.output


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_a_configuration_that_names_another_address_is_a_warning(
    activate: Callable[..., Daemon], tmp_path: Path, kind: str
) -> None:
    other_port = free_port()
    settings: dict[str, Any] = {"port": other_port}
    if kind == "unix":
        settings = {"path": str(tmp_path / "configured.sock"), "mode": "0660"}
    with _tcp_listener() as tcp:
        port = tcp.getsockname()[1]
        d = activate([tcp], "mta-sts-daemon.socket", **settings)
        line = d.wait_for(r"WARNING .*socket activation: .*").group(0)
        configured = (
            f"127.0.0.1:{other_port}" if kind == "tcp" else f"unix:{tmp_path}/configured.sock"
        )
        assert (
            f"serving the 1 socket systemd passed (mta-sts-daemon.socket): 127.0.0.1:{port}; "
            f"the configured {'host/port' if kind == 'tcp' else 'path'} ({configured}) is not "
            "among them and is not bound: the socket unit decides where the daemon listens, "
            f"make {d.config} agree with its ListenStream= lines"
        ) in line
        assert ("SocketMode=" in line) == (kind == "unix")
        # systemd wins: the passed socket answers, the configured one does not exist.
        assert ask(("127.0.0.1", port), b"postfix good.loc") == GOOD
        if kind == "tcp":
            with pytest.raises(ConnectionRefusedError):
                connect(("127.0.0.1", other_port))
        else:
            assert not (tmp_path / "configured.sock").exists()
        # A reload cannot move the sockets either, and says why.
        mark = d.mark()
        d.reconfigure(port=free_port())
        d.signal(signal.SIGHUP)
        assert "until the socket unit changes" in d.wait_for(r"stay as they are", since=mark).string
        assert d.stop() == 0, d.output


def test_sockets_meant_for_another_process_are_left_alone(
    activate: Callable[..., Daemon],
) -> None:
    with _tcp_listener() as tcp:
        port = free_port()
        # LISTEN_PID names init: inherited from an activated parent, not ours.
        d = activate([tcp], listen_pid="1", port=port, workers=1)
        assert "socket activation" not in d.output
        assert ask(("127.0.0.1", port), b"postfix good.loc") == GOOD
        # Nobody accepts on the passed socket: a question there stays unanswered
        # (as with libsystemd, the descriptor itself is left as it was).
        with connect(tcp.getsockname(), timeout=0.5) as sock:
            sock.sendall(frame(b"postfix good.loc"))
            with pytest.raises(TimeoutError):
                sock.recv(1)
        assert d.stop() == 0, d.output


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("udp", id="datagram"),
        pytest.param("not-listening", id="unlistened-stream"),
        pytest.param("pipe", id="not-a-socket"),
    ],
)
def test_a_socket_the_daemon_cannot_serve_stops_it_with_the_reason(
    activate: Callable[..., Daemon], kind: str
) -> None:
    with contextlib.ExitStack() as stack:
        if kind == "pipe":
            read_end, write_end = os.pipe()
            stack.callback(os.close, read_end)
            stack.callback(os.close, write_end)

            class _Fd:  # what the launcher needs of a "socket": its descriptor
                def fileno(self) -> int:
                    return read_end

            passed: Any = _Fd()
        else:
            kind_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
            passed = stack.enter_context(socket.socket(socket.AF_INET, kind_type))
            passed.bind(("127.0.0.1", 0))
        d = activate([passed], "odd", wait=False)
        assert d.wait() == 1, d.output
    expected = "is not a socket" if kind == "pipe" else "is not a listening TCP or unix stream"
    assert re.search(rf"ERROR .*socket activation: descriptor 3 \(odd\) {expected}", d.output)
