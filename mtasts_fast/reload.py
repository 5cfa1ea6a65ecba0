"""Reading the configuration again on SIGHUP: the supervisor's next generation.

On SIGHUP the supervisor reopens its log file and forwards SIGHUP to the
workers (they reopen theirs), then re-reads the configuration file with
:func:`next_generation`: invalid, it is logged and nothing changes; unchanged
(logrotate's daily SIGHUP), nothing more happens, so in-process caches
survive; changed, the supervisor switches to the new :class:`Generation` and
replaces the workers one at a time, each successor answering before its
predecessor gets SIGTERM, so the port never stops answering; the reload is
complete (logged, ``READY=1``) once every predecessor has exited. The
policy overrides file is part of the configuration: it is read again at
every SIGHUP, and a changed one replaces the workers too. A worker of
the new configuration that cannot start abandons the reload. Every setting
takes effect except those baked into the bound sockets (:data:`LISTENER_KEYS`):
a change there is logged and needs a restart. A new ``workers`` count is
applied on the sockets bound at start (with ``reuse_port``, fewer workers than
sockets serve several each; more share them).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import NamedTuple

from mtasts_fast.cache.internal_dir import InternalDirectory
from mtasts_fast.config import CacheConfig, Config
from mtasts_fast.errors import ConfigError
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.listeners import Listeners
from mtasts_fast.overrides import Overrides, overrides_for
from mtasts_fast.prefork import ca_stamp, check_config, make_fetcher

__all__ = ["LISTENER_KEYS", "Generation", "NextGeneration", "next_generation"]

# The supervisor's messages keep one logger name, whichever module sends them.
_log = logging.getLogger("mtasts_fast.workers")

#: Settings fixed when the sockets are bound; a reload cannot change them.
LISTENER_KEYS = (
    "host",
    "port",
    "path",
    "mode",
    "owner",
    "group",
    "reuse_port",
    "backlog",
    "metrics",
)


@dataclass(eq=False)
class Generation:
    """One configuration and everything the supervisor built from it."""

    number: int
    config: Config
    fetcher: PolicyFetcher
    ca_stamp: tuple[int, int, int] | None
    #: The cache its workers open: ``config.cache``, except that ``internal``
    #: is the supervisor's shared directory (cache.internal_dir).
    cache: CacheConfig
    #: The file ``config.policy_overrides`` names, as read for this generation.
    overrides: Overrides | None = None


class NextGeneration(NamedTuple):
    """What reading the file again gave."""

    generation: Generation | None
    """The new generation, or None to keep running as before."""
    outcome: str
    """"new", "unchanged" or "invalid" (counted by the metrics)."""


def next_generation(
    config_path: str, running: Generation, listeners: Listeners, internal: InternalDirectory
) -> NextGeneration:
    """The generation after ``running``, read from ``config_path``.

    No generation when the file is invalid or changes nothing that the
    workers use; the reason is logged. A new generation has its fetcher built
    and its cache backend checked, but no worker runs it yet.
    """
    current = running.config
    try:
        config = Config.from_yaml(config_path)
        # Re-read at every reload, changed or not: its content is what counts.
        overrides = overrides_for(config)
    except ConfigError as exc:
        return _rejected(exc)
    changed = [key for key in LISTENER_KEYS if getattr(config, key) != getattr(current, key)]
    if changed:
        # Under socket activation a restart changes nothing either: the socket
        # unit's ListenStream= lines decide (activation.py).
        until = "the socket unit changes" if listeners.activated else "a restart"
        _log.warning(
            "%s: %s changed: the listening sockets stay as they are until %s (answering on %s)",
            config_path,
            ", ".join(changed),
            until,
            listeners.describe(),
        )
        config = dataclasses.replace(config, **{k: getattr(current, k) for k in LISTENER_KEYS})
    stamp = ca_stamp(config)
    if config == current and stamp == running.ca_stamp and overrides == running.overrides:
        _log.info("configuration unchanged; workers keep running")
        return NextGeneration(None, "unchanged")
    if overrides is not None and overrides != running.overrides:
        _log.info("policy overrides: %d entries in %s", len(overrides), overrides.filename)
    try:
        fetcher = make_fetcher(config)
        check_config(config)
        cache = internal.cache_config(config.cache)
    except (ConfigError, OSError) as exc:
        # OSError: the internal cache's directory could not be prepared.
        return _rejected(exc)
    if config.workers != current.workers:
        _log.info("workers: %d -> %d", current.workers, config.workers)
        sockets = len(listeners.groups)
        if config.reuse_port and not config.path and config.workers != sockets:
            _log.info(
                "the %d SO_REUSEPORT socket(s) bound at start are shared by %d workers; "
                "restart to bind one per worker",
                sockets,
                config.workers,
            )
    return NextGeneration(
        Generation(running.number + 1, config, fetcher, stamp, cache, overrides), "new"
    )


def _rejected(exc: Exception) -> NextGeneration:
    _log.error(
        "%s; keeping the running configuration",
        exc,
        extra={"event": "reload-rejected", "reason": str(exc)},
    )
    return NextGeneration(None, "invalid")
