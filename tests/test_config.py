"""Configuration loading and validation (DESIGN.md §6; research/peer.md §2).

Every postfix-mta-sts-resolver 1.5.1 key must load with the same meaning and
default; anything else must stop with a ConfigError naming file, key and problem.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtasts_fast import defaults
from mtasts_fast.config import (
    CACHE_TYPES,
    CacheConfig,
    Config,
    ProactiveFetchConfig,
    ZoneConfig,
)
from mtasts_fast.config.zones import socketmap_zones
from mtasts_fast.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config_examples" / "internal.yml"

# The defaults written out by hand (not read from defaults.py), so that a
# changed default fails here. Values from postfix-mta-sts-resolver 1.5.1 for
# its keys, from DESIGN.md for ours.
DEFAULTS: dict[str, object] = {
    "host": "127.0.0.1",
    "port": 8461,
    "path": None,
    "mode": None,
    "owner": None,
    "group": None,
    "reuse_port": True,
    "backlog": 1024,
    "idle_timeout": 300.0,
    "max_connections": 10_000,
    "shutdown_timeout": 20.0,
    "cache_grace": 60.0,
    "cache.type": "lmdb",
    "cache.options": {
        "path": "/var/lib/mta-sts/cache.lmdb",
        "map_size": 1 << 30,
        "max_entries": 1_000_000,
    },
    "proactive_policy_fetching.enabled": False,
    "proactive_policy_fetching.interval": 86400.0,
    "proactive_policy_fetching.concurrency_limit": 100,
    "proactive_policy_fetching.grace_ratio": 2.0,
    "default_zone.strict_testing": False,
    "default_zone.timeout": 4.0,
    "default_zone.require_sni": True,
    "default_zone.tlsrpt": False,
    "default_zone.dane": "precedence",
    "zones": {},
    "nameservers": (),
    "ca_file": None,
    "dnssec_probe_name": ".",
    "dnssec_probe_interval": 3600.0,
}


def pick(config: Config, dotted: str) -> Any:
    """``pick(config, "cache.options.url")``: attributes, then mapping keys."""
    value: Any = config
    for part in dotted.split("."):
        value = value[part] if isinstance(value, Mapping) else getattr(value, part)
    return value


def write(tmp_path: Path, text: str | bytes, name: str = "mta-sts-daemon.yml") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def load(tmp_path: Path, text: str) -> Config:
    return Config.from_yaml(write(tmp_path, text))


def same_settings(a: Config, b: Config) -> bool:
    return dataclasses.replace(a, filename="") == dataclasses.replace(b, filename="")


# --------------------------------------------------------------------------
# Defaults


def test_default_values() -> None:
    config = Config.default()
    assert config.filename == "<defaults>"
    for key, expected in DEFAULTS.items():
        assert pick(config, key) == expected, key
    assert isinstance(config.port, int)
    assert all(isinstance(pick(config, k), float) for k in ("idle_timeout", "cache_grace"))
    assert isinstance(config.default_zone.timeout, float)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("\n\n", id="blank-lines"),
        pytest.param("# nothing here\n  # at all\n", id="comments-only"),
        pytest.param("null\n", id="null"),
        pytest.param("~\n", id="tilde"),
        pytest.param("---\n", id="document-marker-only"),
        pytest.param("{}\n", id="empty-mapping"),
        pytest.param(
            "cache:\ndefault_zone:\nzones:\nproactive_policy_fetching:\nnameservers:\n",
            id="sections-with-everything-commented-out",
        ),
        pytest.param(
            "path: null\nmode: ~\nowner: null\ngroup: null\nca_file: null\n",
            id="optional-keys-null",
        ),
    ],
)
def test_defaults_from_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    config = Config.from_yaml(path)
    assert config.filename == path
    assert same_settings(config, Config.default())


def test_defaults_from_dev_null() -> None:
    config = Config.from_yaml(os.devnull)
    assert config.filename == os.devnull
    assert same_settings(config, Config.default())


@pytest.mark.parametrize("data", [None, {}], ids=["none", "empty-dict"])
def test_defaults_from_mapping(data: object) -> None:
    config = Config.from_mapping(data)
    assert config.filename == "<config>"
    assert same_settings(config, Config.default())


def test_example_file_documents_the_defaults() -> None:
    # config_examples/internal.yml writes out every key with its default,
    # except the cache: it shows the `internal` backend (the default is lmdb,
    # in config_examples/lmdb-workers.yml). `workers` defaults to the CPU
    # count, so the file leaves it commented out.
    config = Config.from_yaml(EXAMPLE)
    assert config.cache.type == "internal"
    assert same_settings(
        dataclasses.replace(config, cache=Config.default().cache), Config.default()
    )
    # ...and really writes out every key (not just leaves it to the defaults).
    document = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert "\n# workers: " in EXAMPLE.read_text(encoding="utf-8")
    assert set(document) == {f.name for f in dataclasses.fields(Config)} - {
        "filename",
        "workers",
    }
    assert set(document["default_zone"]) == {f.name for f in dataclasses.fields(ZoneConfig)}
    assert set(document["proactive_policy_fetching"]) == {
        f.name for f in dataclasses.fields(ProactiveFetchConfig)
    }
    assert document["cache"] == {"type": "internal", "options": {"cache_size": 10_000}}


def test_defaults_module_matches_defaults() -> None:
    assert defaults.CONFIG_PATH == "/etc/mta-sts-daemon.yml"
    assert defaults.CACHE_TYPE in CACHE_TYPES
    assert defaults.BACKLOG > 100  # asyncio's default overflows
    assert defaults.IDLE_TIMEOUT > 100  # Postfix recycles connections at 100 s
    assert defaults.MAX_PAYLOAD == 10_000
    assert ZoneConfig() == Config.default().default_zone


# --------------------------------------------------------------------------
# postfix-mta-sts-resolver config files load unchanged


OLD_INTERNAL = """\
host: 127.0.0.1
port: 8461
reuse_port: true
shutdown_timeout: 20
cache_grace: 60
proactive_policy_fetching:
  enabled: true
  interval: 86400
  concurrency_limit: 100
  grace_ratio: 2.0
cache:
  type: internal
  options:
    cache_size: 10000
default_zone:
  strict_testing: false
  timeout: 4
  require_sni: true
  tlsrpt: false
zones:
  myzone:
    strict_testing: false
    timeout: 4
"""

OLD_SQLITE = """\
host: 0.0.0.0
port: 18461
reuse_port: true
shutdown_timeout: 1
cache_grace: 0
cache:
  type: sqlite
  options:
    filename: "/var/lib/mta-sts/cache.db"
    threads: 4
    timeout: 2.5
