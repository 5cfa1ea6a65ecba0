"""With or without the fast path, the same bytes and the same counts (fastpath.py).

Two worker stacks (tests/fastpaths.py) start alike, one with the fast path
(either twin), one without it, and go through the same random sequence of
events: requests (pipelined, cut into arbitrary chunks), the clock moving
past expiries and ``cache_grace``, policies and DANE states written,
replaced and deleted (commits), DANE detection switched off and on, and a
memo small enough to drop entries all the time. After every event both
must have written the same bytes and hold the same counters, cell by cell,
and the same override counts: the fast path is only ever a faster way to
the answer the responder gives (RFC 8461 §3.2, §3.3, §2).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mtasts_fast.cache.base import CacheEntry
from mtasts_fast.cache.lmdb import dane as lmdb_dane
from mtasts_fast.dane.state import DANE, DANE_ONLY, NO_DANE, TEMP, DaneState
from mtasts_fast.policy import Policy
from tests.fastpaths import EPOCH, Clock, Connection, Stack, fast_class, fast_classes, make_stack
from tests.socketmap import frame

DOMAINS = ["a.test", "b.test", "t.test", "et.test"]
#: Each key, and the domain whose policy and DANE state decide its answer (None: none does).
KEY_DOMAIN = {
    "postfix a.test": "a.test",
    "postfix A.Test.": "a.test",
    "postfix [b.test]:25": "b.test",
    "postfix t.test": "t.test",
    "strict t.test": "t.test",
    "QUERYwithTLSRPT a.test": "a.test",
    "all b.test": "b.test",
    "postfix et.test": "et.test",
    "postfix skip.test": None,
    "postfix [192.0.2.1]": None,
    "postfix .a.test": None,
    "postfix nowhere.test": None,
}
KEYS = list(KEY_DOMAIN)
POLICIES = {
    "enforce": Policy("enforce", 3600, ("mx1.{d}", "*.mail.{d}"), ("version: STSv1",)),
    "testing": Policy("testing", 3600, ("mx.{d}",), ("version: STSv1", "mode: testing")),
    "short": Policy("enforce", 300, ("mx.{d}",), ("version: STSv1",)),
    "none": Policy("none", 3600, (), ("version: STSv1", "mode: none")),
}
SETTINGS: dict[str, Any] = {
    "cache_grace": 600,
    "zones": {"strict": {"strict_testing": True}, "all": {"dane": "all"}},
    "default_zone": {"timeout": 2},
}


def _asks(times: int, key: str) -> list[tuple[Any, ...]]:
    return [("ask", [key], None)] * times


def _dane(domain: str, decision: str, ttl: float = 3600.0) -> tuple[Any, ...]:
    return ("dane", domain, decision, ttl)


def _known(*domains: str) -> list[tuple[Any, ...]]:
    """DANE states that last (no evaluation, hence no commit, in the events that follow)."""
    return [_dane(domain, NO_DANE, 100_000.0) for domain in domains]


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Events around a few keys, so that the same requests come back between changes."""
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
    domains = sorted({d for k in keys if (d := KEY_DOMAIN[k]) is not None}) or DOMAINS
    ask = st.tuples(
        st.just("ask"),
        st.lists(st.sampled_from(keys), min_size=1, max_size=4),
        st.one_of(st.none(), st.integers(0, 2**32 - 1)),  # cut into chunks, or not
    )
    events = st.one_of(
        ask,
        ask,
        ask,
        st.tuples(st.just("advance"), st.sampled_from([0.5, 59.5, 120, 299.5, 600.5, 3000])),
        st.tuples(st.just("put"), st.sampled_from(domains), st.sampled_from(sorted(POLICIES))),
        st.tuples(
            st.just("dane"),
            st.sampled_from(domains),
            st.sampled_from([DANE_ONLY, DANE, NO_DANE, TEMP]),
            st.sampled_from([60.0, 3600.0]),
        ),
        st.tuples(st.just("delete"), st.sampled_from(domains)),
        st.tuples(st.just("probe"), st.booleans()),
        st.tuples(st.just("unrelated")),
    )
    return draw(st.lists(events, min_size=5, max_size=40))


def _chunks(data: bytes, seed: int | None) -> list[bytes]:
    """``data`` cut at random points (or not at all, always when ``seed`` is None)."""
    rng = random.Random(seed)
    if seed is None or rng.random() < 0.5:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


