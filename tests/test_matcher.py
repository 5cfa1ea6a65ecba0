"""MX pattern matching and host-name syntax: both twins, one table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtasts_fast import _compat, matcher
from tests.twins import compiled, twin_fixture


class Impl(NamedTuple):
    is_valid_hostname: Callable[[str], bool]
    is_valid_mx_pattern: Callable[[str], bool]
    mx_matches: Callable[[str, str], bool]
    match_any: Callable[[str, Sequence[str]], bool]


PY = Impl(
    matcher.is_valid_hostname_py,
    matcher.is_valid_mx_pattern_py,
    matcher.mx_matches_py,
    matcher.match_any_py,
)


def _compiled() -> ModuleType | None:
    """The compiled module, or None when pure Python is forced or it is not built."""
    if _compat.NO_EXTENSIONS:
        return None
    try:
        from mtasts_fast import _matcher
    except ImportError:
        if _compat.REQUIRE_EXTENSIONS:
            raise
        return None
    return _matcher


def _c_impl() -> Impl | None:
    module = _compiled()
    if module is None:
        return None
    return Impl(
        module.is_valid_hostname,
        module.is_valid_mx_pattern,
        module.mx_matches,
        module.match_any,
    )


impl = twin_fixture("_matcher", lambda: PY, _c_impl)


def test_public_names_follow_the_switch() -> None:
    module = _compiled()
    if module is None:
        if not _compat.NO_EXTENSIONS:
            compiled("_matcher", module)  # fails or skips with the reason
        assert matcher.is_valid_hostname is matcher.is_valid_hostname_py
        assert matcher.is_valid_mx_pattern is matcher.is_valid_mx_pattern_py
        assert matcher.mx_matches is matcher.mx_matches_py
        assert matcher.match_any is matcher.match_any_py
        return
    assert matcher.is_valid_hostname is module.is_valid_hostname
    assert matcher.is_valid_mx_pattern is module.is_valid_mx_pattern
    assert matcher.mx_matches is module.mx_matches
    assert matcher.match_any is module.match_any


# --- RFC 8461 §4.1 matching -----------------------------------------------------

MATCH_CASES = [
    pytest.param("mail.example.com", "mail.example.com", True, id="exact"),
    pytest.param("mail.example.com", "mx.example.com", False, id="different-host"),
    pytest.param("mail.example.com", "*.example.com", True, id="wildcard-one-label"),
    pytest.param("example.com", "*.example.com", False, id="wildcard-not-apex"),
    pytest.param("a.b.example.com", "*.example.com", False, id="wildcard-not-two-labels"),
    pytest.param(".example.com", "*.example.com", False, id="wildcard-not-empty-label"),
    pytest.param("mail.example.org", "*.example.com", False, id="wildcard-other-domain"),
    pytest.param("mailexample.com", "*.example.com", False, id="wildcard-needs-dot"),
    pytest.param("MAIL.Example.COM", "mail.example.com", True, id="case-host"),
    pytest.param("mail.example.com", "MAIL.EXAMPLE.com", True, id="case-pattern"),
    pytest.param("Mail.Example.com", "*.EXAMPLE.COM", True, id="case-wildcard"),
    pytest.param("mail.example.com.", "mail.example.com", True, id="trailing-dot-host"),
    pytest.param("mail.example.com", "mail.example.com.", True, id="trailing-dot-pattern"),
    pytest.param("mail.example.com.", "*.example.com.", True, id="trailing-dot-both-wildcard"),
    pytest.param("mail.example.com..", "mail.example.com", False, id="two-trailing-dots-host"),
    pytest.param("mail.example.com", "mail.example.com..", False, id="two-trailing-dots-pattern"),
    pytest.param("", "", False, id="empty-both"),
    pytest.param("", "*.example.com", False, id="empty-host"),
    pytest.param("mail.example.com", "", False, id="empty-pattern"),
    pytest.param(".", ".", False, id="root-only"),
    pytest.param("example.com", "*", False, id="star-alone"),
    pytest.param("com", "*", False, id="star-alone-single-label"),
    pytest.param("example.com", "*.", False, id="star-dot-alone"),
    pytest.param("a.", "*.", False, id="star-dot-alone-vs-label"),
    pytest.param("a..", "*..", False, id="wildcard-over-root"),
    pytest.param("mail.x.example.com", "mail.*.example.com", False, id="star-in-middle"),
    pytest.param("mx.example.com", "m*.example.com", False, id="star-inside-label"),
    pytest.param("mx.example.com", "*x.example.com", False, id="star-prefix-of-label"),
    pytest.param("mail.example.com", "**.example.com", False, id="double-star"),
    pytest.param("*.example.com", "*.example.com", True, id="literal-star-host-is-one-label"),
    pytest.param("bücher.example", "BÜCHER.example", True, id="non-ascii-case"),
    pytest.param("mail.\u212aexample.com", "mail.kexample.com", True, id="kelvin-sign-lowers"),
    pytest.param("x.straße.de", "*.STRASSE.de", False, id="sharp-s-is-not-ss"),
]


@pytest.mark.parametrize(("host", "pattern", "expected"), MATCH_CASES)
def test_mx_matches(impl: Impl, host: str, pattern: str, expected: bool) -> None:
    assert impl.mx_matches(host, pattern) is expected


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        pytest.param("mail.example.com", [], False, id="no-patterns"),
        pytest.param("mail.example.com", ["mx.example.com", "*.example.com"], True, id="second"),
        pytest.param("mail.example.com", ("mail.example.com",), True, id="tuple"),
        pytest.param("example.com", ["*.example.com", "mx.example.com"], False, id="none"),
        pytest.param("MX.example.com.", ["a.b", "mx.EXAMPLE.com"], True, id="case-and-dot"),
        pytest.param("bücher.test", ["x.test", "BÜCHER.test"], True, id="non-ascii-host"),
    ],
)
def test_match_any(impl: Impl, host: str, patterns: Sequence[str], expected: bool) -> None:
    assert impl.match_any(host, patterns) is expected


# --- host-name syntax ---------------------------------------------------------

LABEL63 = "a" * 63
NAME253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 octets
NAME254 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])

HOSTNAME_CASES = [
    pytest.param("example.com", True, id="plain"),
    pytest.param("EXAMPLE.com", True, id="upper-case"),
    pytest.param("example.com.", True, id="one-trailing-dot"),
    pytest.param("example.com..", False, id="two-trailing-dots"),
    pytest.param("localhost", True, id="single-label"),
    pytest.param("a", True, id="one-letter"),
    pytest.param(NAME253, True, id="253-octets"),
    pytest.param(NAME253 + ".", True, id="253-octets-plus-root-dot"),
    pytest.param(NAME254, False, id="254-octets"),
    pytest.param(LABEL63 + ".com", True, id="label-63"),
    pytest.param("a" * 64 + ".com", False, id="label-64"),
    pytest.param("com." + "a" * 64, False, id="last-label-64"),
    pytest.param("a-b.example.com", True, id="inner-hyphen"),
    pytest.param("a--b.example.com", True, id="double-hyphen"),
    pytest.param("xn--bcher-kva.test", True, id="a-label"),
    pytest.param("-ab.example.com", False, id="leading-hyphen"),
    pytest.param("ab-.example.com", False, id="trailing-hyphen"),
    pytest.param("example.-", False, id="hyphen-only-label"),
    pytest.param("_mta-sts.example.com", False, id="underscore"),
    pytest.param("a_b.example.com", False, id="inner-underscore"),
    pytest.param("123.example.com", True, id="digit-label"),
    pytest.param("3com.com", True, id="leading-digit"),
    pytest.param("example.123", False, id="all-digit-tld"),
    pytest.param("example.123.", False, id="all-digit-tld-trailing-dot"),
    pytest.param("example.1a", True, id="mixed-tld"),
    pytest.param("1.2.3.4", False, id="ipv4"),
    pytest.param("1.2.3.4.", False, id="ipv4-trailing-dot"),
    pytest.param("2001:db8::1", False, id="ipv6"),
    pytest.param("[1.2.3.4]", False, id="bracketed-ipv4"),
    pytest.param("bücher.test", False, id="non-ascii"),
    pytest.param("example.com\u0000", False, id="nul"),
    pytest.param("exa mple.com", False, id="space"),
    pytest.param("", False, id="empty"),
    pytest.param(".", False, id="root-only"),
    pytest.param("..", False, id="two-dots"),
    pytest.param(".example.com", False, id="leading-dot"),
    pytest.param("a..b", False, id="empty-inner-label"),
    pytest.param("*.example.com", False, id="wildcard-is-not-a-host"),
    pytest.param("example.com/", False, id="slash"),
]


@pytest.mark.parametrize(("name", "expected"), HOSTNAME_CASES)
def test_is_valid_hostname(impl: Impl, name: str, expected: bool) -> None:
    assert impl.is_valid_hostname(name) is expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        pytest.param("mail.example.com", True, id="host"),
        pytest.param("*.example.com", True, id="wildcard"),
        pytest.param("*.example.com.", True, id="wildcard-trailing-dot"),
        pytest.param("*", False, id="star-alone"),
        pytest.param("*.", False, id="star-dot-alone"),
        pytest.param("*..", False, id="star-dot-dot"),
        pytest.param("*.*.example.com", False, id="two-wildcards"),
        pytest.param("mail.*.example.com", False, id="star-in-middle"),
        pytest.param("m*.example.com", False, id="star-in-label"),
        pytest.param("*." + NAME253, True, id="wildcard-over-253-octet-name"),
        pytest.param("*." + NAME254, False, id="wildcard-over-254-octet-name"),
        pytest.param("*.1.2.3.4", False, id="wildcard-ipv4"),
        pytest.param("*.bücher.test", False, id="non-ascii"),
        pytest.param("", False, id="empty"),
    ],
)
def test_is_valid_mx_pattern(impl: Impl, pattern: str, expected: bool) -> None:
    assert impl.is_valid_mx_pattern(pattern) is expected


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda i: i.is_valid_hostname(None), id="hostname-none"),
        pytest.param(lambda i: i.is_valid_mx_pattern(None), id="pattern-none"),
        pytest.param(lambda i: i.mx_matches("a", None), id="match-none"),
        pytest.param(lambda i: i.match_any(None, ["a"]), id="match-any-none"),
    ],
)
def test_non_strings_raise(impl: Impl, call: Callable[[Impl], object]) -> None:
    with pytest.raises((TypeError, AttributeError)):
        call(impl)


# --- differential ---------------------------------------------------------------

_ALPHABET = st.sampled_from([*"abcxyzABZ019-._*:[] ", "ü", "Ü", "ß", "\u212a", "İ", "\u3002"])
_HOSTISH = st.text(alphabet=_ALPHABET, max_size=20)
_ANY = st.one_of(_HOSTISH, st.text(max_size=20))


def _require_compiled() -> ModuleType:
    return compiled("_matcher", _compiled())


@settings(max_examples=1000, deadline=None)
@given(_ANY)
def test_differential_hostname(name: str) -> None:
    c = _require_compiled()
    assert c.is_valid_hostname(name) is PY.is_valid_hostname(name)
    assert c.is_valid_mx_pattern(name) is PY.is_valid_mx_pattern(name)
    assert c.is_valid_mx_pattern("*." + name) is PY.is_valid_mx_pattern("*." + name)


@settings(max_examples=1000, deadline=None)
@given(_ANY, _ANY)
def test_differential_matches(host: str, pattern: str) -> None:
    c = _require_compiled()
    assert c.mx_matches(host, pattern) is PY.mx_matches(host, pattern)
    wildcard = "*." + pattern
    assert c.mx_matches(host, wildcard) is PY.mx_matches(host, wildcard)
    assert c.match_any(host, [pattern, wildcard]) is PY.match_any(host, [pattern, wildcard])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="abcXYZ09-", min_size=1, max_size=8), min_size=1, max_size=5))
def test_differential_wildcard_structure(labels: list[str]) -> None:
    c = _require_compiled()
    host = ".".join(labels)
    for i in range(len(labels) + 1):
        pattern = "*." + ".".join(labels[i:]).upper()
        expected = PY.mx_matches(host, pattern)
        assert expected is (i == 1 and len(labels) > 1)
        assert c.mx_matches(host, pattern) is expected
