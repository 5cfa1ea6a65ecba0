"""msgpack serialization of cache entries, with its format version."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtasts_fast.cache.codec import FORMAT_VERSION, decode_entry, encode_entry
from tests.cache_contract import make_entry


def test_round_trip() -> None:
    entry = make_entry("example.com", fetched_at=1.5, checked_at=2.5)
    got = decode_entry("example.com", encode_entry(entry))
    assert got is not None
    assert got.same_as(entry)


def test_format_version_is_first() -> None:
    data = msgpack.unpackb(encode_entry(make_entry("example.com")))
    assert data[0] == FORMAT_VERSION == 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="invalid-msgpack"),
        pytest.param(msgpack.packb([2, "id", "enforce", 1, [], [], 1.0, 1.0]), id="newer-format"),
        pytest.param(msgpack.packb([1, "id", "bogus", 1, [], [], 1.0, 1.0]), id="bad-mode"),
        pytest.param(msgpack.packb([1, "id", "enforce", "1", [], [], 1.0, 1.0]), id="bad-max-age"),
        pytest.param(msgpack.packb([1, "id", "enforce", 1, [1], [], 1.0, 1.0]), id="bad-mx"),
        pytest.param(msgpack.packb({"v": 1}), id="map-not-array"),
        pytest.param(msgpack.packb([1, "id"]), id="short"),
    ],
)
def test_unreadable_entries_read_as_missing(data: bytes) -> None:
    assert decode_entry("example.com", data) is None


@given(st.binary(max_size=200))
def test_decode_never_raises(data: bytes) -> None:
    decode_entry("example.com", data)
