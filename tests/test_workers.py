"""The supervisor and its workers, as real processes against the test world.

Every test runs ``mta-sts-daemon`` in a subprocess and watches it from outside:
its log (one line per worker start, readiness, death and restart, each
prefixed with the process id), ``/proc`` (the workers are the supervisor's
children) and the HTTPS request counts of the test world.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers.daemon import serving_pid
from tests.servers.world import World
from tests.socketmap import free_port

GOOD = b"OK secure match=mail.loc servername=hostname"
GOOD_NO_SNI = b"OK secure match=mail.loc"
READY_LINE = r"answering on "


# -- a daemon in a subprocess ----------------------------------------------------------------


class Daemon:
    """A running ``mta-sts-daemon`` with its output collected line by line."""

    def __init__(
        self, proc: subprocess.Popen[bytes], config: Path, settings: dict[str, Any]
    ) -> None:
        self.proc = proc
        self.config = config
        self.settings = settings
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines)

    def lines_since(self, mark: int) -> list[str]:
        with self._cond:
            return [line for _, line in self.lines[mark:]]

    def mark(self) -> int:
        """A position in the log; :meth:`wait_for` can look only after it."""
        with self._cond:
            return len(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for _, line in self.lines[since:]:
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no log line matches {pattern!r}:\n{self.output}")
                self._cond.wait(min(left, 0.2))

    def matches(self, pattern: str) -> list[tuple[float, re.Match[str]]]:
        regex = re.compile(pattern)
        with self._cond:
            found = [(t, regex.search(line)) for t, line in self.lines]
        return [(t, m) for t, m in found if m is not None]

    def worker_pids(self) -> set[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return {int(pid) for pid in path.read_text().split()}

    def reconfigure(self, **changes: Any) -> None:
        self.settings.update(changes)
        self.config.write_text(yaml.safe_dump(self.settings))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        self.drain()
        return code

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything written to the output has been read."""
        self._reader.join(timeout)

    @property
    def address(self) -> tuple[str, int] | str:
        path = self.settings.get("path")
        return str(path) if path else ("127.0.0.1", int(self.settings["port"]))

    def end(self) -> None:
        """At a test's end: kill the supervisor if it still runs, and any worker
        of it left (they stop by themselves once it is gone; make sure)."""
        workers: set[int] = set()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                workers = self.worker_pids()
            self.proc.kill()
        self.proc.wait()
        for pid in workers:
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.drain()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Started:
    """The daemons a fixture started, every one ended at the test's end."""

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []

    def add(
        self,
        proc: subprocess.Popen[bytes],
        config: Path,
        settings: dict[str, Any],
        *,
        wait: bool = True,
        timeout: float = 20,
    ) -> Daemon:
        """Watch ``proc``; with ``wait``, until every worker answers."""
        daemon = Daemon(proc, config, settings)
        self.daemons.append(daemon)
        if wait:
            daemon.wait_for(READY_LINE, timeout=timeout)
        return daemon

    def end(self) -> None:
        for daemon in self.daemons:
            daemon.end()


def daemon_config(world: World, tmp_path: Path, **settings: Any) -> tuple[Path, dict[str, Any]]:
    """Write the config of a daemon of two workers on a free loopback port,
    resolving and fetching in ``world``, with ``settings`` on top."""
    data: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "nameservers": [world.nameserver],
        "ca_file": world.ca_file,
        "shutdown_timeout": 2,
        "workers": 2,
        **settings,
    }
    config = tmp_path / "mta-sts-daemon.yml"
    config.write_text(yaml.safe_dump(data))
    return config, data


def connect(address: tuple[str, int] | str, timeout: float = 5.0) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(address, timeout=timeout)


