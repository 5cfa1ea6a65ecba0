"""The supervisor and its worker processes (DESIGN.md §2): the public names, in one place.

The supervisor is the ``mta-sts-daemon`` process. It binds the listening
sockets while it may still be root, writes the pidfile, drops privileges and
then forks ``workers`` worker processes, which do all the serving. Each part
lives in the module named for it:

* :mod:`mtasts_fast.prefork` — what is built and checked from a configuration
  before a worker is forked on it (:func:`make_fetcher`, :func:`check_config`);
* :mod:`mtasts_fast.listeners` — the sockets bound once and shared
  (:class:`Listeners`);
* :mod:`mtasts_fast.supervisor` — the loop that starts, restarts, reloads and
  stops the workers, and feeds systemd's watchdog (:class:`Supervisor`);
* :mod:`mtasts_fast.worker_processes` — forking a worker, its ready pipe,
  reaping it;
* :mod:`mtasts_fast.reload` — reading the configuration again on SIGHUP
  (:data:`LISTENER_KEYS`);
* :mod:`mtasts_fast.worker` — what runs inside a worker.

The daemon and the tests import these names from here, so the layout behind
them can change without touching them. Patch a constant or function in the
module that reads it, not here.
"""

from __future__ import annotations

from mtasts_fast.listeners import Listeners
from mtasts_fast.prefork import check_config, make_fetcher
from mtasts_fast.reload import LISTENER_KEYS
from mtasts_fast.supervisor import (
    RESTART_DELAY_MAX,
    RESTART_DELAY_MIN,
    STABLE_AFTER,
    START_TIMEOUT,
    STOP_MARGIN,
    Supervisor,
)
from mtasts_fast.worker import WORKER_EXIT_CONFIG, WORKER_EXIT_FATAL

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
