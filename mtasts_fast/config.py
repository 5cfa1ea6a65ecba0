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
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn, TypeAlias, TypeVar

import yaml

from . import defaults
from .errors import ConfigError

__all__ = [
    "CACHE_TYPES",
    "CacheConfig",
    "Config",
    "ProactiveFetchConfig",
    "ZoneConfig",
]

#: Every valid ``cache.type``, in the order error messages list them.
CACHE_TYPES = ("internal", "lmdb", "sqlite", "redis", "redis_sentinel", "postgres")

# An LMDB map smaller than this fills up after a few hundred policies; a
# smaller value is a unit mistake (kilobytes for bytes), not a choice.
_LMDB_MIN_MAP_SIZE = 1 << 20
# mdb_env_set_map_size takes a size_t, and the map must fit the address space.
_LMDB_MAX_MAP_SIZE = (1 << 63) - 1
# listen(2) takes an int; Linux silently caps it at net.core.somaxconn anyway.
_MAX_BACKLOG = 65535


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """How answers are rendered for one socketmap name (or the default zone)."""

    strict_testing: bool = defaults.STRICT_TESTING
    timeout: float = defaults.ZONE_TIMEOUT
    require_sni: bool = defaults.REQUIRE_SNI
    tlsrpt: bool = defaults.TLSRPT


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The cache backend and its options, validated, with defaults filled in.

    ``options`` is read-only. For ``redis``, ``redis_sentinel`` and
    ``postgres`` it also holds every extra key of the file, unchanged, for the
    client library (redis-py ``from_url`` / ``master_for``,
    ``asyncpg.create_pool``); only the keys this module knows are checked.
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
        return cls.from_mapping(_load_yaml(raw, name), name)

    @classmethod
    def from_mapping(cls, data: object, filename: str = "<config>") -> Config:
        """Validate already-parsed data (``None`` means all defaults).

        ``filename`` only labels error messages and :attr:`filename`.
        Raises :class:`ConfigError` and nothing else, whatever ``data`` holds.
        """
        try:
            return _build(data, filename)
        except _Invalid as exc:
            raise ConfigError(filename, exc.path, exc.problem) from None

    @classmethod
    def default(cls) -> Config:
        """The configuration used when there is no file at all."""
        return cls.from_mapping(None, "<defaults>")

    def zone_for(self, map_name: str) -> ZoneConfig:
        """The zone for a socketmap name; unknown names get ``default_zone``."""
        return self.zones.get(map_name, self.default_zone)


# --------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys.

    PyYAML keeps the last of two equal keys without a word, so a second
    ``default_zone:`` block would silently replace the first; YAML itself
    (1.2 §3.2.1.1) requires keys to be unique. Merge keys (``<<``) still
    override as usual.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {_describe(key)}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(raw: bytes, filename: str) -> object:
    try:
        return yaml.load(raw, Loader=_Loader)  # a SafeLoader subclass: no object tags
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = "; ".join(p for p in (exc.context, exc.problem) if p) or "syntax error"
        raise ConfigError(filename, "", f"invalid YAML{where}: {problem}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            filename, "", f"invalid YAML: not {exc.encoding} text at byte {exc.position}"
        ) from None
    except RecursionError:
        raise ConfigError(filename, "", "invalid YAML: nested too deeply") from None
    except Exception as exc:
        # PyYAML lets constructor errors escape as they are: ValueError for a
        # timestamp like 2024-13-45 or an integer too long to convert, etc.
        raise ConfigError(filename, "", f"invalid YAML: {exc}") from None


# --------------------------------------------------------------------------
# Value checkers. Each takes (value, key path) and returns the clean value or
# raises _Invalid; from_mapping adds the file name.

_T = TypeVar("_T")
_Parse: TypeAlias = Callable[[object, str], _T]


