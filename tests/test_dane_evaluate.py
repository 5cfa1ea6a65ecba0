"""The RFC 7672 §2.2 decision (mtasts_fast/dane/evaluate.py) for every case of the signed tree.

Every case is asked of the real validating Unbound in front of Knot; the
non-validating one shows what happens without the AD bit. The reply-level
tests (test_dane_replies.py) check the same cases through the daemon.
"""

from __future__ import annotations

import time

import pytest

from mtasts_fast import defaults
from mtasts_fast.dane.evaluate import evaluate, tlsa_usable
from mtasts_fast.dane.resolver import DaneResolver
from mtasts_fast.dane.state import DANE, DANE_ONLY, NO_DANE, TEMP
from tests.dane_world import MANY_MX_HOSTS, DaneWorld, Extra, Silent
from tests.servers.dnssec import DaneCase

pytestmark = pytest.mark.both_loops

C = DaneCase
# case → (decision, host statuses in MX order, words the reason must hold)
EXPECTED: dict[DaneCase | Extra, tuple[str, tuple[str, ...], str]] = {
    C.TLSA_3_1_1: (DANE_ONLY, ("dane", "dane"), "all 2 MX hosts have usable TLSA"),
    C.TLSA_2_1_1: (DANE_ONLY, ("dane", "dane"), "all 2 MX hosts have usable TLSA"),
    C.MIXED: (DANE, ("dane", "no-tlsa"), "1 of 2 MX hosts has TLSA records (mx2.mixed"),
    C.IMPLICIT_MX: (DANE_ONLY, ("dane",), "the implicit MX host has usable TLSA"),
    C.NO_TLSA: (NO_DANE, ("no-tlsa",), "no MX host has TLSA records"),
    # RFC 7672 §3.1.3: only PKIX usages: TLS required, so `dane` (Postfix: encrypt).
    C.PKIX_ONLY: (DANE, ("tls-required",), "1 of 1 MX hosts has TLSA records"),
    C.INSECURE: (NO_DANE, (), "MX RRset of insecure.dane.test is insecure"),
    C.CORRUPT_SIG: (TEMP, (), "MX corrupt-sig.dane.test: SERVFAIL"),
    C.EXPIRED_SIG: (TEMP, (), "MX expired-sig.dane.test: SERVFAIL"),
    C.DS_MISMATCH: (TEMP, (), "MX ds-mismatch.dane.test: SERVFAIL"),
    C.BOGUS_TLSA: (TEMP, (), "TLSA _25._tcp.mx1.bogus-tlsa-hosts.dane.test: SERVFAIL"),
    # postfix-tlspol issue 172: one MX host that does not exist is skipped.
    C.NXDOMAIN_MX: (DANE_ONLY, ("missing", "dane"), "1 MX host skipped (no such host)"),
    C.NULL_MX: (NO_DANE, (), "Null MX (RFC 7505)"),
    C.NXDOMAIN: (NO_DANE, (), "nxdomain.dane.test does not exist (NXDOMAIN)"),
    Extra.ALIAS_MX: (DANE_ONLY, ("dane", "dane"), "all 2 MX hosts have usable TLSA"),
    Extra.BOGUS_A: (TEMP, (), "A mx1.bogus-a-hosts.dane.test: SERVFAIL"),
    Extra.ALL_MISSING: (NO_DANE, ("missing", "missing"), "no MX host of all-missing"),
    Extra.SHORT_TTL: (DANE_ONLY, ("dane",), "the MX host has usable TLSA"),
    Extra.LONG_TTL: (DANE_ONLY, ("dane",), "the MX host has usable TLSA"),
    Extra.MALFORMED_TLSA: (DANE, ("dane", "tls-required"), "2 of 2 MX hosts have TLSA records"),
    # Ten hosts evaluated: never dane-only with more, Postfix does the rest.
    Extra.MANY_MX: (DANE, ("dane",) * 10, "2 MX hosts beyond the first 10 not evaluated"),
}