async def _apply(stack: Stack, conn: Connection, event: tuple[Any, ...]) -> bytes:
    """One event on one stack; the bytes written to the connection, if any."""
    kind = event[0]
    if kind == "ask":
        data = b"".join(frame(key) for key in event[1])
        return await stack.send(conn, _chunks(data, event[2]))
    now = stack.clock.now
    if kind == "advance":
        stack.clock.now += event[1]
    elif kind == "put":
        domain, name = event[1], event[2]
        template = POLICIES[name]
        policy = Policy(
            template.mode, template.max_age, tuple(m.format(d=domain) for m in template.mx),
            template.lines,
        )  # fmt: skip
        await stack.cache.put(CacheEntry(domain, name, policy, now, now))
    elif kind == "dane":
        domain, decision, ttl = event[1:]
        await stack.cache.put_dane(DaneState(domain, decision, "test", (), now, now + ttl))
    elif kind == "delete":
        await stack.cache.delete(event[1])
    elif kind == "probe":
        if stack.responder.dane is not None:  # a probe only runs with a DANE resolver
            stack.responder._set_dane_active(event[1])
    elif kind == "unrelated":
        await stack.cache.set_proactive_ts(now)  # a commit that changes no answer
    await stack.settle(conn)
    return b""


def _counts(stack: Stack) -> list[int]:
    """The counters a lookup may touch: lookups by zone, path and outcome; fetch results;
    DANE decisions (durations are left out: they are the real time a fetch took)."""
    responder = stack.responder
    metrics = responder.metrics
    cells = [
        cell
        for zone in (responder._default_zone, *responder._zones.values())
        for row in zone.lookups.table
        for cell in row
    ]
    cells += [*metrics._fetches.values(), *metrics._dane.values()]
    return [metrics.region.cells.get(cell) for cell in cells]


async def _scenario(
    world: Any,
    fast: str,
    top: Path,
    events: list[tuple[Any, ...]],
    memo: tuple[int, int],
    dane: bool,
) -> tuple[int, int]:
    """Run ``events`` on both stacks; (requests, requests the responder answered)."""
    requests = answered = 0
    with pytest.MonkeyPatch.context() as patch:
        # Small memos (of entries, of DANE states) drop them all the time.
        patch.setattr(lmdb_dane, "MEMO_LIMIT", memo[1])
        stacks: list[Stack] = []
        try:
            for mode in (fast, None):
                stack = await make_stack(
                    top / str(mode),
                    world,
                    fast=mode,
                    dane=dane,
                    clock=Clock(EPOCH),
                    monkeypatch=patch,
                    policy_overrides=str(top / "overrides.yml"),
                    **SETTINGS,
                )
                stacks.append(stack)
                stack.cache._memo_limit = memo[0]
                for domain in DOMAINS:
                    await _apply(stack, stack.connect(), ("put", domain, "enforce"))
            with_fast, without = stacks
            conns = (with_fast.connect(), without.connect())
            for step, event in enumerate(events):
                with with_fast.counting_answers() as calls:
                    got = [await _apply(with_fast, conns[0], event)]
                got.append(await _apply(without, conns[1], event))
                if event[0] == "ask":
                    requests += len(event[1])
                    answered += len(calls)
                assert got[0] == got[1], (step, event)
                assert _counts(with_fast) == _counts(without), (step, event)
                assert with_fast.responder.override_counts == without.responder.override_counts
        finally:
            for stack in stacks:
                await stack.close()
    return requests, answered