default_zone:
  strict_testing: true
  timeout: 10
zones:
  nosni:
    require_sni: false
  tlsrptzone:
    tlsrpt: true
"""

OLD_SQLITE_UNIX = """\
path: "/var/run/mta-sts.sock"
mode: 0666
shutdown_timeout: 20
cache:
  type: sqlite
  options:
    filename: "/var/lib/mta-sts/cache.db"
default_zone:
  strict_testing: false
  timeout: 4
zones:
  myzone:
    strict_testing: false
    timeout: 4
"""

OLD_REDIS = """\
host: "::1"
port: 8461
reuse_port: true
shutdown_timeout: 20
cache:
  type: redis
  options:
    url: "redis://127.0.0.1/0"
    max_connections: 25
    socket_timeout: 1.0
    socket_connect_timeout: 1.0
    password: "s3cret"
    health_check_interval: 30
default_zone:
  strict_testing: false
  timeout: 4
"""

OLD_REDIS_SENTINEL = """\
host: 127.0.0.1
port: 8461
cache:
  type: redis_sentinel
  options:
    sentinel_master_name: "primary"
    sentinels:
      - ["sentinel-a", 26379]
      - ["sentinel-b", 26380]
    password: "s3cret"
    max_connections: 25
default_zone:
  timeout: 4
"""

OLD_POSTGRES = """\
host: 127.0.0.1
port: 8461
cache:
  type: postgres
  options:
    dsn: postgres://mta@%2Frun%2Fpostgresql/mta
    timeout: 3
    max_size: 20
    min_size: 2
    server_settings:
      application_name: mta-sts
zones:
  aaa: {}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            OLD_INTERNAL,
            {
                "cache.type": "internal",
                "cache.options": {"cache_size": 10_000},
                "proactive_policy_fetching.enabled": True,
                "proactive_policy_fetching.interval": 86400.0,
                "zones.myzone": ZoneConfig(),
            },
            id="internal",
        ),
        pytest.param(
            OLD_SQLITE,
            {
                "host": "0.0.0.0",
                "port": 18461,
                "shutdown_timeout": 1.0,
                "cache_grace": 0.0,
                "cache.options": {
                    "filename": "/var/lib/mta-sts/cache.db",
                    "threads": 4,
                    "timeout": 2.5,
                },
                "default_zone": ZoneConfig(strict_testing=True, timeout=10.0),
                "zones.nosni": ZoneConfig(require_sni=False),
                "zones.tlsrptzone": ZoneConfig(tlsrpt=True),
            },
            id="sqlite",
        ),
        pytest.param(
            OLD_SQLITE_UNIX,
            {
                "path": "/var/run/mta-sts.sock",
                "mode": 0o666,
                "owner": None,
                "cache.type": "sqlite",
                "cache.options": {
                    "filename": "/var/lib/mta-sts/cache.db",
                    "threads": os.cpu_count() or 1,
                    "timeout": 5.0,
                },
            },
            id="sqlite-unix-socket-mode-0666",
        ),
        pytest.param(
            OLD_REDIS,
            {
                "host": "::1",
                "cache.options": {
                    "url": "redis://127.0.0.1/0",
                    "max_connections": 25,
                    "socket_timeout": 1.0,
                    "socket_connect_timeout": 1.0,
                    "password": "s3cret",
                    "health_check_interval": 30,
                },
            },
            id="redis-extra-options-passed-through",
        ),
        pytest.param(
            OLD_REDIS_SENTINEL,
            {
                "cache.options": {
                    "sentinels": (("sentinel-a", 26379), ("sentinel-b", 26380)),
                    "sentinel_master_name": "primary",
                    "password": "s3cret",
                    "max_connections": 25,
                    "socket_timeout": 5.0,
                    "socket_connect_timeout": 5.0,
                },
            },
            id="redis-sentinel",
        ),
        pytest.param(
            OLD_POSTGRES,
            {
                "cache.options": {
                    "dsn": "postgres://mta@%2Frun%2Fpostgresql/mta",
                    "timeout": 3.0,
                    "max_size": 20,
                    "min_size": 2,
                    "server_settings": {"application_name": "mta-sts"},
                },
                "zones.aaa": ZoneConfig(),
            },
            id="postgres-extra-options-passed-through",
        ),
    ],
)
def test_old_daemon_configs(tmp_path: Path, text: str, expected: dict[str, object]) -> None:
    config = load(tmp_path, text)
    for key, value in expected.items():
        assert pick(config, key) == value, key
    # Keys the file does not mention keep their defaults.
    assert config.backlog == 1024
    assert config.idle_timeout == 300.0


@pytest.mark.parametrize("cache_type", ["redis", "redis_sentinel"])
def test_redis_socket_timeouts_default_to_5(cache_type: str) -> None:
    options: dict[str, object] = (
        {"url": "redis://localhost"}
        if cache_type == "redis"
        else {"sentinels": [["localhost", 26379]], "sentinel_master_name": "m"}
    )
    config = Config.from_mapping({"cache": {"type": cache_type, "options": options}})
    assert config.cache.options["socket_timeout"] == 5.0
    assert config.cache.options["socket_connect_timeout"] == 5.0


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        pytest.param({"type": "internal"}, {"cache_size": 10_000}, id="internal"),
        pytest.param(
            {"type": "lmdb"},
            {
                "path": "/var/lib/mta-sts/cache.lmdb",
                "map_size": 1 << 30,
                "max_entries": 1_000_000,
            },
            id="lmdb",
        ),
        pytest.param(
            {"type": "lmdb", "options": {"map_size": 1 << 20, "path": "/tmp/c.lmdb"}},
            {"path": "/tmp/c.lmdb", "map_size": 1 << 20, "max_entries": 1_000_000},
            id="lmdb-partial",
        ),
        pytest.param({"options": {"cache_size": 5}}, {"cache_size": 5}, id="type-defaults"),
        pytest.param({"type": "internal", "options": None}, {"cache_size": 10_000}, id="null"),
    ],
)
def test_cache_options_without_options_block(
    cache: dict[str, object], expected: dict[str, object]
) -> None:
    # The old daemon died with KeyError: 'options' for any type but internal.
    config = Config.from_mapping({"cache": cache})
    assert config.cache == CacheConfig(type=config.cache.type, options=expected)