class _Invalid(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


def _fail(path: str, problem: str) -> NoReturn:
    raise _Invalid(path, problem)


def _describe(value: object) -> str:
    """A short, YAML-flavoured rendering of a value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bytes | bytearray):
        return "binary data"
    return f"a {type(value).__name__}"  # e.g. "a date" for an unquoted 2024-01-01


def _key_text(key: object) -> str:
    return key if isinstance(key, str) else _describe(key)


def _join(path: str, key: object) -> str:
    return f"{path}.{_key_text(key)}" if path else _key_text(key)


def _bool(value: object, path: str) -> bool:
    # Only a real YAML boolean (true/false, and YAML 1.1's yes/no/on/off):
    # `1` or "true" in quotes is a mistake worth reporting, not guessing at.
    if not isinstance(value, bool):
        _fail(path, f"expected true or false, got {_describe(value)}")
    return value


def _int(lo: int, hi: int | None = None) -> _Parse[int]:
    def parse(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, f"expected an integer, got {_describe(value)}")
        if hi is not None and not lo <= value <= hi:
            _fail(path, f"must be between {lo} and {hi}, got {_describe(value)}")
        if value < lo:
            _fail(path, f"must be at least {lo}, got {_describe(value)}")
        return value

    return parse


def _number(lo: float, *, exclusive: bool) -> _Parse[float]:
    def parse(value: object, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(path, f"expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            _fail(path, f"must be a finite number, got {_describe(value)}")
        if exclusive and not number > lo:
            _fail(path, f"must be greater than {lo:g}, got {_describe(value)}")
        if not exclusive and number < lo:
            _fail(path, f"must be at least {lo:g}, got {_describe(value)}")
        return number

    return parse


_positive = _number(0, exclusive=True)
_non_negative = _number(0, exclusive=False)


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_describe(value)}")
    if not value:
        _fail(path, "must not be empty")
    if "\0" in value:
        _fail(path, "must not contain a NUL character")
    return value


def _word(value: object, path: str) -> str:
    text = _str(value, path)
    if any(ch.isspace() for ch in text):
        _fail(path, f"must not contain spaces, got {_describe(text)}")
    return text


def _port(value: object, path: str) -> int:
    # The old daemon handed the value to getaddrinfo(), so a quoted "8461"
    # worked there; keep accepting it.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"
        value = int(digits) if len(digits) <= 6 else 10**6
    return _int(1, 65535)(value, path)


_OCTAL = re.compile(r"(?:0[oO])?[0-7]+")


def _mode(value: object, path: str) -> int:
    # YAML 1.1 (PyYAML) reads 0666 as octal already; a string is always
    # read as octal, so "660" and "0660" both mean rw-rw----.
    if isinstance(value, str):
        text = value.strip()
        if not _OCTAL.fullmatch(text):
            _fail(path, f"expected permission bits in octal like 0660, got {_describe(value)}")
        value = int(text, 8)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"expected permission bits in octal like 0660, got {_describe(value)}")
    if not 0 <= value <= 0o7777:
        shown = oct(value) if value.bit_length() <= 64 else "a very large integer"
        _fail(path, f"must be between 0 and 0o7777, got {shown}")
    return value


def _principal(value: object, path: str) -> str:
    # A user or group name, or a numeric id (YAML gives an int for `1000`).
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            _fail(path, f"a numeric id must not be negative, got {value}")
        return str(value)
    if not isinstance(value, str):
        _fail(path, f"expected a name or a numeric id, got {_describe(value)}")
    return _word(value, path)


def _list(value: object, path: str) -> list[object]:
    if not isinstance(value, list | tuple):
        _fail(path, f"expected a list, got {_describe(value)}")
    return list(value)


_PORT_DIGITS = re.compile(r"[0-9]{1,5}")
_NAMESERVER_FORMS = "expected an IP address, 'ip:port' or '[ipv6]:port'"


def _nameserver(value: object, path: str) -> str:
    """Validate one DNS server and return it in canonical form."""
    text = _str(value, path)
    port: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            _fail(path, f"{_NAMESERVER_FORMS}, got {_describe(text)}")
        port = rest[1:] if rest else None
        bracketed = True
    elif text.count(":") == 1:  # ipv4:port; a bare IPv6 address has several
        host, _, port = text.partition(":")
        bracketed = False
    else:
        host, bracketed = text, False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        _fail(path, f"{_NAMESERVER_FORMS}, got {_describe(text)}")
    if bracketed and address.version != 6:
        _fail(path, f"brackets are only for IPv6 addresses, got {_describe(text)}")
    if port is None:
        return str(address)
    if not _PORT_DIGITS.fullmatch(port) or not 1 <= int(port) <= 65535:
        _fail(path, f"the port must be between 1 and 65535, got {_describe(text)}")
    number = int(port)
    return f"[{address}]:{number}" if address.version == 6 else f"{address}:{number}"


def _url(schemes: tuple[str, ...]) -> _Parse[str]:
    def parse(value: object, path: str) -> str:
        text = _str(value, path)
        if not text.lower().startswith(tuple(f"{s}://" for s in schemes)):
            *first, last = (f"{s}://" for s in schemes)
            wanted = f"{', '.join(first)} or {last}" if first else last
            _fail(path, f"expected a URL starting with {wanted}, got {_describe(text)}")
        return text

    return parse


def _sentinels(value: object, path: str) -> tuple[tuple[str, int], ...]:
    items = _list(value, path)
    if not items:
        _fail(path, "must list at least one sentinel as [host, port]")
    out = []
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        pair = _list(item, where)
        if len(pair) != 2:
            _fail(where, f"expected [host, port], got a list of {len(pair)} items")
        out.append((_word(pair[0], f"{where}[0]"), _port(pair[1], f"{where}[1]")))
    return tuple(out)


# --------------------------------------------------------------------------
# Sections


_NOT_A_STRING_KEY = (
    "keys must be strings (an unquoted number, null, yes/no or on/off is not one; quote it)"
)


def _suggest(key: str, known: Collection[str]) -> str | None:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean {close[0]!r}?" if close else None


class _Section:
    """A mapping from the file whose keys have been checked against a schema."""

    __slots__ = ("items", "path")

    def __init__(
        self,
        value: object,
        path: str,
        known: Collection[str],
        *,
        open_ended: bool = False,
        hint: Callable[[str], str | None] | None = None,
    ) -> None:
        # `key:` with nothing under it (every sub-key commented out) is null
        # in YAML; treat it as an empty section rather than an error.
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            _fail(path, f"expected a mapping, got {_describe(value)}")
        for key in value:
            if not isinstance(key, str):
                _fail(_join(path, key), _NOT_A_STRING_KEY)
            if key in known or open_ended:
                continue
            extra = hint(key) if hint else None
            if extra is None:
                extra = _suggest(key, known)
            _fail(_join(path, key), f"unknown key ({extra})" if extra else "unknown key")
        self.items: Mapping[str, object] = value
        self.path = path

    def key_path(self, key: str) -> str:
        return _join(self.path, key)

    def get(self, key: str, parse: _Parse[_T], default: _T) -> _T:
        if key not in self.items:
            return default
        return parse(self.items[key], self.key_path(key))

    def optional(self, key: str, parse: _Parse[_T]) -> _T | None:
        """For keys whose default is "not set": absent or null gives None."""
        value = self.items.get(key)
        return None if value is None else parse(value, self.key_path(key))

    def required(self, key: str, parse: _Parse[_T], why: str) -> _T:
        if self.items.get(key) is None:
            _fail(self.key_path(key), why)
        return parse(self.items[key], self.key_path(key))

    def extras(self, known: Collection[str]) -> dict[str, Any]:
        """The keys not in ``known``, copied so the caller's data stays its own."""
        return {k: copy.deepcopy(v) for k, v in self.items.items() if k not in known}


_ZONE_KEYS = ("strict_testing", "timeout", "require_sni", "tlsrpt")
_PROACTIVE_KEYS = ("enabled", "interval", "concurrency_limit", "grace_ratio", "jitter")
_TOP_KEYS = (
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
)


def _top_level_hint(key: str) -> str | None:
    if key in _ZONE_KEYS:
        # The old daemon's sample configs carry a commented-out top-level
        # `# tlsrpt: true`, which it silently ignored when uncommented.
        return f"zone settings go under default_zone or zones.<name>: default_zone.{key}"
    return None


def _zone(value: object, path: str) -> ZoneConfig:
    # Every zone starts from the built-in defaults, never from default_zone:
    # that is what the old daemon does, and configs rely on it.
    section = _Section(value, path, _ZONE_KEYS)
    return ZoneConfig(
        strict_testing=section.get("strict_testing", _bool, defaults.STRICT_TESTING),
        timeout=section.get("timeout", _positive, defaults.ZONE_TIMEOUT),
        require_sni=section.get("require_sni", _bool, defaults.REQUIRE_SNI),
        tlsrpt=section.get("tlsrpt", _bool, defaults.TLSRPT),
    )


def _zones(value: object, path: str) -> Mapping[str, ZoneConfig]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        _fail(path, f"expected a mapping of zone names to zone settings, got {_describe(value)}")
    zones = {}
    for name, zone in value.items():
        where = _join(path, name)
        if not isinstance(name, str):
            _fail(where, "a zone name must be a string (quote it)")
        if not name:
            _fail(where, "a zone name must not be empty")
        if any(ch.isspace() for ch in name):
            # Postfix sends "<map name> <key>": a name with a space never arrives.
            _fail(where, "a zone name must not contain spaces")
        zones[name] = _zone(zone, where)
    return MappingProxyType(zones)


def _proactive(value: object, path: str) -> ProactiveFetchConfig:
    section = _Section(value, path, _PROACTIVE_KEYS)
    return ProactiveFetchConfig(
        enabled=section.get("enabled", _bool, defaults.PROACTIVE_ENABLED),
        interval=section.get("interval", _positive, float(defaults.PROACTIVE_INTERVAL)),
        concurrency_limit=section.get("concurrency_limit", _int(1), defaults.PROACTIVE_CONCURRENCY),
        grace_ratio=section.get("grace_ratio", _positive, defaults.PROACTIVE_GRACE_RATIO),
        jitter=section.optional("jitter", _non_negative),
    )


def _nameservers(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _list(value, path)
    return tuple(_nameserver(item, f"{path}[{index}]") for index, item in enumerate(items))


# Cache options. The old daemon gave only `internal` a default options block
# (any other type without `options:` died with KeyError); here every type may
# omit it, and a missing required key is reported by name.


def _internal_options(section: _Section) -> dict[str, Any]:
    return {"cache_size": section.get("cache_size", _int(1), defaults.INTERNAL_CACHE_SIZE)}


def _lmdb_options(section: _Section) -> dict[str, Any]:
    return {
        "path": section.get("path", _str, defaults.LMDB_PATH),
        "map_size": section.get(
            "map_size", _int(_LMDB_MIN_MAP_SIZE, _LMDB_MAX_MAP_SIZE), defaults.LMDB_MAP_SIZE
        ),
        "max_entries": section.get("max_entries", _int(1), defaults.LMDB_MAX_ENTRIES),
    }


def _sqlite_options(section: _Section) -> dict[str, Any]:
    return {
        "filename": section.required("filename", _str, "required for cache type 'sqlite'"),
        "threads": section.get("threads", _int(1), defaults.SQLITE_THREADS),
        "timeout": section.get("timeout", _positive, defaults.SQLITE_TIMEOUT),
    }


# redis-py keyword arguments worth checking; every other key is passed
# through untouched (redis-py reports its own unknown arguments).
_REDIS_CHECKED: dict[str, _Parse[Any]] = {
    "socket_timeout": _positive,
    "socket_connect_timeout": _positive,
    "max_connections": _int(1),
    "db": _int(0),
    "username": _str,
    "password": _str,
}


def _redis_common(section: _Section, consumed: Collection[str]) -> dict[str, Any]:
    options = section.extras(consumed)
    for key, parse in _REDIS_CHECKED.items():
        if key in options:
            options[key] = parse(options[key], section.key_path(key))
    # Same defaults as the old daemon; redis-py's own are "wait forever".
    options.setdefault("socket_timeout", defaults.REDIS_SOCKET_TIMEOUT)
    options.setdefault("socket_connect_timeout", defaults.REDIS_SOCKET_CONNECT_TIMEOUT)
    return options


def _redis_options(section: _Section) -> dict[str, Any]:
    url = section.required(
        "url", _url(("redis", "rediss", "unix")), "required for cache type 'redis'"
    )
    return {"url": url, **_redis_common(section, ("url",))}


def _redis_sentinel_options(section: _Section) -> dict[str, Any]:
    why = "required for cache type 'redis_sentinel'"
    sentinels = section.required("sentinels", _sentinels, why)
    master = section.required("sentinel_master_name", _word, why)
    return {
        "sentinels": sentinels,
        "sentinel_master_name": master,
        **_redis_common(section, ("sentinels", "sentinel_master_name")),
    }


def _postgres_options(section: _Section) -> dict[str, Any]:
    # postfix-mta-sts-resolver passes every option but `timeout` to
    # asyncpg.create_pool, so a config may name host/database/user instead of
    # a dsn; without either, asyncpg uses its PG* environment defaults.
    dsn = section.optional("dsn", _url(("postgres", "postgresql")))
    options = {
        **({"dsn": dsn} if dsn is not None else {}),
        "timeout": section.get("timeout", _positive, defaults.POSTGRES_TIMEOUT),
        **section.extras(("dsn", "timeout")),
    }
    if "min_size" in options:
        options["min_size"] = _int(0)(options["min_size"], section.key_path("min_size"))
    if "max_size" in options:
        options["max_size"] = _int(1)(options["max_size"], section.key_path("max_size"))
        if options.get("min_size", 0) > options["max_size"]:
            _fail(section.key_path("min_size"), "must not be larger than max_size")
    return options


_CACHE_BACKENDS: dict[str, tuple[Collection[str] | None, Callable[[_Section], dict[str, Any]]]] = {
    # type: (allowed option keys, or None for "any, passed through"; builder)
    "internal": (("cache_size",), _internal_options),
    "lmdb": (("path", "map_size", "max_entries"), _lmdb_options),
    "sqlite": (("filename", "threads", "timeout"), _sqlite_options),
    "redis": (None, _redis_options),
    "redis_sentinel": (None, _redis_sentinel_options),
    "postgres": (None, _postgres_options),
}
assert tuple(_CACHE_BACKENDS) == CACHE_TYPES


def _cache_type(value: object, path: str) -> str:
    text = _str(value, path)
    if text not in _CACHE_BACKENDS:
        _fail(path, f"unknown cache type {_describe(text)} (valid: {', '.join(CACHE_TYPES)})")
    return text


_ALL_CACHE_OPTIONS = frozenset(
    key for known, _ in _CACHE_BACKENDS.values() if known is not None for key in known
) | {"url", "dsn", "sentinels", "sentinel_master_name"}


def _cache_hint(key: str) -> str | None:
    if key in _ALL_CACHE_OPTIONS:
        return f"backend settings go under cache.options: cache.options.{key}"
    return None


def _cache(value: object, path: str) -> CacheConfig:
    section = _Section(value, path, ("type", "options"), hint=_cache_hint)
    default_kind = defaults.CACHE_TYPE
    raw_options = section.items.get("options")
    if isinstance(raw_options, dict) and "cache_size" in raw_options:
        # postfix-mta-sts-resolver's default type was `internal`: its configs
        # may size that cache without naming the type.
        default_kind = "internal"
    kind = section.get("type", _cache_type, default_kind)
    known, build = _CACHE_BACKENDS[kind]

    def hint(key: str) -> str:
        return _suggest(key, known or ()) or (f"cache type {kind!r} takes {', '.join(known or ())}")

    options = _Section(
        section.items.get("options"),
        section.key_path("options"),
        known or (),
        open_ended=known is None,
        hint=hint,
    )
    return CacheConfig(type=kind, options=MappingProxyType(build(options)))


def _build(data: object, filename: str) -> Config:
    if data is None:  # an empty file, or one with only comments
        data = {}
    if not isinstance(data, Mapping):
        _fail("", f"the top level must be a mapping of keys to values, got {_describe(data)}")
    top = _Section(data, "", _TOP_KEYS, hint=_top_level_hint)

    path = top.optional("path", _str)
    owner = top.optional("owner", _principal)
    group = top.optional("group", _principal)
    for key, value in (("owner", owner), ("group", group)):
        if value is not None and path is None:
            _fail(key, "only applies to a unix socket: set 'path' too")

    return Config(
        filename=filename,
        host=top.get("host", _word, defaults.HOST),
        port=top.get("port", _port, defaults.PORT),
        path=path,
        # Like the old daemon, `mode` without `path` is accepted and unused.
        mode=top.optional("mode", _mode),
        owner=owner,
        group=group,
        reuse_port=top.get("reuse_port", _bool, defaults.REUSE_PORT),
        backlog=top.get("backlog", _int(1, _MAX_BACKLOG), defaults.BACKLOG),
        idle_timeout=top.get("idle_timeout", _positive, defaults.IDLE_TIMEOUT),
        max_connections=top.get("max_connections", _int(1), defaults.MAX_CONNECTIONS),
        workers=top.get("workers", _int(1, defaults.MAX_WORKERS), defaults.workers()),
        # 0 is meaningful here (cut open connections at once) and the old
        # daemon accepted it.
        shutdown_timeout=top.get("shutdown_timeout", _non_negative, defaults.SHUTDOWN_TIMEOUT),
        cache_grace=top.get("cache_grace", _non_negative, defaults.CACHE_GRACE),
        negative_ttl=top.get("negative_ttl", _non_negative, defaults.NEGATIVE_TTL),
        fetch_backoff_max=top.get("fetch_backoff_max", _positive, defaults.FETCH_BACKOFF_MAX),
        max_concurrent_fetches=top.get(
            "max_concurrent_fetches", _int(1), defaults.MAX_CONCURRENT_FETCHES
        ),
        cache=_cache(top.items.get("cache"), "cache"),
        proactive_policy_fetching=_proactive(
            top.items.get("proactive_policy_fetching"), "proactive_policy_fetching"
        ),
        default_zone=_zone(top.items.get("default_zone"), "default_zone"),
        zones=_zones(top.items.get("zones"), "zones"),
        nameservers=_nameservers(top.items.get("nameservers"), "nameservers"),
        ca_file=top.optional("ca_file", _str),
    )
