"""Netstring framing: both twins against one table, plus a differential test."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtasts_fast import _compat, netstring
from mtasts_fast.errors import BadLength, BadTerminator, NetstringError, TooLong
from tests.twins import compiled, twin_fixture


class Impl(NamedTuple):
    parser: Callable[..., Any]
    encode: Callable[[bytes], bytes]


def _c_impl() -> Impl | None:
    if netstring.NetstringParserC is None or netstring.encode_c is None:
        return None
    return Impl(netstring.NetstringParserC, netstring.encode_c)


impl = twin_fixture(
    "_netstring", lambda: Impl(netstring.NetstringParserPy, netstring.encode_py), _c_impl
)


def feed_all(parser: Any, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


# --- module wiring ---------------------------------------------------------


def test_public_names_follow_the_switch() -> None:
    if _compat.NO_EXTENSIONS:
        assert netstring.NetstringParser is netstring.NetstringParserPy
        assert netstring.encode is netstring.encode_py
        assert netstring.NetstringParserC is None
        assert netstring.encode_c is None
        return
    compiled("_netstring", _c_impl())
    from mtasts_fast import _netstring

    assert netstring.NetstringParser is _netstring.NetstringParserC
    assert netstring.encode is _netstring.encodeC
    assert _netstring.MAX_PAYLOAD == netstring.MAX_PAYLOAD == 10_000
    assert _netstring.MAX_LENGTH_DIGITS == netstring.MAX_LENGTH_DIGITS


# --- encode -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(b"", b"0:,", id="empty"),
        pytest.param(b"X", b"1:X,", id="one-byte"),
        pytest.param(b"x" * 9, b"9:" + b"x" * 9 + b",", id="nine-one-digit"),
        pytest.param(b"x" * 10, b"10:" + b"x" * 10 + b",", id="ten-two-digits"),
        pytest.param(b"a:b,c", b"5:a:b,c,", id="colon-and-comma-inside"),
        pytest.param(b"\x00\xff", b"2:\x00\xff,", id="binary"),
        pytest.param(b"z" * 123_456, b"123456:" + b"z" * 123_456 + b",", id="large"),
    ],
)
def test_encode(impl: Impl, payload: bytes, expected: bytes) -> None:
    assert impl.encode(payload) == expected


# --- decoding tables (peer.md §5.2 and more) ----------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param([b""], [], id="nothing"),
        pytest.param([b"0:,"], [b""], id="empty-payload"),
        pytest.param([b"1:X,"], [b"X"], id="one-byte"),
        pytest.param([b"00:,"], [b""], id="leading-zero-empty"),
        pytest.param([b"01:X,"], [b"X"], id="leading-zero"),
        pytest.param([b"00:,1:X,"], [b"", b"X"], id="leading-zero-then-plain"),
        pytest.param([b"01:X,1:X,"], [b"X", b"X"], id="leading-zero-pipelined"),
        pytest.param([b"17:5:Hello,6:World!,,"], [b"5:Hello,6:World!,"], id="nested-netstrings"),
        pytest.param([b"5:a,b:c,"], [b"a,b:c"], id="comma-and-colon-in-payload"),
        pytest.param([b"0", b":", b","], [b""], id="stream-empty-in-pieces"),
        pytest.param([b"1:", b"X,3:abc,2:", b"ok,"], [b"X", b"abc", b"ok"], id="stream-pieces"),
        pytest.param(
            [b"1:", b"X,9:123", b"456", b"789", b",2:", b"ok,"],
            [b"X", b"123456789", b"ok"],
            id="stream-payload-split-thrice",
        ),
        pytest.param([b"3:abc", b","], [b"abc"], id="terminator-in-next-chunk"),
        pytest.param([b"3:", b"", b"abc,"], [b"abc"], id="empty-chunks-ignored"),
        pytest.param([b"0000000000:,"], [b""], id="ten-leading-zeros"),
        pytest.param([b"0" * 19 + b"1:X,"], [b"X"], id="twenty-digits-allowed"),
    ],
)
def test_decode(impl: Impl, chunks: list[bytes], expected: list[bytes]) -> None:
    parser = impl.parser()
    got = feed_all(parser, chunks)
    assert got == expected
    assert all(type(payload) is bytes for payload in got)
    assert not parser.pending


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"3", id="length-digit"),
        pytest.param(b"3:", id="colon"),
        pytest.param(b"3:a", id="one-of-three"),
        pytest.param(b"3:aa", id="two-of-three"),
        pytest.param(b"3:aaa", id="payload-without-comma"),
        pytest.param(b"0:", id="empty-payload-without-comma"),
        pytest.param(b"1:X,2:o", id="complete-then-incomplete"),
    ],
)
def test_incomplete_yields_nothing_and_is_pending(impl: Impl, data: bytes) -> None:
    parser = impl.parser()
    got = parser.feed(data)
    assert got == ([b"X"] if data.startswith(b"1:X,") else [])
    assert parser.pending


def test_pending_lifecycle(impl: Impl) -> None:
    parser = impl.parser()
    assert not parser.pending
    assert parser.feed(b"") == []
    assert not parser.pending
    for piece in (b"1", b"0", b":", b"01234", b"5678", b"9"):
        assert parser.feed(piece) == []
        assert parser.pending
    assert parser.feed(b",") == [b"0123456789"]
    assert not parser.pending


@pytest.mark.parametrize(
    ("data", "error", "payloads"),
    [
        pytest.param(b":,", BadLength, [], id="colon-without-digits"),
        pytest.param(b"aaa:aaa", BadLength, [], id="letters-in-length"),
        pytest.param(b"1a:X,", BadLength, [], id="letter-after-digit"),
        pytest.param(b" 1:X,", BadLength, [], id="leading-space"),
        pytest.param(b"-1:X,", BadLength, [], id="minus-sign"),
        pytest.param(b"+1:X,", BadLength, [], id="plus-sign"),
        pytest.param("١:X,".encode(), BadLength, [], id="non-ascii-digit"),
        pytest.param(b"0:_", BadTerminator, [], id="empty-payload-bad-terminator"),
        pytest.param(b"3:aaa_", BadTerminator, [], id="bad-terminator"),
        pytest.param(b"3:aaa;", BadTerminator, [], id="semicolon-terminator"),
        pytest.param(b"3:aaaa,", BadTerminator, [], id="payload-longer-than-declared"),
        pytest.param(b"1:X,,", BadLength, [b"X"], id="double-comma"),
        pytest.param(b"1:a,2:bc,x", BadLength, [b"a", b"bc"], id="payloads-before-bad-length"),
        pytest.param(b"1:a,3:abcX", BadTerminator, [b"a"], id="payload-before-bad-terminator"),
        pytest.param(b"1:a,0:,99999", TooLong, [b"a", b""], id="payloads-before-too-long"),
    ],
)
def test_errors(
    impl: Impl, data: bytes, error: type[NetstringError], payloads: list[bytes]
) -> None:
    parser = impl.parser()
    with pytest.raises(error) as info:
        parser.feed(data)
    assert type(info.value) is error
    assert info.value.payloads == payloads
    assert not parser.pending


@pytest.mark.parametrize(
    ("limit", "data"),
    [
        pytest.param(5, b"6:123456,", id="limit-5-over-by-one"),
        pytest.param(1024, b"9999:aaa", id="limit-1024-with-payload"),
        pytest.param(1024, b"9999:", id="limit-1024-with-colon"),
        pytest.param(1024, b"9999", id="limit-1024-no-colon"),
        pytest.param(1024, b"1025", id="limit-1024-plus-one-no-colon"),
        pytest.param(0, b"1", id="limit-0"),
        pytest.param(netstring.MAX_PAYLOAD, b"10001:", id="default-limit-plus-one"),
        pytest.param(1024, b"0" * 21, id="twenty-one-leading-zeros"),
    ],
)
def test_too_long(impl: Impl, limit: int, data: bytes) -> None:
    parser = impl.parser(limit)
    with pytest.raises(TooLong):
        parser.feed(data)


def test_too_long_is_raised_while_digits_arrive(impl: Impl) -> None:
    parser = impl.parser(1024)
    assert parser.feed(b"999") == []
    with pytest.raises(TooLong):
        parser.feed(b"9")


@pytest.mark.parametrize("digit", [pytest.param(b"9", id="nines"), pytest.param(b"0", id="zeros")])
def test_ten_megabytes_of_digits_fail_early(impl: Impl, digit: bytes) -> None:
    parser = impl.parser()
    with pytest.raises(TooLong):
        parser.feed(digit * 10_000_000)
    # The same, arriving in small chunks: the error comes within a few chunks.
    parser = impl.parser()
    with pytest.raises(TooLong):  # noqa: PT012 - the loop is the point
        for _ in range(10_000_000 // 4096):
            parser.feed(digit * 4096)


@pytest.mark.parametrize(
    "limit",
    [pytest.param(0, id="zero"), pytest.param(5, id="five"), pytest.param(10_000, id="default")],
)
def test_exactly_at_limit_is_accepted(impl: Impl, limit: int) -> None:
    payload = b"p" * limit
    parser = impl.parser(limit)
    assert parser.feed(impl.encode(payload)) == [payload]
    with pytest.raises(TooLong):
        impl.parser(limit).feed(impl.encode(payload + b"p"))


def test_default_limit(impl: Impl) -> None:
    payload = b"d" * netstring.MAX_PAYLOAD
    assert impl.parser().feed(impl.encode(payload)) == [payload]
    with pytest.raises(TooLong):
        impl.parser().feed(impl.encode(payload + b"d"))


@pytest.mark.parametrize(
    ("limit", "error"),
    [
        pytest.param(-1, ValueError, id="negative"),
        pytest.param(2**31, ValueError, id="too-big"),
        pytest.param(2**80, ValueError, id="bignum"),
        pytest.param("5", TypeError, id="string"),
        pytest.param(5.0, TypeError, id="float"),
    ],
)
def test_bad_limit(impl: Impl, limit: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        impl.parser(limit)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(b":", BadLength, id="bad-length"),
        pytest.param(b"1:ab", BadTerminator, id="bad-terminator"),
        pytest.param(b"99999", TooLong, id="too-long"),
    ],
)
def test_parser_is_dead_after_error(impl: Impl, data: bytes, error: type[NetstringError]) -> None:
    parser = impl.parser()
    with pytest.raises(error):
        parser.feed(data)
    for later in (b"1:a,", b"", b":"):
        with pytest.raises(error) as info:
            parser.feed(later)
        assert type(info.value) is error
        assert info.value.payloads == []
        assert not parser.pending


def test_error_payloads_are_only_from_the_failing_feed(impl: Impl) -> None:
    parser = impl.parser()
    assert parser.feed(b"1:a,") == [b"a"]
    assert parser.feed(b"1:b,2:c") == [b"b"]
    with pytest.raises(BadTerminator) as info:
        parser.feed(b"d,1:e,3:fgh!")
    assert info.value.payloads == [b"cd", b"e"]


# --- chunking -----------------------------------------------------------------

PAYLOADS = [b"", b"X", b"postfix example.com", b"a,b:c", b"0:,", b"\x00\xff" * 7]
STREAM = b"".join(netstring.encode_py(p) for p in PAYLOADS) + b"00:,01:Z,"
EXPECTED = [*PAYLOADS, b"", b"Z"]


def test_one_byte_feeds(impl: Impl) -> None:
    parser = impl.parser()
    chunks = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert feed_all(parser, chunks) == EXPECTED
    assert not parser.pending


def test_every_split_in_two_and_three(impl: Impl) -> None:
    n = len(STREAM)
    for i in range(n + 1):
        parser = impl.parser()
        assert feed_all(parser, [STREAM[:i], STREAM[i:]]) == EXPECTED, i
        for j in range(i, n + 1):
            parser = impl.parser()
            got = feed_all(parser, [STREAM[:i], STREAM[i:j], STREAM[j:]])
            assert got == EXPECTED, (i, j)


def test_one_byte_feeds_then_error(impl: Impl) -> None:
    stream = b"1:a,2:bc,3:def!"
    parser = impl.parser()
    got: list[bytes] = []
    for i in range(len(stream) - 1):
        got.extend(parser.feed(stream[i : i + 1]))
    assert got == [b"a", b"bc"]
    with pytest.raises(BadTerminator) as info:
        parser.feed(b"!")
    assert info.value.payloads == []


# --- properties ---------------------------------------------------------------


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Mostly well-formed netstrings, with occasional damage or junk."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["good", "good", "good", "zeros", "junk", "short", "long"]))
        payload = draw(st.binary(max_size=30))
        if kind == "good":
            parts.append(netstring.encode_py(payload))
        elif kind == "zeros":
            parts.append(b"0" * draw(st.integers(1, 22)) + netstring.encode_py(payload))
        elif kind == "junk":
            parts.append(draw(st.binary(max_size=8)))
        elif kind == "short":
            parts.append(b"%d:%b," % (len(payload) + 1, payload))
        else:
            parts.append(b"%d:%b," % (max(len(payload) - 1, 0), payload))
    return b"".join(parts)


def run(parser: Any, chunks: list[bytes]) -> tuple[list[list[bytes]], Any, list[bytes], bool]:
    """Per-feed results, then the error class and its payloads, and `pending`."""
    results: list[list[bytes]] = []
    for chunk in chunks:
        try:
            results.append(parser.feed(chunk))
        except NetstringError as exc:
            with pytest.raises(type(exc)) as again:
                parser.feed(b"1:a,")
            assert again.value.payloads == []
            return results, type(exc), exc.payloads, parser.pending
    return results, None, [], parser.pending


@settings(max_examples=500, deadline=None)
@given(
    st.data(),
    st.one_of(st.binary(max_size=200), streams()),
    st.one_of(st.none(), st.integers(0, 40)),
)
def test_differential_c_vs_py(data: st.DataObject, stream: bytes, limit: int | None) -> None:
    c = compiled("_netstring", _c_impl())
    chunks = data.draw(chunked(stream))
    args = () if limit is None else (limit,)
    expected = run(netstring.NetstringParserPy(*args), chunks)
    assert run(c.parser(*args), chunks) == expected


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data(), st.lists(st.binary(max_size=50), max_size=8))
def test_round_trip_any_chunking(impl: Impl, data: st.DataObject, payloads: list[bytes]) -> None:
    stream = b"".join(impl.encode(p) for p in payloads)
    parser = impl.parser()
    assert feed_all(parser, data.draw(chunked(stream))) == payloads
    assert not parser.pending
