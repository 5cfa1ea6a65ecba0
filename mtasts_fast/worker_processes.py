"""The supervisor's worker processes: fork, ready pipe, reaping, signals.

:class:`WorkerProcesses` forks a worker onto its share of the listening
sockets, learns from its ready pipe when it answers, collects it when it
exits and tells how it ended; *when* to start, stop or replace one is the
supervisor's decision (supervisor.py).

Each worker starts a fresh event loop (worker.py), then opens the cache and
the fetcher's DNS resolver and HTTP session itself: an LMDB environment or a
database connection must never cross a fork. It tells the supervisor it is
answering by writing one byte to a pipe. It ignores SIGINT (Ctrl-C in a
terminal reaches the whole process group; the supervisor decides), stops
gracefully on SIGTERM and reopens its log file on SIGHUP.

Each worker start gets a shared region for its counters (metrics/region.py),
mapped here just before the fork; the worker unmaps the other workers'
regions and closes the metrics endpoint's sockets it inherited.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mtasts_fast.heap import fork_sharing_heap
from mtasts_fast.listeners import Listeners
from mtasts_fast.metrics.collector import Collector
from mtasts_fast.metrics.region import Region
from mtasts_fast.reload import Generation
from mtasts_fast.sdnotify import Notifier
from mtasts_fast.worker import (
    READY_BYTE,
    WORKER_EXIT_CONFIG,
    WORKER_EXIT_FATAL,
    run_worker,
)

__all__ = ["SUPERVISOR_SIGNALS", "WorkerProcess", "WorkerProcesses", "describe_exit"]

# The supervisor's messages keep one logger name, whichever module sends them.
_log = logging.getLogger("mtasts_fast.workers")

#: The signals the supervisor handles; they stay blocked across fork().
SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

# The exit code of a worker whose start-up code raised.
_EXIT_FAILURE = 1


@dataclass(eq=False)
class WorkerProcess:
    """One forked worker, as the supervisor sees it."""

    slot: int
    gen: Generation
    pid: int
    groups: tuple[int, ...]
    started: float
    ready_fd: int | None
    ready: bool = False
    retiring: bool = False  # replaced or scaled away; SIGTERM sent
    kill_at: float | None = None
    start_timed_out: bool = False
    region: Region | None = None  # its counters; unmapped when it has been reaped

    @property
    def name(self) -> str:
        return f"worker {self.slot + 1} (pid {self.pid})"

    def kill(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


class WorkerProcesses:
    """The supervisor's worker processes, by pid, and the pipes it shares with them.

    The ready pipes are registered on the supervisor's ``poll`` object, which
    hands their events back to :meth:`read_ready`.
    """

    def __init__(
        self,
        listeners: Listeners,
        poll: select.poll,
        notifier: Notifier,
        *,
        use_uvloop: bool,
        metrics: Collector,
    ) -> None:
        self.by_pid: dict[int, WorkerProcess] = {}
        self._by_fd: dict[int, WorkerProcess] = {}  # by ready-pipe descriptor
        self._listeners = listeners
        self._poll = poll
        self._notifier = notifier
        self._use_uvloop = use_uvloop
        self._metrics = metrics
        #: Called in a new worker before it runs: closes what belongs to the
        #: supervisor alone (the metrics endpoint's sockets).
        self.in_child: list[Callable[[], None]] = []
        self._supervisor_fds: tuple[int, ...] = ()
        # Workers watch the read end: EOF means the supervisor is gone (even
        # after kill -9), and orphaned workers must not hold the port forever.
        self._life_r = self._life_w = -1

    def open(self, supervisor_fds: tuple[int, ...]) -> None:
        """Create the life pipe; ``supervisor_fds`` are closed in every worker."""
        self._life_r, self._life_w = os.pipe()
        self._supervisor_fds = supervisor_fds

    def close(self) -> None:
        """Close the life pipe and every ready pipe still open."""
        for fd in (self._life_r, self._life_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        for fd in list(self._by_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._by_fd.clear()

    def spawn(self, slot: int, gen: Generation) -> WorkerProcess:
        """Fork worker ``slot`` of ``gen``; OSError if fork() or pipe() fails."""
        groups = self._listeners.groups_for(slot, gen.config.workers)
        region = self._metrics.new_region(gen.config)
        try:
            ready_r, ready_w = os.pipe()
        except BaseException:
            region.close()
            raise
        # Signals stay blocked across fork(): a SIGTERM sent to a brand-new
        # worker must not run the supervisor's handler in the child and be lost.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        try:
            # Garbage collected and the heap trimmed first (the child would hold
            # what the heap has freed as its own memory), the objects inherited
            # left shared with the supervisor (heap.py).
            pid = fork_sharing_heap()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ready_r)
            os.close(ready_w)
            region.close()
            raise
        if pid == 0:  # the worker: never return into the supervisor's code
            code = _EXIT_FAILURE
            try:
                os.close(ready_r)
                self._become_worker(groups, ready_w, region)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                code = run_worker(
                    slot + 1,
                    gen.config,
                    gen.fetcher,
                    self._listeners.sockets(groups),
                    ready_w,
                    self._life_r,
                    use_uvloop=self._use_uvloop,
                    cache=gen.cache,
                    overrides=gen.overrides,
                    region=region,
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
        worker = WorkerProcess(slot, gen, pid, groups, time.monotonic(), ready_r, region=region)
        self.by_pid[pid] = worker
        self._by_fd[ready_r] = worker
        self._poll.register(ready_r, select.POLLIN)
        _log.info("worker %d started (pid %d)", slot + 1, pid, extra={"event": "worker-started"})
        return worker

    def _become_worker(self, groups: tuple[int, ...], ready_w: int, region: Region) -> None:
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
        for fd in (*self._supervisor_fds, self._life_w, *self._by_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        # The other workers' counters are theirs to write and the supervisor's
        # to read; this worker unmaps them (its own copy of the mappings only).
        for other in self.by_pid.values():
            if other.region is not None and other.region is not region:
                other.region.close()
        for forget in self.in_child:
            forget()
        mine = {sock.fileno() for sock in self._listeners.sockets(groups)}
        for group in self._listeners.groups:
            for sock in group:
                if sock.fileno() not in mine:
                    sock.close()
        self._notifier.close()

    def read_ready(self, fd: int) -> None:
        """Handle an event on ready pipe ``fd`` (from the supervisor's poll())."""
        worker = self._by_fd.get(fd)
        if worker is not None:
            self._read_pipe(worker)

    def _read_pipe(self, worker: WorkerProcess) -> None:
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
                extra={"event": "worker-answering"},
            )
        # One byte is all a worker ever writes; after it (or EOF) the pipe is done.
        self._close_pipe(worker)

    def _close_pipe(self, worker: WorkerProcess) -> None:
        fd, worker.ready_fd = worker.ready_fd, None
        if fd is None:
            return
        self._by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def reap(self) -> Iterator[tuple[WorkerProcess, int]]:
        """Collect the workers that exited: ``(worker, exit code)`` for each.

        A generator, so the caller handles one exit before the next worker
        is collected (and its ready pipe read).
        """
        # Only our workers, by pid: waitpid(-1) would also collect children
        # that are not ours when main() runs inside another program.
        for pid in list(self.by_pid):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            worker = self.by_pid.pop(pid)
            if worker.ready_fd is not None:
                self._read_pipe(worker)  # it may have said "ready" just before it died
                self._close_pipe(worker)
            yield worker, os.waitstatus_to_exitcode(status)


def describe_exit(code: int) -> str:
    """How a worker ended, from its exit code (negative: the signal that killed it)."""
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


def _quiet_inherited_signal(unraisable: sys.UnraisableHookArgs) -> None:
    exc = unraisable.exc_value
    if isinstance(exc, OSError) and "ignored due to race condition" in str(exc):
        _log.debug("worker: dropped a signal meant for the supervisor: %s", exc)
        return
    sys.__unraisablehook__(unraisable)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
