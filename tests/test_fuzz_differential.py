"""Property and differential fuzzing of everything that parses a stranger's bytes.

- The compiled netstring decoder and matcher (``_netstring``, ``_matcher``)
  against their pure-Python twins: identical results, or identical errors
  (class, message and ``payloads``), on arbitrary bytes cut into arbitrary
  chunks. A stream's meaning must not depend on how TCP happened to cut it,
  so chunkings are also compared with each other.
- ``normalise_key``, ``parse_txt_records`` and ``parse_policy``: on any input
  they return a value that keeps their documented invariants, or raise only
  their documented error (``PolicyError``); never anything else.

The differential tests need the compiled twins: they skip under
``MTASTS_NO_EXTENSIONS=1`` (the pure-Python run), and in the compiled run a
missing extension fails them when ``MTASTS_REQUIRE_EXTENSIONS=1`` or
``MTASTS_REQUIRE_ALL=1`` is set. ``MTASTS_FUZZ_EXAMPLES=N`` raises every
test's example count to at least N for a longer hunt; the defaults keep the
file well under 30 s. The long-running, coverage-guided counterpart is the
atheris target in ``tests/fuzz/`` (``make fuzz``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mtasts_fast import _compat, matcher, netstring
from mtasts_fast.errors import NetstringError, PolicyError
from mtasts_fast.keys import normalise_key
from mtasts_fast.policy import MAX_AGE_LIMIT, MODES, Policy, parse_policy, parse_txt_records

_FLAG_OFF = ("", "0")
_EXTRA = int(os.environ.get("MTASTS_FUZZ_EXAMPLES", "0") or 0)


def examples(default: int) -> Any:
    """Hypothesis settings with ``default`` examples (more if the env says so)."""
    return settings(
        max_examples=max(default, _EXTRA),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _compiled(name: str) -> ModuleType:
    """The compiled module ``mtasts_fast.<name>``, or skip/fail as the run requires."""
    if _compat.NO_EXTENSIONS:
        pytest.skip("MTASTS_NO_EXTENSIONS=1: there is no compiled twin to compare")
    try:
        module = __import__(f"mtasts_fast.{name}", fromlist=[name])
    except ImportError as exc:
        required = any(
            os.environ.get(flag, "").strip() not in _FLAG_OFF
            for flag in ("MTASTS_REQUIRE_EXTENSIONS", "MTASTS_REQUIRE_ALL")
        )
        if required:
            pytest.fail(f"mtasts_fast.{name} is not built and the run requires it: {exc}")
        pytest.skip(f"mtasts_fast.{name} is not built: {exc}")
    return module


@pytest.fixture(scope="module")
def c_netstring() -> ModuleType:
    return _compiled("_netstring")


@pytest.fixture(scope="module")
def c_matcher() -> ModuleType:
    return _compiled("_matcher")


# --- netstring: inputs ---------------------------------------------------------------

LIMITS = st.one_of(
    st.sampled_from([0, 1, 5, 9, 10, 99, 100, netstring.MAX_PAYLOAD, 2**31 - 1]),
    st.integers(0, 64),
)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut anywhere: whole, byte by byte, or at random points (empty chunks too)."""
    how = draw(st.sampled_from(["whole", "bytes", "cuts", "cuts"]))
    if how == "whole":
        return [data]
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=16)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Netstring-shaped traffic with every kind of damage a client can do."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        payload = draw(st.binary(max_size=24))
        kind = draw(
            st.sampled_from(
                ["good", "good", "zeros", "short", "long", "junk", "digits", "no-comma", "colon"]
            )
        )
        if kind == "good":
            parts.append(b"%d:%b," % (len(payload), payload))
        elif kind == "zeros":  # around MAX_LENGTH_DIGITS (20)
            zeros = b"0" * draw(st.integers(1, netstring.MAX_LENGTH_DIGITS + 2))
            parts.append(zeros + b"%d:%b," % (len(payload), payload))
        elif kind == "short":  # declared length smaller than the payload
            parts.append(b"%d:%b," % (max(len(payload) - draw(st.integers(1, 3)), 0), payload))
        elif kind == "long":  # declared length larger: eats the next frame
            parts.append(b"%d:%b," % (len(payload) + draw(st.integers(1, 3)), payload))
        elif kind == "junk":
            parts.append(draw(st.binary(max_size=8)))
        elif kind == "digits":  # huge or limit-sized length fields
            parts.append(draw(st.sampled_from([b"9" * 25, b"10001:", b"2147483648:", b"65:"])))
        elif kind == "no-comma":
            parts.append(b"%d:%b" % (len(payload), payload))
        else:
            parts.append(b":" + payload)
    return b"".join(parts)


