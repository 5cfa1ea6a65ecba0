"""``mta-sts-daemon``: the socketmap server, with postfix-mta-sts-resolver's flags."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import ssl
import sys
from collections.abc import Sequence

from mtasts_fast import __version__, defaults
from mtasts_fast.config import Config
from mtasts_fast.errors import ConfigError
from mtasts_fast.logs import LEVELS, configure_logging, reopen_log_file
from mtasts_fast.privileges import PrivilegeError, drop_privileges
from mtasts_fast.sdnotify import Notifier

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
    except ConfigError as exc:
        print(f"mta-sts-daemon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"{args.config}: configuration OK")
        return EXIT_OK
    try:
        configure_logging(args.verbosity, args.logfile)
    except OSError as exc:
        print(f"mta-sts-daemon: cannot open log file {args.logfile}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    _raise_fd_limit(config.max_connections)
    if args.disable_uvloop:
        return asyncio.run(_serve(config, args))
    import uvloop

    return uvloop.run(_serve(config, args))


async def _serve(config: Config, args: argparse.Namespace) -> int:
    # Imported here so that --check-config and --help stay fast.
    # Codecs the event loop loads lazily on the first connection to a policy
    # host; after the privilege drop the interpreter's own directory may not
    # be readable any more (a Python installed under /root, say).
    import encodings.idna  # noqa: F401

    from mtasts_fast.cache import create_cache
    from mtasts_fast.fetcher import PolicyFetcher
    from mtasts_fast.responder import Responder
    from mtasts_fast.server import ListenError, SocketmapServer

    loop = asyncio.get_running_loop()
    notifier = Notifier()
    try:
        cache = create_cache(config.cache, config.filename)
    except ConfigError as exc:
        _log.error("%s", exc)
        return EXIT_CONFIG
    try:
        fetcher = PolicyFetcher(nameservers=config.nameservers, ca_file=config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        _log.error("%s: ca_file: cannot load %s: %s", config.filename, config.ca_file, exc)
        return EXIT_CONFIG
    if config.proactive_policy_fetching.enabled:
        _log.warning(
            "%s: proactive_policy_fetching is not implemented in this release; "
            "policies are refreshed when looked up",
            config.filename,
        )
    responder = Responder(config, cache, fetcher)
    server = SocketmapServer(config, responder)
    try:
        await server.start()
    except ListenError as exc:
        _log.error("%s", exc)
        return EXIT_FAILURE
    pidfile_written = False
    try:
        if args.pidfile:
            _write_pidfile(args.pidfile)
            pidfile_written = True
        drop_privileges(args.user, args.group)
        await cache.setup()
        await fetcher.start()
    except (OSError, PrivilegeError) as exc:
        _log.error("cannot start: %s", exc)
        await server.stop(0)
        if pidfile_written:
            _remove_pidfile(args.pidfile)
        return EXIT_FAILURE

    stop = asyncio.Event()
    signals_seen = 0

    def on_exit_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            _log.warning(
                "got %s, stopping gracefully (a second signal stops at once)",
                signal.Signals(signum).name,
            )
            stop.set()
        else:
            _log.warning("got %s again, exiting now", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(EXIT_FAILURE)

    def on_hup() -> None:
        reopen_log_file()
        _log.info("SIGHUP: log file reopened; configuration changes take effect after a restart")

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_exit_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hup)

    listening = ", ".join(_format_address(a) for a in server.addresses)
    _log.info("mtasts-fast %s listening on %s", __version__, listening)
    notifier.notify("READY=1", f"STATUS=answering on {listening}", f"MAINPID={os.getpid()}")
    try:
        await stop.wait()
    finally:
        notifier.notify("STOPPING=1", "STATUS=stopping")
        await server.stop(config.shutdown_timeout)
        await responder.close()
        await fetcher.close()
        await cache.close()
        if pidfile_written:
            _remove_pidfile(args.pidfile)
        notifier.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        _log.info("stopped")
    return EXIT_OK


def _raise_fd_limit(max_connections: int) -> None:
    # Every Postfix smtp(8) process holds one connection; the common soft
    # limit of 1024 descriptors would make accept() fail long before
    # max_connections is reached.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + 256
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


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


def _format_address(address: object) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{address}"


def console_main() -> None:
    sys.exit(main())
