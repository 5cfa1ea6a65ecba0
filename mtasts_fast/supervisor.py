"""The supervisor: starts, restarts, reloads and stops the workers (DESIGN.md §2).

The supervisor is the ``mta-sts-daemon`` process. It binds the listening
sockets (listeners.py) while it may still be root, writes the pidfile, drops
privileges and then forks ``workers`` worker processes (worker_processes.py),
which do all the serving. :class:`Supervisor` decides what happens to them:

* **Crashes.** A worker that dies is restarted after 0.1 s; while it keeps
  dying within 10 s of its start the delay doubles, up to 30 s. A worker
  that cannot start at all (exit code :data:`WORKER_EXIT_CONFIG` or
  :data:`WORKER_EXIT_FATAL` before it answered) would fail the same way
  forever: the supervisor stops everything and exits 2 or 1.
* **SIGTERM / SIGINT.** Workers get SIGTERM and ``shutdown_timeout`` (plus
  :data:`STOP_MARGIN`) to send the replies they owe, then SIGKILL; exit 0.
  A second signal kills them at once; exit 1.
* **SIGHUP.** Log files reopened, the configuration re-read and, if it
  changed, the workers replaced one at a time (reload.py).
* **sd_notify.** ``READY=1`` once every worker answers, ``RELOADING=1`` /
  ``READY=1`` around a reload, ``STOPPING=1`` at shutdown, with ``STATUS=``
  lines; ``MAINPID`` is the supervisor. With ``WatchdogSec=`` in the unit,
  ``WATCHDOG=1`` every half interval, sent from the supervisor's loop and
  only while at least one worker is answering: a ping proves that the loop
  turns (so crashed workers get restarted and signals handled) *and* that
  the port is served; a supervisor stuck, or one left with no answering
  worker for a whole interval, is restarted by systemd.
* **Metrics.** Every worker start gets a shared region for its counters;
  a reaped worker's counts are folded into the totals (metrics/collector.py).
  With ``metrics:`` set, ``/metrics`` and ``/healthz`` are served from this
  loop (metrics/http.py).

The supervisor is a plain loop around ``poll()``: it never creates an event
loop (nor a thread), so a child inherits no selector, no loop and no wake-up
descriptor that it would have to tear down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections import deque

from mtasts_fast import __version__
from mtasts_fast.cache.internal_dir import InternalDirectory
from mtasts_fast.config import Config
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.listeners import Listeners
from mtasts_fast.logs import reopen_log_file, set_log_format
from mtasts_fast.metrics.collector import Collector
from mtasts_fast.metrics.http import MetricsHttpServer, Response
from mtasts_fast.metrics.listener import MetricsListener
from mtasts_fast.overrides import Overrides
from mtasts_fast.prefork import ca_stamp
from mtasts_fast.reload import Generation, next_generation
from mtasts_fast.sdnotify import Notifier
from mtasts_fast.worker import WORKER_EXIT_CONFIG, WORKER_EXIT_FATAL
from mtasts_fast.worker_processes import (
    SUPERVISOR_SIGNALS,
    WorkerProcess,
    WorkerProcesses,
    describe_exit,
)

__all__ = [
    "RESTART_DELAY_MAX",
    "RESTART_DELAY_MIN",
    "STABLE_AFTER",
    "START_TIMEOUT",
    "STOP_MARGIN",
    "Supervisor",
]

# The supervisor's messages keep one logger name, whichever module sends them.
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
        internal: InternalDirectory | None = None,
        overrides: Overrides | None = None,
        metrics_listener: MetricsListener | None = None,
    ) -> None:
        """OSError if the ``internal`` cache's directory cannot be created."""
        self._listeners = listeners
        self._config_path = config_path
        self._notifier = notifier if notifier is not None else Notifier()
        self._internal = internal if internal is not None else InternalDirectory()
        cache = self._internal.cache_config(config.cache)
        self._gen = Generation(1, config, fetcher, ca_stamp(config), cache, overrides)
        if overrides is not None:
            _log.info("policy overrides: %d entries in %s", len(overrides), overrides.filename)
        self._previous: Generation | None = None  # while a reload is under way
        self._poll = select.poll()
        self._metrics = Collector(config)
        self._workers = WorkerProcesses(
            listeners, self._poll, self._notifier, use_uvloop=use_uvloop, metrics=self._metrics
        )
        self._http: MetricsHttpServer | None = None
        if metrics_listener is not None:
            self._http = MetricsHttpServer(metrics_listener.sockets, self._poll, self._serve_http)
            self._workers.in_child.append(self._http.forget_in_child)
            _log.info("metrics on %s (/metrics, /healthz)", metrics_listener.describe())
        self._restart_at: dict[int, float] = {}  # slot → monotonic time
        self._next_delay: dict[int, float] = {}  # slot → backoff
        self._signals: deque[int] = deque()
        self._wake_r = self._wake_w = -1
        self._announced = False
        self._reloading = False
        self._reload_again = False
        self._stopping = False
        self._stop_signalled = False
        self._stop_deadline = 0.0
        self._killed_all = False
        self._exit_code = EXIT_OK
        self._done = False

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
                for worker, code in self._workers.reap():
                    self._on_exit(worker, code)
                self._check_timers()
                self._reconcile()
                self._feed_watchdog()
        finally:
            self._uninstall_signals()
            self._notifier.close()
            if self._http is not None:
                self._http.close()
        return self._exit_code

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._workers.open(supervisor_fds=(self._wake_r, self._wake_w))
        # The C-level handler writes to the pipe, so poll() wakes up; the
        # Python-level one only queues the number for the main loop.
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in SUPERVISOR_SIGNALS:
            signal.signal(signum, self._on_signal)
        self._poll.register(self._wake_r, select.POLLIN)

    def _uninstall_signals(self) -> None:
        for signum in SUPERVISOR_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._workers.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _timeout(self) -> float:
        now = time.monotonic()
        due = [now + 1.0]
        due.extend(self._restart_at.values())
        for worker in self._workers.by_pid.values():
            if worker.kill_at is not None:
                due.append(worker.kill_at)
            if not (worker.ready or worker.retiring or worker.start_timed_out or self._stopping):
                due.append(worker.started + START_TIMEOUT)
        if self._http is not None:
            deadline = self._http.next_deadline()
            if deadline is not None:
                due.append(deadline)
        if self._stopping:
            due.append(self._stop_deadline)
        elif self._notifier.watchdog_interval is not None and self._notifier.watchdog_due > now:
            # An overdue ping waits for a worker to answer: that event (its
            # ready pipe) wakes poll() anyway, so no timer is needed for it.
            due.append(self._notifier.watchdog_due)
        return max(0.0, min(due) - now)

    def _wait(self, timeout: float) -> None:
        for fd, events in self._poll.poll(int(timeout * 1000) + 1):
            if fd == self._wake_r:
                with contextlib.suppress(OSError):
                    while os.read(fd, 256):
                        pass
            elif self._http is not None and self._http.handles(fd):
                self._http.on_event(fd, events)
            else:
                self._workers.read_ready(fd)

    def _serve_http(self, path: str) -> Response:
        """A page of the metrics endpoint (metrics/http.py asks per request)."""
        return self._metrics.respond(path, self._workers.by_pid.values(), stopping=self._stopping)

    # -- worker processes -------------------------------------------------------------------

    def _on_exit(self, worker: WorkerProcess, code: int) -> None:
        now = time.monotonic()
        how = describe_exit(code)
        # Its counts join the totals now, before anything else can happen to it.
        self._metrics.worker_exited(worker.region, crashed=not (self._stopping or worker.retiring))
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
            "%s died (%s) after %.1f s; restarting in %.1f s",
            worker.name,
            how,
            uptime,
            delay,
            extra={"event": "worker-died", "reason": how},
        )

    def _any_ready(self) -> bool:
        return any(w.ready and w.gen is self._gen for w in self._workers.by_pid.values())

    def _retire(self, worker: WorkerProcess, why: str) -> None:
        worker.retiring = True
        worker.kill_at = time.monotonic() + worker.gen.config.shutdown_timeout + STOP_MARGIN
        _log.info("%s %s; stopping it", worker.name, why)
        worker.kill(signal.SIGTERM)

    def _check_timers(self) -> None:
        now = time.monotonic()
        if self._http is not None:
            self._http.expire(now)
        for worker in list(self._workers.by_pid.values()):
            if worker.kill_at is not None and now >= worker.kill_at:
                _log.warning("%s did not stop in time; killing it", worker.name)
                worker.kill_at = None
                worker.kill(signal.SIGKILL)
            elif (
                not worker.ready
                and not worker.retiring
                and not worker.start_timed_out
                and not self._stopping
                and now - worker.started >= START_TIMEOUT
            ):
                _log.error("%s not answering after %.0f s; killing it", worker.name, START_TIMEOUT)
                worker.start_timed_out = True
                worker.kill(signal.SIGKILL)
        if self._stopping and now >= self._stop_deadline:
            if self._workers.by_pid:
                _log.warning(
                    "killing %d worker(s) that did not stop in time", len(self._workers.by_pid)
                )
            for worker in self._workers.by_pid.values():
                worker.kill(signal.SIGKILL)
            # SIGKILLed processes are reaped on the next turns; do not wait
            # forever for one stuck in the kernel.
            if not self._workers.by_pid or self._killed_all:
                self._done = True
            self._killed_all = True
            self._stop_deadline = now + 5.0

    def _reconcile(self) -> None:
        """Start what is missing, retire what has been replaced, announce readiness."""
        if self._stopping:
            if not self._workers.by_pid:
                self._done = True
            return
        now = time.monotonic()
        gen = self._gen
        wanted = gen.config.workers
        live = [w for w in self._workers.by_pid.values() if not w.retiring]
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
            restart = self._restart_at.pop(slot, None) is not None
            try:
                current[slot] = self._workers.spawn(slot, gen)
            except OSError as exc:  # fork() or pipe(): out of processes or descriptors
                delay = self._next_delay.get(slot, RESTART_DELAY_MIN)
                self._next_delay[slot] = min(delay * 2, RESTART_DELAY_MAX)
                self._restart_at[slot] = now + delay
                _log.error("cannot start worker %d: %s; retrying in %.1f s", slot + 1, exc, delay)
                continue
            self._metrics.worker_started(restart=restart)
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
            if any(w.gen is not gen for w in self._workers.by_pid.values()):
                return  # a predecessor still accepts or owes replies: not done yet
            self._reloading = False
            self._previous = None
            self._metrics.reload_result("applied")
            _log.info("reloaded %s: %s", self._config_path, status)
            self._notifier.notify("READY=1", f"STATUS={status}")
            if self._reload_again:
                self._reload_again = False
                self._reload()

    def _feed_watchdog(self) -> None:
        """Feed systemd's watchdog (sdnotify.py sets the cadence) while the service is healthy.

        Healthy means: READY=1 has been sent, no stop is under way, and a
        worker that said it answers is still alive (a retiring one still
        serves, but its successor is what counts). A dead worker is normally
        back within a second, well inside any sensible ``WatchdogSec=``; a
        supervisor that cannot get one answering for a whole interval is
        better restarted by systemd.
        """
        if self._notifier.watchdog_interval is None or not self._announced or self._stopping:
            return
        if any(w.ready and not w.retiring for w in self._workers.by_pid.values()):
            self._notifier.feed_watchdog(time.monotonic())

    def _retire_replaced(self, current: dict[int, WorkerProcess], old: list[WorkerProcess]) -> None:
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
                    for other in self._workers.by_pid.values()
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
                    for worker in self._workers.by_pid.values():
                        worker.kill(signal.SIGKILL)
                    self._exit_code = EXIT_FAILURE
                    self._done = True
                    return

    def _begin_stop(self, code: int) -> None:
        self._stopping = True
        self._exit_code = code
        self._restart_at.clear()
        self._notifier.notify("STOPPING=1", "STATUS=stopping")
        timeouts = [w.gen.config.shutdown_timeout for w in self._workers.by_pid.values()]
        self._stop_deadline = time.monotonic() + max(timeouts, default=0.0) + STOP_MARGIN
        for worker in self._workers.by_pid.values():
            if not worker.retiring:
                worker.kill(signal.SIGTERM)

    def _on_hup(self) -> None:
        for problem in reopen_log_file():
            _log.error("%s", problem)
        for worker in self._workers.by_pid.values():
            if not worker.retiring:
                worker.kill(signal.SIGHUP)
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
        gen, outcome = next_generation(
            self._config_path, self._gen, self._listeners, self._internal
        )
        if gen is None:
            self._metrics.reload_result(outcome)
            return
        if gen.config.log_format != self._gen.config.log_format:
            # The workers forked from now on inherit the new format.
            set_log_format(gen.config.log_format)
        self._notifier.notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading"
        )
        self._previous = self._gen
        self._gen = gen
        self._reloading = True
        self._restart_at.clear()
        self._next_delay.clear()
        _log.info("configuration %d loaded; replacing the workers one at a time", self._gen.number)

    def _abort_reload(self, worker: WorkerProcess, how: str) -> None:
        assert self._previous is not None
        _log.error(
            "%s could not start with the new configuration (%s); keeping the running configuration",
            worker.name,
            how,
        )
        failed, self._gen, self._previous = self._gen, self._previous, None
        self._metrics.reload_result("aborted")
        if failed.config.log_format != self._gen.config.log_format:
            set_log_format(self._gen.config.log_format)
        for other in list(self._workers.by_pid.values()):
            if other.gen is failed and not other.retiring:
                self._retire(other, "belongs to the abandoned configuration")
        self._reloading = False
        self._restart_at.clear()
        self._notifier.notify("READY=1", "STATUS=reload failed; running the previous configuration")
        if self._reload_again:  # the file may have been fixed since
            self._reload_again = False
            self._reload()