def test_cache_options_are_read_only_and_not_shared() -> None:
    data: dict[str, Any] = {
        "cache": {
            "type": "postgres",
            "options": {"dsn": "postgresql://x/y", "server_settings": {"a": "1"}},
        }
    }
    config = Config.from_mapping(data)
    with pytest.raises(TypeError):
        config.cache.options["dsn"] = "changed"  # type: ignore[index]
    data["cache"]["options"]["server_settings"]["a"] = "2"
    assert config.cache.options["server_settings"] == {"a": "1"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------
# Zones


def test_zones_get_the_builtin_defaults() -> None:
    config = Config.from_mapping({"zones": {"aaa": {}, "bbb": {}}})
    assert dict(config.zones) == {"aaa": ZoneConfig(), "bbb": ZoneConfig()}
    assert config.zones["aaa"] == ZoneConfig(
        strict_testing=False, timeout=4.0, require_sni=True, tlsrpt=False
    )


def test_zone_does_not_inherit_default_zone() -> None:
    custom = {"strict_testing": True, "timeout": 9, "require_sni": False, "tlsrpt": True}
    config = Config.from_mapping({"default_zone": custom, "zones": {"aaa": {}, "bbb": None}})
    assert config.default_zone == ZoneConfig(True, 9.0, False, True)
    assert config.zones["aaa"] == ZoneConfig()
    assert config.zones["bbb"] == ZoneConfig()


@pytest.mark.parametrize(
    ("map_name", "expected"),
    [
        pytest.param("tlsrpt", ZoneConfig(tlsrpt=True), id="named-zone"),
        pytest.param("nosni", ZoneConfig(require_sni=False), id="other-named-zone"),
        pytest.param("postfix", ZoneConfig(timeout=2.0), id="unknown-name-gets-default"),
        pytest.param("", ZoneConfig(timeout=2.0), id="empty-name-gets-default"),
        pytest.param("TLSRPT", ZoneConfig(timeout=2.0), id="names-are-case-sensitive"),
    ],
)
def test_zone_for(map_name: str, expected: ZoneConfig) -> None:
    config = Config.from_mapping(
        {
            "default_zone": {"timeout": 2},
            "zones": {"tlsrpt": {"tlsrpt": True}, "nosni": {"require_sni": False}},
        }
    )
    assert config.zone_for(map_name) == expected


@pytest.mark.parametrize(
    ("zones", "map_name", "expected"),
    [
        pytest.param(
            {},
            "QUERYwithTLSRPT",
            ZoneConfig(timeout=2.0, tlsrpt_testing_level="may", tlsrpt=True),
            id="tlspol-tlsrpt-name-is-default-zone-with-tlsrpt",
        ),
        pytest.param(
            {},
            "QUERY",
            ZoneConfig(timeout=2.0, tlsrpt_testing_level="may"),
            id="tlspol-query-name-is-default-zone",
        ),
        pytest.param(
            {"QUERYwithTLSRPT": {"require_sni": False}},
            "QUERYwithTLSRPT",
            ZoneConfig(require_sni=False),
            id="configured-zone-of-that-name-wins",
        ),
        pytest.param(
            {"QUERY": {"tlsrpt": True}},
            "QUERY",
            ZoneConfig(tlsrpt=True),
            id="configured-query-zone-wins",
        ),
        pytest.param(
            {},
            "querywithtlsrpt",
            ZoneConfig(timeout=2.0, tlsrpt_testing_level="may"),
            id="tlspol-names-are-case-sensitive",
        ),
    ],
)
def test_postfix_tlspol_map_names(
    zones: dict[str, object], map_name: str, expected: ZoneConfig
) -> None:
    """postfix-tlspol's main.cf lines work without a zone configured (issue 13)."""
    config = Config.from_mapping(
        {"default_zone": {"timeout": 2, "tlsrpt_testing_level": "may"}, "zones": zones}
    )
    assert config.zone_for(map_name) == expected
    if map_name in ("QUERY", "QUERYwithTLSRPT"):
        assert socketmap_zones(config.default_zone, config.zones)[map_name] == expected
    # The built-in names never appear among the configured zones.
    assert set(config.zones) == set(zones)


@pytest.mark.parametrize("level", ["notfound", "may", "encrypt", "dane"])
def test_tlsrpt_testing_level_values(level: str) -> None:
    config = Config.from_mapping({"zones": {"z": {"tlsrpt": True, "tlsrpt_testing_level": level}}})
    assert config.zones["z"].tlsrpt_testing_level == level


# --------------------------------------------------------------------------
# Accepted spellings


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        pytest.param("mode: 0660\npath: /s", "mode", 0o660, id="mode-yaml-octal"),
        pytest.param("mode: '0660'\npath: /s", "mode", 0o660, id="mode-string-octal"),
        pytest.param("mode: '660'\npath: /s", "mode", 0o660, id="mode-string-without-zero"),
        pytest.param("mode: '0o660'\npath: /s", "mode", 0o660, id="mode-string-0o"),
        pytest.param("mode: 0o660\npath: /s", "mode", 0o660, id="mode-0o-is-a-string-in-yaml11"),
        pytest.param("mode: 0\npath: /s", "mode", 0, id="mode-zero"),
        pytest.param("mode: 0666", "mode", 0o666, id="mode-without-path-ignored-like-old"),
        pytest.param("port: '8461'", "port", 8461, id="port-quoted-worked-in-old"),
        pytest.param("port: 1", "port", 1, id="port-min"),
        pytest.param("port: 65535", "port", 65535, id="port-max"),
        pytest.param("reuse_port: false", "reuse_port", False, id="reuse-port-false"),
        pytest.param("reuse_port: no", "reuse_port", False, id="bool-yaml11-no"),
        pytest.param("default_zone: {tlsrpt: on}", "default_zone.tlsrpt", True, id="bool-on"),
        pytest.param("default_zone: {timeout: 1}", "default_zone.timeout", 1.0, id="int-as-float"),
        pytest.param("default_zone: {timeout: 0.5}", "default_zone.timeout", 0.5, id="float"),
        pytest.param("shutdown_timeout: 0", "shutdown_timeout", 0.0, id="shutdown-timeout-0"),
        pytest.param("cache_grace: 0", "cache_grace", 0.0, id="cache-grace-0"),
        pytest.param("path: /s\nowner: postfix", "owner", "postfix", id="owner-name"),
        pytest.param("path: /s\nowner: 1000", "owner", "1000", id="owner-numeric"),
        pytest.param("path: /s\ngroup: mail", "group", "mail", id="group-name"),
        pytest.param("path: /s\ngroup: 0", "group", "0", id="group-root-id"),
        pytest.param("backlog: 4096", "backlog", 4096, id="backlog"),
        pytest.param("idle_timeout: 0.5", "idle_timeout", 0.5, id="idle-timeout"),
        pytest.param("max_connections: 1", "max_connections", 1, id="max-connections-min"),
        pytest.param("ca_file: /etc/ssl/ca.pem", "ca_file", "/etc/ssl/ca.pem", id="ca-file"),
        pytest.param(
            "nameservers: [1.1.1.1, '9.9.9.9:5353', '2001:db8::53', '[2001:db8::53]:5353']",
            "nameservers",
            ("1.1.1.1", "9.9.9.9:5353", "2001:db8::53", "[2001:db8::53]:5353"),
            id="nameservers-forms",
        ),
        pytest.param(
            "nameservers: ['[2001:DB8:0::53]', '127.0.0.1:053']",
            "nameservers",
            ("2001:db8::53", "127.0.0.1:53"),
            id="nameservers-canonical",
        ),
        pytest.param("nameservers: []", "nameservers", (), id="nameservers-empty"),
        # DANE comes first (DESIGN.md §7); YAML 1.1 reads an unquoted off as false.
        pytest.param("default_zone: {dane: all}", "default_zone.dane", "all", id="dane-all"),
        pytest.param("default_zone: {dane: off}", "default_zone.dane", "off", id="dane-off-bool"),
        pytest.param("zones: {z: {dane: 'off'}}", "zones.z.dane", "off", id="dane-off-quoted"),
        pytest.param("zones: {z: {}}", "zones.z.dane", "precedence", id="dane-zone-default"),
        pytest.param("dnssec_probe_name: .", "dnssec_probe_name", ".", id="probe-root"),
        pytest.param(
            "dnssec_probe_name: Dane.Test.", "dnssec_probe_name", "dane.test", id="probe-name"
        ),
        pytest.param(
            "dnssec_probe_interval: 60", "dnssec_probe_interval", 60.0, id="probe-interval"
        ),
        pytest.param("metrics: {port: 9461}", "metrics.port", 9461, id="metrics-port"),
        pytest.param("metrics: {port: 9461}", "metrics.host", "127.0.0.1", id="metrics-host"),
        pytest.param("metrics: {host: '::1', port: 1}", "metrics.host", "::1", id="metrics-v6"),
        pytest.param("metrics: {path: /run/m.sock}", "metrics.path", "/run/m.sock", id="m-path"),
        pytest.param("metrics: {path: /m, mode: '0640'}", "metrics.mode", 0o640, id="m-mode"),
        pytest.param("path: /s\nmetrics: {port: 8461}", "metrics.port", 8461, id="m-unix-map"),
        pytest.param("metrics:", "metrics", None, id="metrics-commented-out"),
        pytest.param("log_format: json", "log_format", "json", id="log-format-json"),
        pytest.param("log_format: text", "log_format", "text", id="log-format-text"),
    ],
)
def test_accepted_values(tmp_path: Path, text: str, key: str, expected: object) -> None:
    config = load(tmp_path, text)
    value = pick(config, key)
    assert value == expected
    assert type(value) is type(expected)


