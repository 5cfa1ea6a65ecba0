"""The top level of the file: its keys, its small sections, and the whole :class:`Config`.

A new top-level key goes in :data:`TOP_KEYS` and in :func:`build_config`
here, as a field of :class:`~mtasts_fast.config.model.Config`, and with its
default in :mod:`mtasts_fast.defaults`.
"""

from __future__ import annotations

from collections.abc import Mapping

from .. import defaults
from .cache_options import cache_config
from .model import Config, ProactiveFetchConfig
from .monitoring import log_format, metrics_config
from .sections import Section
from .values import (
    boolean,
    describe,
    dns_name,
    fail,
    file_mode,
    integer,
    nameserver,
    non_negative,
    port_number,
    positive,
    principal,
    sequence,
    string,
    word,
)
from .zones import ZONE_KEYS, zone_config, zone_configs

# listen(2) takes an int; Linux silently caps it at net.core.somaxconn anyway.
_MAX_BACKLOG = 65535

PROACTIVE_KEYS = ("enabled", "interval", "concurrency_limit", "grace_ratio", "jitter")
TOP_KEYS = (
    "host",
    "port",
    "path",
    "mode",
    "owner",
    "group",
    "reuse_port",
    "backlog",
    "idle_timeout",
    "max_connections",
    "workers",
    "shutdown_timeout",
    "cache_grace",
    "negative_ttl",
    "fetch_backoff_max",
    "max_concurrent_fetches",
    "cache",
    "proactive_policy_fetching",
    "default_zone",
    "zones",
    "nameservers",
    "ca_file",
    "policy_overrides",
    "dnssec_probe_name",
    "dnssec_probe_interval",
    "metrics",
    "log_format",
)


def _top_level_hint(key: str) -> str | None:
    if key in ZONE_KEYS:
        # The old daemon's sample configs carry a commented-out top-level
        # `# tlsrpt: true`, which it silently ignored when uncommented.
        return f"zone settings go under default_zone or zones.<name>: default_zone.{key}"
    return None


def _proactive(value: object, path: str) -> ProactiveFetchConfig:
    section = Section(value, path, PROACTIVE_KEYS)
    return ProactiveFetchConfig(
        enabled=section.get("enabled", boolean, defaults.PROACTIVE_ENABLED),
        interval=section.get("interval", positive, float(defaults.PROACTIVE_INTERVAL)),
        concurrency_limit=section.get(
            "concurrency_limit", integer(1), defaults.PROACTIVE_CONCURRENCY
        ),
        grace_ratio=section.get("grace_ratio", positive, defaults.PROACTIVE_GRACE_RATIO),
        jitter=section.optional("jitter", non_negative),
    )


def _nameservers(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = sequence(value, path)
    return tuple(nameserver(item, f"{path}[{index}]") for index, item in enumerate(items))


def build_config(data: object, filename: str) -> Config:
    """Check parsed YAML and fill in defaults; raises :class:`~.values.Invalid`."""
    if data is None:  # an empty file, or one with only comments
        data = {}
    if not isinstance(data, Mapping):
        fail("", f"the top level must be a mapping of keys to values, got {describe(data)}")
    top = Section(data, "", TOP_KEYS, hint=_top_level_hint)

    path = top.optional("path", string)
    owner = top.optional("owner", principal)
    group = top.optional("group", principal)
    for key, value in (("owner", owner), ("group", group)):
        if value is not None and path is None:
            fail(key, "only applies to a unix socket: set 'path' too")
    port = top.get("port", port_number, defaults.PORT)
    metrics = None
    if top.items.get("metrics") is not None:
        metrics = metrics_config(
            top.items["metrics"], "metrics", socketmap_port=port, socketmap_path=path
        )

    return Config(
        filename=filename,
        host=top.get("host", word, defaults.HOST),
        port=port,
        path=path,
        # Like the old daemon, `mode` without `path` is accepted and unused.
        mode=top.optional("mode", file_mode),
        owner=owner,
        group=group,
        reuse_port=top.get("reuse_port", boolean, defaults.REUSE_PORT),
        backlog=top.get("backlog", integer(1, _MAX_BACKLOG), defaults.BACKLOG),
        idle_timeout=top.get("idle_timeout", positive, defaults.IDLE_TIMEOUT),
        max_connections=top.get("max_connections", integer(1), defaults.MAX_CONNECTIONS),
        workers=top.get("workers", integer(1, defaults.MAX_WORKERS), defaults.workers()),
        # 0 is meaningful here (cut open connections at once) and the old
        # daemon accepted it.
        shutdown_timeout=top.get("shutdown_timeout", non_negative, defaults.SHUTDOWN_TIMEOUT),
        cache_grace=top.get("cache_grace", non_negative, defaults.CACHE_GRACE),
        negative_ttl=top.get("negative_ttl", non_negative, defaults.NEGATIVE_TTL),
        fetch_backoff_max=top.get("fetch_backoff_max", positive, defaults.FETCH_BACKOFF_MAX),
        max_concurrent_fetches=top.get(
            "max_concurrent_fetches", integer(1), defaults.MAX_CONCURRENT_FETCHES
        ),
        cache=cache_config(top.items.get("cache"), "cache"),
        proactive_policy_fetching=_proactive(
            top.items.get("proactive_policy_fetching"), "proactive_policy_fetching"
        ),
        default_zone=zone_config(top.items.get("default_zone"), "default_zone"),
        zones=zone_configs(top.items.get("zones"), "zones"),
        nameservers=_nameservers(top.items.get("nameservers"), "nameservers"),
        ca_file=top.optional("ca_file", string),
        # The file itself is read by overrides.py (--check-config, start, reload).
        policy_overrides=top.optional("policy_overrides", string),
        dnssec_probe_name=top.get("dnssec_probe_name", dns_name, defaults.DNSSEC_PROBE_NAME),
        dnssec_probe_interval=top.get(
            "dnssec_probe_interval", positive, defaults.DNSSEC_PROBE_INTERVAL
        ),
        metrics=metrics,
        log_format=top.get("log_format", log_format, defaults.LOG_FORMAT),
    )
