"""The compiled request path (fastpath.py): what it serves, and when it must not.

Every test runs on both twins (ids ``c`` and ``py``). The first part drives
a twin alone: framing, stamps, times, counting. The second runs the
worker's stack in this process (tests/fastpaths.py: LMDB cache, responder,
the server's Protocol on a fake transport) and proves each rule of
invalidation: whatever the responder would now answer differently — after
a commit by another process, a reload, a DANE re-evaluation or a change of
DANE detection, the policy's expiry, ``cache_grace``, the DANE state's
expiry, the cache's memo dropping the entry — is answered by the responder
at the next request, never from a recorded reply (RFC 8461 §3.2, §3.3, §2).
tests/test_fastpath_exact.py compares whole request sequences with and
without the fast path.
"""

from __future__ import annotations

import collections
import mmap
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtasts_fast.counters import CounterArray, CounterArrayPy
from mtasts_fast.dane.state import DANE_ONLY, NO_DANE, DaneState
from mtasts_fast.fastpath import HIT_LIMIT
from tests.fastpaths import (
    EPOCH,
    Stack,
    fast_class,
    fast_classes,
    make_stack,
    split_replies,
)
from tests.servers.daemon import DaemonProcess, recv_netstring
from tests.servers.daemon import frame as daemon_frame
from tests.socketmap import enforce, frame

pytestmark = pytest.mark.both_loops

REPLY = b"10:OK secure,"
OTHER = b"11:OK dane-x,"


class Stamps:
    """A StampSource over an anonymous map of two words, like LMDB's two meta pages."""

    def __init__(self, first: int = 7, second: int = 3) -> None:
        self.map = mmap.mmap(-1, 16)
        self.words = memoryview(self.map).cast("Q")
        self.words[0], self.words[1] = first, second

    def value(self) -> int | None:
        if self.map.closed:
            return None
        return max(self.words[0], self.words[1])

    def location(self) -> tuple[object, int, int] | None:
        return None if self.map.closed else (self.map, 0, 1)

    def close(self) -> None:
        self.words.release()
        self.map.close()


class Twin:
    """One fast path with its counters, override counts and clock."""

    def __init__(self, cls: Any, cells: Any = None, clock: Callable[[], float] | None = None):
        self.cells = cells if cells is not None else CounterArray(bytearray(8 * 16))
        self.kinds: collections.Counter[str] = collections.Counter()
        self.now = EPOCH
        extra = {} if clock is None else {"clock": clock}
        self.fast = cls(
            self.cells, self.kinds, grace=100.0, **({"clock": lambda: self.now} | extra)
        )

    def counts(self) -> list[int]:
        return [self.cells.get(i) for i in range(len(self.cells))]


@pytest.fixture(params=fast_classes())
def twin_class(request: pytest.FixtureRequest) -> Any:
    return fast_class(request.param)


@pytest.fixture
def twin(twin_class: Any) -> Twin:
    return Twin(twin_class)


# -- the twin alone: framing -----------------------------------------------------------------


def test_a_recorded_reply_is_served_and_counted(twin: Twin) -> None:
    twin.fast.put(b"postfix a.test", REPLY, 3)
    assert twin.fast.serve(b"14:postfix a.test,") == REPLY
    assert twin.fast.serve(b"14:postfix a.test,") == REPLY
    assert twin.counts()[3] == 2
    assert sum(twin.counts()) == 2


def test_pipelined_replies_come_back_as_one_bytes_object_in_order(twin: Twin) -> None:
    twin.fast.put(b"m a", REPLY, 1)
    twin.fast.put(b"m b", OTHER, 2)
    assert twin.fast.serve(b"3:m a,3:m b,3:m a,") == REPLY + OTHER + REPLY
    assert twin.counts()[1:3] == [2, 1]


def test_serving_stops_at_the_first_netstring_it_cannot_answer(twin: Twin) -> None:
    twin.fast.put(b"m a", REPLY, 1)
    data = b"3:m a,3:m x,3:m a,"
    assert twin.fast.serve(data) is None
    assert twin.fast.unserved == REPLY
    assert twin.fast.offset == 6
    assert twin.counts()[1] == 1  # the third one is left to the responder