def test_merge_keys_and_anchors(tmp_path: Path) -> None:
    # YAML merge keys let zones share settings; an override is not a duplicate.
    config = load(
        tmp_path,
        "default_zone: &base {timeout: 7, require_sni: false}\n"
        "zones:\n"
        "  a: *base\n"
        "  b:\n"
        "    <<: *base\n"
        "    timeout: 2\n",
    )
    assert config.zones["a"] == ZoneConfig(timeout=7.0, require_sni=False)
    assert config.zones["b"] == ZoneConfig(timeout=2.0, require_sni=False)


def test_from_mapping_accepts_any_mapping_and_tuples() -> None:
    from types import MappingProxyType

    config = Config.from_mapping(
        MappingProxyType({"nameservers": ("1.1.1.1",), "zones": MappingProxyType({"z": {}})})
    )
    assert config.nameservers == ("1.1.1.1",)
    assert config.zone_for("z") == ZoneConfig()


# --------------------------------------------------------------------------
# Rejected configs: ConfigError(file, key path, problem)


REJECTED = [
    # unknown keys
    pytest.param("hots: x", "hots", "unknown key (did you mean 'host'?)", id="unknown-top-key"),
    pytest.param("frobnicate: 1", "frobnicate", "unknown key", id="unknown-top-key-no-suggestion"),
    pytest.param(
        "default_zone: {timout: 3}",
        "default_zone.timout",
        "unknown key (did you mean 'timeout'?)",
        id="unknown-zone-key-suggestion",
    ),
    pytest.param(
        "zones: {aaa: {strict: true}}",
        "zones.aaa.strict",
        "did you mean 'strict_testing'?",
        id="unknown-key-in-named-zone",
    ),
    pytest.param(
        "default_zone: {tlsrpt_testing_level: secure}",
        "default_zone.tlsrpt_testing_level",
        "expected one of notfound, may, encrypt, dane, got 'secure'",
        id="testing-level-that-would-enforce",
    ),
    pytest.param(
        "zones: {z: {tlsrpt_testing_level: none}}",
        "zones.z.tlsrpt_testing_level",
        "expected one of notfound, may, encrypt, dane, got 'none'",
        id="testing-level-none-turns-tls-off",
    ),
    pytest.param(
        "proactive_policy_fetching: {enable: true}",
        "proactive_policy_fetching.enable",
        "did you mean 'enabled'?",
        id="unknown-proactive-key",
    ),
    pytest.param(
        "tlsrpt: true",
        "tlsrpt",
        "zone settings go under default_zone",
        id="zone-key-at-top-level",
    ),
    pytest.param(
        "cache: {type: sqlite, filename: /x}",
        "cache.filename",
        "backend settings go under cache.options",
        id="cache-option-outside-options",
    ),
    pytest.param(
        "cache: {type: sqlite, options: {filname: /x}}",
        "cache.options.filname",
        "did you mean 'filename'?",
        id="unknown-sqlite-option",
    ),
    pytest.param(
        "cache: {options: {filename: /x}}",
        "cache.options.filename",
        "cache type 'lmdb' takes path, map_size, max_entries",
        id="option-of-another-cache-type",
    ),
    pytest.param("1: x", "1", "keys must be strings", id="non-string-key"),
    # wrong types
    pytest.param("host: 8461", "host", "expected a string, got 8461", id="str-got-int"),
    pytest.param("host: ''", "host", "must not be empty", id="str-empty"),
    pytest.param("host: 'a b'", "host", "must not contain spaces", id="host-with-space"),
    pytest.param("path: [a]", "path", "expected a string, got a list", id="str-got-list"),
    pytest.param("port: abc", "port", "expected an integer, got 'abc'", id="int-got-str"),
    pytest.param("port: 84.61", "port", "expected an integer, got 84.61", id="int-got-float"),
    pytest.param("port: true", "port", "expected an integer, got true", id="int-got-bool"),
    pytest.param("port:", "port", "expected an integer, got null", id="int-got-null"),
    pytest.param(
        "max_connections: '10'",
        "max_connections",
        "expected an integer, got '10'",
        id="int-got-quoted",
    ),
    pytest.param(
        "default_zone: {timeout: 4s}",
        "default_zone.timeout",
        "expected a number, got '4s'",
        id="float-got-str",
    ),
    pytest.param(
        "cache_grace: []", "cache_grace", "expected a number, got a list", id="float-list"
    ),
    pytest.param(
        "default_zone: {timeout: yes}",
        "default_zone.timeout",
        "expected a number, got true",
        id="float-got-bool",
    ),
    pytest.param("reuse_port: 1", "reuse_port", "expected true or false, got 1", id="bool-got-int"),
    pytest.param(
        "default_zone: {strict_testing: 'yes'}",
        "default_zone.strict_testing",
        "expected true or false, got 'yes'",
        id="bool-got-quoted-string",
    ),
    pytest.param(
        "proactive_policy_fetching: {enabled: ~}",
        "proactive_policy_fetching.enabled",
        "expected true or false, got null",
        id="bool-got-null",
    ),
    pytest.param(
        "nameservers: 1.1.1.1", "nameservers", "expected a list, got '1.1.1.1'", id="list-got-str"
    ),
    pytest.param(
        "default_zone: [timeout]",
        "default_zone",
        "expected a mapping, got a list",
        id="mapping-got-list",
    ),
    pytest.param(
        "cache: internal", "cache", "expected a mapping, got 'internal'", id="mapping-str"
    ),
    pytest.param(
        "zones: [aaa, bbb]", "zones", "expected a mapping of zone names", id="zones-got-list"
    ),
    pytest.param("zones: {aaa: 1}", "zones.aaa", "expected a mapping, got 1", id="zone-got-int"),
    pytest.param(
        "host: 2024-01-01", "host", "expected a string, got a date", id="str-got-yaml-date"
    ),
    # impossible values
    pytest.param("port: 0", "port", "must be between 1 and 65535, got 0", id="port-0"),
    pytest.param("port: 65536", "port", "must be between 1 and 65535", id="port-65536"),
    pytest.param("port: '99999999999'", "port", "must be between 1 and 65535", id="port-str-big"),
    pytest.param("port: -1", "port", "must be between 1 and 65535, got -1", id="port-negative"),
    pytest.param(
        "default_zone: {timeout: 0}",
        "default_zone.timeout",
        "must be greater than 0, got 0",
        id="zone-timeout-0",
    ),
    pytest.param(
        "zones: {z: {timeout: -1.5}}",
        "zones.z.timeout",
        "must be greater than 0, got -1.5",
        id="zone-timeout-negative",
    ),
    pytest.param(
        "default_zone: {timeout: .inf}",
        "default_zone.timeout",
        "must be a finite number, got inf",
        id="timeout-inf",
    ),
    pytest.param(
        "default_zone: {timeout: .nan}",
        "default_zone.timeout",
        "must be a finite number, got nan",
        id="timeout-nan",
    ),
    pytest.param(
        "cache_grace: -1", "cache_grace", "must be at least 0, got -1", id="cache-grace-negative"
    ),
    pytest.param(
        "shutdown_timeout: -1", "shutdown_timeout", "must be at least 0", id="shutdown-negative"
    ),
    pytest.param("idle_timeout: 0", "idle_timeout", "must be greater than 0", id="idle-timeout-0"),
    pytest.param(
        "max_connections: 0", "max_connections", "must be at least 1, got 0", id="max-conn-0"
    ),
    pytest.param("backlog: 0", "backlog", "must be between 1 and 65535, got 0", id="backlog-0"),
    pytest.param("backlog: 70000", "backlog", "must be between 1 and 65535", id="backlog-huge"),
    pytest.param(
        "cache: {options: {cache_size: 0}}",
        "cache.options.cache_size",
        "must be at least 1, got 0",
        id="cache-size-0",
    ),
    pytest.param(
        "cache: {type: sqlite, options: {filename: /x, threads: 0}}",
        "cache.options.threads",
        "must be at least 1",
        id="sqlite-threads-0",
    ),
    pytest.param(
        "cache: {type: sqlite, options: {filename: /x, timeout: 0}}",
        "cache.options.timeout",
        "must be greater than 0",
        id="sqlite-timeout-0",
    ),
    pytest.param(
        "cache: {type: lmdb, options: {map_size: 1000}}",
        "cache.options.map_size",
        "must be between 1048576 and",
        id="lmdb-map-size-tiny",
    ),
    pytest.param(
        "cache: {type: lmdb, options: {max_entries: 0}}",
        "cache.options.max_entries",
        "must be at least 1",
        id="lmdb-max-entries-0",
    ),
    pytest.param(
        "proactive_policy_fetching: {concurrency_limit: 0}",
        "proactive_policy_fetching.concurrency_limit",
        "must be at least 1",
        id="concurrency-0",
    ),
    pytest.param(
        "proactive_policy_fetching: {interval: 0}",
        "proactive_policy_fetching.interval",
        "must be greater than 0",
        id="interval-0",
    ),
    pytest.param(
        "proactive_policy_fetching: {grace_ratio: 0}",
        "proactive_policy_fetching.grace_ratio",
        "must be greater than 0",
        id="grace-ratio-0",
    ),
    # unix socket
    pytest.param(
        "mode: rw-rw----", "mode", "expected permission bits in octal like 0660", id="mode-symbolic"
    ),
    pytest.param("mode: '0999'", "mode", "in octal like 0660, got '0999'", id="mode-not-octal"),
    pytest.param("mode: ''", "mode", "in octal like 0660", id="mode-empty-string"),
    pytest.param("mode: 1.5", "mode", "in octal like 0660, got 1.5", id="mode-float"),
    pytest.param("mode: true", "mode", "in octal like 0660, got true", id="mode-bool"),
    pytest.param(
        "mode: 010000", "mode", "must be between 0 and 0o7777, got 0o10000", id="mode-big"
    ),
    pytest.param("mode: -1", "mode", "must be between 0 and 0o7777", id="mode-negative"),
    pytest.param("owner: postfix", "owner", "set 'path' too", id="owner-without-path"),
    pytest.param("group: mail", "group", "set 'path' too", id="group-without-path"),
    pytest.param("path: /s\nowner: -1", "owner", "must not be negative", id="owner-negative"),
    pytest.param(
        "path: /s\ngroup: [a]", "group", "expected a name or a numeric id", id="group-list"
    ),
    pytest.param('path: "/a\\0b"', "path", "NUL", id="path-with-nul"),
    # nameservers
    pytest.param(
        "nameservers: [1.1.1.1, dns.google]",
        "nameservers[1]",
        "expected an IP address, 'ip:port' or '[ipv6]:port', got 'dns.google'",
        id="nameserver-hostname",
    ),
    pytest.param(
        "nameservers: ['1.1.1.1:0']", "nameservers[0]", "the port must be between 1", id="ns-port-0"
    ),
    pytest.param(
        "nameservers: ['1.1.1.1:65536']", "nameservers[0]", "the port must be", id="ns-port-big"
    ),
    pytest.param(
        "nameservers: ['1.1.1.1:dns']", "nameservers[0]", "the port must be", id="ns-port-name"
    ),
    pytest.param("nameservers: ['1.1.1.1:']", "nameservers[0]", "the port", id="ns-port-empty"),
    pytest.param(
        "nameservers: ['[1.1.1.1]:53']",
        "nameservers[0]",
        "brackets are only for IPv6",
        id="ns-brackets-v4",
    ),
    pytest.param(
        "nameservers: ['[::1']",
        "nameservers[0]",
        "expected an IP address",
        id="ns-unclosed-bracket",
    ),
    pytest.param(
        "nameservers: ['[::1]53']", "nameservers[0]", "expected an IP address", id="ns-no-colon"
    ),
    pytest.param(
        "nameservers: ['1.2.3.256']", "nameservers[0]", "expected an IP address", id="ns-bad-ipv4"
    ),
    pytest.param("nameservers: [53]", "nameservers[0]", "expected a string, got 53", id="ns-int"),
    pytest.param("nameservers: ['']", "nameservers[0]", "must not be empty", id="ns-empty"),
    # cache
    pytest.param(
        "cache: {type: memcached}",
        "cache.type",
        "unknown cache type 'memcached' (valid: internal, lmdb, sqlite, redis, "
        "redis_sentinel, postgres)",
        id="unknown-cache-type",
    ),
    pytest.param(
        "cache: {type: sqlite}",
        "cache.options.filename",
        "required for cache type 'sqlite'",
        id="sqlite-without-options",
    ),
    pytest.param(
        "cache: {type: sqlite, options: {filename: }}",
        "cache.options.filename",
        "required for cache type 'sqlite'",
        id="sqlite-filename-null",
    ),
    pytest.param(
        "cache: {type: redis, options: {max_connections: 5}}",
        "cache.options.url",
        "required for cache type 'redis'",
        id="redis-without-url",
    ),
    pytest.param(
        "cache: {type: redis, options: {url: 'localhost:6379'}}",
        "cache.options.url",
        "expected a URL starting with redis://, rediss:// or unix://",
        id="redis-url-scheme",
    ),
    pytest.param(
        "cache: {type: redis, options: {url: 'redis://x', socket_timeout: 0}}",
        "cache.options.socket_timeout",
        "must be greater than 0",
        id="redis-known-option-checked",
    ),
    pytest.param(
        "cache: {type: redis, options: {url: 'redis://x', 5: 1}}",
        "cache.options.5",
        "keys must be strings",
        id="redis-passthrough-key-not-string",
    ),
    pytest.param(
        "cache: {type: redis_sentinel, options: {sentinel_master_name: m}}",
        "cache.options.sentinels",
        "required for cache type 'redis_sentinel'",
        id="sentinel-without-sentinels",
    ),
    pytest.param(
        "cache: {type: redis_sentinel, options: {sentinels: [[a, 1]]}}",
        "cache.options.sentinel_master_name",
        "required for cache type 'redis_sentinel'",
        id="sentinel-without-master",
    ),
    pytest.param(
        "cache: {type: redis_sentinel, options: {sentinel_master_name: m, sentinels: []}}",
        "cache.options.sentinels",
        "at least one sentinel",
        id="sentinel-empty-list",
    ),
    pytest.param(
        "cache: {type: redis_sentinel, options: {sentinel_master_name: m, sentinels: [a:1]}}",
        "cache.options.sentinels[0]",
        "expected a list, got 'a:1'",
        id="sentinel-not-a-pair",
    ),
    pytest.param(
        "cache: {type: redis_sentinel, options: {sentinel_master_name: m, "
        "sentinels: [[a, 1], [b, 0]]}}",
        "cache.options.sentinels[1][1]",
        "must be between 1 and 65535, got 0",
        id="sentinel-bad-port",
    ),
    pytest.param(
        "cache: {type: redis_sentinel, options: {sentinel_master_name: m, sentinels: [[a]]}}",
        "cache.options.sentinels[0]",
        "expected [host, port], got a list of 1 items",
        id="sentinel-short-pair",
    ),
    pytest.param(
        "cache: {type: postgres, options: {dsn: 'host=/run/postgresql'}}",
        "cache.options.dsn",
        "expected a URL starting with postgres:// or postgresql://",
        id="postgres-dsn-not-url",
    ),
    pytest.param(
        "cache: {type: postgres, options: {dsn: 'postgres://x', min_size: 5, max_size: 2}}",
        "cache.options.min_size",
        "must not be larger than max_size",
        id="postgres-min-above-max",
    ),
    # zone names
    pytest.param("zones: {'': {}}", "zones.", "must not be empty", id="zone-name-empty"),
    pytest.param("zones: {'a b': {}}", "zones.a b", "must not contain spaces", id="zone-space"),
    pytest.param("zones: {2024: {}}", "zones.2024", "must be a string", id="zone-name-int"),
    # document shape
    pytest.param("- host: x", "", "top level must be a mapping", id="top-level-list"),
    pytest.param("just words", "", "top level must be a mapping", id="top-level-scalar"),
    pytest.param(
        "host: a\nport: 1\nhost: b\n",
        "",
        "line 3, column 1: while constructing a mapping; found duplicate key 'host'",
        id="duplicate-key",
    ),
    pytest.param(
        "host: 1.2.3.4\n  port: 8461\n",
        "",
        "invalid YAML at line 2, column 7",
        id="yaml-syntax-error",
    ),
    pytest.param("default_zone: {timeout: 4\n", "", "invalid YAML at line 2", id="yaml-unclosed"),
    pytest.param("a: 1\n---\nb: 2\n", "", "invalid YAML at line 2", id="yaml-two-documents"),
    pytest.param("host: !!python/name:os.system\n", "", "invalid YAML", id="yaml-python-tag"),
    pytest.param("host: 2024-13-45\n", "", "invalid YAML", id="yaml-impossible-date"),
    pytest.param(
        "default_zone: {dane: on}",
        "default_zone.dane",
        "expected one of precedence, all, off, got true",
        id="dane-on",
    ),
    pytest.param(
        "zones: {z: {dane: sometimes}}",
        "zones.z.dane",
        "expected one of precedence, all, off, got 'sometimes'",
        id="dane-unknown-mode",
    ),
    pytest.param(
        "dane: all",
        "dane",
        "zone settings go under default_zone or zones.<name>: default_zone.dane",
        id="dane-at-top-level",
    ),
    pytest.param(
        "dnssec_probe_name: 'dane test'",
        "dnssec_probe_name",
        "expected a DNS name such as example.org or '.', got 'dane test'",
        id="probe-name-with-space",
    ),
    pytest.param(
        "dnssec_probe_name: 192.0.2.1:53",
        "dnssec_probe_name",
        "expected a DNS name",
        id="probe-name-is-not-a-server",
    ),
    pytest.param(
        "dnssec_probe_interval: 0", "dnssec_probe_interval", "greater than 0", id="probe-interval-0"
    ),
    # monitoring
    pytest.param(
        "metrics: {port: 8461}",
        "metrics.port",
        "must differ from the socketmap port (8461)",
        id="metrics-on-the-socketmap-port",
    ),
    pytest.param(
        "port: 9000\nmetrics: {host: 0.0.0.0, port: 9000}",
        "metrics.port",
        "must differ from the socketmap port (9000)",
        id="metrics-on-the-socketmap-port-other-host",
    ),
    pytest.param(
        "path: /run/s\nmetrics: {path: /run/s}",
        "metrics.path",
        "must differ from the socketmap socket's path",
        id="metrics-on-the-socketmap-socket",
    ),
    pytest.param("metrics: {}", "metrics", "set port (and host) for TCP, or path", id="m-empty"),
    pytest.param(
        "metrics: {port: 1, path: /m}", "metrics.path", "either port or path", id="m-both"
    ),
    pytest.param("metrics: {port: 1, mode: 0600}", "metrics.mode", "set 'path'", id="m-mode"),
    pytest.param("metrics: {prot: 1}", "metrics.prot", "did you mean 'port'", id="m-typo"),
    pytest.param("metrics: {port: 0}", "metrics.port", "between 1 and 65535", id="m-port-0"),
    pytest.param("metrics: 9461", "metrics", "expected a mapping", id="metrics-not-mapping"),
    pytest.param("log_format: xml", "log_format", "one of text, json, got 'xml'", id="log-xml"),
    pytest.param("log_format: true", "log_format", "expected a string", id="log-format-bool"),
]


