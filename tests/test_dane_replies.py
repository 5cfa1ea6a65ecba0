"""DANE comes first (RFC 8461 §2, RFC 7672): every case of the signed tree, reply by reply.

A daemon (cache, fetcher, responder and server in this loop, as a worker
runs them) asks the validating Unbound of the signed tree for everything: the
MTA-STS TXT records, the policy host's address and the DANE lookups. Every
mail domain of the tree publishes an ``enforce`` MTA-STS policy, so that the
MTA-STS answer alone would be ``OK secure match=...``; three zones answer
with ``dane: precedence``, ``all`` and ``off``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mtasts_fast import defaults
from mtasts_fast.dane.resolver import parse_servers
from mtasts_fast.dane.state import DANE_ONLY, NO_DANE, TEMP, DaneHost, DaneState
from tests.dane_world import PROBE_NAME, DaneWorld, Extra, Silent
from tests.servers.dnssec import DaneCase
from tests.socketmap import DownCache, Running, enforce, frame, start_daemon

pytestmark = pytest.mark.both_loops

C = DaneCase
NOTFOUND = b"NOTFOUND "
DANE_ONLY_REPLY = b"OK dane-only"
DANE_REPLY = b"OK dane"
STS = "sts"  # the domain's MTA-STS answer, OK secure match=...
TEMP_PREFIX = b"TEMP DANE: "
ZONES = {"precedence": {"dane": "precedence"}, "all": {"dane": "all"}, "off": {"dane": "off"}}

# case → replies with dane: precedence, all, off
CASES: dict[DaneCase | Extra, tuple[bytes | str, bytes | str, bytes | str]] = {
    C.TLSA_3_1_1: (DANE_ONLY_REPLY, DANE_ONLY_REPLY, STS),
    C.TLSA_2_1_1: (DANE_ONLY_REPLY, DANE_ONLY_REPLY, STS),
    # Postfix applies DANE to mx1 and opportunistic TLS to mx2.
    C.MIXED: (DANE_REPLY, DANE_REPLY, STS),
    C.IMPLICIT_MX: (DANE_ONLY_REPLY, DANE_ONLY_REPLY, STS),
    C.NO_TLSA: (STS, STS, STS),
    # RFC 7672 §3.1.3: unusable TLSA records still mean TLS (Postfix: encrypt).
    C.PKIX_ONLY: (DANE_REPLY, DANE_REPLY, STS),
    C.INSECURE: (STS, STS, STS),
    # The MTA-STS TXT record is bogus too: no policy can be discovered, so
    # there is no "OK secure" for precedence to replace (see the seeded test).
    C.CORRUPT_SIG: (NOTFOUND, TEMP_PREFIX, NOTFOUND),
    C.EXPIRED_SIG: (NOTFOUND, TEMP_PREFIX, NOTFOUND),
    C.DS_MISMATCH: (NOTFOUND, TEMP_PREFIX, NOTFOUND),
    C.BOGUS_TLSA: (TEMP_PREFIX, TEMP_PREFIX, STS),
    C.NXDOMAIN_MX: (DANE_ONLY_REPLY, DANE_ONLY_REPLY, STS),
    C.NULL_MX: (STS, STS, STS),
    C.NXDOMAIN: (NOTFOUND, NOTFOUND, NOTFOUND),
    Extra.ALIAS_MX: (DANE_ONLY_REPLY, DANE_ONLY_REPLY, STS),
    Extra.BOGUS_A: (TEMP_PREFIX, TEMP_PREFIX, STS),
    Extra.ALL_MISSING: (STS, STS, STS),
    Extra.MALFORMED_TLSA: (DANE_REPLY, DANE_REPLY, STS),
    Extra.MANY_MX: (DANE_REPLY, DANE_REPLY, STS),
}


def _expected(dane_world: DaneWorld, case: DaneCase | Extra, reply: bytes | str) -> bytes:
    return dane_world.sts_reply(case) if reply == STS else bytes(reply)  # type: ignore[arg-type]


def _matches(got: bytes, expected: bytes) -> bool:
    return got.startswith(expected) if expected == TEMP_PREFIX else got == expected


async def _daemon(dane_world: DaneWorld, tmp_path: Path, **settings: Any) -> Running:
    data: dict[str, Any] = {
        "nameservers": [dane_world.validating],
        "dnssec_probe_name": PROBE_NAME,
        "zones": ZONES,
        # Revalidation in the background is tested on its own.
        "cache_grace": 3600,
    }
    data.update(settings)
    return await start_daemon(dane_world.world, tmp_path, dane=True, **data)


@pytest.fixture
async def daemon(dane_world: DaneWorld, tmp_path: Path) -> AsyncIterator[Running]:
    running = await _daemon(dane_world, tmp_path)
    yield running
    await running.stop()


@pytest.mark.parametrize("case", list(CASES), ids=[c.value for c in CASES])
async def test_case(daemon: Running, dane_world: DaneWorld, case: DaneCase | Extra) -> None:
    domain = dane_world.domain(case)
    client = await daemon.connect()
    for zone, reply in zip(ZONES, CASES[case], strict=True):
        expected = _expected(dane_world, case, reply)
        for attempt in ("first lookup", "cached"):
            got = await client.ask(f"{zone} {domain}")
            assert _matches(got, expected), (zone, attempt, got)


async def test_temp_reply_says_why(daemon: Running, dane_world: DaneWorld) -> None:
    got = await daemon.ask(f"precedence {dane_world.domain(C.BOGUS_TLSA)}")
    assert got.startswith(
        b"TEMP DANE: TLSA _25._tcp.mx1.bogus-tlsa-hosts.dane.test: SERVFAIL from "
        + dane_world.validating.encode()
    ), got
    assert len(got) <= 5 + 200  # Postfix logs 200 characters of a reason


@pytest.mark.parametrize("case", [C.CORRUPT_SIG, C.EXPIRED_SIG, C.DS_MISMATCH])
async def test_bogus_zone_with_a_cached_policy_is_temp(
    daemon: Running, dane_world: DaneWorld, case: DaneCase
) -> None:
    # The policy was fetched while the zone still validated; now it is bogus:
    # the cached "OK secure" must not be answered (RFC 7672 §2.2).
    domain = dane_world.domain(case)
    await daemon.seed(domain, enforce(f"*.{domain}"))
    assert (await daemon.ask(f"precedence {domain}")).startswith(TEMP_PREFIX)
    assert (await daemon.ask(f"off {domain}")) == dane_world.sts_reply(case)


async def test_non_validating_resolver_answers_mta_sts_only(
    dane_world: DaneWorld, tmp_path: Path
) -> None:
    # The probe finds no AD bit: DANE detection is off, nothing is evaluated
    # (an insecure-looking world would store "no DANE" for everyone).
    daemon = await _daemon(dane_world, tmp_path, nameservers=[dane_world.non_validating])
    try:
        assert daemon.probe is not None
        assert daemon.probe.validating is False
        for case in (C.TLSA_3_1_1, C.MIXED, C.BOGUS_TLSA, C.CORRUPT_SIG):
            domain = dane_world.domain(case)
            for zone in ZONES:
                # The non-validating resolver hands out bogus data as it gets
                # it: even the bogus zones' policies are fetched.
                assert await daemon.ask(f"{zone} {domain}") == dane_world.sts_reply(case)
            assert await daemon.cache.get_dane(domain) is None
        assert daemon.responder.dane is not None
        assert daemon.responder.dane.counts["inactive"] == 0  # never even asked
    finally:
        await daemon.stop()


async def test_detection_follows_the_probe(daemon: Running, dane_world: DaneWorld) -> None:
    domain = dane_world.domain(C.TLSA_3_1_1)
    assert await daemon.ask(f"precedence {domain}") == DANE_ONLY_REPLY
    probe = daemon.probe
    assert probe is not None
    # The resolver stops validating: MTA-STS answers only, at once...
    assert daemon.responder.dane is not None
    resolver = daemon.responder.dane.resolver
    validating = resolver.servers
    resolver.servers = parse_servers([dane_world.non_validating])
    assert await probe.check() is False
    assert await daemon.ask(f"precedence {domain}") == dane_world.sts_reply(C.TLSA_3_1_1)
    # ...until a probe finds it validating again.
    resolver.servers = validating
    assert await probe.check() is True
    assert await daemon.ask(f"precedence {domain}") == DANE_ONLY_REPLY


# --- caching: stored, shared, memoised; a cached lookup never waits ----------------------


async def test_state_is_stored_and_the_reply_memoised(
    daemon: Running, dane_world: DaneWorld
) -> None:
    domain = dane_world.domain(C.TLSA_3_1_1)
    payload = f"precedence {domain}".encode()
    first = daemon.responder.answer(payload)
    assert not isinstance(first, bytes)  # nothing cached: it has to wait
    assert await first == frame(DANE_ONLY_REPLY)  # netstring-framed
    state = await daemon.cache.get_dane(domain)
    assert state is not None
    assert (state.decision, [h.status for h in state.hosts]) == (DANE_ONLY, ["dane", "dane"])
    # Cached: answered at once, the same bytes object every time.
    again = daemon.responder.answer(payload)
    assert again == frame(DANE_ONLY_REPLY)
    assert again is daemon.responder.answer(payload)
    assert again is daemon.responder.answer(f"all {domain}".encode())


async def test_state_of_another_worker_is_used(daemon: Running, dane_world: DaneWorld) -> None:
    # Another worker (or host) stored a state: no evaluation here.
    domain = dane_world.domain(C.NO_TLSA)
    now = time.time()
    hosts = (DaneHost(f"mx1.{domain}", "dane", "stored by another worker"),)
    await daemon.cache.put_dane(DaneState(domain, DANE_ONLY, "elsewhere", hosts, now, now + 600))
    assert await daemon.ask(f"precedence {domain}") == DANE_ONLY_REPLY
    assert daemon.responder.dane is not None
    assert sum(daemon.responder.dane.counts.values()) == 0


async def test_concurrent_lookups_share_one_evaluation(
    daemon: Running, dane_world: DaneWorld
) -> None:
    domain = dane_world.domain(C.TLSA_2_1_1)
    dane = daemon.responder.dane
    assert dane is not None
    before = dane.resolver.queries
    clients = [await daemon.connect() for _ in range(20)]
    replies = await asyncio.gather(*(c.ask(f"precedence {domain}") for c in clients))
    assert set(replies) == {DANE_ONLY_REPLY}
    assert dane.counts[DANE_ONLY] == 1
    # One MX query, then A, AAAA and TLSA for each of the two hosts.
    assert dane.resolver.queries - before == 7


async def _stale_setup(
    dane_world: DaneWorld, tmp_path: Path, silent: Silent, age: float, decision: str
) -> tuple[Running, str]:
    """A daemon whose resolver is dead, and a domain with a policy and a state ``age`` old."""
    daemon = await start_daemon(
        dane_world.world,
        tmp_path,
        dane=True,
        nameservers=[silent.address],
        zones={"precedence": {"dane": "precedence", "timeout": 1}},
        default_zone={"timeout": 1},  # the probe's
        cache_grace=3600,
    )
    domain = dane_world.domain(C.TLSA_3_1_1)
    await daemon.seed(domain, enforce(f"*.{domain}"))
    evaluated = time.time() - age
    state = DaneState(domain, decision, "seeded", (), evaluated, evaluated + 300)
    await daemon.cache.put_dane(state)
    return daemon, domain


async def test_expired_state_is_answered_at_once_and_revalidated(
    dane_world: DaneWorld, tmp_path: Path, silent: Silent
) -> None:
    # The resolver does not answer at all: a lookup that waited for it would
    # take the whole timeout. The state is an hour past its expiry.
    daemon, domain = await _stale_setup(dane_world, tmp_path, silent, 3600, DANE_ONLY)
    try:
        started = time.monotonic()
        reply = daemon.responder.answer(f"precedence {domain}".encode())
        assert reply == frame(DANE_ONLY_REPLY)  # bytes: nothing awaited
        assert time.monotonic() - started < 0.05
        dane = daemon.responder.dane
        assert dane is not None
        # The re-evaluation runs in the background (and ends TEMP: the dead
        # resolver answers nothing, which must not downgrade).
        await asyncio.sleep(1.5)
        state = await daemon.cache.get_dane(domain)
        assert state is not None
        assert state.decision == TEMP
        assert "no answer" in state.reason
    finally:
        await daemon.stop()


@pytest.mark.parametrize(
    ("age", "decision"),
    [
        pytest.param(defaults.DANE_STALE_LIMIT + 400, DANE_ONLY, id="a-day-stale"),
        pytest.param(400, TEMP, id="temp-past-its-retry-time"),
    ],
)
async def test_lookup_waits_for_a_state_too_old_to_answer(
    dane_world: DaneWorld, tmp_path: Path, silent: Silent, age: float, decision: str
) -> None:
    daemon, domain = await _stale_setup(dane_world, tmp_path, silent, age, decision)
    try:
        reply = daemon.responder.answer(f"precedence {domain}".encode())
        assert not isinstance(reply, bytes)  # it waits for the evaluation...
        started = time.monotonic()
        got = await reply
        # ...bounded by the zone timeout, and a dead resolver means TEMP.
        assert time.monotonic() - started < 2
        head, _, payload = got.partition(b":")
        assert int(head) == len(payload) - 1  # netstring-framed
        assert payload.startswith(b"TEMP DANE: MX %s: no answer" % domain.encode())
    finally:
        await daemon.stop()


async def test_temp_is_retried_with_backoff(dane_world: DaneWorld, tmp_path: Path) -> None:
    now = [time.time()]
    daemon = await _daemon(dane_world, tmp_path, clock=lambda: now[0], fetch_backoff_max=200)
    try:
        domain = dane_world.domain(C.BOGUS_TLSA)
        intervals = []
        for _ in range(4):
            assert (await daemon.ask(f"precedence {domain}")).startswith(TEMP_PREFIX)
            state = await daemon.cache.get_dane(domain)
            assert state is not None
            assert state.decision == TEMP
            intervals.append(state.expires_at - state.evaluated_at)
            # Within the retry interval, the TEMP state is answered as it is.
            assert (await daemon.ask(f"precedence {domain}")).startswith(TEMP_PREFIX)
            now[0] = state.expires_at + 1
        # 60 s, doubling, up to fetch_backoff_max: the policy fetch's discipline.
        assert intervals == [60, 120, 200, 200]
        assert daemon.responder.dane is not None
        assert daemon.responder.dane.counts[TEMP] == 4
    finally:
        await daemon.stop()


async def test_backend_down_uses_the_in_process_fallback(
    dane_world: DaneWorld, tmp_path: Path
) -> None:
    daemon = await _daemon(dane_world, tmp_path, cache=DownCache(100))
    try:
        dane = daemon.responder.dane
        assert dane is not None
        domain = dane_world.domain(C.MIXED)
        for _ in range(3):
            assert await daemon.ask(f"precedence {domain}") == DANE_REPLY
        # Evaluated once, then answered from the fallback.
        assert dane.counts["dane"] == 1
        assert daemon.responder.refresher.fallback.get_dane_nowait(domain) is not None
        assert daemon.responder.backend_errors > 0
    finally:
        await daemon.stop()


async def test_no_dane_state_leaves_the_mta_sts_answer(
    daemon: Running, dane_world: DaneWorld
) -> None:
    domain = dane_world.domain(C.NO_TLSA)
    assert await daemon.ask(f"precedence {domain}") == dane_world.sts_reply(C.NO_TLSA)
    state = await daemon.cache.get_dane(domain)
    assert state is not None
    assert state.decision == NO_DANE


async def test_precedence_does_not_evaluate_domains_without_a_secure_policy(
    daemon: Running, dane_world: DaneWorld, world: Any
) -> None:
    # Most domains publish no MTA-STS policy: precedence costs them nothing.
    dane = daemon.responder.dane
    assert dane is not None
    before = dane.resolver.queries
    assert await daemon.ask(f"precedence {dane_world.domain(C.NXDOMAIN)}") == NOTFOUND
    assert dane.resolver.queries == before
    # ...while "all" evaluates them.
    assert await daemon.ask(f"all {dane_world.domain(C.NXDOMAIN)}") == NOTFOUND
    assert dane.resolver.queries == before + 1


async def test_all_answers_a_domain_without_policy_from_the_stored_state_at_once(
    daemon: Running, dane_world: DaneWorld
) -> None:
    # No MTA-STS policy (remembered as such) and a stored DANE state: the
    # hot path answers without a task, as for a cached policy.
    domain = dane_world.domain(C.NXDOMAIN)
    assert await daemon.ask(f"all {domain}") == NOTFOUND
    payload = f"all {domain}".encode()
    assert daemon.responder.answer(payload) == frame(NOTFOUND)
    now = time.time()
    hosts = (DaneHost(f"mx.{domain}", "dane", "stored"),)
    await daemon.cache.put_dane(DaneState(domain, DANE_ONLY, "stored", hosts, now, now + 600))
    assert daemon.responder.answer(payload) == frame(DANE_ONLY_REPLY)
    # precedence still leaves a domain without a secure policy alone.
    assert daemon.responder.answer(f"precedence {domain}".encode()) == frame(NOTFOUND)


async def test_an_override_comes_before_dane(dane_world: DaneWorld, tmp_path: Path) -> None:
    # The operator's word wins over DANE and MTA-STS alike (README "Local
    # overrides"); enforce_testing only changes how the policy is rendered,
    # so DANE still comes first for its domain.
    skipped = dane_world.domain(C.TLSA_3_1_1)
    literal = dane_world.domain(C.MIXED)
    enforced = dane_world.domain(C.IMPLICIT_MX)
    overrides = tmp_path / "overrides.yml"
    overrides.write_text(
        f"{skipped}: skip\n{literal}: encrypt protocols=>=TLSv1.2\n{enforced}: enforce_testing\n"
    )
    daemon = await _daemon(dane_world, tmp_path, policy_overrides=str(overrides))
    try:
        client = await daemon.connect()
        for zone in ZONES:
            assert await client.ask(f"{zone} {skipped}") == NOTFOUND, zone
            assert await client.ask(f"{zone} {literal}") == b"OK encrypt protocols=>=TLSv1.2"
        assert await client.ask(f"precedence {enforced}") == DANE_ONLY_REPLY
        assert await client.ask(f"all {enforced}") == DANE_ONLY_REPLY
        assert await client.ask(f"off {enforced}") == dane_world.sts_reply(C.IMPLICIT_MX)
        # Counted by the path that decided (metrics/catalogue.py): the two
        # overrides in each zone, the DANE answers, the MTA-STS one.
        metrics = daemon.responder.metrics
        cells = metrics.region.cells
        for zone in ZONES:
            lookups = metrics.lookup_cells(zone)
            assert cells.get(lookups.cell("override", "no-policy")) == 1, zone
            assert cells.get(lookups.cell("override", "policy")) == 1, zone
        for zone in ("precedence", "all"):
            assert cells.get(metrics.lookup_cells(zone).cell("dane", "policy")) == 1, zone
        off = metrics.lookup_cells("off")
        assert cells.get(off.cell("dane", "policy")) == 0
        assert cells.get(off.memo_policy) == 1  # fetched by the first lookup above
    finally:
        await daemon.stop()
