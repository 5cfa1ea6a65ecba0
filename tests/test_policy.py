"""TXT record, policy body and media type parsing (RFC 8461 §3.1-§3.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtasts_fast.errors import PolicyError
from mtasts_fast.policy import (
    MAX_AGE_LIMIT,
    Policy,
    is_text_plain,
    parse_policy,
    parse_txt_records,
)

ID = "20160831085700Z"

# --- TXT records ------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        # The old daemon's vectors (research/peer.md §5.2, test_utils.py).
        pytest.param([f"v=STSv1; id={ID};"], ID, id="peer-space-trailing-semicolon"),
        pytest.param([f"v=STSv1;id={ID};"], ID, id="peer-compact"),
        pytest.param([f"v=STSv1; id={ID}"], ID, id="peer-no-trailing-semicolon"),
        pytest.param([f"v=STSv1;id={ID}"], ID, id="peer-compact-no-trailing"),
        pytest.param([f"v=STSv1 ;  id={ID} ; "], ID, id="peer-extra-spaces"),
        pytest.param([f"v=STSv1;;;id={ID};;;"], ID, id="peer-repeated-semicolons"),
        pytest.param([f"v=STSv1\t;\tid={ID}"], ID, id="tabs-around-delimiter"),
        pytest.param([f"v=STSv1; id={ID}   "], ID, id="trailing-whitespace"),
        pytest.param(["v=STSv1; id=" + "a" * 32], "a" * 32, id="id-32-chars"),
        pytest.param(["v=STSv1; id=Z"], "Z", id="id-1-char"),
        pytest.param(["v=STSv1; id=abc; ext=value"], "abc", id="extension-ignored"),
        pytest.param(["v=STSv1; ext=value; id=abc"], "abc", id="extension-before-id"),
        pytest.param(
            ["v=STSv1; id=abc; x_y.z-9=!#$%&'()*+,-./:<>?@[]^_`{|}~"], "abc", id="ext-all-vchars"
        ),
        pytest.param(["v=STSv1; id=abc; " + "n" * 32 + "=1"], "abc", id="ext-name-32-chars"),
        pytest.param(["v=STSv1; ID=upper; id=lower"], "lower", id="ID-is-an-extension"),
        pytest.param(["v=STSv1; id=first; id=second"], "first", id="duplicate-id-first-wins"),
        pytest.param(["v=spf1 -all", "v=STSv1; id=x"], "x", id="other-records-ignored"),
        pytest.param(["v=STSv10; id=a", "v=STSv1; id=b"], "b", id="STSv10-is-not-STSv1"),
        pytest.param(["V=STSv1; id=a", "v=STSv1; id=b"], "b", id="version-tag-case-sensitive"),
        pytest.param([" v=STSv1; id=a", "v=STSv1; id=b"], "b", id="leading-space-not-STSv1"),
        pytest.param(["", "v=STSv1; id=b"], "b", id="empty-record-ignored"),
    ],
)
def test_txt_valid(records: list[str], expected: str) -> None:
    assert parse_txt_records(records) == expected


@pytest.mark.parametrize(
    ("records", "message"),
    [
        pytest.param([], "no record", id="no-records"),
        pytest.param([""], "no record", id="peer-empty"),
        pytest.param(["   "], "no record", id="peer-blank"),
        pytest.param([" ;   ;  "], "no record", id="peer-only-delimiters"),
        pytest.param(["id=20180907T090909; v=STSv1;"], "no record", id="bad-record1-order"),
        pytest.param(["azazaza;asdasdasdasd"], "no record", id="bad-record2-garbage"),
        pytest.param(["v=STSv12;id=20180907T090909;"], "no record", id="bad-record3-STSv12"),
        pytest.param(["v=STSv1"], "id field missing", id="version-only"),
        pytest.param(["v=STSv1;"], "id field missing", id="version-only-semicolon"),
        pytest.param(["v=STSv1; Id=abc"], "id field missing", id="Id-is-not-id"),
        pytest.param(["v=STSv1; id="], "not 1-32", id="empty-id"),
        pytest.param(["v=STSv1; id=" + "a" * 33], "not 1-32", id="id-33-chars"),
        pytest.param(["v=STSv1; id=2018-09-07"], "not 1-32", id="id-with-hyphen"),
        pytest.param(["v=STSv1; id=abc def"], "not 1-32", id="id-with-space"),
        pytest.param(["v=STSv1; id=abc_def"], "not 1-32", id="id-with-underscore"),
        pytest.param(["v=STSv1; id=caf\u00e9"], "not 1-32", id="id-non-ascii"),
        pytest.param(["v=STSv1; id=ab\x00c"], "not 1-32", id="id-with-nul"),
        pytest.param(["v=STSv1; id=a", "v=STSv1; id=b"], "2 v=STSv1 records", id="two-records"),
        pytest.param(
            ["v=STSv1; id=a", "v=STSv1; broken"], "2 v=STSv1 records", id="two-records-one-broken"
        ),
        pytest.param(["v=STSv1; id=a", "v=STSv1"], "2 v=STSv1 records", id="two-records-bare"),
        pytest.param(["v=STSv1; id=a; garbage"], "malformed field", id="field-without-equals"),
        pytest.param(["v=STSv1; id=a; -x=1"], "malformed field", id="ext-name-leading-hyphen"),
        pytest.param(["v=STSv1; id=a; " + "n" * 33 + "=1"], "malformed field", id="ext-name-33"),
        pytest.param(["v=STSv1; id=a; x=a b"], "malformed field", id="ext-value-space"),
        pytest.param(["v=STSv1; id=a; x="], "malformed field", id="ext-value-empty"),
        pytest.param(["v=STSv1; id=a; x=a=b"], "malformed field", id="ext-value-equals"),
        pytest.param(["v=STSv1; id=a; x=\x7f"], "malformed field", id="ext-value-del"),
        pytest.param(["v=STSv1; id=a; x=caf\u00e9"], "malformed field", id="ext-value-non-ascii"),
    ],
)
def test_txt_invalid(records: list[str], message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        parse_txt_records(records)
    assert "RFC 8461 §3.1" in str(info.value)
    assert "\n" not in str(info.value)


# --- Policy bodies ----------------------------------------------------------

GOOD = "version: STSv1\nmode: enforce\nmx: mail.loc\nmax_age: 86400"


def policy(*lines: str, mode: str = "enforce", mx: str = "mail.loc", age: str = "86400") -> str:
    """A policy body: the required fields, then ``lines``."""
    head = [f"version: {STS}", f"mode: {mode}", f"max_age: {age}"]
    if mx:
        head.append(f"mx: {mx}")
    return "\n".join([*head, *lines]) + "\n"


STS = "STSv1"


@pytest.mark.parametrize(
    ("text", "mode", "max_age", "mx"),
    [
        pytest.param(GOOD, "enforce", 86400, ("mail.loc",), id="good-no-final-newline"),
        pytest.param(GOOD + "\n", "enforce", 86400, ("mail.loc",), id="final-lf"),
        pytest.param(GOOD.replace("\n", "\r\n"), "enforce", 86400, ("mail.loc",), id="crlf"),
        pytest.param(
            GOOD.replace("\n", "\r\n") + "\r\n", "enforce", 86400, ("mail.loc",), id="crlf-final"
        ),
        pytest.param(
            "version: STSv1\r\nmode: enforce\nmx: mail.loc\r\nmax_age: 86400\n",
            "enforce",
            86400,
            ("mail.loc",),
            id="mixed-lf-crlf",
        ),
        pytest.param(
            "version: STSv1  \nmode: enforce\t\nmx: mail.loc \r\nmax_age: 86400 \t",
            "enforce",
            86400,
            ("mail.loc",),
            id="trailing-whitespace",
        ),
        pytest.param(
            "\n\nversion: STSv1\n\n  \nmode: enforce\nmx: mail.loc\n\t\nmax_age: 86400\n\n",
            "enforce",
            86400,
            ("mail.loc",),
            id="blank-lines",
        ),
        pytest.param(
            "version:STSv1\nmode:\tenforce\nmx:mail.loc\nmax_age:  86400",
            "enforce",
            86400,
            ("mail.loc",),
            id="no-or-many-spaces-after-colon",
        ),
        pytest.param(policy(mode="testing"), "testing", 86400, ("mail.loc",), id="testing"),
        pytest.param(policy(mode="none", mx=""), "none", 86400, (), id="none-without-mx"),
        pytest.param(policy(mode="none"), "none", 86400, ("mail.loc",), id="none-with-mx"),
        pytest.param(policy(age="0"), "enforce", 0, ("mail.loc",), id="max-age-0"),
        pytest.param(policy(age="0000000001"), "enforce", 1, ("mail.loc",), id="max-age-10-digits"),
        pytest.param(
            policy(age=str(MAX_AGE_LIMIT)),
            "enforce",
            MAX_AGE_LIMIT,
            ("mail.loc",),
            id="max-age-limit",
        ),
        pytest.param(
            policy("mx: *.example.com", "mx: Mail.Example.COM", "mx: mx.example.net."),
            "enforce",
            86400,
            ("mail.loc", "*.example.com", "Mail.Example.COM", "mx.example.net."),
            id="mx-as-written-in-order",
        ),
        pytest.param(
            policy("mx: mail.loc"), "enforce", 86400, ("mail.loc", "mail.loc"), id="mx-repeated"
        ),
        pytest.param(
            policy("mx: xn--bcher-kva.example"),
            "enforce",
            86400,
            ("mail.loc", "xn--bcher-kva.example"),
            id="mx-a-label",
        ),
        pytest.param(
            policy("foo: bar", "x_y.z-1: any value, with spaces", "comment: caf\u00e9 \u2713"),
            "enforce",
            86400,
            ("mail.loc",),
            id="extensions-ignored",
        ),
        pytest.param(
            policy("Version: STSv2", "MODE: none"),
            "enforce",
            86400,
            ("mail.loc",),
            id="keys-case-sensitive",
        ),
    ],
)
def test_policy_valid(text: str, mode: str, max_age: int, mx: tuple[str, ...]) -> None:
    result, warnings = parse_policy(text)
    assert result.mode == mode
    assert result.max_age == max_age
    assert result.mx == mx
    assert warnings == []


def test_policy_lines_as_fetched() -> None:
    text = (
        "version: STSv1\r\n\r\nmode: enforce  \r\nmx: mail.loc\r\nmx: 192.0.2.1\r\n"
        "max_age: 86400\r\nfoo:  bar\r\n"
    )
    result, _ = parse_policy(text)
    assert result == Policy(
        mode="enforce",
        max_age=86400,
        mx=("mail.loc",),
        lines=(
            "version: STSv1",
            "mode: enforce",
            "mx: mail.loc",
            "mx: 192.0.2.1",
            "max_age: 86400",
            "foo:  bar",
        ),
    )


@pytest.mark.parametrize(
    ("text", "expected", "warning"),
    [
        pytest.param(
            policy(age="31557601"),
            MAX_AGE_LIMIT,
            "max_age: 31557601 above 31557600, clamped",
            id="max-age-one-over",
        ),
        pytest.param(
            policy(age="9999999999"),
            MAX_AGE_LIMIT,
            "max_age: 9999999999 above",
            id="max-age-ten-nines",
        ),
    ],
)
def test_policy_max_age_clamped(text: str, expected: int, warning: str) -> None:
    # Deliberately unlike the old daemon (bad-policy6 rejected): see policy.py.
    result, warnings = parse_policy(text)
    assert result.max_age == expected
    assert len(warnings) == 1
    assert warnings[0].startswith(warning)
    assert "RFC 8461 §3.2" in warnings[0]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("192.0.2.1", id="ipv4"),
        pytest.param("[192.0.2.1]", id="ipv4-bracketed"),
        pytest.param("2001:db8::1", id="ipv6"),
        pytest.param("[IPv6:2001:db8::1]", id="ipv6-bracketed"),
        pytest.param("b\u00fccher.example", id="u-label"),
        pytest.param("*.*.example.com", id="double-wildcard"),
        pytest.param("mail.*.example.com", id="inner-wildcard"),
        pytest.param("*example.com", id="wildcard-without-dot"),
        pytest.param("*", id="bare-wildcard"),
        pytest.param("-bad-.example.com", id="hyphen-label"),
        pytest.param("mail_x.example.com", id="underscore"),
        pytest.param("mail.example.com:25", id="with-port"),
        pytest.param("mail..example.com", id="empty-label"),
        pytest.param("a" * 64 + ".example.com", id="label-64"),
        pytest.param("", id="empty"),
        pytest.param("mail.example.com mx2.example.com", id="two-names"),
    ],
)
def test_policy_bad_mx_dropped(bad: str) -> None:
    result, warnings = parse_policy(policy(f"mx: {bad}"))
    assert result.mx == ("mail.loc",)
    assert len(warnings) == 1
    assert warnings[0].startswith("mx: ")
    assert "dropped" in warnings[0]


@pytest.mark.parametrize(
    ("extra", "field", "value"),
    [
        pytest.param("mode: none", "mode", "enforce", id="mode"),
        pytest.param("max_age: 1", "max_age", 86400, id="max_age"),
        pytest.param("version: STSv2", "mode", "enforce", id="version-bad-second"),
        pytest.param("max_age: xxx", "max_age", 86400, id="max_age-bad-second"),
    ],
)
def test_policy_first_occurrence_wins(extra: str, field: str, value: object) -> None:
    result, warnings = parse_policy(policy(extra))
    assert getattr(result, field) == value
    key = extra.partition(":")[0]
    assert warnings == [f"{key}: repeated on line 5, first value kept (RFC 8461 §3.2)"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "version missing", id="empty"),
        pytest.param("\n\r\n  \n", "version missing", id="blank"),
        pytest.param("garbage", "line 1 is not 'key: value'", id="bad-policy1-garbage"),
        pytest.param(
            "version: STSv1\nmode: enforce\nmax_age: 86400", "no usable mx", id="bad-policy2-no-mx"
        ),
        pytest.param(policy(age="xxx"), "max_age: 'xxx' is not 1-10 digits", id="bad-policy5-xxx"),
        pytest.param(
            "version: STSv1\nmx: mail.loc\nmax_age: 86400", "mode missing", id="bad-policy7-no-mode"
        ),
        pytest.param(policy(mode="doubt"), "mode: 'doubt' is not", id="bad-policy8-doubt"),
        pytest.param("mode: enforce\nmx: a.loc\nmax_age: 1", "version missing", id="no-version"),
        pytest.param(
            "version: STSv1\nmode: enforce\nmx: a.loc", "max_age missing", id="no-max-age"
        ),
        pytest.param(policy().replace("STSv1", "STSv2"), "version: 'STSv2'", id="version-STSv2"),
        pytest.param(
            policy().replace("STSv1", "stsv1"), "version: 'stsv1'", id="version-lowercase"
        ),
        pytest.param(policy().replace("STSv1", ""), "version: ''", id="version-empty"),
        pytest.param(policy(mode="Enforce"), "mode: 'Enforce'", id="mode-capitalised"),
        pytest.param(policy(mode=""), "mode: ''", id="mode-empty"),
        pytest.param(policy(age="+1"), "not 1-10 digits", id="max-age-plus"),
        pytest.param(policy(age="-1"), "not 1-10 digits", id="max-age-negative"),
        pytest.param(policy(age="1_0"), "not 1-10 digits", id="max-age-underscore"),
        pytest.param(policy(age=" 1_0"), "not 1-10 digits", id="max-age-space-underscore"),
        pytest.param(policy(age="0x10"), "not 1-10 digits", id="max-age-hex"),
        pytest.param(policy(age="1.5"), "not 1-10 digits", id="max-age-decimal"),
        pytest.param(policy(age="1 0"), "not 1-10 digits", id="max-age-inner-space"),
        pytest.param(policy(age="\u0661\u0662"), "not 1-10 digits", id="max-age-arabic-digits"),
        pytest.param(policy(age="\uff11"), "not 1-10 digits", id="max-age-fullwidth-digit"),
        pytest.param(policy(age="12345678901"), "not 1-10 digits", id="max-age-11-digits"),
        pytest.param(policy(age=""), "not 1-10 digits", id="max-age-empty"),
        pytest.param(" " + policy(), "line 1 is not 'key: value'", id="key-leading-space"),
        pytest.param(policy("version : STSv1"), "line 5 is not", id="space-before-colon"),
        pytest.param(policy("no colon here"), "line 5 is not", id="line-without-colon"),
        pytest.param(policy(": value"), "line 5 is not", id="empty-key"),
        pytest.param(policy("_x: 1"), "line 5 is not", id="key-leading-underscore"),
        pytest.param(policy("k" * 33 + ": 1"), "line 5 is not", id="key-33-chars"),
        pytest.param(policy("caf\u00e9: 1"), "line 5 is not", id="key-non-ascii"),
        pytest.param(policy("foo: a\x00b"), "control character on line 5", id="nul"),
        pytest.param(policy("foo: a\x1bb"), "control character on line 5", id="escape"),
        pytest.param(policy("foo: a\x7fb"), "control character on line 5", id="del"),
        pytest.param(
            "version: STSv1\rmode: enforce\nmx: a.loc\nmax_age: 1",
            "control character",
            id="lone-cr",
        ),
        pytest.param(
            policy(mx="192.0.2.1"), "no usable mx pattern for mode enforce", id="enforce-ip-mx"
        ),
        pytest.param(
            policy("mx: b\u00fccher.loc", mode="testing", mx="[192.0.2.1]"),
            "no usable mx pattern for mode testing",
            id="testing-only-bad-mx",
        ),
    ],
)
def test_policy_invalid(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        parse_policy(text)
    assert "RFC 8461 §3.2" in str(info.value)
    assert "\n" not in str(info.value)


def test_policy_error_message_is_short() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(policy("x" * 10_000))
    assert len(str(info.value)) < 120


# --- Media type -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        pytest.param("text/plain", True, id="plain"),
        pytest.param("TEXT/PLAIN", True, id="upper"),
        pytest.param("TeXT/PlAiN", True, id="mixed-case"),
        pytest.param("text/plain;charset=utf-8", True, id="charset"),
        pytest.param("text/plain; charset=UTF-8", True, id="charset-space"),
        pytest.param("text/plain ; charset=UTF-8", True, id="space-before-semicolon"),
        pytest.param(" text/plain", True, id="leading-space"),
        pytest.param("application/octet-stream", False, id="octet-stream"),
        pytest.param("application/octet-stream+text/plain", False, id="octet-stream-suffix"),
        pytest.param("application/json+text/plain", False, id="json-suffix"),
        pytest.param("text/plain+", False, id="plain-plus"),
        pytest.param("text/html", False, id="html"),
        pytest.param("text/plainx", False, id="plainx"),
        pytest.param("text", False, id="no-subtype"),
        pytest.param("", False, id="empty"),
        pytest.param(None, False, id="missing"),
    ],
)
def test_is_text_plain(content_type: str | None, expected: bool) -> None:
    assert is_text_plain(content_type) is expected


# --- Properties -------------------------------------------------------------

_KEYS = st.sampled_from(["version", "mode", "max_age", "mx", "x", "Version", " mode", "mx "])
_VALUES = st.one_of(
    st.sampled_from(["STSv1", "enforce", "testing", "none", "86400", "mail.loc", "*.loc", "0"]),
    st.text(max_size=20),
)
_LINES = st.lists(
    st.builds(
        lambda k, sep, v: f"{k}{sep}{v}", _KEYS, st.sampled_from([": ", ":", " ", ""]), _VALUES
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _LINES.map("\n".join), _LINES.map("\r\n".join)))
def test_parse_policy_raises_only_policy_error(text: str) -> None:
    try:
        result, warnings = parse_policy(text)
    except PolicyError as exc:
        message = str(exc)
    else:
        message = ""
    assert "\n" not in message
    if message:
        return
    assert result.mode in ("enforce", "testing", "none")
    assert 0 <= result.max_age <= MAX_AGE_LIMIT
    assert result.mode == "none" or result.mx
    assert all(isinstance(w, str) and "\n" not in w for w in warnings)


_TXT_FIELDS = st.lists(
    st.one_of(
        st.sampled_from(["v=STSv1", "id=abc", "id=", "x=y", " ", "", "v=STSv2", "id=a-b"]),
        st.text(max_size=12),
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(), _TXT_FIELDS.map(";".join)), max_size=4))
def test_parse_txt_records_raises_only_policy_error(records: list[str]) -> None:
    try:
        policy_id = parse_txt_records(records)
    except PolicyError as exc:
        message = str(exc)
    else:
        message = ""
    assert "\n" not in message
    if message:
        return
    assert 1 <= len(policy_id) <= 32
    assert policy_id.isascii()
    assert policy_id.isalnum()