@pytest.mark.parametrize(("text", "key_path", "problem"), REJECTED)
def test_rejected(tmp_path: Path, text: str, key_path: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        Config.from_yaml(path)
    error = caught.value
    assert error.filename == path
    assert error.key_path == key_path
    assert problem in error.problem
    where = f"{path}: {key_path}" if key_path else path
    assert str(error) == f"{where}: {error.problem}"


def test_rejected_from_mapping_uses_given_filename() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping({"port": "abc"}, "/etc/x.yml")
    assert str(caught.value) == "/etc/x.yml: port: expected an integer, got 'abc'"
    with pytest.raises(ConfigError, match=r"^<config>: the top level must be a mapping"):
        Config.from_mapping([1, 2])


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping({"port": "x" * 500})
    assert len(str(caught.value)) < 120
    with pytest.raises(ConfigError, match="a very large integer"):
        Config.from_mapping({"port": 10**400})


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b"host: \xff\xfe\xfa\n")
    with pytest.raises(ConfigError, match=r": invalid YAML"):
        Config.from_yaml(path)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError) as caught:
        Config.from_yaml(path)
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_yaml(str(tmp_path))
    assert str(caught.value) == f"{tmp_path}: cannot read: Is a directory"


def test_path_through_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "host: x") + "/inside.yml"
    with pytest.raises(ConfigError) as caught:
        Config.from_yaml(path)
    assert str(caught.value) == f"{path}: cannot read: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "host: x")
    os.chmod(path, 0)
    with pytest.raises(ConfigError, match="cannot read: Permission denied"):
        Config.from_yaml(path)