ANY_STREAM = st.one_of(st.binary(max_size=400), streams())

Outcome = tuple[list[list[bytes]], Any, str, list[bytes], list[bool]]


def run(parser: Any, chunks: list[bytes]) -> Outcome:
    """Per-feed payloads, then (error class, message, payloads), and ``pending`` after each feed.

    After an error the parser must be dead: the next feed raises the same
    class with no payloads, whatever it is given.
    """
    results: list[list[bytes]] = []
    pending: list[bool] = []
    error: NetstringError | None = None
    for chunk in chunks:
        try:
            results.append(parser.feed(chunk))
        except NetstringError as exc:
            error = exc
            break
        pending.append(parser.pending)
    if error is None:
        return results, None, "", [], pending
    for later in (b"1:a,", b""):
        with pytest.raises(NetstringError) as again:
            parser.feed(later)
        assert type(again.value) is type(error)
        assert again.value.payloads == []
    assert parser.pending is False
    return results, type(error), str(error), error.payloads, pending


def flat(outcome: Outcome) -> tuple[list[bytes], Any]:
    """What the server would answer: every payload in order, then the error class."""
    results, error, _, payloads, _ = outcome
    return [p for feed in results for p in feed] + payloads, error


# --- netstring: C against Python -----------------------------------------------------


@examples(400)
@given(st.data(), ANY_STREAM, LIMITS)
def test_decoder_c_equals_python(
    c_netstring: ModuleType, data: st.DataObject, stream: bytes, limit: int
) -> None:
    chunks = data.draw(chunked(stream))
    expected = run(netstring.NetstringParserPy(limit), chunks)
    assert run(c_netstring.NetstringParserC(limit), chunks) == expected


@pytest.mark.parametrize(
    ("stream", "limit"),
    [
        pytest.param(b"1:a,2:bc,3:def!", 10_000, id="payloads-then-bad-terminator"),
        pytest.param(b"0" * 21 + b":,", 10_000, id="one-leading-zero-too-many"),
        pytest.param(b"2147483648:", 2**31 - 1, id="one-above-the-largest-limit"),
        pytest.param(b"1:a,0:,99999", 100, id="payloads-then-too-long"),
        pytest.param(b"3:ab", 10_000, id="incomplete-payload"),
    ],
)
def test_decoder_c_equals_python_at_every_split(
    c_netstring: ModuleType, stream: bytes, limit: int
) -> None:
    for i, j in itertools.combinations_with_replacement(range(len(stream) + 1), 2):
        chunks = [stream[:i], stream[i:j], stream[j:]]
        expected = run(netstring.NetstringParserPy(limit), chunks)
        assert run(c_netstring.NetstringParserC(limit), chunks) == expected, (i, j)


@examples(300)
@given(st.data(), ANY_STREAM, LIMITS)
def test_chunking_does_not_change_the_meaning(
    c_netstring: ModuleType, data: st.DataObject, stream: bytes, limit: int
) -> None:
    # The same bytes, however cut, give the same payloads and the same error,
    # in both twins; only which feed() returns a payload may differ.
    whole = flat(run(netstring.NetstringParserPy(limit), [stream]))
    for parser in (netstring.NetstringParserPy, c_netstring.NetstringParserC):
        for _ in range(2):
            assert flat(run(parser(limit), data.draw(chunked(stream)))) == whole


@examples(300)
@given(st.data(), st.lists(st.binary(max_size=300), max_size=6))
def test_encoders_agree_and_round_trip(
    c_netstring: ModuleType, data: st.DataObject, payloads: list[bytes]
) -> None:
    frames = [c_netstring.encodeC(p) for p in payloads]
    assert frames == [netstring.encode_py(p) for p in payloads]
    stream = b"".join(frames)
    limit = max((len(p) for p in payloads), default=0)
    for parser in (netstring.NetstringParserPy, c_netstring.NetstringParserC):
        results, error, _, _, pending = run(parser(limit), data.draw(chunked(stream)))
        assert error is None
        assert [p for feed in results for p in feed] == payloads
        assert not pending or pending[-1] is False


# --- matcher: C against Python ---------------------------------------------------------

