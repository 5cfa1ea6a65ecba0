"""Bounded memos keep their newest entries and stay near their limit."""

from __future__ import annotations

from mtasts_fast.memo import make_room


def test_a_full_memo_drops_its_oldest_eighth() -> None:
    memo = {n: str(n) for n in range(64)}
    make_room(memo, 64)
    assert len(memo) == 56
    assert min(memo) == 8  # the eight inserted first are gone
    assert 63 in memo


def test_below_the_limit_nothing_is_dropped() -> None:
    memo = {n: n for n in range(63)}
    make_room(memo, 64)
    assert len(memo) == 63


def test_a_stream_of_new_keys_keeps_the_memo_between_seven_eighths_and_full() -> None:
    memo: dict[int, int] = {}
    sizes = []
    for n in range(10_000):
        make_room(memo, 800)
        memo[n] = n
        sizes.append(len(memo))
    assert max(sizes) == 800
    assert min(sizes[1000:]) >= 700
    assert max(memo) == 9_999


def test_a_tiny_limit_still_makes_room() -> None:
    memo = {"a": 1, "b": 2}
    make_room(memo, 2)
    assert memo == {"b": 2}
