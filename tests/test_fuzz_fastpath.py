"""Differential fuzzing of the fast path's framing and replay (fastpath.py, _fastpath.pyx).

- The compiled twin against the pure-Python one: on any bytes, with any
  table of hits (stamped or not, fresh or not, cells in and out of range),
  the same replies, the same ``unserved`` and ``offset``, the same counts.
- Both against the netstring parser: what the fast path serves is exactly
  the payloads the parser reads from the same bytes, in order, and where it
  stops is a netstring boundary at which the parser is idle, so handing it
  the rest means the same as handing it everything.

Like tests/test_fuzz_differential.py (whose stream generators this uses),
the C-against-Python test skips under ``MTASTS_NO_EXTENSIONS=1`` and fails
when the compiled twin is required and missing; the parser test runs on
whatever twins there are.
"""

from __future__ import annotations

import collections
import mmap
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtasts_fast import fastpath, netstring
from mtasts_fast.counters import CounterArrayPy
from mtasts_fast.errors import NetstringError
from tests.test_fuzz_differential import ANY_STREAM, _compiled, examples

CELLS = 8
NOW = 1_000_000.0
GRACE = 50.0


@pytest.fixture(scope="module")
def c_fastpath() -> ModuleType:
    return _compiled("_fastpath")


class Stamps:
    """Two words in an anonymous map, as LMDB's meta pages hold the commit id."""

    def __init__(self, value: int) -> None:
        self.map = mmap.mmap(-1, 16)
        self.words = memoryview(self.map).cast("Q")
        self.words[1] = value

    def value(self) -> int:
        return max(self.words[0], self.words[1])

    def location(self) -> tuple[object, int, int]:
        return self.map, 1, 0


Hit = tuple[bytes, bytes, int, int | None, float, float, float, str | None]


def payloads_in(stream: bytes) -> list[bytes]:
    """The payloads the parser reads from ``stream`` (up to an error, if any)."""
    try:
        return netstring.NetstringParserPy().feed(stream)
    except NetstringError as exc:
        return exc.payloads


@st.composite
def tables(draw: st.DrawFn, stream: bytes) -> list[Hit]:
    """Hits for some of the payloads in ``stream`` (and a few others), each with its own reply."""
    candidates = payloads_in(stream) + draw(st.lists(st.binary(max_size=8), max_size=3))
    hits: list[Hit] = []
    for n, payload in enumerate(draw(st.lists(st.sampled_from(candidates), max_size=8))
                                if candidates else []):  # fmt: skip
        stamp = draw(st.sampled_from([None, 7, 7, 8]))
        expires = NOW + draw(st.sampled_from([-1.0, 0.0, 1.0, 100.0]))
        checked = NOW - draw(st.sampled_from([0.0, GRACE, GRACE + 0.5]))
        dane = NOW + draw(st.sampled_from([0.0, 5.0, float("inf")]))
        cell = draw(st.sampled_from([0, 1, 2, CELLS - 1, CELLS]))  # CELLS is out of range
        kind = draw(st.sampled_from([None, None, "skip", "postfix"]))
        reply = netstring.encode_py(b"reply %d" % n)
        hits.append((payload, reply, cell, stamp, expires, checked, dane, kind))
    return hits


def serve(cls: Any, hits: list[Hit], stream: bytes) -> tuple[Any, ...]:
    """Everything observable after one serve() with ``hits`` recorded."""
    cells = CounterArrayPy(bytearray(8 * CELLS))
    kinds: collections.Counter[str] = collections.Counter()
    fast = cls(cells, kinds, grace=GRACE, clock=lambda: NOW)
    fast.set_stamps(Stamps(7))
    for payload, reply, cell, stamp, expires, checked, dane, kind in hits:
        fast.put(payload, reply, cell, stamp, expires, checked, dane, kind)
    result = fast.serve(stream)
    rest = (None, None) if result is not None else (fast.unserved, fast.offset)
    return result, rest, [cells.get(i) for i in range(CELLS)], dict(kinds)


@examples(400)
@given(st.data(), ANY_STREAM)
def test_serve_c_equals_python(c_fastpath: ModuleType, data: st.DataObject, stream: bytes) -> None:
    hits = data.draw(tables(stream))
    expected = serve(fastpath.FastPathPy, hits, stream)
    assert serve(c_fastpath.FastPathC, hits, stream) == expected


def test_the_twins_agree_on_their_constants(c_fastpath: ModuleType) -> None:
    assert c_fastpath.MAX_PAYLOAD == netstring.MAX_PAYLOAD
    assert c_fastpath.MAX_LENGTH_DIGITS == netstring.MAX_LENGTH_DIGITS
    assert c_fastpath.HIT_LIMIT == fastpath.HIT_LIMIT


def _twins() -> list[Any]:
    twins = [pytest.param(fastpath.FastPathPy, id="py")]
    if fastpath.FastPathC is not None:
        twins.append(pytest.param(fastpath.FastPathC, id="c"))
    return twins


@pytest.mark.parametrize("cls", _twins())
@examples(400)
@given(ANY_STREAM)
def test_what_is_served_is_what_the_parser_reads_up_to_an_idle_boundary(
    cls: Any, stream: bytes
) -> None:
    # Every payload the parser reads is recorded, unstamped: the fast path
    # serves all it can frame; replies name the payload they stand for.
    read = payloads_in(stream)
    replies = {p: netstring.encode_py(b"%d" % i) for i, p in enumerate(dict.fromkeys(read))}
    fast = cls(CounterArrayPy(bytearray(64)), collections.Counter(), grace=1.0)
    for payload, reply in replies.items():
        fast.put(payload, reply, 0)
    result = fast.serve(stream)
    offset = len(stream) if result is not None else fast.offset
    served = result if result is not None else fast.unserved
    by_reply = {reply: payload for payload, reply in replies.items()}
    served_payloads = [by_reply[netstring.encode_py(n)] for n in _numbers(served)]
    parser = netstring.NetstringParserPy()
    assert parser.feed(stream[:offset]) == served_payloads
    assert not parser.pending
    assert read[: len(served_payloads)] == served_payloads
    if result is None:
        # The rest, fed to the parser, is read as if it had had everything.
        assert offset < len(stream)
        try:
            rest = netstring.NetstringParserPy().feed(stream[offset:])
        except NetstringError as exc:
            rest = exc.payloads
        assert served_payloads + rest == read


def _numbers(replies: bytes) -> list[bytes]:
    """The payloads of the netstrings in ``replies``."""
    return netstring.NetstringParserPy().feed(replies)