# Host-name-shaped text around every boundary the matcher checks: label and
# name lengths (63/64, 253/254), hyphens, digits-only labels, "*." prefixes,
# trailing dots, case, and non-ASCII letters whose case mapping is unusual.
_LABEL_CHARS = st.sampled_from([*"aZ09-_*.", "ü", "Ü", "ß", "\u212a", "İ", "\u3002", "\udcff"])
_LABEL = st.one_of(
    st.text(_LABEL_CHARS, max_size=6),
    st.sampled_from(["a" * 63, "a" * 64, "1", "123", "xn--bcher-kva", "-a", "a-", "*"]),
)


@st.composite
def hostish(draw: st.DrawFn) -> str:
    labels = draw(st.lists(_LABEL, max_size=6))
    if draw(st.booleans()) and labels:
        # Pad towards the 253-octet limit.
        labels = ["b" * 63] * draw(st.integers(0, 4)) + labels
    name = ".".join(labels)
    if draw(st.booleans()):
        name = draw(st.sampled_from(["*.", "*", "."])) + name
    if draw(st.booleans()):
        name += draw(st.sampled_from([".", "..", "\x00"]))
    return name.upper() if draw(st.booleans()) else name


@st.composite
def boundary_names(draw: st.DrawFn) -> str:
    """Valid-looking names whose label and total lengths sit on the limits."""
    sizes = draw(st.lists(st.sampled_from([1, 2, 62, 63, 64]), min_size=1, max_size=5))
    labels = [draw(st.sampled_from("aZ9-")) * n for n in sizes]
    labels[-1] = "c" + labels[-1][1:]  # an all-digit last label is never valid
    name = ".".join(labels)
    # Pad to land on 252..255 octets, where the 253 limit bites.
    target = draw(st.sampled_from([None, 252, 253, 254, 255]))
    if target is not None and len(name) < target - 2:
        name = "d" * min(63, target - len(name) - 1) + "." + name
        while len(name) < target:
            name = "e" * min(63, max(1, target - len(name) - 1)) + "." + name
    name += draw(st.sampled_from(["", ".", ".."]))
    return draw(st.sampled_from(["", "*."])) + name


ANY_TEXT = st.one_of(
    hostish(),
    boundary_names(),
    st.text(max_size=30),
    # Every code point, lone surrogates included.
    st.text(st.characters(codec=None, exclude_categories=()), max_size=12),
)


@examples(600)
@given(ANY_TEXT, ANY_TEXT)
def test_matcher_c_equals_python(c_matcher: ModuleType, host: str, pattern: str) -> None:
    assert c_matcher.is_valid_hostname(host) == matcher.is_valid_hostname_py(host)
    assert c_matcher.is_valid_mx_pattern(pattern) == matcher.is_valid_mx_pattern_py(pattern)
    assert c_matcher.mx_matches(host, pattern) == matcher.mx_matches_py(host, pattern)
    # A host checked against itself as a pattern, and with its first label
    # replaced by a wildcard: the positive cases random pairs rarely reach.
    assert c_matcher.mx_matches(host, host) == matcher.mx_matches_py(host, host)
    star = "*." + host.partition(".")[2]
    assert c_matcher.mx_matches(host, star) == matcher.mx_matches_py(host, star)


@examples(250)
@given(ANY_TEXT, st.lists(ANY_TEXT, max_size=6))
def test_match_any_c_equals_python(c_matcher: ModuleType, host: str, patterns: list[str]) -> None:
    for container in (patterns, tuple(patterns)):
        assert c_matcher.match_any(host, container) == matcher.match_any_py(host, container)


# --- normalise_key: total, and its result is a canonical host name -------------------


@st.composite
def keys(draw: st.DrawFn) -> bytes:
    """Socketmap keys as Postfix and hostile clients send them."""
    host = draw(
        st.one_of(
            hostish(),
            st.sampled_from(
                ["192.0.2.1", "::1", "2001:db8::1", "IPv6:2001:db8::1", "bücher.example", "."]
            ),
        )
    )
    shape = draw(st.sampled_from(["{}", "[{}]", "[{}]:25", "{}:587", "[{}", "{}]", " {} "]))
    text = shape.format(host)
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        raw += draw(st.binary(max_size=3))
    return raw


