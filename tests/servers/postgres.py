"""A throwaway PostgreSQL cluster for the tests, made with the server binaries.

::

    server = PostgresServer()   # PostgresUnavailable if initdb/pg_ctl are not installed
    server.start()              # initdb + pg_ctl start, in a new temporary directory
    server.dsn("postgres")      # postgresql://postgres@127.0.0.1:<port>/postgres
    server.stop(); server.restart()     # same port, same data
    server.kill(); server.restart()     # SIGKILL (a crash), then crash recovery
    with server.frozen(): ...   # every server process stopped (SIGSTOP): a hung server
    server.close()              # stop and delete everything

The cluster listens on 127.0.0.1 on a free port and on a unix socket in its
own directory, with ``trust`` authentication (nothing but this host can
reach it) and durability switched off (fsync, full pages) for speed.

initdb and postgres refuse to run as root, so as root they run as the
``postgres`` system user (made by Debian's ``postgresql`` package), and the
temporary directory is given to that user. The binaries are looked up in
``$MTASTS_PG_BINDIR``, then ``/usr/lib/postgresql/<newest>/bin``, then ``$PATH``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bindir"]

_TOOLS = ("initdb", "pg_ctl")


class PostgresUnavailable(Exception):
    """The PostgreSQL server binaries (or a user to run them as) are missing."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    override = os.environ.get("MTASTS_PG_BINDIR")
    candidates = [Path(override)] if override else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if all(os.access(candidate / tool, os.X_OK) for tool in _TOOLS):
            return candidate
    return None


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresUnavailable(
                "PostgreSQL server binaries (initdb, pg_ctl) not found; "
                "install the Debian package 'postgresql' or set MTASTS_PG_BINDIR"
            )
        self.bindir = found
        self._as_user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._as_user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root, and there is no 'postgres' user to run the server as"
                ) from None
        self.base: Path | None = None
        self.port = 0
        self._frozen: list[int] = []

    # --- where things are ---

    def _path(self, name: str) -> Path:
        if self.base is None:
            raise RuntimeError("the server was not started")
        return self.base / name

    @property
    def data_dir(self) -> Path:
        return self._path("data")

    @property
    def socket_dir(self) -> Path:
        return self._path("run")

    @property
    def log_file(self) -> Path:
        return self._path("server.log")

    def dsn(self, database: str = "postgres") -> str:
        """A DSN for ``database`` over TCP on 127.0.0.1."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def socket_dsn(self, database: str = "postgres") -> str:
        """A DSN for ``database`` over the unix socket (host = the socket directory)."""
        return (
            f"postgresql://postgres@{quote(str(self.socket_dir), safe='')}:{self.port}/{database}"
        )

    # --- life cycle ---

    def start(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="mtasts-pg-"))
        self.socket_dir.mkdir()
        if self._as_user is not None:
            for path in (self.base, self.socket_dir):
                os.chown(path, self._as_user.pw_uid, self._as_user.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )
        for attempt in range(3):
            self.port = _free_port()
            try:
                self._start_server()
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are cut); the data stays."""
        self.thaw()
        self._run("pg_ctl", "--pgdata", str(self.data_dir), "--mode", "fast", "--wait", "stop")

    def restart(self) -> None:
        """Start again after :meth:`stop` or :meth:`kill`, on the same port and data."""
        self._start_server()

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the postmaster, as a crash would, and wait for every server process
        to be gone; :meth:`restart` then runs crash recovery on the same data."""
        self.thaw()
        pids = self._processes()
        if not pids:
            raise RuntimeError("the server is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[0], signal.SIGKILL)
        # The backends notice the postmaster's death and exit; a new postmaster
        # refuses to start while any of them still holds the shared memory.
        deadline = time.monotonic() + timeout
        while any(_running(pid) for pid in pids):
            if time.monotonic() > deadline:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)

    def close(self) -> None:
        if self.base is None:
            return
        self.thaw()
        if (self.data_dir / "postmaster.pid").exists():
            try:
                self.stop()
            except RuntimeError:
                pid = self._postmaster_pid()
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def _start_server(self) -> None:
        options = " ".join(
            (
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.socket_dir}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            )
        )
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data_dir),
            "--log",
            str(self.log_file),
            "--options",
            options,
            "--wait",
            "--timeout",
            "60",
            "start",
        )

    # --- a hung server ---

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def _processes(self) -> list[int]:
        """The postmaster and its children (backends, background workers)."""
        postmaster = self._postmaster_pid()
        if postmaster is None:
            return []
        pids = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # Fields after the ")" that ends the command name: state, ppid, ...
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    pids.append(int(stat.parent.name))
        return pids

    def freeze(self) -> None:
        """SIGSTOP every server process: connections stay open, nothing answers."""
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                self._frozen.append(pid)

    def thaw(self) -> None:
        frozen, self._frozen = self._frozen, []
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    # --- running the tools ---

    def _run(self, tool: str, *args: str) -> None:
        assert self.base is not None
        extra: dict[str, Any] = {}
        if self._as_user is not None:
            extra = {
                "user": self._as_user.pw_uid,
                "group": self._as_user.pw_gid,
                "extra_groups": [],
            }
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "HOME": str(self.base),
        }
        started = time.monotonic()
        result = subprocess.run(
            [str(self.bindir / tool), *args],
            cwd=self.base,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **extra,
        )
        if result.returncode != 0:
            log = ""
            with contextlib.suppress(OSError):
                log = self.log_file.read_text()[-2000:]
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}) after "
                f"{time.monotonic() - started:.1f} s:\n{result.stdout}{result.stderr}\n{log}"
            )
