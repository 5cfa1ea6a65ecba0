"""Minimal systemd notification client (sd_notify(3)) for ``Type=notify`` units.

Besides the state lines (``READY=1``, ``RELOADING=1``, ``STOPPING=1``,
``STATUS=``), it knows whether systemd's watchdog is on for this process
(``WatchdogSec=`` in the unit): sd_watchdog_enabled(3) semantics, i.e.
``$WATCHDOG_USEC`` holds the interval in microseconds and ``$WATCHDOG_PID``,
when set, names the one process that must send ``WATCHDOG=1``. Deciding
*when* the service is healthy enough to send it is the supervisor's job.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]

_log = logging.getLogger(__name__)


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """systemd's watchdog timeout for process ``pid`` in seconds, or None when off.

    Follows sd_watchdog_enabled(3): the watchdog is on when ``WATCHDOG_USEC``
    is a positive integer and ``WATCHDOG_PID`` is unset or equal to ``pid``
    (default: this process). A ``WATCHDOG_PID`` of another process means the
    variables were inherited from a parent that owns the watchdog, so this
    process must stay quiet; an unparsable value is treated as "off", as
    libsystemd does.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw.isdigit():  # also rejects "", "-1" and "+5"
        return None
    usec = int(raw)
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner:
        if not owner.isdigit():
            return None
        if int(owner) != (os.getpid() if pid is None else pid):
            return None
    return usec / 1_000_000


class Notifier:
    """Sends ``KEY=VALUE`` datagrams to ``$NOTIFY_SOCKET``; silent when unset.

    Send errors are logged at debug level and otherwise ignored: a missing
    supervisor must never stop the daemon from serving.
    """

    def __init__(
        self, address: str | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        if address is None:
            address = env.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        #: systemd's watchdog timeout in seconds (None: no watchdog). Only
        #: meaningful with a notify socket to send ``WATCHDOG=1`` to.
        self.watchdog_interval: float | None = None
        # Monotonic time of the next WATCHDOG=1 (feed_watchdog).
        self.watchdog_due = 0.0
        if not address:
            return
        if address.startswith("@"):
            # Abstract namespace socket (systemd's default in containers).
            address = "\0" + address[1:]
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        except OSError as exc:
            _log.debug("cannot create notify socket: %s", exc)
            return
        self._address = address
        self.watchdog_interval = watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            _log.debug("sd_notify failed: %s", exc)

    def watchdog(self) -> None:
        """Tell systemd the service is alive (resets the ``WatchdogSec=`` timer)."""
        self.notify("WATCHDOG=1")

    def feed_watchdog(self, now: float) -> None:
        """Send ``WATCHDOG=1`` if one is due at monotonic time ``now``.

        The next is due half an interval later, as sd_watchdog_enabled(3)
        recommends: that leaves a whole half for a late turn of the loop.
        """
        interval = self.watchdog_interval
        if interval is None or now < self.watchdog_due:
            return
        self.watchdog()
        self.watchdog_due = now + interval / 2

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