def frame(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


def read_replies(sock: socket.socket, count: int) -> list[bytes]:
    """Read exactly ``count`` netstring replies (the client asked that many)."""
    data = b""
    replies: list[bytes] = []
    while len(replies) < count:
        head, sep, rest = data.partition(b":")
        if sep and len(rest) >= int(head) + 1:
            assert rest[int(head) : int(head) + 1] == b",", data
            replies.append(rest[: int(head)])
            data = rest[int(head) + 1 :]
            continue
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError(f"connection closed after {data!r}")
        data += chunk
    assert data == b"", data
    return replies


def read_reply(sock: socket.socket) -> bytes:
    return read_replies(sock, 1)[0]


def ask(address: tuple[str, int] | str, payload: bytes, timeout: float = 10.0) -> bytes:
    with connect(address, timeout) as sock:
        sock.sendall(frame(payload))
        return read_reply(sock)


class ClientLoop(threading.Thread):
    """Asks the same question over and over, as Postfix's smtp(8) processes do.

    ``persistent``: one connection reused until it fails (Postfix keeps its
    socketmap connections open); otherwise a new connection per lookup, which
    notices a refused connection at once. A failed lookup is retried once on a
    new connection, as Postfix does; only a failed retry counts as a failure.
    A refused connection is counted separately, retried or not.
    """

    def __init__(
        self, address: tuple[str, int] | str, payload: bytes, *, persistent: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.payload = payload
        self.persistent = persistent
        self.halt = threading.Event()
        self.replies: list[tuple[float, bytes]] = []  # (time sent, reply)
        self.refused = 0
        self.retried = 0
        self.failures: list[str] = []
        self._sock: socket.socket | None = None

    def _once(self) -> bytes:
        if self._sock is None:
            try:
                self._sock = connect(self.address)
            except ConnectionRefusedError:
                self.refused += 1
                raise
        try:
            self._sock.sendall(frame(self.payload))
            return read_reply(self._sock)
        finally:
            if not self.persistent:
                self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def run(self) -> None:
        while not self.halt.is_set():
            # Stamped when the question is sent: the thread may wait for the
            # GIL a while after the answer arrives.
            sent = time.monotonic()
            try:
                reply = self._once()
            except (OSError, EOFError):
                self._drop()
                self.retried += 1
                sent = time.monotonic()
                try:
                    reply = self._once()
                except (OSError, EOFError) as exc:
                    self._drop()
                    self.failures.append(repr(exc))
                    continue
            self.replies.append((sent, reply))
        self._drop()

    def finish(self) -> None:
        self.halt.set()
        self.join(30)


@pytest.fixture
def daemon(world: World, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``daemon(**settings)`` starts the daemon and waits until every worker answers."""
    started = Started()

    def _start(
        *args: str,
        script: str | None = None,
        wait: bool = True,
        new_session: bool = False,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> Daemon:
        config, data = daemon_config(world, tmp_path, **{"cache": {"type": "internal"}, **settings})
        if script is None:
            command = [sys.executable, "-m", "mtasts_fast"]
        else:
            # Same daemon, with a fault injected into the code the workers
            # run (they are forked, not exec'd, so the patch reaches them).
            runner = tmp_path / "run_daemon.py"
            runner.write_text(
                "import sys\n"
                + script
                + "\nfrom mtasts_fast.daemon import main\nsys.exit(main(sys.argv[1:]))\n"
            )
            command = [sys.executable, str(runner)]
        proc = subprocess.Popen(
            [*command, "-c", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
            env={**os.environ, **(env or {})},
        )
        return started.add(proc, config, data, wait=wait)

    yield _start
    started.end()


def _policy_domain(world: World) -> str:
    domain = world.fresh_domain("w")
    world.add_domain(domain, policy=World.policy_text("enforce", ["mail.loc"]))
    return domain


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for init counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


# -- tests -------------------------------------------------------------------------------------


def test_both_workers_serve_and_a_killed_worker_is_replaced(
    world: World, daemon: Callable[..., Daemon]
) -> None:
    domain = _policy_domain(world)
    payload = b"postfix " + domain.encode()
    d = daemon(workers=2, reuse_port=True)
    pids = d.worker_pids()
    assert len(pids) == 2
    # The kernel spreads connections over the workers' sockets; /proc tells
    # which worker accepted each. They share the cache: one fetch in all.
    answered_by = set()
    for _ in range(40):
        with connect(d.address) as sock:
            sock.sendall(frame(payload))
            assert read_reply(sock) == GOOD
            answered_by.add(serving_pid(sock, pids))
    assert answered_by == pids
    assert world.https_requests(domain) == 1

    loops = [ClientLoop(d.address, payload, persistent=p) for p in (True, True, False, False)]
    for loop in loops:
        loop.start()
    time.sleep(0.3)
    victim = min(pids)
    mark = d.mark()
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    match = d.wait_for(r"worker \d+ \(pid (\d+)\) answering", timeout=5, since=mark)
    back_after = time.monotonic() - killed_at
    newcomer = int(match.group(1))
    time.sleep(0.5)
    for loop in loops:
        loop.finish()

    assert back_after < 1.5, d.output
    assert newcomer not in pids
    assert d.worker_pids() == (pids - {victim}) | {newcomer}
    assert f"(pid {victim}) died (killed by signal SIGKILL)" in d.output
    for loop in loops:
        assert loop.failures == [], f"{loop.failures}\n{d.output}"
        assert loop.refused == 0
        assert {reply for _, reply in loop.replies} == {GOOD}
        # Answered throughout: before, during and after the restart.
        assert any(t > killed_at + back_after for t, _ in loop.replies)
    # At most the connection that was on the killed worker needed a retry.
    assert all(loop.retried <= 1 for loop in loops)
    assert d.stop() == 0, d.output


def test_a_worker_that_keeps_crashing_is_restarted_with_backoff(
    daemon: Callable[..., Daemon],
) -> None:
    crash_soon = (
        "import asyncio, os\n"
        "from mtasts_fast import server\n"
        "_start = server.SocketmapServer.start\n"
        "async def start(self, sockets=None):\n"
        "    await _start(self, sockets)\n"
        "    asyncio.get_running_loop().call_later(0.05, os._exit, 70)\n"
        "server.SocketmapServer.start = start\n"
    )
    d = daemon(workers=1, script=crash_soon)
    pattern = r"died \(exit status 70\) after [\d.]+ s; restarting in ([\d.]+) s"
    _wait_until(lambda: len(d.matches(pattern)) >= 5, timeout=15, what="five crashes")
    crashes = d.matches(pattern)[:5]
    delays = [float(m.group(1)) for _, m in crashes]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6], d.output
    # The restarts really wait: each gap between crashes covers the delay.
    for (t0, _), (t1, _), delay in zip(crashes, crashes[1:], delays, strict=False):
        assert t1 - t0 >= delay, d.output
    assert len(d.matches(r"could not start")) == 0
    assert d.stop() == 0, d.output


@pytest.mark.parametrize(
    ("script", "cache", "expected_code", "message"),
    [
        pytest.param(
            None,
            {"type": "lmdb", "options": {"path": "{tmp}/regular-file"}},
            1,
            "cannot open the LMDB cache",
            id="lmdb-data-file-is-not-lmdb",
        ),
        pytest.param(
            None,
            {"type": "sqlite", "options": {"filename": "{tmp}/no/such/dir/cache.db"}},
            1,
            "sqlite cache",
            id="sqlite-directory-missing",
        ),
        pytest.param(
            # The workers' internal cache is the supervisor's LMDB environment.
            "from mtasts_fast.cache.lmdb import LmdbCache\n"
            "from mtasts_fast.errors import ConfigError\n"
            "async def setup(self):\n"
            "    raise ConfigError('test.yml', 'cache.options', 'rejected by the backend')\n"
            "LmdbCache.setup = setup\n",
            {"type": "internal"},
            2,
            "cache.options: rejected by the backend",
            id="backend-rejects-its-options",
        ),
    ],
)
def test_fatal_worker_startup_error_stops_the_daemon(
    daemon: Callable[..., Daemon],
    tmp_path: Path,
    script: str | None,
    cache: dict[str, Any],
    expected_code: int,
    message: str,
) -> None:
    (tmp_path / "regular-file").write_text("not a directory")
    if "options" in cache:
        cache = {
            **cache,
            "options": {k: v.format(tmp=tmp_path) for k, v in cache["options"].items()},
        }
    started = time.monotonic()
    d = daemon(workers=2, script=script, wait=False, cache=cache)
    code = d.wait(timeout=15)
    assert code == expected_code, d.output
    assert time.monotonic() - started < 10
    assert message in d.output
    assert "could not start" in d.output
    assert "restarting in" not in d.output  # no restart loop
    assert "Traceback" not in d.output


def _listener_settings(kind: str, tmp_path: Path) -> dict[str, Any]:
    if kind == "unix":
        return {"path": str(tmp_path / "mta-sts.sock"), "mode": 0o666}
    return {"reuse_port": kind == "tcp-reuseport"}


LISTENERS = [
    pytest.param("tcp-reuseport", id="tcp-reuseport"),
    pytest.param("tcp-shared", id="tcp-shared-socket"),
    pytest.param("unix", id="unix-socket"),
]


@pytest.mark.parametrize("kind", LISTENERS)
def test_listeners_serve_with_two_workers_and_are_cleaned_up(
    world: World, daemon: Callable[..., Daemon], tmp_path: Path, kind: str
) -> None:
    d = daemon(workers=2, **_listener_settings(kind, tmp_path))
    assert len(d.worker_pids()) == 2
    with contextlib.ExitStack() as stack:
        # Many connections at once, some of them pipelining.
        socks = [stack.enter_context(connect(d.address)) for _ in range(20)]
        for sock in socks:
            sock.sendall(frame(b"postfix good.loc") * 2)
        for sock in socks:
            assert read_replies(sock, 2) == [GOOD, GOOD]
    assert d.stop() == 0, d.output
    if kind == "unix":
        assert not (tmp_path / "mta-sts.sock").exists()


@pytest.mark.parametrize("kind", LISTENERS)
def test_sighup_with_a_new_config_replaces_workers_without_refusing(
    world: World, daemon: Callable[..., Daemon], tmp_path: Path, kind: str
) -> None:
    domain = _policy_domain(world)
    payload = b"postfix " + domain.encode()
    d = daemon(workers=2, default_zone={"require_sni": True}, **_listener_settings(kind, tmp_path))
    old_pids = d.worker_pids()
    loops = [ClientLoop(d.address, payload, persistent=p) for p in (False, False, False, True)]
    for loop in loops:
        loop.start()
    time.sleep(0.3)
    mark = d.mark()
    d.reconfigure(default_zone={"require_sni": False})
    d.signal(signal.SIGHUP)
    d.wait_for(r"reloaded .*: 2 workers answering on", since=mark)
    # Retired workers still send what they owe on connections they hold.
    _wait_until(lambda: all(_gone(pid) for pid in old_pids), timeout=10, what="old workers")
    reloaded_at = time.monotonic()
    time.sleep(0.3)
    for loop in loops:
        loop.finish()

    for loop in loops:
        assert loop.refused == 0, f"{loop.refused} refused\n{d.output}"
        assert loop.failures == [], f"{loop.failures}\n{d.output}"
        assert loop.replies, d.output
        assert {reply for _, reply in loop.replies} <= {GOOD, GOOD_NO_SNI}
        late = [reply for t, reply in loop.replies if t > reloaded_at]
        assert set(late) == {GOOD_NO_SNI}, f"{len(late)} after the reload: {set(late)}"
    assert ask(d.address, payload) == GOOD_NO_SNI
    new_pids = d.worker_pids()
    assert len(new_pids) == 2
    assert not new_pids & old_pids
    # One at a time: the second successor started after the first answered.
    log = d.lines_since(mark)
    first_answering = next(i for i, line in enumerate(log) if "(configuration 2," in line)
    second_started = next(i for i, line in enumerate(log) if "worker 2 started" in line)
    assert first_answering < second_started, d.output
    assert d.stop() == 0, d.output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            {"default_zone": {"require_sni": "maybe"}},
            "default_zone.require_sni: expected true or false",
            id="bad-value",
        ),
        pytest.param({"default_zone": {"timout": 3}}, "default_zone.timout", id="unknown-key"),
        pytest.param("port: [1\n", "invalid YAML", id="yaml-syntax"),
        pytest.param(
            {"ca_file": "/nonexistent/ca.pem"}, "ca_file: cannot load", id="unreadable-ca-file"
        ),
    ],
)
def test_sighup_with_an_invalid_config_keeps_the_running_one(
    world: World, daemon: Callable[..., Daemon], content: dict[str, Any] | str, expected: str
) -> None:
    d = daemon(workers=2)
    pids = d.worker_pids()
    assert ask(d.address, b"postfix good.loc") == GOOD
    mark = d.mark()
    if isinstance(content, str):
        d.config.write_text(content)
    else:
        d.reconfigure(**content)
    d.signal(signal.SIGHUP)
    line = d.wait_for(r"keeping the running configuration", since=mark).string
    assert str(d.config) in line
    assert expected in line
    time.sleep(0.2)
    assert d.worker_pids() == pids
    assert ask(d.address, b"postfix good.loc") == GOOD
    assert d.stop() == 0, d.output


def test_sighup_with_an_unchanged_config_keeps_the_workers(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    logfile = tmp_path / "daemon.log"
    d = daemon("-l", str(logfile), "-v", "debug", wait=False, workers=2)
    _wait_until(
        lambda: logfile.exists() and READY_LINE in logfile.read_text(), timeout=20, what="ready"
    )
    pids = d.worker_pids()
    logfile.rename(tmp_path / "daemon.log.1")  # as logrotate would
    d.signal(signal.SIGHUP)
    _wait_until(
        lambda: logfile.exists() and "workers keep running" in logfile.read_text(),
        timeout=5,
        what="the reopened log",
    )
    assert d.worker_pids() == pids
    assert ask(d.address, b"postfix good.loc") == GOOD
    assert d.stop() == 0
    # The workers reopened the file too: their last lines are in the new one.
    text = logfile.read_text()
    for pid in pids:
        assert re.search(rf"\[{pid}\] mtasts_fast.workers: worker \d stopping", text), text


@pytest.mark.parametrize("workers", [1, 3])
def test_sighup_changes_the_number_of_workers(daemon: Callable[..., Daemon], workers: int) -> None:
    d = daemon(workers=2)
    mark = d.mark()
    d.reconfigure(workers=workers)
    d.signal(signal.SIGHUP)
    plural = "s" if workers != 1 else ""
    d.wait_for(rf"reloaded .*: {workers} worker{plural} answering", since=mark)
    _wait_until(lambda: len(d.worker_pids()) == workers, timeout=10, what="old workers to stop")
    for _ in range(20):
        assert ask(d.address, b"postfix good.loc") == GOOD
    assert d.stop() == 0, d.output


def test_listen_address_change_needs_a_restart(daemon: Callable[..., Daemon]) -> None:
    d = daemon(workers=1)
    old_port = d.settings["port"]
    mark = d.mark()
    d.reconfigure(port=free_port(), default_zone={"require_sni": False})
    d.signal(signal.SIGHUP)
    assert "port changed" in d.wait_for(r"until a restart", since=mark).string
    d.wait_for(r"reloaded ", since=mark)
    # Everything else took effect, on the socket bound at start.
    assert ask(("127.0.0.1", old_port), b"postfix good.loc") == GOOD_NO_SNI
    assert d.stop() == 0, d.output


def test_sigterm_with_clients_connected(world: World, daemon: Callable[..., Daemon]) -> None:
    # slow-https.loc's policy host never answers: the lookup ends with the
    # zone timeout (1 s), inside shutdown_timeout, so its reply still goes out.
    d = daemon(workers=2, shutdown_timeout=4, default_zone={"timeout": 1})
    pids = d.worker_pids()
    idle = [connect(d.address) for _ in range(10)]
    for sock in idle[:3]:
        sock.sendall(frame(b"postfix good.loc"))
        assert read_reply(sock) == GOOD
    busy = connect(d.address)
    busy.sendall(frame(b"postfix slow-https.loc"))
    time.sleep(0.2)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    try:
        for sock in idle:
            assert sock.recv(100) == b""  # EOF, not a reset
        assert read_reply(busy) == b"NOTFOUND "
        assert busy.recv(100) == b""
        code = d.wait(timeout=10)
    finally:
        for sock in [*idle, busy]:
            sock.close()
    assert code == 0, d.output
    assert time.monotonic() - started < 4, d.output
    assert "stopping gracefully" in d.output
    assert all(_gone(pid) for pid in pids)
    assert "did not stop in time" not in d.output


def test_ctrl_c_in_a_terminal_stops_gracefully(daemon: Callable[..., Daemon]) -> None:
    # A terminal's Ctrl-C reaches the whole process group; workers leave the
    # decision to the supervisor, which stops them with SIGTERM.
    d = daemon(workers=2, new_session=True)
    pids = d.worker_pids()
    os.killpg(d.proc.pid, signal.SIGINT)
    assert d.wait(timeout=10) == 0, d.output
    assert "got SIGINT, stopping gracefully" in d.output
    for pid in pids:
        assert f"(pid {pid}) stopped" in d.output
    assert "died" not in d.output


def test_workers_stop_when_the_supervisor_is_killed(daemon: Callable[..., Daemon]) -> None:
    d = daemon(workers=2)
    pids = d.worker_pids()
    d.proc.kill()
    d.proc.wait()
    _wait_until(lambda: all(_gone(pid) for pid in pids), timeout=5, what="orphaned workers")
    d.drain()
    assert d.output.count("the supervisor is gone") == 2, d.output


def test_a_reload_whose_workers_cannot_start_is_abandoned(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = daemon(workers=2)
    pids = d.worker_pids()
    mark = d.mark()
    # Valid as a file, but no worker can open this cache.
    d.reconfigure(
        cache={"type": "sqlite", "options": {"filename": str(tmp_path / "none" / "c.db")}},
        default_zone={"require_sni": False},
    )
    d.signal(signal.SIGHUP)
    d.wait_for(r"could not start with the new configuration", since=mark)
    time.sleep(0.3)
    assert d.proc.poll() is None
    assert d.worker_pids() == pids
    assert ask(d.address, b"postfix good.loc") == GOOD
    # A later, good configuration is still applied.
    mark = d.mark()
    d.reconfigure(cache={"type": "internal"})
    d.signal(signal.SIGHUP)
    d.wait_for(r"reloaded ", since=mark)
    assert ask(d.address, b"postfix good.loc") == GOOD_NO_SNI
    assert d.stop() == 0, d.output


def test_sighup_during_a_reload_is_applied_after_it(daemon: Callable[..., Daemon]) -> None:
    zone = {"timeout": 2, "require_sni": True}
    d = daemon(workers=2, shutdown_timeout=5, default_zone=zone)
    # A lookup whose DNS never answers keeps its worker busy for 2 s after it
    # is told to stop, so the first reload is still under way at the second
    # SIGHUP.
    with connect(d.address) as busy:
        busy.sendall(frame(b"postfix blackhole.loc"))
        time.sleep(0.2)
        d.reconfigure(default_zone={**zone, "require_sni": False})
        d.signal(signal.SIGHUP)
        d.wait_for(r"configuration 2 loaded")
        d.wait_for(r"replaced; stopping it")
        d.reconfigure(default_zone={**zone, "require_sni": False, "strict_testing": True})
        d.signal(signal.SIGHUP)
        d.wait_for(r"a reload is under way, reloading again after it")
        assert read_reply(busy) == b"NOTFOUND "
    d.wait_for(r"configuration 3 loaded")
    _wait_until(
        lambda: len(d.matches(r"reloaded .* answering")) == 2, timeout=15, what="second reload"
    )
    assert ask(d.address, b"postfix testing.loc") == GOOD_NO_SNI
    assert d.stop() == 0, d.output


def test_lmdb_workers_example_shares_one_cache(
    world: World, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    example = Path(__file__).parent.parent / "config_examples" / "lmdb-workers.yml"
    settings = yaml.safe_load(example.read_text())
    settings["cache"]["options"]["path"] = str(tmp_path / "lmdb" / "cache.lmdb")
    settings.update(port=free_port(), workers=2, shutdown_timeout=2)
    d = daemon(**settings)
    domain = _policy_domain(world)
    payload = b"postfix " + domain.encode()
    for _ in range(40):
        assert ask(d.address, payload) == GOOD
    # Fetched once, by whichever worker got the first lookup; the other
    # answered from the shared cache.
    assert world.https_requests(domain) == 1
    # Brand-new processes, with nothing in memory, still answer from it.
    mark = d.mark()
    for pid in d.worker_pids():
        os.kill(pid, signal.SIGKILL)
    _wait_until(
        lambda: len([x for x in d.lines_since(mark) if " answering (" in x]) == 2,
        timeout=5,
        what="replacement workers",
    )
    for _ in range(10):
        assert ask(d.address, payload) == GOOD
    assert world.https_requests(domain) == 1
    assert d.stop() == 0, d.output


def test_two_daemons_sharing_one_lmdb_file_run_one_proactive_pass_at_a_time(
    world: World, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # Two daemons of two workers each: four processes compete for every pass.
    common: dict[str, Any] = {
        "workers": 2,
        "cache": {"type": "lmdb", "options": {"path": str(tmp_path / "shared" / "cache.lmdb")}},
        "proactive_policy_fetching": {
            "enabled": True,
            "interval": 2,
            "grace_ratio": 1000,
            "jitter": 0,
        },
    }
    first = daemon(port=free_port(), **common)
    second = daemon(port=free_port(), **common)
    domains = [_policy_domain(world) for _ in range(3)]
    for domain in domains:
        assert ask(first.address, b"postfix " + domain.encode()) == GOOD
    time.sleep(7)
    done = "proactive refresh pass done"
    passes = sorted(t for t, _ in first.matches(done) + second.matches(done))
    # One pass per interval in all, never two at once or back to back.
    assert 3 <= len(passes) <= 5, first.output + second.output
    gaps = [b - a for a, b in itertools.pairwise(passes)]
    assert min(gaps) > 1.5, gaps
    # Each pass after the first lookups fetched each policy once.
    for domain in domains:
        assert 2 <= world.https_requests(domain) <= len(passes) + 1
    assert first.stop() == 0
    assert second.stop() == 0


def test_asyncio_workers_without_uvloop(daemon: Callable[..., Daemon]) -> None:
    d = daemon("--disable-uvloop", workers=2)
    for _ in range(10):
        assert ask(d.address, b"postfix good.loc") == GOOD
    assert d.stop() == 0, d.output


def test_sd_notify_from_the_supervisor(daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(10)

        def message() -> dict[str, str]:
            text = listener.recv(4096).decode()
            return dict(line.split("=", 1) for line in text.splitlines())

        d = daemon(workers=2, env={"NOTIFY_SOCKET": path})
        ready = message()
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(d.proc.pid)
        assert ready["STATUS"].startswith("2 workers answering on 127.0.0.1:")
        d.reconfigure(default_zone={"require_sni": False})
        d.signal(signal.SIGHUP)
        reloading = message()
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert message()["READY"] == "1"
        d.signal(signal.SIGTERM)
        assert message()["STOPPING"] == "1"
        assert d.wait() == 0, d.output
