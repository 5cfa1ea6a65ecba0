"""``mta-sts-daemon``: the socketmap server, with postfix-mta-sts-resolver's flags.

This process checks the configuration, binds the listening sockets (or takes
those systemd passes, activation.py), writes the pidfile and drops privileges,
then becomes the supervisor of the worker processes that serve
(:mod:`mtasts_fast.workers`).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mtasts_fast import __version__, defaults
from mtasts_fast.config import Config
from mtasts_fast.errors import ConfigError
from mtasts_fast.logs import LEVELS, configure_logging
from mtasts_fast.privileges import PrivilegeError, drop_privileges, prepare_state_dir

if TYPE_CHECKING:
    from mtasts_fast.overrides import Overrides

__all__ = ["build_parser", "console_main", "main"]

_log = logging.getLogger("mtasts_fast.daemon")

EXIT_OK = 0
EXIT_FAILURE = 1  # could not start or run (socket in use, privilege drop failed, ...)
EXIT_CONFIG = 2  # the configuration is invalid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mta-sts-daemon",
        description="MTA-STS (RFC 8461) TLS policy daemon for Postfix smtp_tls_policy_maps "
        "(socketmap protocol).",
    )
    parser.add_argument(
        "-v",
        "--verbosity",
        choices=list(LEVELS),
        default="info",
        help="logging verbosity (default: %(default)s)",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=defaults.CONFIG_PATH,
        help="YAML configuration file (default: %(default)s)",
    )
    parser.add_argument("-l", "--logfile", help="log to this file instead of stderr")
    parser.add_argument("-p", "--pidfile", help="write the process id to this file")
    parser.add_argument("-u", "--user", help="switch to this user after binding the socket")
    parser.add_argument(
        "-g", "--group", help="switch to this group after binding (default: the user's group)"
    )
    parser.add_argument(
        "--disable-uvloop", action="store_true", help="use the standard asyncio event loop"
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration file and exit (0 when valid, 2 when not)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_yaml(args.config)
        overrides = _overrides(config)
    except ConfigError as exc:
        print(f"mta-sts-daemon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        extra = ""
        if overrides is not None:
            extra = f" (policy overrides: {len(overrides)} entries in {overrides.filename})"
        print(f"{args.config}: configuration OK{extra}")
        return EXIT_OK
    try:
        configure_logging(args.verbosity, args.logfile, config.log_format)
    except OSError as exc:
        print(f"mta-sts-daemon: cannot open log file {args.logfile}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return _run(config, overrides, args)


def _overrides(config: Config) -> Overrides | None:
    if config.policy_overrides is None:
        return None
    # Imported only when used, so that --help stays fast.
    from mtasts_fast.overrides import load_overrides

    return load_overrides(config.policy_overrides)


def _run(config: Config, overrides: Overrides | None, args: argparse.Namespace) -> int:
    """Check, bind, write the pidfile, drop privileges, then supervise the workers.

    Everything a worker needs that might be unreadable after the privilege
    drop is loaded here, before it: the CA bundle (make_fetcher) and every
    module (preload.py). The workers are forked from this process, so they
    inherit all of it. Right after the drop, access.py checks that the user
    can still read what is read again later (a reload, the cache).
    """
    # Imported here so that --check-config and --help stay fast.
    from mtasts_fast.access import check_access
    from mtasts_fast.cache.internal_dir import InternalDirectory
    from mtasts_fast.preload import preload

    # systemd's watchdog stops a supervisor that stopped pinging with SIGABRT
    # (WatchdogSignal=): then every thread's Python stack goes to stderr, the
    # journal under systemd, so the reason for the hang is on record.
    faulthandler.enable()

    from mtasts_fast.metrics.listener import MetricsListener
    from mtasts_fast.server import ListenError
    from mtasts_fast.workers import Listeners, Supervisor, check_config, make_fetcher

    try:
        fetcher = make_fetcher(config)
        check_config(config)
        preload(config, use_uvloop=not args.disable_uvloop)
    except ConfigError as exc:
        _log.error("%s", exc)
        return EXIT_CONFIG
    try:
        listeners = Listeners.open(config)
    except ListenError as exc:
        _log.error("%s", exc)
        return EXIT_FAILURE
    metrics_listener: MetricsListener | None = None
    if config.metrics is not None:
        try:
            metrics_listener = MetricsListener.bind(config)
        except ListenError as exc:
            listeners.close()
            _log.error("%s", exc)
            return EXIT_FAILURE
    pidfile_written = False
    internal = InternalDirectory()
    try:
        try:
            if args.pidfile:
                _write_pidfile(args.pidfile)
                pidfile_written = True
            if config.cache.type == "lmdb":
                directory = _lmdb_directory(config)
                try:
                    prepare_state_dir(directory, args.user, args.group)
                except OSError as exc:
                    _log.error(
                        "%s: cache.options.path: cannot create %s: %s",
                        config.filename,
                        directory,
                        exc.strerror or exc,
                    )
                    return EXIT_FAILURE
            drop_privileges(args.user, args.group)
        except (OSError, PrivilegeError) as exc:
            _log.error("cannot start: %s", exc)
            return EXIT_FAILURE
        access = check_access(config, config.policy_overrides)
        for warning in access.warnings:
            _log.warning("%s", warning)
        if access.problem is not None:
            _log.error("%s", access.problem)
            return EXIT_CONFIG
        try:
            # Creates the internal cache's directory, as the user we now are.
            supervisor = Supervisor(
                config,
                fetcher,
                listeners,
                config_path=args.config,
                use_uvloop=not args.disable_uvloop,
                internal=internal,
                overrides=overrides,
                metrics_listener=metrics_listener,
            )
        except OSError as exc:
            _log.error("cannot start: %s", exc)
            return EXIT_FAILURE
        code = supervisor.run()
    finally:
        internal.remove()
        listeners.close()
        if metrics_listener is not None:
            metrics_listener.close()
        if pidfile_written:
            _remove_pidfile(args.pidfile)
    if code == EXIT_OK:
        _log.info("stopped")
    else:
        _log.warning("stopped with exit code %d", code)
    return code


def _lmdb_directory(config: Config) -> str:
    # Same rule as the LMDB backend: an existing directory or a path ending in
    # "/" holds data.mdb; anything else names the data file itself.
    path = str(config.cache.options["path"])
    if path.endswith("/") or os.path.isdir(path):
        return path
    return os.path.dirname(os.path.abspath(path))


def _write_pidfile(path: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    os.chmod(path, 0o644)


def _remove_pidfile(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        # After a privilege drop the directory may not be writable any more.
        _log.debug("cannot remove pidfile %s: %s", path, exc)


def console_main() -> None:
    sys.exit(main())
