"""Drop root privileges for good once the listening socket is bound."""

from __future__ import annotations

import grp
import logging
import os
import pwd

__all__ = ["PrivilegeError", "drop_privileges", "prepare_state_dir", "target_ids"]

_log = logging.getLogger(__name__)


class PrivilegeError(Exception):
    """The requested user or group does not exist or cannot be switched to."""


def _lookup_user(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no such user: {user!r}") from None


def _lookup_gid(group: str) -> int:
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise PrivilegeError(f"no such group: {group!r}") from None


def target_ids(user: str | None, group: str | None) -> tuple[int, int]:
    """The uid and gid ``drop_privileges(user, group)`` would switch to."""
    account = _lookup_user(user) if user is not None else None
    if group is not None:
        gid = _lookup_gid(group)
    elif account is not None:
        gid = account.pw_gid
    else:
        gid = os.getegid()
    uid = account.pw_uid if account is not None else os.geteuid()
    return uid, gid


def prepare_state_dir(directory: str, user: str | None, group: str | None) -> None:
    """Create ``directory`` (0750) for files the daemon writes after the drop.

    A directory created here is handed to the unprivileged user, so that a
    default like /var/lib/mta-sts works out of the box; an existing one is
    left exactly as the operator set it up.
    """
    if os.path.isdir(directory):
        return
    os.makedirs(directory, mode=0o750)
    if os.geteuid() == 0 and (user is not None or group is not None):
        uid, gid = target_ids(user, group)
        os.chown(directory, uid, gid)
    _log.info("created %s", directory)


def drop_privileges(user: str | None, group: str | None) -> None:
    """Switch real, effective and saved IDs to ``user``/``group``.

    Supplementary groups are reduced to the one target group. The group
    defaults to the user's primary group. Unlike postfix-mta-sts-resolver,
    which only changes the effective IDs, nothing here can be undone by the
    process afterwards.
    """
    if user is None and os.geteuid() == 0:
        # Also with -g alone: the uid stays 0, so the process keeps every
        # capability of root whatever its group is.
        _log.warning("running as root; use -u/--user to drop privileges after binding")
    if user is None and group is None:
        return
    uid, gid = target_ids(user, group)
    account = _lookup_user(user) if user is not None else None
    try:
        if os.geteuid() == 0:
            os.setgroups([gid])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to uid {uid} gid {gid}: {exc.strerror}") from exc
    if uid != 0 and (os.getresuid() != (uid, uid, uid) or 0 in os.getresuid()):
        raise PrivilegeError("privilege drop did not take effect")
    if account is not None:
        os.environ["HOME"] = account.pw_dir
        os.environ["USER"] = os.environ["LOGNAME"] = account.pw_name
    _log.info("running as uid %d gid %d", uid, gid)
