"""Minimal systemd notification client (sd_notify(3)) for ``Type=notify`` units."""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["Notifier"]

_log = logging.getLogger(__name__)


class Notifier:
    """Sends ``KEY=VALUE`` datagrams to ``$NOTIFY_SOCKET``; silent when unset.

    Send errors are logged at debug level and otherwise ignored: a missing
    supervisor must never stop the daemon from serving.
    """

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._sock: socket.socket | None = None
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

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
