"""systemd socket activation: the listening sockets a ``.socket`` unit passes (sd_listen_fds(3)).

With ``contrib/mta-sts-daemon.socket`` active, systemd owns the listening
sockets: it binds them at boot (with ``SocketUser=``, ``SocketGroup=`` and
``SocketMode=`` on a unix socket, so that only Postfix can connect) and hands
them to every start of the service. While the daemon restarts, the kernel
queues new connections on the socket systemd keeps open, so a restart refuses
none; they are answered once a worker of the new daemon accepts.

The protocol, as libsystemd implements it (sd_listen_fds(3)):

* ``LISTEN_PID`` is the process the descriptors are meant for: any other
  process (a child that inherited the environment) must ignore them;
* ``LISTEN_FDS`` is how many there are, starting at descriptor 3
  (``SD_LISTEN_FDS_START``) without gaps;
* ``LISTEN_FDNAMES`` (optional) holds their names, colon-separated
  (``FileDescriptorName=``, by default the socket unit's name).

The descriptors arrive without ``FD_CLOEXEC``; they get it here, and the
three variables are removed from the environment, so nothing this process
starts later mistakes them for its own.

**Which wins.** The socket unit decides where the daemon listens: the passed
sockets are served and nothing else is bound. The configuration's ``host``/
``port`` (or ``path``) is compared with them at start: when it is among them
the start-up line says so, when it is not a warning names both, so that a
socket unit and a configuration file that disagree are noticed at once
rather than when Postfix connects to the wrong place. ``mode``, ``owner``
and ``group`` never apply to a passed unix socket (the socket unit set them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

from mtasts_fast.binding import ListenError, format_address, resolve_listen_address
from mtasts_fast.config import Config

__all__ = [
    "SD_LISTEN_FDS_START",
    "ActivationError",
    "PassedSocket",
    "compare_with_config",
    "listen_fds",
    "passed_sockets",
]

# The listener's logger, like every other line about the listening sockets.
_log = logging.getLogger("mtasts_fast.server")

#: The first passed descriptor (<systemd/sd-daemon.h>).
SD_LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


class ActivationError(ListenError):
    """systemd passed something this daemon cannot serve; the message says what."""


@dataclass(frozen=True)
class PassedSocket:
    """A listening socket systemd passed, with its ``FileDescriptorName=``."""

    sock: socket.socket
    name: str

    @property
    def address(self) -> str:
        return format_address(self.sock.getsockname())


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, pid: int | None = None
) -> list[tuple[int, str]]:
    """The descriptors systemd passed to process ``pid`` (default: this one), with their names.

    ``[]`` when there are none or they are meant for another process. The
    three variables are removed from ``environ`` (default: ``os.environ``) in
    every case, as ``sd_listen_fds(1)`` does. ActivationError when they are
    malformed: libsystemd refuses those too (``-EINVAL``).
    """
    env = os.environ if environ is None else environ
    raw_pid, raw_count, raw_names = (env.pop(name, None) for name in _VARIABLES)
    if raw_pid is None or raw_count is None:
        return []
    if not raw_pid.isdigit() or int(raw_pid) == 0:
        raise ActivationError(f"socket activation: LISTEN_PID={raw_pid!r} is not a process id")
    if int(raw_pid) != (os.getpid() if pid is None else pid):
        # Inherited from a parent that was activated: not ours.
        return []
    if not raw_count.isdigit():
        raise ActivationError(f"socket activation: LISTEN_FDS={raw_count!r} is not a number")
    count = int(raw_count)
    names = ["unknown"] * count
    if raw_names is not None:
        given = raw_names.split(":")
        if len(given) != count:
            raise ActivationError(
                f"socket activation: LISTEN_FDNAMES names {len(given)} descriptor(s), "
                f"LISTEN_FDS={count}"
            )
        names = [name or "unknown" for name in given]
    return [(SD_LISTEN_FDS_START + index, names[index]) for index in range(count)]


def passed_sockets(environ: MutableMapping[str, str] | None = None) -> list[PassedSocket]:
    """The listening stream sockets systemd passed, close-on-exec and non-blocking.

    ``[]`` without socket activation. ActivationError for a descriptor that
    is not a listening TCP or unix stream socket (a ``ListenDatagram=`` or
    ``Accept=yes`` unit, say); every passed descriptor is closed then.
    """
    fds = listen_fds(environ)
    passed: list[PassedSocket] = []
    try:
        for fd, name in fds:
            os.set_inheritable(fd, False)
            passed.append(PassedSocket(_listening_socket(fd, name), name))
    except BaseException:
        for item in passed:
            item.sock.close()
        for fd, _name in fds[len(passed) :]:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return passed


def _listening_socket(fd: int, name: str) -> socket.socket:
    what = f"socket activation: descriptor {fd} ({name})"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ActivationError(f"{what} is not open: {exc.strerror}") from exc
    if not stat.S_ISSOCK(mode):
        raise ActivationError(f"{what} is not a socket")
    sock = socket.socket(fileno=fd)  # family, type and protocol from the kernel
    if (
        sock.family not in _FAMILIES
        or sock.type != socket.SOCK_STREAM
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        sock.detach()  # closed by the caller, with the others
        raise ActivationError(
            f"{what} is not a listening TCP or unix stream socket: the socket unit needs "
            "ListenStream= and Accept=no"
        )
    sock.setblocking(False)
    return sock


def _configured(config: Config) -> tuple[str, list[str]]:
    """How the configuration names its listener, and the addresses it would bind."""
    if config.path:
        return "path", [format_address(os.path.normpath(config.path))]
    try:
        infos = resolve_listen_address(config.host, config.port)
    except ListenError:
        return "host/port", [f"{config.host}:{config.port} (unresolvable)"]
    addresses: list[str] = []
    for info in infos:
        text = format_address(info[4])
        if text not in addresses:
            addresses.append(text)
    return "host/port", addresses


def compare_with_config(config: Config, passed: Sequence[PassedSocket]) -> tuple[int, str]:
    """A logging level and the line that says whether ``passed`` is what ``config`` names."""
    served = ", ".join(item.address for item in passed)
    units = ", ".join(dict.fromkeys(item.name for item in passed))
    key, wanted = _configured(config)
    missing = [address for address in wanted if address not in {p.address for p in passed}]
    count = len(passed)
    head = f"socket activation: serving the {count} socket{'s' if count != 1 else ''} "
    head += f"systemd passed ({units}): {served}"
    if missing:
        line = (
            f"{head}; the configured {key} ({', '.join(wanted)}) is not among them and is "
            f"not bound: the socket unit decides where the daemon listens, make "
            f"{config.filename} agree with its ListenStream= lines"
        )
        level = logging.WARNING
    else:
        line = f"{head}; the configured {key} ({', '.join(wanted)}) is among them"
        level = logging.INFO
    if config.path and any(x is not None for x in (config.mode, config.owner, config.group)):
        line += (
            "; mode, owner and group do not apply to a passed socket: SocketMode=, "
            "SocketUser= and SocketGroup= in the socket unit set them"
        )
    return level, line