@pytest.mark.parametrize("case", list(EXPECTED), ids=[c.value for c in EXPECTED])
async def test_decision(dane_world: DaneWorld, case: DaneCase | Extra) -> None:
    decision, statuses, reason = EXPECTED[case]
    domain = dane_world.domain(case)
    before = time.time()
    evaluation = await evaluate(domain, DaneResolver([dane_world.validating]), 4)
    state = evaluation.state
    assert (state.domain, state.decision) == (domain, decision), state
    assert tuple(h.status for h in state.hosts) == statuses, state
    assert reason in state.reason, state
    assert before <= state.evaluated_at <= time.time()
    if decision == TEMP:
        assert state.hosts == ()
        assert state.expires_at - state.evaluated_at == defaults.FETCH_BACKOFF_MIN
    else:
        lifetime = state.expires_at - state.evaluated_at
        assert defaults.DANE_TTL_MIN <= lifetime <= defaults.DANE_TTL_MAX


async def test_non_validating_resolver_finds_no_dane_anywhere(dane_world: DaneWorld) -> None:
    # Without the AD bit every MX RRset is insecure: no DANE (and the probe
    # turns detection off before this ever happens in the daemon).
    resolver = DaneResolver([dane_world.non_validating])
    for case in DaneCase:
        state = (await evaluate(dane_world.domain(case), resolver, 4)).state
        assert state.decision == NO_DANE, state
        if case is not DaneCase.NXDOMAIN:
            assert "insecure" in state.reason, state


async def test_hosts_and_lookups_are_reported(dane_world: DaneWorld) -> None:
    evaluation = await evaluate(
        dane_world.domain(C.MIXED), DaneResolver([dane_world.validating]), 4
    )
    assert evaluation.mx is not None
    assert evaluation.mx.secure
    assert not evaluation.implicit_mx
    first, second = evaluation.hosts
    assert first.name == "mx1.mixed.dane.test"
    assert [(a.rdtype, a.status.value, a.secure) for a in first.answers] == [
        ("A", "data", True),
        ("AAAA", "nodata", True),
        ("TLSA", "data", True),
    ]
    assert first.tlsa == ["3 1 1 usable"]
    assert first.usable == 1
    assert second.status == "no-tlsa"
    assert second.answers[-1].status.value == "nxdomain"


async def test_tlsa_of_an_alias_is_looked_up_at_its_target_first(dane_world: DaneWorld) -> None:
    # RFC 7672 §2.2.2: the expanded name, then the alias's own name.
    evaluation = await evaluate(
        dane_world.domain(Extra.ALIAS_MX), DaneResolver([dane_world.validating]), 4
    )
    alias1, alias2 = evaluation.hosts
    domain = dane_world.domain(Extra.ALIAS_MX)
    assert [a.name for a in alias1.answers if a.rdtype == "TLSA"] == [f"_25._tcp.target1.{domain}"]
    assert [a.name for a in alias2.answers if a.rdtype == "TLSA"] == [
        f"_25._tcp.target2.{domain}",
        f"_25._tcp.alias2.{domain}",
    ]


@pytest.mark.parametrize(
    ("case", "lifetime"),
    [
        # TTL 5 s: kept DANE_TTL_MIN; TTL two days: kept DANE_TTL_MAX.
        pytest.param(Extra.SHORT_TTL, defaults.DANE_TTL_MIN, id="short-ttl-clamped-up"),
        pytest.param(Extra.LONG_TTL, defaults.DANE_TTL_MAX, id="long-ttl-clamped-down"),
    ],
)
async def test_lifetime_is_the_smallest_ttl_clamped(
    dane_world: DaneWorld, case: Extra, lifetime: float
) -> None:
    evaluation = await evaluate(dane_world.domain(case), DaneResolver([dane_world.validating]), 4)
    state = evaluation.state
    assert state.expires_at - state.evaluated_at == lifetime
    assert evaluation.ttl is not None
    if case is Extra.SHORT_TTL:
        assert evaluation.ttl <= 5
    else:
        assert evaluation.ttl > defaults.DANE_TTL_MAX


