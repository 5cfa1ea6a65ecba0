"""Value checkers: one YAML value in, the clean value out, or :class:`Invalid`.

Each checker takes ``(value, key path)``; the checkers that need bounds or a
list of choices are factories returning one. A failure raises
:class:`Invalid` with the key path and the problem; ``Config.from_mapping``
adds the file name and turns it into a :class:`~mtasts_fast.errors.ConfigError`.
The names avoid the builtins they check for (``boolean``, not ``bool``).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import NoReturn, TypeAlias, TypeVar

_T = TypeVar("_T")
#: A checker returning a ``_T``: ``parse(value, key_path)``.
Parse: TypeAlias = Callable[[object, str], _T]


class Invalid(Exception):
    """A value that does not validate, at a dotted key path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


def fail(path: str, problem: str) -> NoReturn:
    raise Invalid(path, problem)


def describe(value: object) -> str:
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


def boolean(value: object, path: str) -> bool:
    # Only a real YAML boolean (true/false, and YAML 1.1's yes/no/on/off):
    # `1` or "true" in quotes is a mistake worth reporting, not guessing at.
    if not isinstance(value, bool):
        fail(path, f"expected true or false, got {describe(value)}")
    return value


def integer(lo: int, hi: int | None = None) -> Parse[int]:
    def parse(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(path, f"expected an integer, got {describe(value)}")
        if hi is not None and not lo <= value <= hi:
            fail(path, f"must be between {lo} and {hi}, got {describe(value)}")
        if value < lo:
            fail(path, f"must be at least {lo}, got {describe(value)}")
        return value

    return parse


def number(lo: float, *, exclusive: bool) -> Parse[float]:
    def parse(value: object, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(path, f"expected a number, got {describe(value)}")
        try:
            as_float = float(value)
        except OverflowError:
            as_float = math.inf
        if not math.isfinite(as_float):
            fail(path, f"must be a finite number, got {describe(value)}")
        if exclusive and not as_float > lo:
            fail(path, f"must be greater than {lo:g}, got {describe(value)}")
        if not exclusive and as_float < lo:
            fail(path, f"must be at least {lo:g}, got {describe(value)}")
        return as_float

    return parse


positive = number(0, exclusive=True)
non_negative = number(0, exclusive=False)


def string(value: object, path: str) -> str:
    if not isinstance(value, str):
        fail(path, f"expected a string, got {describe(value)}")
    if not value:
        fail(path, "must not be empty")
    if "\0" in value:
        fail(path, "must not contain a NUL character")
    return value


def word(value: object, path: str) -> str:
    text = string(value, path)
    if any(ch.isspace() for ch in text):
        fail(path, f"must not contain spaces, got {describe(text)}")
    return text


def one_of(choices: tuple[str, ...]) -> Parse[str]:
    """One of a few fixed strings, compared exactly."""

    def parse(value: object, path: str) -> str:
        if not isinstance(value, str) or value not in choices:
            fail(path, f"expected one of {', '.join(choices)}, got {describe(value)}")
        return value

    return parse


def port_number(value: object, path: str) -> int:
    # The old daemon handed the value to getaddrinfo(), so a quoted "8461"
    # worked there; keep accepting it.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"
        value = int(digits) if len(digits) <= 6 else 10**6
    return integer(1, 65535)(value, path)


_OCTAL = re.compile(r"(?:0[oO])?[0-7]+")


def file_mode(value: object, path: str) -> int:
    # YAML 1.1 (PyYAML) reads 0666 as octal already; a string is always
    # read as octal, so "660" and "0660" both mean rw-rw----.
    if isinstance(value, str):
        text = value.strip()
        if not _OCTAL.fullmatch(text):
            fail(path, f"expected permission bits in octal like 0660, got {describe(value)}")
        value = int(text, 8)
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, f"expected permission bits in octal like 0660, got {describe(value)}")
    if not 0 <= value <= 0o7777:
        shown = oct(value) if value.bit_length() <= 64 else "a very large integer"
        fail(path, f"must be between 0 and 0o7777, got {shown}")
    return value


def principal(value: object, path: str) -> str:
    # A user or group name, or a numeric id (YAML gives an int for `1000`).
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            fail(path, f"a numeric id must not be negative, got {value}")
        return str(value)
    if not isinstance(value, str):
        fail(path, f"expected a name or a numeric id, got {describe(value)}")
    return word(value, path)


def sequence(value: object, path: str) -> list[object]:
    """A YAML sequence (a list), copied."""
    if not isinstance(value, list | tuple):
        fail(path, f"expected a list, got {describe(value)}")
    return list(value)


_PORT_DIGITS = re.compile(r"[0-9]{1,5}")
_NAMESERVER_FORMS = "expected an IP address, 'ip:port' or '[ipv6]:port'"


def nameserver(value: object, path: str) -> str:
    """Validate one DNS server and return it in canonical form."""
    text = string(value, path)
    port: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            fail(path, f"{_NAMESERVER_FORMS}, got {describe(text)}")
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
        fail(path, f"{_NAMESERVER_FORMS}, got {describe(text)}")
    if bracketed and address.version != 6:
        fail(path, f"brackets are only for IPv6 addresses, got {describe(text)}")
    if port is None:
        return str(address)
    if not _PORT_DIGITS.fullmatch(port) or not 1 <= int(port) <= 65535:
        fail(path, f"the port must be between 1 and 65535, got {describe(text)}")
    number = int(port)
    return f"[{address}]:{number}" if address.version == 6 else f"{address}:{number}"


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def dns_name(value: object, path: str) -> str:
    """An absolute DNS name in A-label form, returned without the trailing dot ("." is the root)."""
    text = string(value, path).strip()
    if text == ".":
        return text
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        fail(path, f"expected a DNS name such as example.org or '.', got {describe(text)}")
    return name.lower()


def url(schemes: tuple[str, ...]) -> Parse[str]:
    def parse(value: object, path: str) -> str:
        text = string(value, path)
        if not text.lower().startswith(tuple(f"{s}://" for s in schemes)):
            *first, last = (f"{s}://" for s in schemes)
            wanted = f"{', '.join(first)} or {last}" if first else last
            fail(path, f"expected a URL starting with {wanted}, got {describe(text)}")
        return text

    return parse


def sentinel_addresses(value: object, path: str) -> tuple[tuple[str, int], ...]:
    """Redis Sentinel servers as a list of ``[host, port]`` pairs."""
    items = sequence(value, path)
    if not items:
        fail(path, "must list at least one sentinel as [host, port]")
    out = []
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        pair = sequence(item, where)
        if len(pair) != 2:
            fail(where, f"expected [host, port], got a list of {len(pair)} items")
        out.append((word(pair[0], f"{where}[0]"), port_number(pair[1], f"{where}[1]")))
    return tuple(out)
