"""The validated configuration: frozen dataclasses, defaults filled in.

The rest of the daemon reads these and nothing else of this package. Field
defaults come from :mod:`mtasts_fast.defaults`, as do the defaults the
checking modules fill in, so a default changes in one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import defaults
from ..errors import ConfigError
from .values import Invalid
from .yaml_loader import load_yaml

#: Every valid ``cache.type``, in the order error messages list them.
CACHE_TYPES = ("internal", "lmdb", "sqlite", "redis", "redis_sentinel", "postgres")
#: Every valid zone ``dane`` setting (DESIGN.md §7), the default first.
DANE_MODES = ("precedence", "all", "off")


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """How answers are rendered for one socketmap name (or the default zone)."""

    strict_testing: bool = defaults.STRICT_TESTING
    timeout: float = defaults.ZONE_TIMEOUT
    require_sni: bool = defaults.REQUIRE_SNI
    tlsrpt: bool = defaults.TLSRPT
    tlsrpt_testing_level: str = defaults.TLSRPT_TESTING_LEVEL
    #: One of :data:`DANE_MODES`.
    dane: str = defaults.DANE


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The cache backend and its options, validated, with defaults filled in.

    ``options`` is read-only. For ``redis``, ``redis_sentinel`` and
    ``postgres`` it also holds every extra key of the file, unchanged, for the
    client library (redis-py ``from_url`` / ``master_for``,
    ``asyncpg.create_pool``); only the keys this package knows are checked.
    """

    type: str
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ProactiveFetchConfig:
    """The background pass that refreshes every cached policy."""

    enabled: bool = defaults.PROACTIVE_ENABLED
    interval: float = float(defaults.PROACTIVE_INTERVAL)
    concurrency_limit: int = defaults.PROACTIVE_CONCURRENCY
    grace_ratio: float = defaults.PROACTIVE_GRACE_RATIO
    # None: a tenth of ``interval`` (see :attr:`spread`).
    jitter: float | None = defaults.PROACTIVE_JITTER

    @property
    def spread(self) -> float:
        """Seconds a pass spreads its fetches over (``jitter``, at most half the interval)."""
        jitter = self.interval / 10 if self.jitter is None else self.jitter
        return min(jitter, self.interval / 2)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint: TCP (``host``, ``port``) or a unix socket (``path``, ``mode``)."""

    host: str = defaults.METRICS_HOST
    port: int | None = None
    path: str | None = None
    mode: int | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole daemon configuration. Build it with :meth:`from_yaml`."""

    filename: str
    host: str
    port: int
    path: str | None
    mode: int | None
    owner: str | None
    group: str | None
    reuse_port: bool
    backlog: int
    idle_timeout: float
    max_connections: int
    workers: int
    shutdown_timeout: float
    cache_grace: float
    negative_ttl: float
    fetch_backoff_max: float
    max_concurrent_fetches: int
    cache: CacheConfig
    proactive_policy_fetching: ProactiveFetchConfig
    default_zone: ZoneConfig
    zones: Mapping[str, ZoneConfig]
    nameservers: tuple[str, ...]
    ca_file: str | None
    policy_overrides: str | None = defaults.POLICY_OVERRIDES
    dnssec_probe_name: str = defaults.DNSSEC_PROBE_NAME
    dnssec_probe_interval: float = defaults.DNSSEC_PROBE_INTERVAL
    # Monitoring (DESIGN.md §9): None means no metrics endpoint.
    metrics: MetricsConfig | None = None
    log_format: str = defaults.LOG_FORMAT

    @classmethod
    def from_yaml(cls, filename: str | os.PathLike[str]) -> Config:
        """Read and validate a YAML config file.

        An empty file (or one holding only comments or ``null``) gives every
        default. Raises :class:`ConfigError` when the file cannot be read, is
        not valid YAML (the message names the line and column) or does not
        validate.
        """
        name = os.fspath(filename)
        try:
            with open(name, "rb") as file:
                raw = file.read()
        except OSError as exc:
            raise ConfigError(name, "", f"cannot read: {exc.strerror or exc}") from None
        return cls.from_mapping(load_yaml(raw, name), name)

    @classmethod
    def from_mapping(cls, data: object, filename: str = "<config>") -> Config:
        """Validate already-parsed data (``None`` means all defaults).

        ``filename`` only labels error messages and :attr:`filename`.
        Raises :class:`ConfigError` and nothing else, whatever ``data`` holds.
        """
        # Imported here because .build imports this module for the classes
        # it fills in.
        from .build import build_config

        try:
            return build_config(data, filename)
        except Invalid as exc:
            raise ConfigError(filename, exc.path, exc.problem) from None

    @classmethod
    def default(cls) -> Config:
        """The configuration used when there is no file at all."""
        return cls.from_mapping(None, "<defaults>")

    def zone_for(self, map_name: str) -> ZoneConfig:
        """The zone for a socketmap name; unknown names get ``default_zone``.

        postfix-tlspol's ``QUERYwithTLSRPT`` and ``QUERY`` have zones even
        when the file configures none (:func:`.zones.socketmap_zones`).
        """
        from .zones import socketmap_zones

        return socketmap_zones(self.default_zone, self.zones).get(map_name, self.default_zone)

    @property
    def uses_dane(self) -> bool:
        """True when some zone (the default one included) evaluates DANE."""
        return any(z.dane != "off" for z in (self.default_zone, *self.zones.values()))
