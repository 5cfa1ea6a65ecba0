"""The supervisor and its worker processes (DESIGN.md §2).

The supervisor is the ``mta-sts-daemon`` process. It binds the listening
sockets while it may still be root, writes the pidfile, drops privileges and
then forks ``workers`` worker processes, which do all the serving:

* **Sockets.** With ``reuse_port`` on, one TCP socket per worker, each bound
  with SO_REUSEPORT to the same address, so the kernel spreads connections
  between them; with it off, one socket that every worker accepts on. A unix
  socket is bound once and shared. The supervisor keeps every socket open, so
  the socket of a worker that died or is being replaced keeps listening: a
  connection waits in its backlog for the successor instead of being refused.
* **Workers.** Each one starts a fresh event loop, then opens the cache and
  the fetcher's DNS resolver and HTTP session itself: an LMDB environment or
  a database connection must never cross a fork. It tells the supervisor it
  is answering by writing one byte to a pipe. It ignores SIGINT (Ctrl-C in a
  terminal reaches the whole process group; the supervisor decides), stops
  gracefully on SIGTERM and reopens its log file on SIGHUP.
* **Crashes.** A worker that dies is restarted after 0.1 s; while it keeps
  dying within 10 s of its start the delay doubles, up to 30 s. A worker
  that cannot start at all (exit code :data:`WORKER_EXIT_CONFIG` or
  :data:`WORKER_EXIT_FATAL` before it answered) would fail the same way
  forever: the supervisor stops everything and exits 2 or 1.
* **SIGTERM / SIGINT.** Workers get SIGTERM and ``shutdown_timeout`` (plus
  :data:`STOP_MARGIN`) to send the replies they owe, then SIGKILL; exit 0.
  A second signal kills them at once; exit 1.
* **SIGHUP.** The supervisor reopens its log file and forwards SIGHUP to the
  workers (they reopen theirs), then re-reads the configuration file:
  invalid, it is logged and nothing changes; unchanged (logrotate's daily
  SIGHUP), nothing more happens, so in-process caches survive; changed, the
  workers are replaced one at a time, each successor answering before its
  predecessor gets SIGTERM, so the port never stops answering; the reload is
  complete (logged, ``READY=1``) once every predecessor has exited. A worker
  of the new configuration that cannot start abandons the reload. Every
  setting takes effect except those baked into the bound sockets
  (:data:`LISTENER_KEYS`): a change there is logged and needs a restart. A new ``workers`` count is
  applied on the sockets bound at start (with ``reuse_port``, fewer workers
  than sockets serve several each; more share them).
* **sd_notify.** ``READY=1`` once every worker answers, ``RELOADING=1`` /
  ``READY=1`` around a reload, ``STOPPING=1`` at shutdown, with ``STATUS=``
  lines; ``MAINPID`` is the supervisor. With ``WatchdogSec=`` in the unit,
  ``WATCHDOG=1`` every half interval, sent from the supervisor's loop and
  only while at least one worker is answering: a ping proves that the loop
  turns (so crashed workers get restarted and signals handled) *and* that
  the port is served; a supervisor stuck, or one left with no answering
  worker for a whole interval, is restarted by systemd.

The supervisor is a plain loop around ``poll()``: it never creates an event
loop, so a child inherits no selector, no loop and no wake-up descriptor
that it would have to tear down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import signal
import socket
import ssl
import sys
import time
from collections import deque
from dataclasses import dataclass

from mtasts_fast import __version__
from mtasts_fast.cache import create_cache
from mtasts_fast.config import Config
from mtasts_fast.errors import ConfigError
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.logs import reopen_log_file
from mtasts_fast.sdnotify import Notifier
from mtasts_fast.server import (
    UnixSocketFile,
    bind_tcp,
    bind_unix,
    format_address,
    resolve_listen_address,
)
from mtasts_fast.worker import (
    READY_BYTE,
    WORKER_EXIT_CONFIG,
    WORKER_EXIT_FATAL,
    run_worker,
)

__all__ = [
    "LISTENER_KEYS",
    "RESTART_DELAY_MAX",
    "RESTART_DELAY_MIN",
    "STABLE_AFTER",
    "START_TIMEOUT",
    "STOP_MARGIN",
    "WORKER_EXIT_CONFIG",
    "WORKER_EXIT_FATAL",
    "Listeners",
    "Supervisor",
    "check_config",
    "make_fetcher",
]

_log = logging.getLogger("mtasts_fast.workers")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

#: Seconds before the first restart of a crashed worker.
RESTART_DELAY_MIN = 0.1
#: Longest delay between restarts of a worker that keeps crashing.
RESTART_DELAY_MAX = 30.0
#: A worker that ran this long before it died is restarted after the shortest
#: delay again: it was not crashing in a loop.
STABLE_AFTER = 10.0
#: A worker that has not answered after this many seconds is killed.
START_TIMEOUT = 30.0
#: Seconds granted on top of ``shutdown_timeout`` before a stopping worker is
#: killed: the worker cuts its connections at ``shutdown_timeout`` and then
#: still closes its cache and sessions.
STOP_MARGIN = 2.0

#: Settings fixed when the sockets are bound; a reload cannot change them.
LISTENER_KEYS = ("host", "port", "path", "mode", "owner", "group", "reuse_port", "backlog")

_SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


# -- configuration checks the supervisor runs before it forks -----------------------------


def make_fetcher(config: Config) -> PolicyFetcher:
    """A fetcher with the CA bundle loaded, not started; ConfigError if unusable.

    Built in the supervisor, before the privilege drop (a CA file only root
    can read still works) and before the fork; each worker starts its own
    copy's resolver and HTTP session inside its own event loop.
    """
    try:
        return PolicyFetcher(nameservers=config.nameservers, ca_file=config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            config.filename, "ca_file", f"cannot load {config.ca_file}: {exc}"
        ) from exc
    except ValueError as exc:
        raise ConfigError(config.filename, "nameservers", str(exc)) from exc


def check_config(config: Config) -> None:
    """Raise ConfigError for what validation alone cannot see (cache backend library).

    The backend object is built and dropped again: it is never set up here,
    and each worker builds and opens its own after the fork. Building it also
    imports its module while the supervisor can still read every file.
    """
    cache = create_cache(config.cache, config.filename)
    del cache


def _ca_stamp(config: Config) -> tuple[int, int, int] | None:
    """Identifies the CA file's contents, so a reload notices a replaced bundle."""
    if config.ca_file is None:
        return None
    try:
        st = os.stat(config.ca_file)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


