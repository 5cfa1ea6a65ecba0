"""``mta-sts-daemon`` as a real subprocess, with a view into its worker's /proc.

For tests that must see the daemon from outside: its worker's resident memory
and descriptors, whether the worker was replaced, what it logged::

    daemon = DaemonProcess(tmp_path, world, idle_timeout=2, args=("--disable-uvloop",))
    daemon.start()                  # waits until the port answers
    daemon.ask(b"postfix good.loc") # one request on a new connection
    pid = daemon.worker_pid()       # the only worker (fails if there are more)
    reset_peak_rss(pid)             # clear VmHWM (root only), then ...
    peak_rss(pid)                   # ... the peak resident set since, in bytes
    fd_count(pid)                   # open descriptors
    serving_pid(sock, pids)         # which of ``pids`` holds the server end of ``sock``
    daemon.log_text()               # everything logged so far (-v debug)
    daemon.stop()

Everything runs on 127.0.0.1 with the test world's DNS server and CA.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.servers.processes import stop_process

__all__ = ["DaemonProcess", "fd_count", "peak_rss", "reset_peak_rss", "rss", "serving_pid"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS)."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes (VmHWM) since start or the last reset."""
    return _status_kib(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset ``pid``'s VmHWM to its current RSS; False when not allowed (not root)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _server_end_inode(sock: socket.socket) -> int | None:
    """The inode of the accepted socket at the other end of TCP client ``sock``."""
    client_host, client_port = sock.getsockname()[:2]
    server_port = sock.getpeername()[1]
    table = "/proc/net/tcp6" if ":" in client_host else "/proc/net/tcp"
    for line in Path(table).read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        # The server's end: its local port is the listening port, its
        # remote port our client's (both on loopback in these tests).
        if local_port == server_port and remote_port == client_port:
            return int(fields[9])
    return None


def serving_pid(sock: socket.socket, pids: list[int] | set[int]) -> int | None:
    """Which of ``pids`` holds the accepted end of TCP connection ``sock``.

    With SO_REUSEPORT the kernel picks the worker; this reads the answer back
    from /proc (the connection must have been accepted: ask something first).
    """
    inode = _server_end_inode(sock)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


def recv_netstring(sock: socket.socket) -> bytes:
    """Read one netstring from a blocking socket; its payload."""
    head = b""
    while not head.endswith(b":"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"connection closed after {head!r}")
        head += byte
    length = int(head[:-1])
    body = b""
    while len(body) < length + 1:
        chunk = sock.recv(length + 1 - len(body))
        if not chunk:
            raise ConnectionError("connection closed mid-reply")
        body += chunk
    if body[-1:] != b",":
        raise ConnectionError(f"bad netstring terminator in {body[-20:]!r}")
    return body[:-1]


def frame(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


class DaemonProcess:
    """One ``mta-sts-daemon`` subprocess listening on a free 127.0.0.1 port."""

    def __init__(
        self, directory: Path, world: Any, *, args: tuple[str, ...] = (), **settings: Any
    ) -> None:
        self.directory = directory
        self.args = args
        self.port = _free_port()
        self.config_path = directory / "mta-sts-daemon.yml"
        self.log_path = directory / "daemon.log"
        data: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "nameservers": [world.nameserver],
            "ca_file": world.ca_file,
            "shutdown_timeout": 2,
            "workers": 1,
            "cache": {"type": "lmdb", "options": {"path": str(directory / "cache.lmdb")}},
        }
        data.update(settings)
        self.config = data
        self.proc: subprocess.Popen[bytes] | None = None

    # --- life cycle ---

    def start(self, timeout: float = 20.0) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mtasts_fast",
                "-c",
                str(self.config_path),
                "-v",
                "debug",
                "-l",
                str(self.log_path),
                *self.args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"daemon did not start listening:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, timeout=15)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "daemon not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def worker_pids(self) -> list[int]:
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
            return [int(pid) for pid in text.split()]
        return []

    def worker_pid(self, timeout: float = 10.0) -> int:
        """The pid of the one worker (waits for a replacement to be forked)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.worker_pids()
            if len(pids) == 1:
                return pids[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"expected one worker, found {pids}")
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log, waiting for it to appear."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match is not None:
                return match
            if time.monotonic() > deadline or not self.alive():
                raise AssertionError(f"no {pattern!r} in the log:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    # --- talking to it ---

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def ask(self, payload: bytes, timeout: float = 10.0) -> bytes:
        """One request on a new connection; the reply payload."""
        with self.connect(timeout) as sock:
            sock.sendall(frame(payload))
            return recv_netstring(sock)