# --------------------------------------------------------------------------
# Property tests: whatever the input, a Config or a ConfigError.

_NAMES = [
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
    "shutdown_timeout",
    "cache_grace",
    "cache",
    "type",
    "options",
    "proactive_policy_fetching",
    "enabled",
    "interval",
    "concurrency_limit",
    "grace_ratio",
    "default_zone",
    "zones",
    "strict_testing",
    "timeout",
    "require_sni",
    "tlsrpt",
    "tlsrpt_testing_level",
    "nameservers",
    "ca_file",
    "cache_size",
    "filename",
    "threads",
    "map_size",
    "max_entries",
    "url",
    "dsn",
    "sentinels",
    "sentinel_master_name",
    "socket_timeout",
    "min_size",
    "max_size",
]
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(
        [*CACHE_TYPES, "redis://x", "postgres://x", "0660", "1.1.1.1:53", "[::1]:53", "::1"]
    )
)
_KEYS = st.sampled_from(_NAMES) | st.text(max_size=6) | st.integers() | st.none() | st.booleans()
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=6),
    max_leaves=40,
)
_ZONE = st.fixed_dictionaries(
    {},
    optional={
        "strict_testing": st.booleans(),
        "timeout": st.integers(1, 10**6) | st.floats(0.001, 1e6),
        "require_sni": st.booleans(),
        "tlsrpt": st.booleans(),
        "tlsrpt_testing_level": st.sampled_from(["notfound", "may", "encrypt", "dane"]),
    },
)
_PATHS = st.sampled_from(["/run/mta-sts.sock", "cache.db", "/var/lib/mta-sts/x"])
_CACHES = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("internal")},
        optional={"options": st.fixed_dictionaries({"cache_size": st.integers(1, 10**9)})},
    ),
    st.fixed_dictionaries(
        {"type": st.just("lmdb")},
        optional={
            "options": st.fixed_dictionaries(
                {},
                optional={
                    "path": _PATHS,
                    "map_size": st.integers(1 << 20, 1 << 40),
                    "max_entries": st.integers(1, 10**9),
                },
            )
        },
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("sqlite"),
            "options": st.fixed_dictionaries(
                {"filename": _PATHS},
                optional={"threads": st.integers(1, 64), "timeout": st.floats(0.1, 60)},
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("redis"),
            "options": st.fixed_dictionaries(
                {"url": st.sampled_from(["redis://localhost/0", "unix:///run/redis.sock"])},
                optional={"socket_timeout": st.floats(0.1, 60), "retry_on_timeout": _SCALARS},
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("redis_sentinel"),
            "options": st.fixed_dictionaries(
                {
                    "sentinels": st.lists(
                        st.tuples(st.sampled_from(["s1", "10.0.0.1"]), st.integers(1, 65535)).map(
                            list
                        ),
                        min_size=1,
                        max_size=3,
                    ),
                    "sentinel_master_name": st.just("primary"),
                },
                optional={"password": st.text(min_size=1).filter(lambda t: "\0" not in t)},
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("postgres"),
            "options": st.fixed_dictionaries(
                {"dsn": st.just("postgresql://mta@localhost/mta")},
                optional={"timeout": st.integers(1, 60), "command_timeout": _SCALARS},
            ),
        }
    ),
)
# Valid values for every top-level key except owner/group (they need `path`).
_VALID: dict[str, st.SearchStrategy[Any]] = {
    "host": st.sampled_from(["127.0.0.1", "::1", "localhost", "0.0.0.0"]),
    "port": st.integers(1, 65535),
    "path": _PATHS,
    "mode": st.integers(0, 0o7777) | st.sampled_from(["0660", "660", "0o600"]),
    "reuse_port": st.booleans(),
    "backlog": st.integers(1, 65535),
    "idle_timeout": st.floats(0.001, 1e6),
    "max_connections": st.integers(1, 10**6),
    "shutdown_timeout": st.integers(0, 100),
    "cache_grace": st.floats(0, 1e6),
    "cache": _CACHES,
    "proactive_policy_fetching": st.fixed_dictionaries(
        {},
        optional={
            "enabled": st.booleans(),
            "interval": st.integers(1, 10**6),
            "concurrency_limit": st.integers(1, 1000),
            "grace_ratio": st.floats(0.1, 10),
        },
    ),
    "default_zone": _ZONE,
    "zones": st.dictionaries(st.sampled_from(["postfix", "tlsrpt", "z-1"]), _ZONE | st.none()),
    "nameservers": st.lists(st.ip_addresses().map(str), max_size=3),
    "ca_file": _PATHS,
}
_VALID_DOCUMENTS = st.fixed_dictionaries({}, optional=_VALID)
# Valid documents with any value swapped for junk, so errors turn up deep too.
_MIXED_DOCUMENTS = st.fixed_dictionaries(
    {}, optional={key: valid | _VALUES for key, valid in _VALID.items()}
) | st.dictionaries(st.sampled_from(_NAMES), _VALUES, max_size=8)


def _outcome(data: object) -> Config | ConfigError:
    try:
        return Config.from_mapping(data)
    except ConfigError as exc:
        return exc


@settings(max_examples=300, deadline=None)
@given(_VALID_DOCUMENTS)
def test_every_valid_document_loads(data: dict[str, Any]) -> None:
    config = Config.from_mapping(data)
    assert config.port == data.get("port", 8461)
    assert config.path == data.get("path")
    assert set(config.zones) == set(data.get("zones", {}))
    cache = data.get("cache", {})
    sized = "cache_size" in cache.get("options", {})
    assert config.cache.type == cache.get("type", "internal" if sized else "lmdb")
    for name, zone in config.zones.items():
        assert zone == Config.from_mapping({"default_zone": data["zones"][name]}).default_zone


@settings(max_examples=500, deadline=None)
@given(_MIXED_DOCUMENTS | _VALUES)
def test_from_mapping_returns_config_or_raises_config_error(data: object) -> None:
    outcome = _outcome(data)
    if isinstance(outcome, ConfigError):
        assert str(outcome).startswith("<config>: ")
        assert outcome.problem
    else:
        assert 1 <= outcome.port <= 65535
        assert outcome.cache.type in CACHE_TYPES


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60) | st.sampled_from(["a: [", "{{", "a: !!binary x", "? [a]\n: 1"]))
def test_from_yaml_returns_config_or_raises_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = write(tmp_path_factory.getbasetemp(), text, "fuzz.yml")
    error: ConfigError | None = None
    try:
        Config.from_yaml(path)
    except ConfigError as exc:
        error = exc
    assert error is None or str(error).startswith(f"{path}: ")


