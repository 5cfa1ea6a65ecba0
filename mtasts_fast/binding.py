"""Binding the listening sockets (DESIGN.md §3): TCP with SO_REUSEPORT, or a unix socket.

Used by the supervisor before it drops privileges and forks its workers
(``listeners.py``), and by :class:`~mtasts_fast.server.SocketmapServer` when it
is started without sockets of its own (the tests' in-process servers).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
from collections.abc import Sequence
from typing import Any

from mtasts_fast.config import Config

__all__ = [
    "ListenError",
    "UnixSocketFile",
    "bind_addresses",
    "bind_tcp",
    "bind_unix",
    "format_address",
    "resolve_listen_address",
]

# The server's logger: these lines were always logged as the listener's.
_log = logging.getLogger("mtasts_fast.server")


class ListenError(Exception):
    """The configured socket cannot be set up; the message says why."""


def resolve_listen_address(host: str, port: int) -> list[Any]:
    """``getaddrinfo`` for a listening TCP socket; ListenError when it fails."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(f"cannot resolve listen address {host!r}: {exc}") from exc


def bind_tcp(config: Config, infos: Sequence[Any]) -> list[socket.socket]:
    """One bound, non-blocking socket per distinct address in ``infos``.

    Not listening yet: whoever serves it calls listen() (asyncio's
    ``create_server`` does), so the port refuses connections until something
    answers them. Once listening, a socket keeps listening for as long as any
    process holds it, even while the worker serving it is replaced.
    """
    # Several workers or a second instance share the port with SO_REUSEPORT;
    # the kernel spreads connections between them.
    return bind_addresses(infos, reuse_port=config.reuse_port)


def bind_addresses(infos: Sequence[Any], *, reuse_port: bool) -> list[socket.socket]:
    """Bind one non-blocking TCP socket per distinct address; ListenError naming the address."""
    sockets: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise ListenError(
                    f"cannot listen on {format_address(address)}: {exc.strerror or exc}"
                ) from exc
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class UnixSocketFile:
    """The file of a unix socket we bound; :meth:`remove` leaves a successor's alone."""

    __slots__ = ("_inode", "path")

    def __init__(self, path: str) -> None:
        st = os.stat(path)
        self.path = path
        self._inode = (st.st_dev, st.st_ino)

    def remove(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        # Only remove the socket we created, not one a newer instance put there.
        if (st.st_dev, st.st_ino) == self._inode:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def bind_unix(config: Config) -> tuple[socket.socket, UnixSocketFile]:
    """Bind and listen on ``config.path`` with its mode/owner/group (DESIGN.md §3).

    A stale socket file (nobody answers) is replaced; a live one, or a file
    that is not a socket, is a ListenError. It listens at once, so another
    instance probing the path sees it in use from the moment it exists.
    """
    assert config.path is not None
    path = config.path
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Create the socket with no permissions, so nobody can connect in the
        # moment between bind() and the chmod/chown below.
        old_umask = os.umask(0o777)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        uid, gid = _owner_ids(config.owner, config.group)
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid)
        mode = config.mode if config.mode is not None else 0o666 & ~old_umask
        os.chmod(path, mode)
        unix_file = UnixSocketFile(path)
        sock.listen(config.backlog)
    except ListenError:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on unix socket {path}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock, unix_file


def _clear_stale_socket(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(f"cannot inspect {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ListenError(f"cannot check whether {path} is in use: {exc}") from exc
    else:
        raise ListenError(f"another process is answering on {path}; not taking it over")
    finally:
        probe.close()
    # Nobody answers: a leftover from a process that died. Replace it.
    _log.info("removing stale socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _owner_ids(owner: str | None, group: str | None) -> tuple[int, int]:
    uid = gid = -1
    if owner:
        try:
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise ListenError(f"owner: no such user {owner!r}") from None
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ListenError(f"group: no such group {group!r}") from None
    return uid, gid


def format_address(address: object) -> str:
    """``host:port`` (``[v6]:port``) for a TCP address, ``unix:path`` otherwise.

    A unix socket in the abstract namespace (a name starting with a NUL byte,
    as systemd can pass one) is shown as ``unix:@name``, as ss(8) does.
    """
    if isinstance(address, tuple):
        host, port = str(address[0]), address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(address, bytes):
        name = address[1:] if address.startswith(b"\0") else address
        return "unix:@" + name.decode(errors="replace")
    return f"unix:{address}"