@examples(400)
@given(st.one_of(keys(), st.binary(max_size=80)))
@example("BÜCHER.Example.".encode()).via("U-label, upper case, trailing dot")
@example(b"[xn--bcher-kva.example]:25").via("bracketed A-label with port")
def test_normalise_key_is_total_and_canonical(key: bytes) -> None:
    domain = normalise_key(key)  # must not raise, whatever the bytes
    if domain is None:
        return
    assert isinstance(domain, str)
    assert domain.isascii()
    assert domain == domain.lower()
    assert not domain.endswith(".")
    assert not domain.startswith(".")
    assert len(domain) <= 253
    assert matcher.is_valid_hostname_py(domain)
    assert matcher.is_valid_hostname(domain)
    # Idempotent, and every spelling Postfix may use names the same domain.
    for spelling in (domain, domain.upper(), domain + ".", f"[{domain}]", f"[{domain}]:25"):
        assert normalise_key(spelling.encode()) == domain, spelling


# --- policy parsing: only PolicyError, and what it returns is valid ------------------

_FIELD_NAMES = st.sampled_from(["v", "id", "ID", "ext", "a.b-c_d", "", "é", "x" * 33])
_FIELD_VALUES = st.one_of(
    st.sampled_from(["STSv1", "STSv10", "20180907T090909", "a" * 32, "a" * 33, "", "x=y"]),
    st.text(max_size=10),
)


@st.composite
def txt_records(draw: st.DrawFn) -> list[str]:
    records: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        fields = [
            f"{draw(_FIELD_NAMES)}{draw(st.sampled_from(['=', '', '==']))}{draw(_FIELD_VALUES)}"
            for _ in range(draw(st.integers(0, 4)))
        ]
        if draw(st.booleans()):
            fields.insert(0, "v=STSv1")
        sep = draw(st.sampled_from([";", "; ", " ;\t", ";;"]))
        records.append(sep.join(fields) + draw(st.sampled_from(["", ";", " ", "\t;"])))
    return records


_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")


@examples(400)
@given(st.one_of(txt_records(), st.lists(st.text(max_size=40), max_size=3)))
def test_parse_txt_records_only_raises_policy_error(records: list[str]) -> None:
    try:
        policy_id = parse_txt_records(records)
    except PolicyError as exc:
        message = str(exc)
    else:
        assert _ID.match(policy_id)
        assert sum(1 for r in records if r.startswith("v=STSv1")) >= 1
        return
    assert message.startswith("TXT: ")
    assert "\n" not in message


_KEYS = st.sampled_from(["version", "mode", "max_age", "mx", "mx", "ext", "Mode", "", "a b", "é"])
_VALUES = st.one_of(
    st.sampled_from(
        [
            "STSv1",
            "enforce",
            "testing",
            "none",
            "86400",
            "0",
            "31557601",
            "99999999999",
            "-1",
            "mail.example.com",
            "*.example.net",
            "192.0.2.1",
            "bücher.example",
            "",
        ]
    ),
    st.text(max_size=12),
)


@st.composite
def policy_bodies(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 10))):
        key, value = draw(_KEYS), draw(_VALUES)
        sep = draw(st.sampled_from([": ", ":", ":\t", " : ", "="]))
        lines.append(key + sep + value + draw(st.sampled_from(["", " ", "\t", "\x00"])))
    ends = st.sampled_from(["\n", "\r\n", "\r", "\n\n"])
    return "".join(line + draw(ends) for line in lines)


def _check_policy(policy: Policy, warnings: Sequence[str]) -> None:
    assert policy.mode in MODES
    assert 0 <= policy.max_age <= MAX_AGE_LIMIT
    assert all(matcher.is_valid_mx_pattern_py(mx) for mx in policy.mx)
    assert policy.mode == "none" or policy.mx
    assert all(line and "\n" not in line and "\r" not in line for line in policy.lines)
    assert all(isinstance(w, str) and "\n" not in w for w in warnings)


@examples(400)
@given(st.one_of(policy_bodies(), st.text(max_size=200)))
@example("version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n").via("valid")
def test_parse_policy_only_raises_policy_error(text: str) -> None:
    try:
        policy, warnings = parse_policy(text)
    except PolicyError as exc:
        message = str(exc)
    else:
        _check_policy(policy, warnings)
        return
    assert "\n" not in message


@examples(300)
@given(st.binary(max_size=300))
def test_policy_from_arbitrary_bytes(body: bytes) -> None:
    # What the fetcher does with a body: strict UTF-8, then parse. Each step
    # fails only in its documented way.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return
    with contextlib.suppress(PolicyError):
        _check_policy(*parse_policy(text))