def _run(
    world: Any,
    fast: str,
    loop: str,
    events: list[tuple[Any, ...]],
    memo: tuple[int, int] = (10_000, 10_000),
    dane: bool = True,
) -> float:
    """Run the scenario in a new loop; the share of requests the fast path served."""
    fast_class(fast)  # fails when the compiled twin is required and missing
    runner = uvloop.run if loop == "uvloop" else asyncio.run
    with tempfile.TemporaryDirectory() as name:
        top = Path(name)
        (top / "overrides.yml").write_text("skip.test: skip\net.test: enforce_testing\n")
        for mode in (fast, None):
            (top / str(mode)).mkdir()
        requests, answered = runner(_scenario(world, fast, top, events, memo, dane))
    return 1 - answered / requests if requests else 0.0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("fast", fast_classes())
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=scenarios(),
    memo=st.sampled_from([(10_000, 10_000), (1, 10_000), (10_000, 1), (3, 3)]),
    dane=st.booleans(),
)
# The interleavings each rule of invalidation is about, always run:
@example(  # DANE detection switched off, then on again, after a DANE answer was recorded
    events=[_dane("a.test", DANE_ONLY), *_asks(2, "postfix a.test"), ("probe", False),
            *_asks(2, "postfix a.test"), ("probe", True), *_asks(2, "postfix a.test")],
    memo=(10_000, 10_000),
    dane=True,
)  # fmt: skip
@example(  # a memo of one entry: reading b.test drops a.test
    events=[*_asks(2, "postfix a.test"), *_asks(1, "postfix [b.test]:25"),
            *_asks(2, "postfix a.test")],
    memo=(1, 10_000),
    dane=False,
)  # fmt: skip
@example(  # a memo of one DANE state: reading b.test's drops a.test's
    events=[*_known("a.test", "b.test"), *_asks(2, "postfix a.test"),
            *_asks(1, "postfix [b.test]:25"), *_asks(2, "postfix a.test")],
    memo=(10_000, 1),
    dane=True,
)  # fmt: skip
@example(  # cache_grace passes: the responder answers and revalidates
    events=[*_known("a.test"), *_asks(2, "postfix a.test"), ("advance", 600.0),
            *_asks(2, "postfix a.test"), ("advance", 0.5), *_asks(2, "postfix a.test")],
    memo=(10_000, 10_000),
    dane=True,
)  # fmt: skip
@example(  # max_age passes (RFC 8461 §3.2)
    events=[("put", "a.test", "short"), *_known("a.test"), *_asks(2, "postfix a.test"),
            ("advance", 299.5), *_asks(2, "postfix a.test"), ("advance", 0.5),
            *_asks(2, "postfix a.test")],
    memo=(10_000, 10_000),
    dane=True,
)  # fmt: skip
@example(  # the DANE state expires
    events=[_dane("a.test", DANE_ONLY, 60.0), *_asks(2, "postfix a.test"), ("advance", 59.5),
            *_asks(2, "postfix a.test"), ("advance", 0.5), *_asks(2, "postfix a.test")],
    memo=(10_000, 10_000),
    dane=True,
)  # fmt: skip
@example(  # a miss between hits, cut into chunks; then a write, and the same again
    events=[*_known("a.test"),
            ("ask", ["postfix a.test", "postfix nowhere.test", "postfix a.test"], 7),
            ("put", "a.test", "testing"),
            ("ask", ["postfix a.test", "postfix nowhere.test", "postfix a.test"], 11)],
    memo=(10_000, 10_000),
    dane=True,
)  # fmt: skip
def test_with_and_without_the_fast_path_the_same_bytes_and_counts(
    world: Any,
    fast: str,
    loop: str,
    events: list[tuple[Any, ...]],
    memo: tuple[int, int],
    dane: bool,
) -> None:
    _run(world, fast, loop, events, memo, dane)


@pytest.mark.parametrize("fast", fast_classes())
def test_a_long_day_served_mostly_by_the_fast_path(world: Any, fast: str) -> None:
    # The same comparison on a fixed, longer sequence, which also shows that
    # the fast path is not idle in it: mostly requests, now and then a write,
    # a DANE change, the clock moving on (by less than cache_grace in all:
    # the test world does not know these domains, so past it every
    # revalidation fails and the responder answers them, as it should).
    rng = random.Random(17)
    events: list[tuple[Any, ...]] = []
    for _ in range(400):
        roll = rng.random()
        if roll < 0.95:
            # As Postfix asks: one request at a time, whole.
            events.append(("ask", [rng.choice(KEYS)], None))
        elif roll < 0.97:
            events.append(("advance", rng.choice([0.5, 5.0, 30.0])))
        elif roll < 0.98:
            domain = rng.choice(DOMAINS)
            events.append(("put", domain, rng.choice(sorted(POLICIES))))
        elif roll < 0.99:
            decision = rng.choice([DANE_ONLY, DANE, NO_DANE, TEMP])
            events.append(("dane", rng.choice(DOMAINS), decision, 3600.0))
        else:
            events.append(("unrelated",))
    served = _run(world, fast, "uvloop", events)
    assert served > 0.7
