"""The metrics endpoint's listening socket(s), bound by the supervisor before it drops privileges.

TCP (``metrics.host``, ``metrics.port``) with SO_REUSEADDR only: without
SO_REUSEPORT a second daemon cannot take the same metrics port silently, so
two instances can never answer scrapes for each other. A unix socket
(``metrics.path``, ``metrics.mode``) follows the socketmap socket's rules
(binding.py): a stale file is replaced, a live one is not taken over, and it
is removed at exit.
"""

from __future__ import annotations

import dataclasses
import socket

from mtasts_fast.binding import (
    ListenError,
    UnixSocketFile,
    bind_addresses,
    bind_unix,
    format_address,
    resolve_listen_address,
)
from mtasts_fast.config import Config

__all__ = ["MetricsListener"]

_BACKLOG = 64


class MetricsListener:
    """The bound sockets of the metrics endpoint."""

    def __init__(self, sockets: list[socket.socket], unix_file: UnixSocketFile | None) -> None:
        self.sockets = sockets
        self.unix_file = unix_file

    @classmethod
    def bind(cls, config: Config) -> MetricsListener:
        """Bind ``config.metrics``; ListenError with the reason on failure."""
        settings = config.metrics
        assert settings is not None
        if settings.path is not None:
            # Same rules as the socketmap socket: stale files replaced, live ones kept.
            unix_config = dataclasses.replace(
                config,
                path=settings.path,
                mode=settings.mode,
                owner=None,
                group=None,
                backlog=_BACKLOG,
            )
            try:
                sock, unix_file = bind_unix(unix_config)
            except ListenError as exc:
                raise ListenError(f"metrics: {exc}") from None
            return cls([sock], unix_file)
        assert settings.port is not None
        try:
            infos = resolve_listen_address(settings.host, settings.port)
            sockets = bind_addresses(infos, reuse_port=False)
        except ListenError as exc:
            raise ListenError(f"metrics: {exc}") from None
        return cls(sockets, None)

    def describe(self) -> str:
        return ", ".join(format_address(sock.getsockname()) for sock in self.sockets)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.unix_file is not None:
            self.unix_file.remove()
            self.unix_file = None