def test_nothing_served_leaves_everything_to_the_parser(twin: Twin) -> None:
    assert twin.fast.serve(b"3:m x,") is None
    assert (twin.fast.unserved, twin.fast.offset) == (b"", 0)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"3:m a", id="no-terminator-yet"),
        pytest.param(b"3:m", id="payload-incomplete"),
        pytest.param(b"3", id="length-incomplete"),
        pytest.param(b"3:m a;", id="wrong-terminator"),
        pytest.param(b"x:m a,", id="non-digit-length"),
        pytest.param(b"+3:m a,", id="signed-length"),
        pytest.param(b":m a,", id="no-length-digits"),
        pytest.param(b"0" * 20 + b"3:m a,", id="21-digits"),
        pytest.param(b"10001:" + b"x" * 10002, id="over-10000-bytes"),
    ],
)
def test_what_the_parser_would_not_accept_whole_is_left_to_it(twin: Twin, data: bytes) -> None:
    twin.fast.put(b"m a", REPLY, 1)
    twin.fast.put(b"x" * 10001, REPLY, 1)
    assert twin.fast.serve(b"3:m a," + data) is None
    assert (twin.fast.unserved, twin.fast.offset) == (REPLY, 6)


def test_leading_zeros_are_a_netstring_like_any_other(twin: Twin) -> None:
    twin.fast.put(b"m a", REPLY, 1)
    twin.fast.put(b"", OTHER, 2)
    assert twin.fast.serve(b"0" * 19 + b"3:m a,0:,") == REPLY + OTHER


# -- the twin alone: when a hit holds ----------------------------------------------------------


def test_a_stamped_hit_holds_while_the_stamp_is_unchanged(twin: Twin) -> None:
    stamps = Stamps(first=7, second=3)
    twin.fast.set_stamps(stamps)
    twin.fast.put(b"m a", REPLY, 1, 7, EPOCH + 10, EPOCH, float("inf"))
    twin.fast.put(b"m n", OTHER, 2)  # no stamp: holds whatever it is
    assert twin.fast.serve(b"3:m a,3:m n,") == REPLY + OTHER
    stamps.words[1] = 8  # a commit: the other meta page now holds the newer id
    assert twin.fast.serve(b"3:m a,") is None
    assert twin.fast.serve(b"3:m n,") == OTHER
    twin.fast.put(b"m a", REPLY, 1, 8, EPOCH + 10, EPOCH, float("inf"))
    assert twin.fast.serve(b"3:m a,") == REPLY
    stamps.close()  # the cache closed: no stamp can be read
    assert twin.fast.serve(b"3:m a,") is None
    assert twin.fast.serve(b"3:m n,") == OTHER


def test_without_stamps_only_unstamped_hits_are_served(twin: Twin) -> None:
    twin.fast.put(b"m a", REPLY, 1, 0, EPOCH + 10, EPOCH, float("inf"))
    twin.fast.put(b"m n", OTHER, 2)
    assert twin.fast.serve(b"3:m a,") is None
    assert twin.fast.serve(b"3:m n,") == OTHER


@pytest.mark.parametrize(
    ("now", "served"),
    [
        pytest.param(EPOCH + 49.5, True, id="fresh"),
        pytest.param(EPOCH + 50, False, id="at-expires_at"),
        pytest.param(EPOCH + 100, True, id="at-grace-dane-later"),
        pytest.param(EPOCH + 100.5, False, id="past-grace"),
        pytest.param(EPOCH + 40, False, id="at-dane-expiry"),
        pytest.param(EPOCH - 10, True, id="clock-stepped-back"),
    ],
)
def test_times_are_checked_as_the_responder_checks_them(
    twin_class: Any, now: float, served: bool
) -> None:
    one = Twin(twin_class)
    stamps = Stamps()
    one.fast.set_stamps(stamps)
    one.now = now
    # checked at EPOCH, grace 100 s; the policy expires at +150 and the DANE state at +40
    # (policy at +50 for the first two cases).
    expires = EPOCH + 50 if now <= EPOCH + 50 and now > EPOCH else EPOCH + 150
    dane_expires = EPOCH + 40 if now == EPOCH + 40 else EPOCH + 1000
    one.fast.put(b"m a", REPLY, 1, 7, expires, EPOCH, dane_expires)
    assert (one.fast.serve(b"3:m a,") == REPLY) is served
    assert one.counts()[1] == int(served)


