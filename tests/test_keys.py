"""Socketmap key normalisation (DESIGN.md §4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtasts_fast.keys import normalise_key
from mtasts_fast.matcher import is_valid_hostname_py

NAME253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
NAME254 = NAME253 + "d"
BUECHER = "xn--bcher-kva.test"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # The forms Postfix sends for one next hop.
        pytest.param(b"example.com", "example.com", id="plain"),
        pytest.param(b"EXAMPLE.com.", "example.com", id="case-and-trailing-dot"),
        pytest.param(b"[example.com]", "example.com", id="bracketed"),
        pytest.param(b"[example.com]:25", "example.com", id="bracketed-with-port"),
        pytest.param(b"[EXAMPLE.COM.]:25", "example.com", id="bracketed-case-dot-port"),
        pytest.param(b"example.com:587", "example.com", id="host-port"),
        pytest.param(b" example.com ", "example.com", id="surrounding-spaces"),
        pytest.param(b"\texample.com\r\n", "example.com", id="surrounding-tab-crlf"),
        pytest.param(b"localhost", "localhost", id="single-label"),
        pytest.param(b"sub.example.com", "sub.example.com", id="subdomain-as-is"),
        # RFC 8461 §3.4: no policy inheritance, so parent probes are NOTFOUND.
        pytest.param(b".example.com", None, id="parent-domain-probe"),
        pytest.param(b".", None, id="root-only"),
        pytest.param(b"..example.com", None, id="two-leading-dots"),
        # IP literals, bracketed or not, v4 or v6.
        pytest.param(b"[1.2.3.4]", None, id="bracketed-ipv4"),
        pytest.param(b"[1.2.3.4]:25", None, id="bracketed-ipv4-port"),
        pytest.param(b"1.2.3.4", None, id="ipv4"),
        pytest.param(b"1.2.3.4:25", None, id="ipv4-port"),
        pytest.param(b"1.2.3.4.", None, id="ipv4-trailing-dot"),
        pytest.param(b"127.1", None, id="short-ipv4"),
        pytest.param(b"[IPv6:2001:db8::1]", None, id="ipv6-address-literal"),
        pytest.param(b"[ipv6:2001:db8::1]:25", None, id="ipv6-address-literal-lower-port"),
        pytest.param(b"[2001:db8::1]", None, id="bracketed-ipv6"),
        pytest.param(b"[2001:db8::1]:25", None, id="bracketed-ipv6-port"),
        pytest.param(b"2001:db8::1", None, id="unbracketed-ipv6"),
        pytest.param(b"::1", None, id="unbracketed-ipv6-loopback"),
        pytest.param(b"::ffff:1.2.3.4", None, id="unbracketed-ipv4-mapped"),
        pytest.param("１.２.３.４".encode(), None, id="full-width-ipv4"),
        # Empty and junk.
        pytest.param(b"", None, id="empty"),
        pytest.param(b"   ", None, id="whitespace-only"),
        pytest.param(b"[]", None, id="empty-brackets"),
        pytest.param(b"[]:25", None, id="empty-brackets-port"),
        pytest.param(b":25", None, id="port-only"),
        pytest.param(b"[example.com", None, id="unclosed-bracket"),
        pytest.param(b"example.com]", None, id="stray-closing-bracket"),
        pytest.param(b"[example.com]x", None, id="junk-after-bracket"),
        pytest.param(b"[example.com]:", None, id="bracket-empty-port"),
        pytest.param(b"[example.com]:smtp", None, id="bracket-named-port"),
        pytest.param(b"example.com:", None, id="empty-port"),
        pytest.param(b"example.com:smtp", None, id="named-port"),
        pytest.param("example.com:２５".encode(), None, id="non-ascii-digit-port"),
        pytest.param(b"example.com:25:26", None, id="two-ports"),
        pytest.param(b"[[example.com]]", None, id="double-brackets"),
        pytest.param(b"[ example.com ]", None, id="spaces-inside-brackets"),
        pytest.param(b"example.com..", None, id="two-trailing-dots"),
        pytest.param(b"a..b", None, id="empty-label"),
        pytest.param(b"exa mple.com", None, id="inner-space"),
        pytest.param(b"/var/run/x", None, id="unix-path"),
        pytest.param(b"_mta-sts.example.com", None, id="underscore"),
        pytest.param(b"-example.com", None, id="leading-hyphen"),
        pytest.param(b"example.123", None, id="all-digit-tld"),
        pytest.param(b"example.com\x00", None, id="nul"),
        pytest.param(b"example.com\xc2\xa0", None, id="no-break-space-is-not-stripped"),
        # Lengths (RFC 1035 §2.3.4).
        pytest.param(NAME253.encode(), NAME253, id="253-octets"),
        pytest.param(NAME253.encode() + b".", NAME253, id="253-octets-and-root-dot"),
        pytest.param(NAME254.encode(), None, id="254-octets"),
        pytest.param(b"a" * 63 + b".com", "a" * 63 + ".com", id="label-63"),
        pytest.param(b"a" * 64 + b".com", None, id="label-64"),
        # IDN: every spelling of one name is one A-label (UTS #46, IDNA2008).
        pytest.param("bücher.test".encode(), BUECHER, id="u-label"),
        pytest.param("BÜCHER.test".encode(), BUECHER, id="u-label-upper-case"),
        pytest.param(b"xn--bcher-kva.test", BUECHER, id="a-label"),
        pytest.param(b"XN--BCHER-KVA.TEST.", BUECHER, id="a-label-upper-case-dot"),
        pytest.param("[bücher.test]:25".encode(), BUECHER, id="u-label-bracketed-port"),
        pytest.param("bücher.test。".encode(), BUECHER, id="ideographic-full-stop"),
        pytest.param("bücher．test".encode(), BUECHER, id="full-width-full-stop"),
        pytest.param("ＥＸＡＭＰＬＥ.com".encode(), "example.com", id="full-width-ascii"),
        pytest.param("\u212aexample.com".encode(), "kexample.com", id="kelvin-sign"),
        pytest.param("straße.de".encode(), "xn--strae-oqa.de", id="sharp-s-nontransitional"),
        pytest.param(".bücher.test".encode(), None, id="u-label-parent-probe"),
        pytest.param("bücher..test".encode(), None, id="u-label-empty-label"),
        pytest.param("💩.la".encode(), None, id="emoji-u-label-not-idna2008"),
        pytest.param("bücher_x.test".encode(), None, id="u-label-underscore"),
        pytest.param(("ü" * 60 + ".test").encode(), None, id="u-label-too-long-as-a-label"),
        # A-label input: Punycode-level check only (see keys._a_labels_ok).
        pytest.param(b"xn--ls8h.la", "xn--ls8h.la", id="idna2003-emoji-a-label-kept"),
        pytest.param(b"xn--.test", None, id="empty-a-label"),
        pytest.param(b"xn--abc-.test", None, id="a-label-decodes-to-ascii"),
        pytest.param(b"xn--99999999999.test", None, id="a-label-not-punycode"),
        pytest.param(b"xn--bcher-kva-.test", None, id="a-label-not-canonical"),
        pytest.param(b"ab--cd.test", "ab--cd.test", id="other-r-ldh-label-kept"),
        # Invalid UTF-8.
        pytest.param(b"\xff\xfe.test", None, id="invalid-utf8"),
        pytest.param(b"b\xfccher.test", None, id="latin1-not-utf8"),
        pytest.param(b"\xed\xa0\x80.test", None, id="utf8-surrogate"),
    ],
)
def test_normalise_key(key: bytes, expected: str | None) -> None:
    assert normalise_key(key) == expected


def test_all_spellings_share_one_cache_key() -> None:
    spellings = [
        "bücher.test",
        "BÜCHER.test",
        "Bücher.Test.",
        "xn--bcher-kva.test",
        "[bücher.test]",
        "[xn--bcher-kva.test]:25",
        "bücher.test:587",
    ]
    assert {normalise_key(s.encode()) for s in spellings} == {BUECHER}


def _check(key: bytes) -> None:
    result = normalise_key(key)
    if result is not None:
        assert is_valid_hostname_py(result)
        assert result == result.lower()
        assert not result.endswith(".")
        assert not result.startswith(".")
        # Idempotent: a normalised key normalises to itself.
        assert normalise_key(result.encode()) == result


_PIECES = st.sampled_from(
    [*"abcxyzAZ09-._:[] \t", "ü", "Ü", "ß", "。", "\u212a", "İ", "xn--", "::"]
)
_KEYISH = st.lists(_PIECES, max_size=30).map("".join)


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(st.binary(max_size=60), _KEYISH.map(str.encode), st.text(max_size=30).map(str.encode))
)
def test_never_raises_and_result_is_valid(key: bytes) -> None:
    _check(key)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20))
def test_a_label_junk_never_raises(tail: str) -> None:
    _check(b"xn--" + tail.encode() + b".test")
