"""The DNSSEC probe (mtasts_fast/dane/probe.py): does the resolver validate?

Against the signed tree's validating and non-validating Unbound, and a
socket that never answers.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from mtasts_fast.dane.probe import DnssecProbe
from mtasts_fast.dane.resolver import DaneResolver, parse_servers
from tests.dane_world import PROBE_NAME, DaneWorld, Silent

pytestmark = pytest.mark.both_loops

NOT_VALIDATING = "does not validate DNSSEC: DANE detection inactive, MTA-STS answers only"


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


async def test_validating_resolver(dane_world: DaneWorld, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mtasts_fast.dane")
    probe = DnssecProbe(DaneResolver([dane_world.validating]), PROBE_NAME)
    changes: list[bool] = []
    probe.subscribe(changes.append)
    assert probe.validating is None
    assert probe.active  # not proven otherwise yet
    assert await probe.check() is True
    assert probe.active
    assert (probe.checks, probe.not_validating) == (1, 0)
    assert changes == []  # active before, active after
    assert any("validates DNSSEC" in r.getMessage() for r in caplog.records)


async def test_non_validating_resolver_turns_detection_off_with_one_warning(
    dane_world: DaneWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "mtasts_fast.dane")
    resolver = DaneResolver([dane_world.non_validating])
    probe = DnssecProbe(resolver, PROBE_NAME)
    changes: list[bool] = []
    probe.subscribe(changes.append)
    assert await probe.check() is False
    assert await probe.check() is False
    assert not probe.active
    assert (probe.checks, probe.not_validating) == (2, 2)
    assert changes == [False]
    warnings = _warnings(caplog, NOT_VALIDATING)
    assert warnings == [
        f"resolver {dane_world.non_validating} {NOT_VALIDATING} (SOA {PROBE_NAME}: "
        "1 record, insecure has no AD bit; RFC 7672 §2.1 needs a validating resolver, "
        "ideally on this host)"
    ]

    # The resolver starts validating (here: the validating one takes its place).
    resolver.servers = parse_servers([dane_world.validating])
    assert await probe.check() is True
    assert probe.active
    assert changes == [False, True]
    assert _warnings(caplog, "validates DNSSEC again: DANE detection active")


async def test_one_non_validating_resolver_among_several_is_enough(
    dane_world: DaneWorld, caplog: pytest.LogCaptureFixture
) -> None:
    # Either may answer a DANE lookup: both must validate.
    resolver = DaneResolver([dane_world.validating, dane_world.non_validating])
    probe = DnssecProbe(resolver, PROBE_NAME)
    assert await probe.check() is False
    assert _warnings(caplog, f"resolver {dane_world.non_validating} {NOT_VALIDATING}")


async def test_unanswered_probe_leaves_detection_on_and_retries_sooner(
    silent: Silent, caplog: pytest.LogCaptureFixture
) -> None:
    probe = DnssecProbe(
        DaneResolver([silent.address]), PROBE_NAME, timeout=0.3, interval=3600, retry=0.2
    )
    task = asyncio.ensure_future(probe.run_forever())
    try:
        await asyncio.sleep(1.2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Every 0.3 s probe + 0.2 s pause: at least two probes, not one an hour.
    assert probe.checks >= 2
    assert probe.validating is None
    assert probe.active  # a dead resolver makes evaluations TEMP, not wrong
    assert len(_warnings(caplog, "cannot tell whether resolver")) == 1


async def test_root_is_the_default_probe_name(dane_world: DaneWorld) -> None:
    # The tree's resolvers refuse names outside it, as they refuse the root:
    # a probe of "." cannot tell, and says so, rather than turn detection off.
    probe = DnssecProbe(DaneResolver([dane_world.validating]))
    assert probe.name == "."
    assert await probe.check() is None
    assert probe.active


async def test_wait_first(dane_world: DaneWorld) -> None:
    probe = DnssecProbe(DaneResolver([dane_world.non_validating]), PROBE_NAME)
    waiter = asyncio.ensure_future(probe.wait_first(5))
    await asyncio.sleep(0)
    assert not waiter.done()
    await probe.check()
    await asyncio.wait_for(waiter, 1)
    # Once a probe has ended, nothing waits.
    await asyncio.wait_for(probe.wait_first(5), 0.1)


async def test_quiet_probe_logs_at_debug(
    dane_world: DaneWorld, caplog: pytest.LogCaptureFixture
) -> None:
    # Workers other than the first: one warning per daemon, not per worker.
    caplog.set_level(logging.DEBUG, "mtasts_fast.dane")
    probe = DnssecProbe(DaneResolver([dane_world.non_validating]), PROBE_NAME, loud=False)
    assert await probe.check() is False
    assert not _warnings(caplog, NOT_VALIDATING)
    assert any(NOT_VALIDATING in r.getMessage() for r in caplog.records)
