"""The listening sockets, bound by the supervisor and shared with its workers.

The supervisor binds them while it may still be root, before it drops
privileges and forks. With ``reuse_port`` on, one TCP socket per worker, each
bound with SO_REUSEPORT to the same address, so the kernel spreads connections
between them; with it off, one socket that every worker accepts on. A unix
socket is bound once and shared. The supervisor keeps every socket open, so
the socket of a worker that died or is being replaced keeps listening: a
connection waits in its backlog for the successor instead of being refused.

Under systemd socket activation (activation.py) nothing is bound: the sockets
the socket unit passed are served, every worker accepting on all of them, and
they are never unlinked (systemd owns them and keeps them across restarts).
"""

from __future__ import annotations

import logging
import socket

from mtasts_fast.activation import compare_with_config, passed_sockets
from mtasts_fast.binding import (
    UnixSocketFile,
    bind_tcp,
    bind_unix,
    format_address,
    resolve_listen_address,
)
from mtasts_fast.config import Config

__all__ = ["Listeners"]

_log = logging.getLogger("mtasts_fast.server")


class Listeners:
    """The listening sockets, bound once by the supervisor and shared with the workers.

    ``groups[i]`` holds one socket per listen address (``localhost`` may give
    an IPv4 and an IPv6 one); a worker serves one or more whole groups.
    """

    def __init__(
        self,
        groups: list[list[socket.socket]],
        unix_file: UnixSocketFile | None = None,
        *,
        activated: bool = False,
    ) -> None:
        self.groups = groups
        self.unix_file = unix_file
        #: The sockets came from systemd (socket activation), not from ``config``.
        self.activated = activated

    @classmethod
    def open(cls, config: Config) -> Listeners:
        """The sockets systemd passed, if it did; else bind what ``config`` asks for.

        ListenError (or its ActivationError) with the reason on failure.
        """
        passed = passed_sockets()
        if not passed:
            return cls.bind(config)
        level, line = compare_with_config(config, passed)
        _log.log(level, "%s", line)
        # One group: every worker accepts on every passed socket.
        return cls([[item.sock for item in passed]], activated=True)

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