def test_the_wall_clock_is_the_default(twin_class: Any) -> None:
    cells = CounterArray(bytearray(64))
    fast = twin_class(cells, collections.Counter(), grace=100.0)
    stamps = Stamps()
    fast.set_stamps(stamps)
    now = time.time()
    fast.put(b"m a", REPLY, 1, 7, now + 60, now - 1, float("inf"))
    fast.put(b"m b", REPLY, 1, 7, now - 0.001, now - 1, float("inf"))
    fast.put(b"m c", REPLY, 1, 7, now + 60, now - 100.5, float("inf"))
    assert fast.serve(b"3:m a,") == REPLY
    assert fast.serve(b"3:m b,") is None  # expired
    assert fast.serve(b"3:m c,") is None  # past grace


def test_an_override_kind_is_counted_with_its_cell(twin: Twin) -> None:
    twin.fast.put(b"m a", REPLY, 4, kind="skip")
    twin.fast.serve(b"3:m a,3:m a,")
    assert twin.kinds == {"skip": 2}
    assert twin.counts()[4] == 2


def test_counters_of_the_other_twin_are_counted_through_inc(twin_class: Any) -> None:
    one = Twin(twin_class, cells=CounterArrayPy(bytearray(64)))
    one.fast.put(b"m a", REPLY, 5)
    assert one.fast.serve(b"3:m a,") == REPLY
    assert one.cells.get(5) == 1


def test_a_cell_out_of_range_is_never_served_uncounted(twin: Twin) -> None:
    twin.fast.put(b"m a", REPLY, 1)
    twin.fast.put(b"m b", REPLY, 999)
    assert twin.fast.serve(b"3:m a,3:m b,") is None
    assert (twin.fast.unserved, twin.fast.offset) == (REPLY, 6)
    assert sum(twin.counts()) == 1


def test_clear_and_new_stamps_forget_every_hit(twin: Twin) -> None:
    twin.fast.put(b"m a", REPLY, 1)
    twin.fast.clear()
    assert twin.fast.serve(b"3:m a,") is None
    twin.fast.put(b"m a", REPLY, 1)
    twin.fast.set_stamps(Stamps())
    assert len(twin.fast) == 0


def test_the_table_keeps_its_newest_hits_within_its_limit(twin_class: Any) -> None:
    fast = twin_class(CounterArray(bytearray(64)), collections.Counter(), grace=1.0, limit=64)
    for n in range(200):
        fast.put(b"m %d" % n, REPLY, 1)
    assert 56 <= len(fast) <= 64
    assert fast.reply_for(b"m 199") == REPLY
    assert fast.reply_for(b"m 0") is None
    assert HIT_LIMIT > 10_000  # more than the LMDB memo holds domains


class _Entry:
    def __init__(self, expires_at: float, checked_at: float) -> None:
        self.expires_at = expires_at
        self.checked_at = checked_at


def test_record_keeps_an_answer_only_if_no_commit_came_during_the_reads(twin: Twin) -> None:
    stamps = Stamps(first=7, second=3)
    twin.fast.set_stamps(stamps)
    assert twin.fast.stamp() == 7
    entry, state = _Entry(EPOCH + 50, EPOCH), _Entry(EPOCH + 40, 0.0)
    stamps.words[1] = 8  # committed after the responder read the stamp (7)
    twin.fast.record(b"m a", REPLY, 1, 7, entry, state, None)
    assert twin.fast.reply_for(b"m a") is None
    twin.fast.record(b"m a", REPLY, 1, 8, entry, state, "enforce_testing")
    assert twin.fast.serve(b"3:m a,") == REPLY
    assert twin.kinds == {"enforce_testing": 1}
    twin.now = EPOCH + 40  # the DANE state's expiry, recorded from the state
    assert twin.fast.serve(b"3:m a,") is None
    twin.fast.record(b"m b", OTHER, 2, None, entry, None, None)  # no stamp: nothing
    assert twin.fast.reply_for(b"m b") is None