# -- listening sockets --------------------------------------------------------------------------


class Listeners:
    """The listening sockets, bound once by the supervisor and shared with the workers.

    ``groups[i]`` holds one socket per listen address (``localhost`` may give
    an IPv4 and an IPv6 one); a worker serves one or more whole groups.
    """

    def __init__(
        self, groups: list[list[socket.socket]], unix_file: UnixSocketFile | None = None
    ) -> None:
        self.groups = groups
        self.unix_file = unix_file

    @classmethod
    def bind(cls, config: Config) -> Listeners:
        """Bind what ``config`` asks for; ListenError with the reason on failure."""
        if config.path:
            sock, unix_file = bind_unix(config)
            return cls([[sock]], unix_file)
        infos = resolve_listen_address(config.host, config.port)
        # SO_REUSEPORT: a socket per worker, the kernel balances between them.
        # Without it, one socket all workers accept on.
        count = config.workers if config.reuse_port else 1
        groups: list[list[socket.socket]] = []
        try:
            for _ in range(count):
                groups.append(bind_tcp(config, infos))
        except BaseException:
            for group in groups:
                for sock in group:
                    sock.close()
            raise
        return cls(groups)

    def groups_for(self, slot: int, workers: int) -> tuple[int, ...]:
        """The groups worker ``slot`` of ``workers`` serves: every group gets a worker."""
        count = len(self.groups)
        if workers >= count:
            return (slot % count,)
        return tuple(range(slot, count, workers))

    def sockets(self, groups: tuple[int, ...]) -> list[socket.socket]:
        return [sock for index in groups for sock in self.groups[index]]

    def describe(self) -> str:
        seen: list[str] = []
        for group in self.groups:
            for sock in group:
                text = format_address(sock.getsockname())
                if text not in seen:
                    seen.append(text)
        return ", ".join(seen)

    def close(self) -> None:
        """Close every socket; remove the unix socket file if it is still ours."""
        for group in self.groups:
            for sock in group:
                sock.close()
        if self.unix_file is not None:
            self.unix_file.remove()
            self.unix_file = None


