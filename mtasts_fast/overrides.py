"""Local policy overrides: the operator's word for chosen domains (DESIGN.md §8).

The file named by ``policy_overrides`` is a YAML mapping of domains to what
the daemon answers for them, whatever they publish::

    broken-partner.example: skip             # NOTFOUND at once, never fetched
    .lab.example: skip                       # every sub-domain of lab.example
    testing-partner.example: enforce_testing # its testing policy is enforced
    partner.example:                         # a policy, as if fetched
      mode: enforce
      mx: [mx1.partner.example, "*.mail.partner.example"]
      max_age: 604800                        # optional
    bank.example: secure match=.bank.example # a Postfix policy, passed on
    dane-partner.example: dane-only

Keys
    A domain applies to that domain only; ``.domain`` to every sub-domain of
    it but not to the domain itself, as in a Postfix ``tls_policy`` table
    (postconf(5) "smtp_tls_policy_maps"): list both to cover both. A domain
    entry wins over a parent entry, a nearer parent over a farther one. Keys
    are normalised like lookup keys (case, trailing dot, U-labels), so an
    entry applies to every spelling of its domain, bracketed next-hops and
    ``:port`` forms included.

Kinds
    ``skip``: ``NOTFOUND`` at once; no DNS query, no fetch, nothing cached.
    ``enforce_testing``: the domain is looked up as usual, and a ``testing``
    policy is answered like ``enforce`` (``strict_testing`` for this domain
    only). A static policy (``mode``, ``mx``, optional ``max_age``, default
    DEFAULT_MAX_AGE) is answered as a fetched one would be, per zone
    (``require_sni``, TLSRPT attributes, ``strict_testing``). A Postfix policy
    (any string starting with a Postfix level) is checked against Postfix's
    grammar (postfix_policy.py) and answered ``OK <policy>`` as written, in
    every zone.

An override is found once per distinct lookup key (the responder memoises
it with the key's normalisation), never touches the cache, wins over a
fetched policy (and over DANE, when that comes: it is the first step of a
lookup), and is counted per kind. A reload re-reads the file: a changed one
replaces the workers like a changed configuration; an invalid one is
logged and the running overrides kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mtasts_fast.config import Config, ZoneConfig
from mtasts_fast.config.values import describe
from mtasts_fast.config.yaml_loader import load_yaml
from mtasts_fast.errors import ConfigError
from mtasts_fast.keys import normalise_key
from mtasts_fast.matcher import is_valid_mx_pattern
from mtasts_fast.netstring import encode
from mtasts_fast.policy import MAX_AGE_LIMIT, MODES, STS_VERSION, Policy
from mtasts_fast.postfix_policy import LEVELS, check_postfix_policy
from mtasts_fast.reply import NOTFOUND, render_policy

__all__ = [
    "ENFORCE_TESTING",
    "KINDS",
    "POSTFIX",
    "SKIP",
    "STATIC",
    "Applied",
    "Override",
    "Overrides",
    "load_overrides",
    "overrides_for",
]

SKIP = "skip"
ENFORCE_TESTING = "enforce_testing"
STATIC = "static"
POSTFIX = "postfix"
KINDS = (SKIP, ENFORCE_TESTING, STATIC, POSTFIX)

#: ``max_age`` of a static policy that does not set one: a week, the low end
#: of what RFC 8461 §3.2 recommends. It only shows in the TLSRPT policy
#: strings; a static policy never expires.
DEFAULT_MAX_AGE = 604_800

_STATIC_KEYS = ("mode", "mx", "max_age")
_NOTFOUND_REPLY = encode(NOTFOUND)


@dataclass(frozen=True, slots=True)
class Override:
    """One entry of the file."""

    entry: str
    """The key as written in the file (for messages and mta-sts-query)."""
    kind: str
    """One of :data:`KINDS`."""
    policy: Policy | None = None
    """The policy of a :data:`STATIC` entry."""
    postfix: str | None = None
    """The text of a :data:`POSTFIX` entry."""

    def describe(self) -> str:
        if self.kind == STATIC:
            assert self.policy is not None
            return (
                f"static policy: mode {self.policy.mode}, mx {', '.join(self.policy.mx) or '-'}, "
                f"max_age {self.policy.max_age}"
            )
        if self.kind == POSTFIX:
            return f"Postfix policy {self.postfix!r}"
        return self.kind


class Applied:
    """An override bound to the domain it answers for, with its replies per zone.

    What the responder memoises for a lookup key that has an override.
    """

    __slots__ = ("_replies", "domain", "override")

    def __init__(self, domain: str, override: Override) -> None:
        self.domain = domain
        self.override = override
        self._replies: dict[int, bytes] = {}

    def reply(self, zone: ZoneConfig, render_key: int) -> bytes:
        """The framed reply for ``zone`` (not for ENFORCE_TESTING, which is looked up)."""
        reply = self._replies.get(render_key)
        if reply is None:
            reply = encode(self.payload(zone))
            self._replies[render_key] = reply
        return reply

    def payload(self, zone: ZoneConfig) -> bytes:
        """The reply, not framed."""
        override = self.override
        if override.kind == STATIC:
            assert override.policy is not None
            return render_policy(self.domain, override.policy, zone)
        if override.kind == POSTFIX:
            assert override.postfix is not None
            return b"OK " + override.postfix.encode()
        if override.kind == SKIP:
            return NOTFOUND
        raise ValueError(f"a {override.kind} override has no reply of its own")


@dataclass(frozen=True, slots=True)
class Overrides:
    """The parsed file: entries by domain, and parent entries by parent domain."""

    filename: str
    exact: Mapping[str, Override]
    parents: Mapping[str, Override]

    def __len__(self) -> int:
        return len(self.exact) + len(self.parents)

    def find(self, domain: str) -> Override | None:
        """The entry for ``domain`` (normalised): its own, else its nearest parent's."""
        override = self.exact.get(domain)
        if override is not None or not self.parents:
            return override
        rest = domain
        while True:
            dot = rest.find(".")
            if dot < 0:
                return None
            rest = rest[dot + 1 :]
            override = self.parents.get(rest)
            if override is not None:
                return override

    def apply(self, domain: str) -> Applied | None:
        override = self.find(domain)
        return None if override is None else Applied(domain, override)


