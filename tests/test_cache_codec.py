"""msgpack serialization of cache entries and DANE states, with their format versions."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtasts_fast.cache.codec import (
    DANE_FORMAT_VERSION,
    FORMAT_VERSION,
    decode_dane,
    decode_entry,
    encode_dane,
    encode_entry,
)
from mtasts_fast.dane.state import DANE
from tests.cache_contract import EVERY_HOST_STATUS, make_dane, make_entry


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


# -- DANE states -----------------------------------------------------------------


def test_dane_round_trip() -> None:
    state = make_dane("example.com", decision=DANE, hosts=EVERY_HOST_STATUS, evaluated_at=1.5)
    got = decode_dane("example.com", encode_dane(state))
    assert got is not None
    assert got.same_as(state)
    assert got.hosts == EVERY_HOST_STATUS


def test_dane_format_version_is_first_and_its_own() -> None:
    data = msgpack.unpackb(encode_dane(make_dane("example.com")))
    assert data[0] == DANE_FORMAT_VERSION == 1


def _dane(*fields: object) -> bytes:
    data = msgpack.packb(list(fields), use_bin_type=True)
    assert isinstance(data, bytes)
    return data


_HOST = ["mx.example.com", "dane", "usable"]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="invalid-msgpack"),
        pytest.param(_dane(2, "dane-only", "", [_HOST], 1.0, 2.0), id="newer-format"),
        pytest.param(_dane(1, "dane-only", "", [_HOST], 1.0), id="short"),
        pytest.param(_dane(1, "maybe", "", [_HOST], 1.0, 2.0), id="unknown-decision"),
        pytest.param(_dane(1, "dane-only", 7, [_HOST], 1.0, 2.0), id="bad-reason"),
        pytest.param(_dane(1, "dane-only", "", [_HOST], 1, 2.0), id="integer-time"),
        pytest.param(_dane(1, "dane-only", "", _HOST, 1.0, 2.0), id="hosts-not-nested"),
        pytest.param(
            _dane(1, "dane-only", "", [["mx.example.com", "bogus", ""]], 1.0, 2.0),
            id="unknown-host-status",
        ),
        pytest.param(
            _dane(1, "dane-only", "", [["mx.example.com", "dane"]], 1.0, 2.0), id="short-host"
        ),
        pytest.param(
            _dane(1, "dane-only", "", [[b"mx.example.com", "dane", ""]], 1.0, 2.0),
            id="bytes-host-name",
        ),
        pytest.param(msgpack.packb({"decision": "dane-only"}), id="map-not-array"),
        pytest.param(encode_entry(make_entry("example.com")), id="a-policy-entry"),
    ],
)
def test_unreadable_dane_states_read_as_missing(data: bytes) -> None:
    assert decode_dane("example.com", data) is None


@given(st.binary(max_size=200))
def test_decode_dane_never_raises(data: bytes) -> None:
    decode_dane("example.com", data)