def test_postgres_without_dsn_passes_connection_keys_through(tmp_path: Path) -> None:
    # postfix-mta-sts-resolver hands every option but `timeout` to asyncpg, so
    # host/database/user keys are as valid as a dsn.
    config_file = tmp_path / "pg.yml"
    config_file.write_text(
        "cache: {type: postgres, options: {host: /run/postgresql, database: mta, timeout: 3}}\n"
    )
    options = Config.from_yaml(config_file).cache.options
    assert "dsn" not in options
    assert options["host"] == "/run/postgresql"
    assert options["database"] == "mta"
    assert options["timeout"] == 3


def test_workers(tmp_path: Path) -> None:
    config_file = tmp_path / "w.yml"
    config_file.write_text("workers: 3\n")
    assert Config.from_yaml(config_file).workers == 3
    assert Config.default().workers == max(1, os.cpu_count() or 1)
    config_file.write_text("workers: 0\n")
    with pytest.raises(ConfigError, match="workers"):
        Config.from_yaml(config_file)


def test_old_config_sizing_internal_cache_without_type(tmp_path: Path) -> None:
    # postfix-mta-sts-resolver's default type was internal; such a config
    # keeps meaning the internal cache although our default is lmdb.
    config_file = tmp_path / "old.yml"
    config_file.write_text("cache:\n  options:\n    cache_size: 500\n")
    config = Config.from_yaml(config_file)
    assert config.cache.type == "internal"
    assert config.cache.options["cache_size"] == 500


@pytest.mark.parametrize(
    ("data", "uses"),
    [
        pytest.param({}, True, id="default-precedence"),
        pytest.param({"default_zone": {"dane": "off"}}, False, id="all-off"),
        pytest.param(
            {"default_zone": {"dane": "off"}, "zones": {"z": {"dane": "all"}}},
            True,
            id="one-zone-on",
        ),
        pytest.param(
            {"default_zone": {"dane": "off"}, "zones": {"z": {"dane": "off"}}}, False, id="none"
        ),
    ],
)
def test_uses_dane(data: dict[str, Any], uses: bool) -> None:
    # A worker builds a DANE resolver and probe only when some zone needs them.
    assert Config.from_mapping(data).uses_dane is uses