def overrides_for(config: Config) -> Overrides | None:
    """The overrides file ``config`` names, read and checked; None if it names none."""
    if config.policy_overrides is None:
        return None
    return load_overrides(config.policy_overrides)


def load_overrides(filename: str) -> Overrides:
    """Read and check an overrides file; ConfigError names the file, the entry and the problem."""
    try:
        with open(filename, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise ConfigError(filename, "", f"cannot read: {exc.strerror or exc}") from None
    data = load_yaml(raw, filename)
    if data is None:  # empty, or only comments
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            filename, "", f"expected a mapping of domains to overrides, got {describe(data)}"
        )
    exact: dict[str, Override] = {}
    parents: dict[str, Override] = {}
    for key, value in data.items():
        where = str(key)
        try:
            domain, parent = _key(key)
            override = _override(where, value)
        except ValueError as exc:
            raise ConfigError(filename, where, str(exc)) from None
        table = parents if parent else exact
        previous = table.get(domain)
        if previous is not None:
            raise ConfigError(filename, where, f"the same domain as the entry {previous.entry!r}")
        table[domain] = override
    return Overrides(filename, MappingProxyType(exact), MappingProxyType(parents))


def _key(key: object) -> tuple[str, bool]:
    """(normalised domain, is a parent entry) for a key of the file."""
    if not isinstance(key, str):
        raise ValueError(f"an entry must be a domain name, got {describe(key)} (quote it)")
    parent = key.startswith(".")
    name = key[1:] if parent else key
    if any(ch in name for ch in "[]:") or any(ch.isspace() for ch in name):
        raise ValueError(
            "write the domain alone (no brackets, port or spaces): an entry applies to "
            "every next-hop form of it"
        )
    domain = normalise_key(name.encode("utf-8", "surrogateescape"))
    if domain is None:
        raise ValueError("not a domain name (an IP address or an invalid host name)")
    return domain, parent


def _override(entry: str, value: object) -> Override:
    if isinstance(value, str):
        word = value.strip()
        if word == SKIP:
            return Override(entry, SKIP)
        if word == ENFORCE_TESTING:
            return Override(entry, ENFORCE_TESTING)
        first = word.split(None, 1)[0].split(",", 1)[0].lower() if word else ""
        if first not in LEVELS:
            raise ValueError(
                f"expected skip, enforce_testing, a Postfix policy (starting with one of "
                f"{', '.join(LEVELS)}) or a static policy (mode, mx, max_age), "
                f"got {describe(value)}"
            )
        return Override(entry, POSTFIX, postfix=check_postfix_policy(word))
    if isinstance(value, Mapping):
        return Override(entry, STATIC, policy=_static_policy(value))
    raise ValueError(
        "expected skip, enforce_testing, a Postfix policy or a static policy "
        f"(a mapping with mode, mx and max_age), got {describe(value)}"
    )


def _static_policy(value: Mapping[object, object]) -> Policy:
    for key in value:
        if key not in _STATIC_KEYS:
            raise ValueError(
                f"{describe(key)}: unknown key (a static policy takes {', '.join(_STATIC_KEYS)})"
            )
    mode = value.get("mode")
    if mode not in MODES:
        raise ValueError(f"mode: expected enforce, testing or none, got {describe(mode)}")
    assert isinstance(mode, str)
    raw_mx = value.get("mx", [])
    if isinstance(raw_mx, str):
        raw_mx = [raw_mx]
    if not isinstance(raw_mx, list):
        raise ValueError(f"mx: expected a list of host names, got {describe(raw_mx)}")
    mx = tuple(_mx_pattern(item, index) for index, item in enumerate(raw_mx))
    if mode != "none" and not mx:
        # RFC 8461 §3.2; an empty match= would make Postfix defer every message.
        raise ValueError(f"mx: mode {mode} needs at least one mx pattern")
    max_age = value.get("max_age", DEFAULT_MAX_AGE)
    if isinstance(max_age, bool) or not isinstance(max_age, int):
        raise ValueError(f"max_age: expected seconds, got {describe(max_age)}")
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        raise ValueError(f"max_age: must be between 0 and {MAX_AGE_LIMIT}, got {max_age}")
    # The policy as a fetched body would read, for the TLSRPT policy strings.
    lines = (
        f"version: {STS_VERSION}",
        f"mode: {mode}",
        *(f"mx: {pattern}" for pattern in mx),
        f"max_age: {max_age}",
    )
    return Policy(mode=mode, max_age=max_age, mx=mx, lines=lines)


def _mx_pattern(item: object, index: int) -> str:
    if not isinstance(item, str):
        raise ValueError(f"mx[{index}]: expected a host name, got {describe(item)}")
    wildcard = item.startswith("*.")
    host = normalise_key((item[2:] if wildcard else item).encode("utf-8", "surrogateescape"))
    pattern = None if host is None else ("*." + host if wildcard else host)
    if pattern is None or not is_valid_mx_pattern(pattern) or any(c in item for c in "[]:"):
        raise ValueError(
            f"mx[{index}]: {describe(item)} is not a host name or *. pattern (RFC 8461 §3.2)"
        )
    return pattern
