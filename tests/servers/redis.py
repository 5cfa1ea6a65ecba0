"""Throwaway ``redis-server`` and Redis Sentinel processes on 127.0.0.1.

Each process gets a free port and its own directory, nothing is saved to disk,
and the port is kept across restarts, so a test can take the server away and
bring it back under a client that stays open::

    server = RedisServer(tmp_dir)      # RedisUnavailable if redis-server is missing
    server.start()
    server.url(db=1)                   # redis://127.0.0.1:<port>/1
    server.command("FLUSHALL")         # a tiny synchronous client, parsed replies
    server.kill()                      # SIGKILL: connections refused
    server.start()                     # same port, same directory
    RedisServer(tmp_dir, durable=True) # appendonly + fsync always: data survives kill()
    server.pause(); server.resume()    # SIGSTOP/SIGCONT: accepts, never answers
    server.stop()

    sentinel = RedisSentinel(tmp_dir, master=server, name="mtasts")
    sentinel.start()                   # monitors server with quorum 1

The Sentinel is ``redis-server <config> --sentinel`` (Debian's redis-server
package is enough; its redis-sentinel package only adds a service). The test
module's fixtures skip when the binary is missing, or fail under
``MTASTS_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

from tests.servers.processes import stop_process

__all__ = ["RedisSentinel", "RedisServer", "RedisUnavailable", "redis_server_binary"]

_START_TIMEOUT = 10.0


class RedisUnavailable(Exception):
    """redis-server is not installed, or would not start."""


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RedisUnavailable("redis-server not found (Debian package: redis-server)")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _encode(args: tuple[str | bytes | int | float, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_reply(stream: Any) -> Any:
    """One RESP2 reply: str for status, int, bytes or None, list; errors raise."""
    line: bytes = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data: bytes = stream.read(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"unexpected reply {line!r}")


class _Process:
    """A redis-server process (plain or sentinel) on a port fixed at first start."""

    def __init__(self, directory: str, name: str) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.name = name
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        os.makedirs(directory, exist_ok=True)

    @property
    def log_file(self) -> str:
        return os.path.join(self.directory, f"{self.name}.log")

    def _argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (or restart on the same port) and wait until it answers PING."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        first = self.port == 0
        for _attempt in range(5 if first else 1):
            if first:
                self.port = _free_port()
            try:
                self._spawn()
                return
            except RedisUnavailable:
                if not first:
                    raise
        raise RedisUnavailable(f"{self.name}: no free port found")

    def _spawn(self) -> None:
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                self._argv(), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RedisUnavailable(f"{self.name} exited at start:\n{self._log_tail()}")
            with contextlib.suppress(OSError, RuntimeError):
                if self.command("PING", timeout=1.0) == "PONG":
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise RedisUnavailable(f"{self.name} did not answer:\n{self._log_tail()}")
            time.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            with open(self.log_file, "rb") as log:
                return log.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def command(
        self, *args: str | bytes | int | float, db: int | None = None, timeout: float = 5.0
    ) -> Any:
        """Send one command (in database ``db``) on a new connection; the parsed reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            if db is not None:
                sock.sendall(_encode(("SELECT", db)))
            sock.sendall(_encode(args))
            with sock.makefile("rb") as stream:
                if db is not None:
                    _read_reply(stream)
                return _read_reply(stream)

    def pause(self) -> None:
        """Freeze the process: connections are accepted by the kernel, never answered."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL, as a crash would; the port is free again on return."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        self._paused = False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._paused:
            proc.send_signal(signal.SIGCONT)
            self._paused = False
        stop_process(proc)


class RedisServer(_Process):
    """A plain Redis server without persistence; ``unix_socket`` also listens there."""

    def __init__(
        self,
        directory: str,
        name: str = "redis",
        *,
        unix_socket: str | None = None,
        durable: bool = False,
    ) -> None:
        super().__init__(directory, name)
        self.unix_socket = unix_socket
        # durable: an append-only file synced on every write, so what was
        # written survives kill() and is there again after start().
        self.durable = durable

    def _argv(self) -> list[str]:
        unix = ["--unixsocket", self.unix_socket] if self.unix_socket else []
        if self.durable:
            persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            persistence = ["--appendonly", "no"]
        return [
            self.binary,
            *unix,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.directory,
            "--save",
            "",
            *persistence,
            "--daemonize",
            "no",
        ]

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


class RedisSentinel(_Process):
    """One sentinel monitoring ``master`` under ``name`` with quorum 1.

    ``down_after`` (milliseconds) is how long the master may be silent before
    the sentinel reports it down; with no replica no failover can happen, so
    a master that comes back is the master again.
    """

    def __init__(
        self,
        directory: str,
        master: RedisServer,
        name: str = "mtasts",
        *,
        down_after: int = 60_000,
    ) -> None:
        super().__init__(directory, "sentinel")
        self.master = master
        self.master_name = name
        self.down_after = down_after

    def _argv(self) -> list[str]:
        # Sentinel rewrites its config file, so it gets a fresh one per start.
        config = os.path.join(self.directory, "sentinel.conf")
        with open(config, "w") as out:
            out.write(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.directory}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after}\n"
            )
        return [self.binary, config, "--sentinel"]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def master_down(self) -> bool:
        """True while this sentinel considers the master subjectively down."""
        reply = self.command("SENTINEL", "MASTER", self.master_name)
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        return b"s_down" in fields.get(b"flags", b"")