def test_recording_backs_off_while_hits_keep_going_unused(twin_class: Any) -> None:
    # Commits faster than the payload is asked: each hit goes stale before it
    # serves. After an unused recording, 1, 3, 7, then 15 answers (at most)
    # go unrecorded. Whether answer n was recorded shows by serving right
    # after it, in a fresh table that went through the same n answers.
    def recorded(answers: int, served_at: int | None = None) -> bool:
        one = Twin(twin_class)
        stamps = Stamps(first=0, second=0)
        one.fast.set_stamps(stamps)
        for n in range(answers):
            stamps.words[0] = n + 1  # a commit before each answer
            one.fast.record(b"m a", REPLY, 1, n + 1, _Entry(EPOCH + 99, EPOCH), None, None)
            if n == served_at:
                assert one.fast.serve(b"3:m a,") == REPLY
        return one.fast.serve(b"3:m a,") is not None

    assert [n for n in range(64) if recorded(n + 1)] == [0, 1, 3, 7, 15, 31, 47, 63]
    # A recording that serves ends the back-off: the next answer is recorded.
    assert recorded(17, served_at=15)
    assert not recorded(17)


# -- the worker's stack: served, counted, written ------------------------------------------------


@pytest.fixture(params=fast_classes())
async def stack(
    request: pytest.FixtureRequest, world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    running = await make_stack(tmp_path, world, fast=request.param, monkeypatch=monkeypatch)
    yield running
    await running.close()


ENFORCE = enforce("mx1.a.test", "*.mail.a.test")
OK_A = b"OK secure match=mx1.a.test:.mail.a.test servername=hostname"


async def test_a_cached_lookup_is_answered_without_the_responder_and_counted_alike(
    stack: Stack,
) -> None:
    await stack.seed("a.test", ENFORCE)
    conn = stack.connect()
    with stack.counting_answers() as calls:
        assert await stack.ask(conn, "postfix a.test") == [OK_A]  # decoded, rendered: "cache"
        assert await stack.ask(conn, "postfix a.test") == [OK_A]
        assert await stack.ask(stack.connect(), "postfix a.test") == [OK_A]
    assert calls == [b"postfix a.test"]
    assert stack.count("default_zone", "cache", "policy") == 1
    assert stack.count("default_zone", "memo", "policy") == 2


async def test_a_pipelined_chunk_of_cached_lookups_is_one_write(stack: Stack) -> None:
    await stack.seed("a.test", ENFORCE)
    await stack.seed("b.test", enforce("mx.b.test"))
    conn = stack.connect()
    await stack.ask(conn, "postfix a.test", "postfix b.test", "postfix [1.2.3.4]")
    conn.transport.writes.clear()
    conn.seen = 0
    replies = await stack.ask(conn, "postfix a.test", "postfix b.test", "postfix [1.2.3.4]")
    assert replies == [OK_A, b"OK secure match=mx.b.test servername=hostname", b"NOTFOUND "]
    assert len(conn.transport.writes) == 1


async def test_a_lookup_that_waits_keeps_the_hits_behind_it_in_order(
    stack: Stack, world: Any
) -> None:
    await stack.seed("a.test", ENFORCE)
    conn = stack.connect()
    await stack.ask(conn, "postfix a.test")
    domain = world.fresh_domain("order")
    world.add_domain(domain, policy=world.policy_text("enforce", ["mx." + domain]))
    # A hit, a miss that waits for a fetch, a hit; then, while the miss is
    # still owed, one more hit in a chunk of its own: it must come last.
    conn.protocol.data_received(frame("postfix a.test") + frame(f"postfix {domain}"))
    conn.protocol.data_received(frame("postfix a.test"))
    assert not conn.protocol.idle
    assert split_replies(conn.received()) == [OK_A]
    replies = split_replies(await stack.send(conn, []))
    assert replies == [f"OK secure match=mx.{domain} servername=hostname".encode(), OK_A]


# -- invalidation: each rule -----------------------------------------------------------------------


# Another process (a worker, mta-sts-cache) writing to the same LMDB file.
_WRITER = """
import asyncio, sys, textwrap
from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.cache.lmdb import LmdbCache
from mtasts_fast.dane.state import DaneState
from mtasts_fast.policy import Policy


async def main(path, code):
    cache = LmdbCache({"path": path, "durable": False})
    await cache.setup()
    names = {"cache": cache, "CacheEntry": CacheEntry, "DaneState": DaneState, "Policy": Policy}
    try:
        exec("async def job():\\n" + textwrap.indent(code, "    "), names)
        await names["job"]()
    finally:
        await cache.close()


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _write_from_another_process(path: Path, code: str) -> None:
    """Run ``code`` (with ``cache``, an LmdbCache open on ``path``) in a new interpreter."""
    subprocess.run(
        [sys.executable, "-c", _WRITER, str(path) + "/", textwrap.dedent(code)],
        check=True,
        timeout=60,
    )


async def test_a_write_by_another_process_is_seen_at_the_next_request(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.seed("a.test", ENFORCE)
    conn = stack.connect()
    await stack.ask(conn, "postfix a.test")
    assert await stack.ask(conn, "postfix a.test") == [OK_A]
    # Another worker (or mta-sts-cache) stores a new policy: now testing.
    _write_from_another_process(
        tmp_path,
        f"""
        policy = Policy("testing", 86400, ("mx1.a.test",), ("version: STSv1",))
        await cache.put(CacheEntry("a.test", "2", policy, {EPOCH}, {EPOCH + 1}))
        """,
    )
    assert await stack.ask(conn, "postfix a.test") == [b"NOTFOUND "]
    # ... and deletes it: the domain is fetched (it does not exist: NOTFOUND).
    assert await stack.ask(conn, "postfix a.test") == [b"NOTFOUND "]
    _write_from_another_process(tmp_path, 'await cache.delete("a.test")')
    with stack.counting_answers() as calls:
        await stack.ask(conn, "postfix a.test")
    assert calls == [b"postfix a.test"]


async def test_any_commit_sends_each_recorded_reply_to_the_responder_once(
    stack: Stack,
) -> None:
    await stack.seed("a.test", ENFORCE)
    conn = stack.connect()
    await stack.ask(conn, "postfix a.test")
    await stack.seed("unrelated.test", ENFORCE)  # a commit: the stamp moves on
    with stack.counting_answers() as calls:
        for _ in range(3):
            assert await stack.ask(conn, "postfix a.test") == [OK_A]
    assert calls == [b"postfix a.test"]
    assert stack.count("default_zone", "memo", "policy") == 3


async def test_a_reload_builds_a_responder_that_has_recorded_nothing(
    stack: Stack, world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stack.seed("a.test", ENFORCE)
    conn = stack.connect()
    await stack.ask(conn, "postfix a.test")
    assert len(stack.responder.fast) > 0
    # What a reloaded worker builds: a new responder over the same cache,
    # with the new settings and local overrides.
    overrides = tmp_path / "overrides.yml"
    overrides.write_text("b.test: skip\n")
    reloaded = await make_stack(
        tmp_path,
        world,
        fast="py",
        cache=stack.cache,
        monkeypatch=monkeypatch,
        default_zone={"require_sni": False},
        policy_overrides=str(overrides),
    )
    try:
        assert len(reloaded.responder.fast) == 0
        with reloaded.counting_answers() as calls:
            assert await reloaded.ask(reloaded.connect(), "postfix a.test") == [
                b"OK secure match=mx1.a.test:.mail.a.test"
            ]
        assert calls == [b"postfix a.test"]
    finally:
        await reloaded.close()


@pytest.fixture(params=fast_classes())
async def dane_stack(
    request: pytest.FixtureRequest, world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    running = await make_stack(
        tmp_path, world, fast=request.param, dane=True, monkeypatch=monkeypatch
    )
    yield running
    await running.close()


def _state(decision: str, expires_at: float, evaluated_at: float = EPOCH) -> DaneState:
    return DaneState("a.test", decision, "set by the test", (), evaluated_at, expires_at)


async def test_a_dane_re_evaluation_is_seen_at_the_next_request(
    dane_stack: Stack, tmp_path: Path
) -> None:
    stack = dane_stack
    await stack.seed("a.test", ENFORCE)
    await stack.seed_dane(_state(NO_DANE, EPOCH + 3600))
    conn = stack.connect()
    assert await stack.ask(conn, "postfix a.test") == [OK_A]
    assert await stack.ask(conn, "postfix a.test") == [OK_A]
    # RFC 8461 §2: the DANE answer comes first, from the next request on.
    await stack.seed_dane(_state(DANE_ONLY, EPOCH + 3600, EPOCH + 1))
    assert await stack.ask(conn, "postfix a.test") == [b"OK dane-only"]
    assert await stack.ask(conn, "postfix a.test") == [b"OK dane-only"]
    # Evaluated again by another worker: no DANE any more.
    _write_from_another_process(
        tmp_path,
        f"""
        await cache.put_dane(
            DaneState("a.test", "none", "other worker", (), {EPOCH + 2}, {EPOCH + 3600})
        )
        """,
    )
    assert await stack.ask(conn, "postfix a.test") == [OK_A]
    assert stack.count("default_zone", "dane", "policy") == 2


async def test_an_expired_dane_state_is_answered_by_the_responder(dane_stack: Stack) -> None:
    stack = dane_stack
    await stack.seed("a.test", ENFORCE)
    await stack.seed_dane(_state(DANE_ONLY, EPOCH + 60))
    conn = stack.connect()
    await stack.ask(conn, "postfix a.test")
    assert stack.responder.dane is not None
    revalidated: list[str] = []
    original = stack.responder.dane.revalidate

    def revalidate(state: DaneState, timeout: float, now: float) -> None:
        revalidated.append(state.domain)
        original(state, timeout, now)

    stack.responder.dane.revalidate = revalidate  # type: ignore[method-assign]
    stack.clock.now = EPOCH + 59.9
    with stack.counting_answers() as calls:
        assert await stack.ask(conn, "postfix a.test") == [b"OK dane-only"]
    assert (calls, revalidated) == ([], [])
    stack.clock.now = EPOCH + 60
    with stack.counting_answers() as calls:
        # Still answered from the state while it is evaluated again.
        assert await stack.ask(conn, "postfix a.test") == [b"OK dane-only"]
    assert calls == [b"postfix a.test"]
    assert revalidated == ["a.test"]


async def test_dane_detection_switched_off_and_on_is_seen_at_the_next_request(
    dane_stack: Stack,
) -> None:
    stack = dane_stack
    await stack.seed("a.test", ENFORCE)
    await stack.seed_dane(_state(DANE_ONLY, EPOCH + 3600))
    conn = stack.connect()
    assert await stack.ask(conn, "postfix a.test") == [b"OK dane-only"]
    assert await stack.ask(conn, "postfix a.test") == [b"OK dane-only"]
    stack.responder._set_dane_active(False)  # the DNSSEC probe found a non-validating resolver
    assert await stack.ask(conn, "postfix a.test") == [OK_A]
    assert await stack.ask(conn, "postfix a.test") == [OK_A]
    stack.responder._set_dane_active(True)
    assert await stack.ask(conn, "postfix a.test") == [b"OK dane-only"]


async def test_an_expired_policy_is_answered_by_the_responder(stack: Stack) -> None:
    # RFC 8461 §3.2: max_age counts from the fetch; at expiry the policy is gone.
    await stack.seed("a.test", enforce("mx1.a.test", "*.mail.a.test", max_age=300))
    conn = stack.connect()
    await stack.ask(conn, "postfix a.test")
    stack.clock.now = EPOCH + 299.99
    assert await stack.ask(conn, "postfix a.test") == [OK_A]
    stack.clock.now = EPOCH + 300
    with stack.counting_answers() as calls:
        # a.test does not exist in the test world: no policy any more (RFC 8461 §3.3).
        assert await stack.ask(conn, "postfix a.test") == [b"NOTFOUND "]
    assert calls == [b"postfix a.test"]


async def test_past_cache_grace_the_responder_answers_and_revalidates(
    stack: Stack,
) -> None:
    await stack.seed("a.test", ENFORCE, checked_age=0)
    conn = stack.connect()
    await stack.ask(conn, "postfix a.test")
    refreshed: list[str] = []
    original = stack.responder.refresher.refresh

    def refresh(domain: str, *args: Any, **kwargs: Any) -> Any:
        refreshed.append(domain)
        return original(domain, *args, **kwargs)

    stack.responder.refresher.refresh = refresh  # type: ignore[method-assign]
    stack.clock.now = EPOCH + 600  # exactly cache_grace after the check: still fresh
    with stack.counting_answers() as calls:
        assert await stack.ask(conn, "postfix a.test") == [OK_A]
    assert (calls, refreshed) == ([], [])
    stack.clock.now = EPOCH + 600.001
    with stack.counting_answers() as calls:
        assert await stack.ask(conn, "postfix a.test") == [OK_A]
    assert calls == [b"postfix a.test"]
    assert refreshed == ["a.test"]  # RFC 8461 §3.3: answered, and checked in the background


async def test_a_memo_that_drops_entries_forgets_every_recorded_reply(stack: Stack) -> None:
    stack.cache._memo_limit = 2
    for name in ("a", "b", "c"):
        await stack.seed(f"{name}.test", enforce(f"mx.{name}.test"))
    conn = stack.connect()
    await stack.ask(conn, "postfix a.test", "postfix b.test")
    assert len(stack.responder.fast) == 2
    await stack.ask(conn, "postfix c.test")  # the memo makes room: a.test goes
    with stack.counting_answers() as calls:
        await stack.ask(conn, "postfix a.test", "postfix b.test")
    # a.test is decoded again, rendered again: the "cache" path, as without the
    # fast path; making room for it drops b.test, which is decoded again too.
    assert calls == [b"postfix a.test", b"postfix b.test"]
    assert stack.count("default_zone", "cache", "policy") == 5


@pytest.mark.parametrize("fast", fast_classes())
async def test_overrides_and_keys_without_a_policy_are_served_for_the_responders_life(
    world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: str
) -> None:
    overrides = tmp_path / "overrides.yml"
    overrides.write_text("skip.test: skip\npf.test: secure match=.pf.test\n")
    stack = await make_stack(
        tmp_path, world, fast=fast, monkeypatch=monkeypatch, policy_overrides=str(overrides)
    )
    try:
        conn = stack.connect()
        keys = ["postfix skip.test", "postfix pf.test", "postfix [1.2.3.4]", "postfix .a.test"]
        first = await stack.ask(conn, *keys)
        with stack.counting_answers() as calls:
            assert await stack.ask(conn, *keys) == first
        assert calls == []
        assert first == [b"NOTFOUND ", b"OK secure match=.pf.test", b"NOTFOUND ", b"NOTFOUND "]
        assert stack.responder.override_counts == {"skip": 2, "postfix": 2}
        assert stack.count("default_zone", "override", "no-policy") == 2
        assert stack.count("default_zone", "override", "policy") == 2
        assert stack.count("default_zone", "invalid-key", "no-policy") == 4
    finally:
        await stack.close()


# -- reload: a real daemon, SIGHUP ---------------------------------------------------------------


def _ask_on(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(daemon_frame(payload))
    return recv_netstring(sock)


def test_a_reload_is_seen_by_the_first_request_after_it(world: Any, tmp_path: Path) -> None:
    # The worker has answered the domain from its fast path for a while; an
    # edited configuration (a zone setting) and override file, applied by
    # SIGHUP, are the answer at the very next request, on a new connection
    # (the retired worker finishes the old ones).
    domain = world.fresh_domain("fastreload")
    world.add_domain(domain)
    overrides = tmp_path / "overrides.yml"
    overrides.write_text("unrelated.loc: skip\n")
    daemon = DaemonProcess(tmp_path, world, policy_overrides=str(overrides))
    try:
        daemon.start()
        payload = f"postfix {domain}".encode()
        with daemon.connect() as sock:
            for _ in range(20):
                assert _ask_on(sock, payload) == b"OK secure match=mail.loc servername=hostname"
        daemon.config["default_zone"] = {"require_sni": False}
        daemon.config_path.write_text(yaml.safe_dump(daemon.config))
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_log(r"reloaded .*: 1 workers? answering")
        assert daemon.ask(payload) == b"OK secure match=mail.loc"
        overrides.write_text(f"{domain}: dane-only\n")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_log(r"(?s)reloaded .*reloaded .*: 1 workers? answering")
        assert daemon.ask(payload) == b"OK dane-only"
    finally:
        daemon.stop()
