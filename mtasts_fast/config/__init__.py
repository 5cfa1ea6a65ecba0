"""The daemon's configuration: a YAML file turned into frozen, validated objects.

Every key of postfix-mta-sts-resolver 1.5.1 is accepted with the same meaning
and default, so its config files load unchanged; the keys this daemon adds
have their defaults in :mod:`mtasts_fast.defaults` too. Unlike the old daemon,
nothing is silently ignored: an unknown key, a value of the wrong type or an
impossible value raises :class:`~mtasts_fast.errors.ConfigError` naming the
file, the dotted key path (list items as ``nameservers[1]``) and the problem.

Validation is pure: nothing here touches the network or the file system
except :meth:`Config.from_yaml` reading the one file. Whether a socket path,
cache file or CA bundle can be used is found out when the daemon opens it.

The modules, in the order a file goes through them:

- :mod:`.yaml_loader`: bytes to Python data; duplicate keys refused.
- :mod:`.build`: the top-level keys, ``proactive_policy_fetching``,
  ``nameservers``, and the assembly of :class:`Config`.
- :mod:`.zones`: ``default_zone`` and ``zones``.
- :mod:`.cache_options`: ``cache`` and every backend's ``options``.
- :mod:`.monitoring`: ``metrics`` and ``log_format``.
- :mod:`.sections`: checking a mapping's keys (unknown key, "did you mean").
- :mod:`.values`: checking one value (number ranges, ports, URLs...).
- :mod:`.model`: the frozen dataclasses the rest of the daemon reads.

Adding a key:

- top level: a field of :class:`Config` (model.py), its name in
  ``TOP_KEYS`` and a line in ``build_config`` (build.py);
- zone: a field of :class:`ZoneConfig` (model.py), its name in
  ``ZONE_KEYS`` and a line in ``zone_config`` (zones.py);
- a new section with keys of its own: a frozen dataclass in model.py, a
  module that checks it (like zones.py), and its top-level key as above;
- a new kind of value (not a number, string, port...): a checker in values.py;

and in every case its default in :mod:`mtasts_fast.defaults` and its
description in ``docs/man/mta-sts-daemon.yml.5.rst``: ``tests/test_docs.py``
checks the page against the key lists re-exported at the bottom of this file.
"""

from __future__ import annotations

from . import build, cache_options, monitoring, zones
from .model import (
    CACHE_TYPES,
    CacheConfig,
    Config,
    MetricsConfig,
    ProactiveFetchConfig,
    ZoneConfig,
)

__all__ = [
    "CACHE_TYPES",
    "CacheConfig",
    "Config",
    "MetricsConfig",
    "ProactiveFetchConfig",
    "ZoneConfig",
]

# The schema's key lists, under the names tests/test_docs.py reads to check
# that the documentation describes every key.
_TOP_KEYS = build.TOP_KEYS
_PROACTIVE_KEYS = build.PROACTIVE_KEYS
_ZONE_KEYS = zones.ZONE_KEYS
_METRICS_KEYS = monitoring.METRICS_KEYS
_CACHE_BACKENDS = cache_options.CACHE_BACKENDS
_ALL_CACHE_OPTIONS = cache_options.ALL_CACHE_OPTIONS
_REDIS_CHECKED = cache_options.REDIS_CHECKED
