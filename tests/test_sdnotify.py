"""sd_notify(3) as systemd sees it: datagrams on a real AF_UNIX socket.

The READY/RELOADING/READY/STOPPING sequence of a real daemon is covered in
test_workers.py (``test_sd_notify_from_the_supervisor``); this file covers the
watchdog: when it is on (sd_watchdog_enabled(3) rules), how often the running
daemon pings, from which process (``NotifyAccess=main`` drops anything else),
that a reload does not interrupt it, that it stops at ``STOPPING=1``, and that
it is withheld while no worker answers, then resumes.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtasts_fast.sdnotify import Notifier, watchdog_interval
from tests.test_workers import Daemon, ask, daemon  # noqa: F401  (daemon is a fixture)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Message:
    at: float  # time.monotonic() when received
    pid: int  # sender, from SCM_CREDENTIALS (what systemd checks for NotifyAccess)
    fields: dict[str, str]


class NotifySocket:
    """What systemd's notify socket is: AF_UNIX datagrams, sender credentials on.

    A thread receives and time-stamps every datagram as it arrives.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self._sock.settimeout(0.2)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                data, ancdata, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._cond:
                self.messages.append(Message(at, pid, fields))
                self._cond.notify_all()

    def wait_for(self, key: str, *, after: float = 0.0, timeout: float = 20.0) -> Message:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages:
                    if message.at > after and key in message.fields:
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key} after {after}: {self.messages}")
                self._cond.wait(left)

    def pings(self, start: float = 0.0, end: float = float("inf")) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if "WATCHDOG" in m.fields and start < m.at <= end]

    def close(self) -> None:
        self._halt.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# -- when the watchdog is on (no daemon needed) -----------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, None, id="unset"),
        pytest.param({"WATCHDOG_USEC": "30000000"}, 30.0, id="interval-in-microseconds"),
        pytest.param({"WATCHDOG_USEC": "0"}, None, id="zero-is-off"),
        pytest.param({"WATCHDOG_USEC": "-5"}, None, id="negative-is-off"),
        pytest.param({"WATCHDOG_USEC": "30s"}, None, id="not-a-number-is-off"),
        pytest.param({"WATCHDOG_USEC": ""}, None, id="empty-is-off"),
        pytest.param({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "4242"}, 0.5, id="pid-is-us"),
        pytest.param({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "4243"}, None, id="pid-is-other"),
        pytest.param({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "x"}, None, id="pid-garbage"),
    ],
)
def test_watchdog_interval_follows_sd_watchdog_enabled(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_watchdog_pid_defaults_to_this_process() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 2.0
    assert watchdog_interval({**env, "WATCHDOG_PID": str(os.getpid() + 1)}) is None


def test_no_watchdog_without_a_notify_socket() -> None:
    notifier = Notifier(environ={"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.watchdog()  # nowhere to send to: must not raise


def test_watchdog_datagram_to_an_abstract_socket() -> None:
    # systemd in a container hands out "@name" (Linux abstract namespace).
    name = f"@mtasts-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket(name)
    try:
        notifier = Notifier(environ={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000000"})
        assert notifier.watchdog_interval == 1.0
        notifier.watchdog()
        notifier.notify("STATUS=still here")
        assert listener.wait_for("WATCHDOG", timeout=5).fields == {"WATCHDOG": "1"}
        message = listener.wait_for("STATUS", timeout=5)
        assert message.fields == {"STATUS": "still here"}
        assert message.pid == os.getpid()
        notifier.close()
    finally:
        listener.close()


# -- the running daemon ---------------------------------------------------------------------


def test_watchdog_pings_at_half_the_interval_through_a_reload_until_stopping(
    daemon: Callable[..., Daemon],  # noqa: F811
    notify_socket: NotifySocket,
) -> None:
    interval = 1.0
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(int(interval * 1e6))}
    d = daemon(workers=2, env=env)
    ready = notify_socket.wait_for("READY")
    time.sleep(2.5)
    steady = notify_socket.pings(ready.at - 0.01)

    d.reconfigure(default_zone={"require_sni": False})
    hup = time.monotonic()
    d.signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING", after=hup)
    reloaded = notify_socket.wait_for("READY", after=hup)
    time.sleep(1.0)
    assert ask(d.address, b"postfix good.loc") == b"OK secure match=mail.loc"

    stop = time.monotonic()
    d.signal(signal.SIGTERM)
    stopping = notify_socket.wait_for("STOPPING", after=stop)
    assert d.wait() == 0, d.output
    time.sleep(0.2)
    pings = notify_socket.pings()

    # Only the supervisor pings: it is MAINPID, and systemd's default
    # NotifyAccess=main would drop a worker's datagram.
    assert {m.pid for m in pings} == {d.proc.pid}
    assert all(m.fields == {"WATCHDOG": "1"} for m in pings)
    assert len(steady) >= 4, pings
    # Every ping well inside systemd's deadline, through start, steady state
    # and the reload, and none sent more often than the half interval.
    times = [ready.at] + [m.at for m in pings if m.at < stopping.at]
    assert max(_gaps(times)) < interval, _gaps(times)
    assert min(_gaps(times[1:])) > 0.3 * interval, _gaps(times)
    assert notify_socket.pings(reloaded.at, stop)
    # No ping after STOPPING=1: the stop is systemd's to time now.
    assert notify_socket.pings(stopping.at) == []


def test_no_watchdog_when_watchdog_pid_names_another_process(
    daemon: Callable[..., Daemon],  # noqa: F811
    notify_socket: NotifySocket,
) -> None:
    env = {
        "NOTIFY_SOCKET": notify_socket.address,
        "WATCHDOG_USEC": "300000",
        "WATCHDOG_PID": str(os.getpid()),  # the test process, not the daemon
    }
    d = daemon(workers=1, env=env)
    notify_socket.wait_for("READY")
    time.sleep(1.5)
    assert notify_socket.pings() == []
    assert d.stop() == 0, d.output


# Workers started while the marker file exists wait before they start
# serving, as a worker stuck opening its cache would (a deadline keeps a
# failed test from leaving one behind for long).
_HANG_WHILE_MARKED = """
import os, time
import mtasts_fast.worker_processes as _workers
_real_run_worker = _workers.run_worker
def _run_worker(*args, **kwargs):
    while os.path.exists({marker!r}) and time.monotonic() < {deadline}:
        time.sleep(0.05)
    return _real_run_worker(*args, **kwargs)
_workers.run_worker = _run_worker
"""


def test_watchdog_is_withheld_while_no_worker_answers_and_resumes(
    daemon: Callable[..., Daemon],  # noqa: F811
    notify_socket: NotifySocket,
    tmp_path: Path,
) -> None:
    interval = 0.6
    marker = tmp_path / "hang"
    script = _HANG_WHILE_MARKED.format(marker=str(marker), deadline=time.monotonic() + 60)
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(int(interval * 1e6))}
    d = daemon(workers=1, script=script, env=env)
    ready = notify_socket.wait_for("READY")
    time.sleep(1.0)
    assert len(notify_socket.pings(ready.at - 0.01)) >= 2

    marker.touch()
    (victim,) = d.worker_pids()
    mark = d.mark()
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    # The successor starts but never answers: no ping for several intervals.
    d.wait_for(r"worker 1 started \(pid \d+\)", since=mark)
    time.sleep(4 * interval)
    assert notify_socket.pings(killed + 0.1, time.monotonic()) == [], d.output
    assert "answering" not in "\n".join(d.lines_since(mark))

    marker.unlink()
    unstuck = time.monotonic()
    d.wait_for(r"worker 1 \(pid \d+\) answering", timeout=15, since=mark)
    resumed = notify_socket.wait_for("WATCHDOG", after=killed + 0.1, timeout=10)
    assert resumed.at > unstuck
    assert resumed.pid == d.proc.pid
    assert ask(d.address, b"postfix good.loc") == b"OK secure match=mail.loc servername=hostname"
    assert d.stop() == 0, d.output