# -- the supervisor -------------------------------------------------------------------------


@dataclass(eq=False)
class _Generation:
    """One configuration and everything the supervisor built from it."""

    number: int
    config: Config
    fetcher: PolicyFetcher
    ca_stamp: tuple[int, int, int] | None


@dataclass(eq=False)
class _Worker:
    slot: int
    gen: _Generation
    pid: int
    groups: tuple[int, ...]
    started: float
    ready_fd: int | None
    ready: bool = False
    retiring: bool = False  # replaced or scaled away; SIGTERM sent
    kill_at: float | None = None
    start_timed_out: bool = False

    @property
    def name(self) -> str:
        return f"worker {self.slot + 1} (pid {self.pid})"


class Supervisor:
    """Runs, restarts, reloads and stops the workers; :meth:`run` returns the exit code."""

    def __init__(
        self,
        config: Config,
        fetcher: PolicyFetcher,
        listeners: Listeners,
        *,
        config_path: str,
        use_uvloop: bool = True,
        notifier: Notifier | None = None,
    ) -> None:
        self._listeners = listeners
        self._config_path = config_path
        self._use_uvloop = use_uvloop
        self._notifier = notifier if notifier is not None else Notifier()
        self._gen = _Generation(1, config, fetcher, _ca_stamp(config))
        self._previous: _Generation | None = None  # while a reload is under way
        self._workers: dict[int, _Worker] = {}  # by pid
        self._by_fd: dict[int, _Worker] = {}  # by ready-pipe descriptor
        self._restart_at: dict[int, float] = {}  # slot → monotonic time
        self._next_delay: dict[int, float] = {}  # slot → backoff
        self._signals: deque[int] = deque()
        self._poll = select.poll()
        self._wake_r = self._wake_w = -1
        # Workers watch the read end: EOF means the supervisor is gone (even
        # after kill -9), and orphaned workers must not hold the port forever.
        self._life_r = self._life_w = -1
        self._announced = False
        self._reloading = False
        self._reload_again = False
        self._stopping = False
        self._stop_signalled = False
        self._stop_deadline = 0.0
        self._killed_all = False
        self._exit_code = EXIT_OK
        self._done = False
        self._watchdog_due = 0.0  # monotonic time of the next WATCHDOG=1

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        try:
            self._reconcile()
            while not self._done:
                self._wait(self._timeout())
                self._handle_signals()
                if self._done:
                    break
                self._reap()
                self._check_timers()
                self._reconcile()
                self._feed_watchdog()
        finally:
            self._uninstall_signals()
            self._notifier.close()
        return self._exit_code

    def _install_signals(self) -> None:
        self._life_r, self._life_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # The C-level handler writes to the pipe, so poll() wakes up; the
        # Python-level one only queues the number for the main loop.
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in _SUPERVISOR_SIGNALS:
            signal.signal(signum, self._on_signal)
        self._poll.register(self._wake_r, select.POLLIN)

    def _uninstall_signals(self) -> None:
        for signum in _SUPERVISOR_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w, self._life_r, self._life_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        for fd in list(self._by_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._by_fd.clear()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _timeout(self) -> float:
        now = time.monotonic()
        due = [now + 1.0]
        due.extend(self._restart_at.values())
        for worker in self._workers.values():
            if worker.kill_at is not None:
                due.append(worker.kill_at)
            if not (worker.ready or worker.retiring or worker.start_timed_out or self._stopping):
                due.append(worker.started + START_TIMEOUT)
        if self._stopping:
            due.append(self._stop_deadline)
        elif self._notifier.watchdog_interval is not None and self._watchdog_due > now:
            # An overdue ping waits for a worker to answer: that event (its
            # ready pipe) wakes poll() anyway, so no timer is needed for it.
            due.append(self._watchdog_due)
        return max(0.0, min(due) - now)

    def _wait(self, timeout: float) -> None:
        for fd, _ in self._poll.poll(int(timeout * 1000) + 1):
            if fd == self._wake_r:
                with contextlib.suppress(OSError):
                    while os.read(fd, 256):
                        pass
            else:
                worker = self._by_fd.get(fd)
                if worker is not None:
                    self._read_pipe(worker)

    # -- worker processes -------------------------------------------------------------------

    def _spawn(self, slot: int, gen: _Generation) -> _Worker:
        groups = self._listeners.groups_for(slot, gen.config.workers)
        ready_r, ready_w = os.pipe()
        # Signals stay blocked across fork(): a SIGTERM sent to a brand-new
        # worker must not run the supervisor's handler in the child and be lost.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ready_r)
            os.close(ready_w)
            raise
        if pid == 0:  # the worker: never return into the supervisor's code
            code = EXIT_FAILURE
            try:
                os.close(ready_r)
                self._become_worker(groups, ready_w)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                code = run_worker(
                    slot + 1,
                    gen.config,
                    gen.fetcher,
                    self._listeners.sockets(groups),
                    ready_w,
                    self._life_r,
                    use_uvloop=self._use_uvloop,
                )
            except BaseException:
                with contextlib.suppress(BaseException):
                    _log.exception("worker %d failed", slot + 1)
            finally:
                _flush_logs()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        worker = _Worker(slot, gen, pid, groups, time.monotonic(), ready_r)
        self._workers[pid] = worker
        self._by_fd[ready_r] = worker
        self._poll.register(ready_r, select.POLLIN)
        _log.info("worker %d started (pid %d)", slot + 1, pid)
        return worker

    def _become_worker(self, groups: tuple[int, ...], ready_w: int) -> None:
        """In the child, before any event loop: drop what belongs to the supervisor."""
        # A signal the supervisor had received but not yet handled when it
        # forked is still flagged in the child's copy of the interpreter;
        # once the handlers below are reset, CPython reports it as "ignored
        # due to race condition" with a traceback. The supervisor handles its
        # own copy, so the child's is rightly dropped, quietly.
        sys.unraisablehook = _quiet_inherited_signal
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Ctrl-C goes to the whole process group; the supervisor handles it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Until the worker's loop handles it (log reopen), SIGHUP must not kill.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for fd in (self._wake_r, self._wake_w, self._life_w, *self._by_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        mine = {sock.fileno() for sock in self._listeners.sockets(groups)}
        for group in self._listeners.groups:
            for sock in group:
                if sock.fileno() not in mine:
                    sock.close()
        self._notifier.close()

    def _read_pipe(self, worker: _Worker) -> None:
        fd = worker.ready_fd
        if fd is None:
            return
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if READY_BYTE in data and not worker.ready and not worker.retiring:
            worker.ready = True
            _log.info(
                "%s answering (configuration %d, up in %.2f s)",
                worker.name,
                worker.gen.number,
                time.monotonic() - worker.started,
            )
        # One byte is all a worker ever writes; after it (or EOF) the pipe is done.
        self._close_pipe(worker)

    def _close_pipe(self, worker: _Worker) -> None:
        fd, worker.ready_fd = worker.ready_fd, None
        if fd is None:
            return
        self._by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _reap(self) -> None:
        # Only our workers, by pid: waitpid(-1) would also collect children
        # that are not ours when main() runs inside another program.
        for pid in list(self._workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            worker = self._workers.pop(pid)
            if worker.ready_fd is not None:
                self._read_pipe(worker)  # it may have said "ready" just before it died
                self._close_pipe(worker)
            self._on_exit(worker, os.waitstatus_to_exitcode(status))

    def _on_exit(self, worker: _Worker, code: int) -> None:
        now = time.monotonic()
        how = _describe_exit(code)
        if self._stopping or worker.retiring:
            if code == 0:
                _log.info("%s stopped", worker.name)
            else:
                _log.warning("%s stopped: %s", worker.name, how)
            return
        cannot_start = not worker.ready and (
            code in (WORKER_EXIT_CONFIG, WORKER_EXIT_FATAL) or worker.start_timed_out
        )
        if cannot_start and self._reloading and worker.gen is self._gen and not self._any_ready():
            self._abort_reload(worker, how)
            return
        if cannot_start and not worker.start_timed_out:
            _log.critical("%s could not start (%s); stopping", worker.name, how)
            self._begin_stop(EXIT_CONFIG if code == WORKER_EXIT_CONFIG else EXIT_FAILURE)
            return
        if worker.gen is not self._gen:
            _log.error("%s died (%s); not restarted: the reload replaces it", worker.name, how)
            return
        uptime = now - worker.started
        slot = worker.slot
        if uptime >= STABLE_AFTER:
            delay = RESTART_DELAY_MIN
        else:
            delay = self._next_delay.get(slot, RESTART_DELAY_MIN)
        self._next_delay[slot] = min(delay * 2, RESTART_DELAY_MAX)
        self._restart_at[slot] = now + delay
        _log.error(
            "%s died (%s) after %.1f s; restarting in %.1f s", worker.name, how, uptime, delay
        )

    def _any_ready(self) -> bool:
        return any(w.ready and w.gen is self._gen for w in self._workers.values())

    def _retire(self, worker: _Worker, why: str) -> None:
        worker.retiring = True
        worker.kill_at = time.monotonic() + worker.gen.config.shutdown_timeout + STOP_MARGIN
        _log.info("%s %s; stopping it", worker.name, why)
        self._kill(worker, signal.SIGTERM)

    @staticmethod
    def _kill(worker: _Worker, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signum)

    def _check_timers(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if worker.kill_at is not None and now >= worker.kill_at:
                _log.warning("%s did not stop in time; killing it", worker.name)
                worker.kill_at = None
                self._kill(worker, signal.SIGKILL)
            elif (
                not worker.ready
                and not worker.retiring
                and not worker.start_timed_out
                and not self._stopping
                and now - worker.started >= START_TIMEOUT
            ):
                _log.error("%s not answering after %.0f s; killing it", worker.name, START_TIMEOUT)
                worker.start_timed_out = True
                self._kill(worker, signal.SIGKILL)
        if self._stopping and now >= self._stop_deadline:
            if self._workers:
                _log.warning("killing %d worker(s) that did not stop in time", len(self._workers))
            for worker in self._workers.values():
                self._kill(worker, signal.SIGKILL)
            # SIGKILLed processes are reaped on the next turns; do not wait
            # forever for one stuck in the kernel.
            if not self._workers or self._killed_all:
                self._done = True
            self._killed_all = True
            self._stop_deadline = now + 5.0

    def _reconcile(self) -> None:
        """Start what is missing, retire what has been replaced, announce readiness."""
        if self._stopping:
            if not self._workers:
                self._done = True
            return
        now = time.monotonic()
        gen = self._gen
        wanted = gen.config.workers
        live = [w for w in self._workers.values() if not w.retiring]
        current = {w.slot: w for w in live if w.gen is gen}
        old = [w for w in live if w.gen is not gen]
        starting = any(not w.ready for w in current.values())
        for slot in range(wanted):
            if slot in current:
                continue
            due = self._restart_at.get(slot)
            if due is not None and due > now:
                continue
            if old and starting:
                break  # a reload replaces one worker at a time
            self._restart_at.pop(slot, None)
            try:
                current[slot] = self._spawn(slot, gen)
            except OSError as exc:  # fork() or pipe(): out of processes or descriptors
                delay = self._next_delay.get(slot, RESTART_DELAY_MIN)
                self._next_delay[slot] = min(delay * 2, RESTART_DELAY_MAX)
                self._restart_at[slot] = now + delay
                _log.error("cannot start worker %d: %s; retrying in %.1f s", slot + 1, exc, delay)
                continue
            starting = True
        if old:
            self._retire_replaced(current, old)
            old = [w for w in old if not w.retiring]
        if old or len(current) < wanted or not all(w.ready for w in current.values()):
            return
        plural = "s" if wanted != 1 else ""
        status = f"{wanted} worker{plural} answering on {self._listeners.describe()}"
        if not self._announced:
            self._announced = True
            _log.info("mtasts-fast %s: %s", __version__, status)
            self._notifier.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        if self._reloading:
            if any(w.gen is not gen for w in self._workers.values()):
                return  # a predecessor still accepts or owes replies: not done yet
            self._reloading = False
            self._previous = None
            _log.info("reloaded %s: %s", self._config_path, status)
            self._notifier.notify("READY=1", f"STATUS={status}")
            if self._reload_again:
                self._reload_again = False
                self._reload()

    def _feed_watchdog(self) -> None:
        """Send ``WATCHDOG=1`` at half systemd's interval while the service is healthy.

        Half the interval, as sd_watchdog_enabled(3) recommends, leaves a
        whole half for a late turn of the loop. Healthy means: READY=1 has
        been sent, no stop is under way, and a worker that said it answers is
        still alive (a retiring one still serves, but its successor is what
        counts). A dead worker is normally back within a second, well inside
        any sensible ``WatchdogSec=``; a supervisor that cannot get one
        answering for a whole interval is better restarted by systemd.
        """
        interval = self._notifier.watchdog_interval
        if interval is None or not self._announced or self._stopping:
            return
        now = time.monotonic()
        if now < self._watchdog_due:
            return
        if not any(w.ready and not w.retiring for w in self._workers.values()):
            return
        self._notifier.watchdog()
        self._watchdog_due = now + interval / 2

    def _retire_replaced(self, current: dict[int, _Worker], old: list[_Worker]) -> None:
        wanted = self._gen.config.workers
        all_ready = len(current) == wanted and all(w.ready for w in current.values())
        for worker in sorted(old, key=lambda w: w.slot):
            if not all_ready:
                successor = current.get(worker.slot)
                if successor is None or not successor.ready:
                    continue
                # Retire it only once every socket it serves has another
                # worker answering on it (the counts may differ after a reload).
                served = {
                    group
                    for other in self._workers.values()
                    if other is not worker and other.ready and not other.retiring
                    for group in other.groups
                }
                if not set(worker.groups) <= served:
                    continue
            self._retire(worker, "replaced")

    # -- signals ----------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum == signal.SIGHUP:
                self._on_hup()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                name = signal.Signals(signum).name
                if not self._stopping:
                    self._stop_signalled = True
                    _log.warning(
                        "got %s, stopping gracefully (a second signal stops at once)", name
                    )
                    self._begin_stop(EXIT_OK)
                else:
                    again = "again" if self._stop_signalled else "while stopping"
                    _log.warning("got %s %s, exiting now", name, again)
                    for worker in self._workers.values():
                        self._kill(worker, signal.SIGKILL)
                    self._exit_code = EXIT_FAILURE
                    self._done = True
                    return

    def _begin_stop(self, code: int) -> None:
        self._stopping = True
        self._exit_code = code
        self._restart_at.clear()
        self._notifier.notify("STOPPING=1", "STATUS=stopping")
        timeouts = [w.gen.config.shutdown_timeout for w in self._workers.values()]
        self._stop_deadline = time.monotonic() + max(timeouts, default=0.0) + STOP_MARGIN
        for worker in self._workers.values():
            if not worker.retiring:
                self._kill(worker, signal.SIGTERM)

    def _on_hup(self) -> None:
        for problem in reopen_log_file():
            _log.error("%s", problem)
        for worker in self._workers.values():
            if not worker.retiring:
                self._kill(worker, signal.SIGHUP)
        if self._stopping:
            return
        if self._reloading:
            _log.info("SIGHUP: log file reopened; a reload is under way, reloading again after it")
            self._reload_again = True
            return
        _log.info("SIGHUP: log file reopened; reading %s", self._config_path)
        self._reload()

    # -- reload -----------------------------------------------------------------------------

    def _reload(self) -> None:
        running = self._gen.config
        try:
            config = Config.from_yaml(self._config_path)
        except ConfigError as exc:
            _log.error("%s; keeping the running configuration", exc)
            return
        changed = [key for key in LISTENER_KEYS if getattr(config, key) != getattr(running, key)]
        if changed:
            _log.warning(
                "%s: %s changed: the listening sockets stay as they are until a restart "
                "(answering on %s)",
                self._config_path,
                ", ".join(changed),
                self._listeners.describe(),
            )
            config = dataclasses.replace(config, **{k: getattr(running, k) for k in LISTENER_KEYS})
        stamp = _ca_stamp(config)
        if config == running and stamp == self._gen.ca_stamp:
            _log.info("configuration unchanged; workers keep running")
            return
        try:
            fetcher = make_fetcher(config)
            check_config(config)
        except ConfigError as exc:
            _log.error("%s; keeping the running configuration", exc)
            return
        if config.workers != running.workers:
            _log.info("workers: %d -> %d", running.workers, config.workers)
            sockets = len(self._listeners.groups)
            if config.reuse_port and not config.path and config.workers != sockets:
                _log.info(
                    "the %d SO_REUSEPORT socket(s) bound at start are shared by %d workers; "
                    "restart to bind one per worker",
                    sockets,
                    config.workers,
                )
        self._notifier.notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading"
        )
        self._previous = self._gen
        self._gen = _Generation(self._gen.number + 1, config, fetcher, stamp)
        self._reloading = True
        self._restart_at.clear()
        self._next_delay.clear()
        _log.info("configuration %d loaded; replacing the workers one at a time", self._gen.number)

    def _abort_reload(self, worker: _Worker, how: str) -> None:
        assert self._previous is not None
        _log.error(
            "%s could not start with the new configuration (%s); keeping the running configuration",
            worker.name,
            how,
        )
        failed, self._gen, self._previous = self._gen, self._previous, None
        for other in list(self._workers.values()):
            if other.gen is failed and not other.retiring:
                self._retire(other, "belongs to the abandoned configuration")
        self._reloading = False
        self._restart_at.clear()
        self._notifier.notify("READY=1", "STATUS=reload failed; running the previous configuration")
        if self._reload_again:  # the file may have been fixed since
            self._reload_again = False
            self._reload()


def _quiet_inherited_signal(unraisable: sys.UnraisableHookArgs) -> None:
    exc = unraisable.exc_value
    if isinstance(exc, OSError) and "ignored due to race condition" in str(exc):
        _log.debug("worker: dropped a signal meant for the supervisor: %s", exc)
        return
    sys.__unraisablehook__(unraisable)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by signal {name}"
    meaning = {
        WORKER_EXIT_CONFIG: " (configuration error)",
        WORKER_EXIT_FATAL: " (fatal start-up error)",
    }
    return f"exit status {code}{meaning.get(code, '')}"


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