async def test_in_zone_ttl_is_the_lifetime(dane_world: DaneWorld) -> None:
    evaluation = await evaluate(
        dane_world.domain(C.TLSA_3_1_1), DaneResolver([dane_world.validating]), 4
    )
    assert evaluation.ttl is not None
    assert 0 < evaluation.ttl <= 300
    state = evaluation.state
    assert state.expires_at - state.evaluated_at == max(evaluation.ttl, defaults.DANE_TTL_MIN)


async def test_dead_resolver_is_temp_within_the_timeout(silent: Silent) -> None:
    started = time.monotonic()
    evaluation = await evaluate(
        "tlsa-3-1-1.dane.test", DaneResolver([silent.address]), 0.5, temp_retry=120
    )
    assert time.monotonic() - started < 1.5
    state = evaluation.state
    assert state.decision == TEMP
    assert state.reason.startswith("MX tlsa-3-1-1.dane.test: no answer")
    assert state.expires_at - state.evaluated_at == 120


async def test_malformed_tlsa_record_is_unusable_not_fatal(dane_world: DaneWorld) -> None:
    evaluation = await evaluate(
        dane_world.domain(Extra.MALFORMED_TLSA), DaneResolver([dane_world.validating]), 4
    )
    mx1, mx2 = evaluation.hosts
    assert (mx1.status, mx1.usable, sorted(mx1.tlsa)) == (
        "dane",
        1,
        ["3 1 1 usable", "malformed, unusable"],
    )
    assert (mx2.status, mx2.usable, mx2.tlsa) == ("tls-required", 0, ["malformed, unusable"])
    assert "no usable record (malformed)" in mx2.reason


async def test_many_mx_hosts_cost_ten_hosts_of_queries(dane_world: DaneWorld) -> None:
    resolver = DaneResolver([dane_world.validating])
    evaluation = await evaluate(dane_world.domain(Extra.MANY_MX), resolver, 4)
    assert len(evaluation.hosts) == defaults.DANE_MAX_MX_HOSTS
    assert len(evaluation.skipped_hosts) == MANY_MX_HOSTS - defaults.DANE_MAX_MX_HOSTS
    # MX, then A, AAAA and TLSA for each of the ten.
    assert resolver.queries == 1 + 3 * defaults.DANE_MAX_MX_HOSTS


@pytest.mark.parametrize(
    ("usage", "selector", "mtype", "size", "usable"),
    [
        pytest.param(3, 1, 1, 32, True, id="dane-ee-spki-sha256"),
        pytest.param(2, 0, 2, 64, True, id="dane-ta-cert-sha512"),
        pytest.param(3, 0, 0, 500, True, id="dane-ee-full-cert"),
        pytest.param(0, 0, 1, 32, False, id="pkix-ta"),
        pytest.param(1, 1, 1, 32, False, id="pkix-ee"),
        pytest.param(4, 1, 1, 32, False, id="unknown-usage"),
        pytest.param(3, 2, 1, 32, False, id="unknown-selector"),
        pytest.param(3, 1, 3, 32, False, id="unknown-matching-type"),
        pytest.param(3, 1, 1, 31, False, id="sha256-too-short"),
        pytest.param(3, 1, 1, 64, False, id="sha256-too-long"),
        pytest.param(3, 1, 2, 32, False, id="sha512-too-short"),
        pytest.param(3, 1, 0, 0, False, id="full-empty"),
    ],
)
async def test_tlsa_usable(usage: int, selector: int, mtype: int, size: int, usable: bool) -> None:
    # RFC 7672 §3.1, RFC 6698 §2.1: usage 2/3, selector 0/1, matching type
    # 0 (any non-empty), 1 (32 bytes) or 2 (64 bytes).
    assert tlsa_usable(usage, selector, mtype, b"\x01" * size) is usable
