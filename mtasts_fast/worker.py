"""One worker process: a fresh event loop serving the supervisor's sockets.

The worker opens the cache and the fetcher's resolver and HTTP session itself,
after the fork (an LMDB environment or a database connection must never cross
a fork), writes one byte to the ready pipe once it answers, prunes the cache
and trims the C heap (heap.py) now and then, and stops gracefully on SIGTERM
or when the supervisor is gone. It counts into the shared region the
supervisor mapped for it (metrics/region.py) and reports its heartbeat and
the backend's health there (metrics/monitor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
from typing import Any

from mtasts_fast.cache import CacheUnavailable, create_cache
from mtasts_fast.config import CacheConfig, Config
from mtasts_fast.dane.probe import DnssecProbe
from mtasts_fast.dane.resolver import DaneResolver
from mtasts_fast.dane.startup import log_start_notes
from mtasts_fast.errors import ConfigError
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.heap import release_garbage, trim_forever
from mtasts_fast.logs import reopen_log_file, set_worker
from mtasts_fast.maintenance import prune_forever
from mtasts_fast.metrics.monitor import WorkerMonitor
from mtasts_fast.metrics.region import Region
from mtasts_fast.metrics.worker import WorkerMetrics
from mtasts_fast.overrides import Overrides
from mtasts_fast.proactive import ProactiveRefresher
from mtasts_fast.responder import Responder
from mtasts_fast.server import ListenError, SocketmapServer

__all__ = [
    "READY_BYTE",
    "WORKER_EXIT_CONFIG",
    "WORKER_EXIT_FATAL",
    "raise_fd_limit",
    "run_worker",
]

_log = logging.getLogger("mtasts_fast.workers")

EXIT_OK = 0
#: A worker's exit code for a configuration error only it can see (the cache
#: backend rejects its options, say). The supervisor then exits 2.
WORKER_EXIT_CONFIG = 3
#: A worker's exit code for any other failure to start (the cache cannot be
#: opened, ...). Restarting would fail again; the supervisor then exits 1.
WORKER_EXIT_FATAL = 4
#: Written to the ready pipe once the worker answers.
READY_BYTE = b"R"


def raise_fd_limit(max_connections: int) -> None:
    """Raise the soft descriptor limit to what ``max_connections`` needs."""
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


def run_worker(
    number: int,
    config: Config,
    fetcher: PolicyFetcher,
    sockets: list[socket.socket],
    ready_fd: int,
    lifeline_fd: int,
    *,
    use_uvloop: bool,
    cache: CacheConfig | None = None,
    overrides: Overrides | None = None,
    region: Region | None = None,
) -> int:
    """Serve ``sockets`` until SIGTERM (or EOF on ``lifeline_fd``); returns the exit code.

    One byte goes to ``ready_fd`` once the worker answers. ``cache``: the
    backend to open, when it is not ``config.cache`` (the supervisor's
    shared ``internal`` cache). ``overrides``: the policy overrides, read
    by the supervisor. Counts go to ``region`` (a private one when None).
    """
    raise_fd_limit(config.max_connections)
    set_worker(number)
    metrics = WorkerMetrics(region) if region is not None else WorkerMetrics.private(config)
    coro = _serve(
        number,
        config,
        cache or config.cache,
        overrides,
        fetcher,
        sockets,
        ready_fd,
        lifeline_fd,
        metrics,
    )
    if use_uvloop:
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


async def _serve(
    number: int,
    config: Config,
    cache_config: CacheConfig,
    overrides: Overrides | None,
    fetcher: PolicyFetcher,
    sockets: list[socket.socket],
    ready_fd: int,
    lifeline_fd: int,
    metrics: WorkerMetrics,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_hup() -> None:
        for problem in reopen_log_file():
            _log.error("%s", problem)

    def on_orphaned() -> None:
        loop.remove_reader(lifeline_fd)
        _log.error("worker %d: the supervisor is gone; stopping", number)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_reader(lifeline_fd, on_orphaned)

    started: list[Any] = []  # what to close, in reverse order
    try:
        try:
            cache = create_cache(cache_config, config.filename)
            started.append(cache)
            await cache.setup()
            metrics.backend_state(True)  # it opened; the monitor's probe tells from now on
            await fetcher.start()
            started.append(fetcher)
            resolver, probe = _dane(config, loud=number == 1)
            if number == 1:
                log_start_notes(config, resolver)
            responder = Responder(
                config,
                cache,
                fetcher,
                resolver=resolver,
                probe=probe,
                overrides=overrides,
                metrics=metrics,
            )
            started.append(responder)
            server = SocketmapServer(config, responder)
            await server.start(sockets)
        except ConfigError as exc:
            _log.error("worker %d: %s", number, exc)
            return WORKER_EXIT_CONFIG
        except (CacheUnavailable, ListenError, OSError) as exc:
            _log.error("worker %d cannot start: %s", number, exc)
            return WORKER_EXIT_FATAL
        except Exception:
            _log.exception("worker %d cannot start", number)
            return WORKER_EXIT_FATAL
        # Everything built so far (modules, config, cache, server) lives as
        # long as the worker: frozen, a full collection no longer walks it
        # again and again while the worker serves. What start-up freed goes
        # back to the system first.
        release_garbage()
        gc.freeze()
        metrics.heartbeat()
        os.write(ready_fd, READY_BYTE)
        os.close(ready_fd)
        refresher = responder.refresher
        background = [
            asyncio.ensure_future(prune_forever(cache)),
            # Fetches leave freed C memory in the heap; give it back now and then.
            asyncio.ensure_future(trim_forever(lambda: refresher.counts.total())),
            asyncio.ensure_future(
                WorkerMonitor(
                    metrics, cache, refresher, number=number, backend=config.cache.type
                ).run_forever()
            ),
        ]
        if probe is not None:
            # At start and hourly: DANE detection is off while the resolver
            # does not validate (dane/probe.py).
            background.append(asyncio.ensure_future(probe.run_forever()))
        if config.proactive_policy_fetching.enabled:
            # Every worker competes for the pass; the cache's lease lets one run it.
            proactive = ProactiveRefresher(config, cache, responder.refresher)
            background.append(asyncio.ensure_future(proactive.run_forever()))
        await stop.wait()
        _log.debug("worker %d stopping", number)
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.stop(config.shutdown_timeout)
    finally:
        for item in reversed(started):
            try:
                await item.close()
            except Exception:
                _log.exception("worker %d: error while closing %s", number, type(item).__name__)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        loop.remove_reader(lifeline_fd)
    return EXIT_OK


def _dane(config: Config, *, loud: bool) -> tuple[DaneResolver | None, DnssecProbe | None]:
    """The DANE resolver and its probe, or (None, None) when no zone uses DANE."""
    if not config.uses_dane:
        return None, None
    # Built here, after the fork: it reads /etc/resolv.conf when no
    # nameservers are configured, as the fetcher's c-ares channel does.
    resolver = DaneResolver(config.nameservers)
    probe = DnssecProbe(
        resolver,
        config.dnssec_probe_name,
        interval=config.dnssec_probe_interval,
        timeout=config.default_zone.timeout,
        loud=loud,
    )
    return resolver, probe
