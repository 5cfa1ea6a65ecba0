"""Fetch discipline (DESIGN.md §2, §4): coalescing, background revalidation,
negative caching, backoff, fetch slots and the proactive pass.

Every test counts the requests that reach the local DNS and HTTPS servers:
the point of this module is how little traffic a burst of lookups causes.
Backoff periods are tested with a clock the test moves, not with sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from mtasts_fast.cache.base import CacheUnavailable
from mtasts_fast.cache.internal import InternalCache
from mtasts_fast.proactive import ProactiveRefresher
from mtasts_fast.refresh import backoff_delay
from tests.servers.world import World
from tests.socketmap import Running, enforce, start_daemon

pytestmark = pytest.mark.both_loops

OK_MAIL = b"OK secure match=mail.loc servername=hostname"
OK_OTHER = b"OK secure match=other.loc servername=hostname"
NOTFOUND = b"NOTFOUND "


class Clock:
    """Wall-clock seconds that only move when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _policy_domain(world: World, mode: str = "enforce", mx: str = "mail.loc") -> str:
    domain = world.fresh_domain("f")
    world.add_domain(domain, policy=World.policy_text(mode, [mx]))
    return domain


async def _until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _background_done(daemon: Running) -> None:
    """Wait until the responder has no fetch or revalidation in flight."""
    await _until(
        lambda: not daemon.responder._tasks and not daemon.responder.refresher._inflight,
        "background fetches to finish",
    )


# -- coalescing ------------------------------------------------------------------------


async def test_500_concurrent_lookups_of_a_new_domain_make_one_txt_query_and_one_get(
    world: World, tmp_path: Path
) -> None:
    domain = _policy_domain(world)
    # The policy host answers slowly, so every lookup arrives while the
    # first fetch is still in flight.
    world.set_policy(domain, World.policy_text("enforce", ["mail.loc"]), delay=0.5)
    daemon = await start_daemon(world, tmp_path)
    try:
        clients = [await daemon.connect() for _ in range(500)]
        replies = await asyncio.gather(*(c.ask(f"postfix {domain}") for c in clients))
        assert set(replies) == {OK_MAIL}
        assert world.txt_queries(domain) == 1
        assert world.https_requests(domain) == 1
    finally:
        await daemon.stop()


# -- background revalidation --------------------------------------------------------------


async def test_cached_lookups_past_grace_never_wait_for_a_stalled_dns_server(
    world: World, tmp_path: Path
) -> None:
    domain = _policy_domain(world)
    daemon = await start_daemon(world, tmp_path, cache_grace=0, default_zone={"timeout": 15})
    try:
        assert await daemon.ask(f"postfix {domain}") == OK_MAIL
        before = world.txt_queries(domain)
        world.stall_dns(f"_mta-sts.{domain}", 10)
        client = await daemon.connect()
        for _ in range(50):
            # Answered from the cache while the TXT check hangs for 10 s.
            assert await asyncio.wait_for(client.ask(f"postfix {domain}"), 1.0) == OK_MAIL
        # One background check for the whole stream, not one per lookup.
        await _until(lambda: world.txt_queries(domain) > before, "the background TXT query")
        await asyncio.sleep(0.2)
        assert world.txt_queries(domain) - before in (1, 2)  # aiodns may retry once
        assert len(daemon.responder.refresher._inflight) == 1
    finally:
        world.stall_dns(f"_mta-sts.{domain}", 0)
        await daemon.stop()


async def _serve_then_change(
    world: World, tmp_path: Path, domain: str, new_policy: str, new_id: str
) -> Running:
    daemon = await start_daemon(world, tmp_path, cache_grace=0)
    assert await daemon.ask(f"postfix {domain}") == OK_MAIL
    world.set_policy(domain, new_policy)
    world.set_txt(domain, [f"v=STSv1; id={new_id};"])
    return daemon


async def test_a_new_id_is_fetched_by_the_background_check_of_the_first_lookup_past_grace(
    world: World, tmp_path: Path
) -> None:
    domain = _policy_domain(world)
    daemon = await _serve_then_change(
        world, tmp_path, domain, World.policy_text("enforce", ["other.loc"]), "new1"
    )
    try:
        # The first lookup past grace is answered from the cache at once...
        assert await daemon.ask(f"postfix {domain}") == OK_MAIL
        # ...and its background check sees the new id and fetches the body.
        await _until(lambda: world.https_requests(domain) == 2, "the background fetch")
        await _background_done(daemon)
        assert daemon.cache.get_nowait(domain).policy_id == "new1"  # type: ignore[union-attr]
        assert await daemon.ask(f"postfix {domain}") == OK_OTHER
    finally:
        await daemon.stop()


async def test_a_fetched_mode_none_replaces_an_enforce_policy_at_once(
    world: World, tmp_path: Path
) -> None:
    domain = _policy_domain(world)
    daemon = await _serve_then_change(
        world, tmp_path, domain, World.policy_text("none", ["mail.loc"]), "gone1"
    )
    try:
        assert await daemon.ask(f"postfix {domain}") == OK_MAIL
        await _until(lambda: world.https_requests(domain) == 2, "the background fetch")
        await _background_done(daemon)
        assert await daemon.ask(f"postfix {domain}") == NOTFOUND
    finally:
        await daemon.stop()


async def test_an_invalid_new_policy_never_replaces_a_valid_one(
    world: World, tmp_path: Path
) -> None:
    domain = _policy_domain(world)
    daemon = await _serve_then_change(world, tmp_path, domain, "this is not a policy\n", "bad1")
    try:
        assert await daemon.ask(f"postfix {domain}") == OK_MAIL
        await _until(lambda: world.https_requests(domain) == 2, "the background fetch")
        await _background_done(daemon)
        entry = daemon.cache.get_nowait(domain)
        assert entry is not None
        assert entry.policy_id != "bad1"
        failure = await daemon.cache.get_failure(domain)
        assert failure is not None
        assert failure.result_type == "sts-policy-invalid"
        for _ in range(20):
            assert await daemon.ask(f"postfix {domain}") == OK_MAIL
        # Backing off: the stream of lookups past grace fetched nothing more.
        await _background_done(daemon)
        assert world.https_requests(domain) == 2
    finally:
        await daemon.stop()


# -- negative caching and backoff ------------------------------------------------------------


async def test_no_policy_is_remembered_for_negative_ttl(world: World, tmp_path: Path) -> None:
    domain = world.fresh_domain("n")
    world.add_domain(domain, txt=None)  # NXDOMAIN at _mta-sts: no policy
    clock = Clock()
    daemon = await start_daemon(world, tmp_path, clock=clock, negative_ttl=300)
    try:
        client = await daemon.connect()
        for _ in range(60):
            assert await client.ask(f"postfix {domain}") == NOTFOUND
            clock.advance(4.9)
        assert world.txt_queries(domain) == 1
        clock.advance(10)  # 304 s after the first lookup
        assert await client.ask(f"postfix {domain}") == NOTFOUND
        assert world.txt_queries(domain) == 2
        assert daemon.responder.refresher.counts["no-policy"] == 2
    finally:
        await daemon.stop()


async def test_a_down_policy_host_is_fetched_once_per_backoff_period_and_logged_once(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    domain = _policy_domain(world)
    world.set_policy(domain, World.policy_text("enforce", ["mail.loc"]), status=503)
    clock = Clock()
    daemon = await start_daemon(world, tmp_path, clock=clock, fetch_backoff_max=300)
    try:
        client = await daemon.connect()
        caplog.set_level(logging.WARNING, logger="mtasts_fast.refresh")
        start = clock.now
        # A lookup every 5 s for 800 s: retries after 60, 120, 240, 300, 300 s.
        while clock.now - start < 800:
            assert await client.ask(f"postfix {domain}") == NOTFOUND
            clock.advance(5)
        attempts = [0, 60, 180, 420, 720]
        assert world.https_requests(domain) == len(attempts)
        warnings = [r for r in caplog.records if domain in r.getMessage()]
        assert len(warnings) == len(attempts)
        assert "sts-policy-fetch-error" in warnings[0].getMessage()
        assert "next attempt after" in warnings[0].getMessage()
        assert all(r.levelno == logging.WARNING for r in warnings)
        failure = await daemon.cache.get_failure(domain)
        assert failure is not None
        assert failure.attempts == len(attempts)
        assert failure.stage == "https"
        assert daemon.responder.refresher.counts["sts-policy-fetch-error"] == len(attempts)
        # The host recovers: the next attempt stores the policy and the
        # failure record is gone.
        world.set_policy(domain, World.policy_text("enforce", ["mail.loc"]), status=200)
        clock.advance(301)
        assert await client.ask(f"postfix {domain}") == OK_MAIL
        assert await daemon.cache.get_failure(domain) is None
    finally:
        await daemon.stop()


async def test_a_failure_recorded_by_one_worker_holds_back_the_others(
    world: World, tmp_path: Path
) -> None:
    domain = _policy_domain(world)
    world.set_policy(domain, World.policy_text("enforce", ["mail.loc"]), status=500)
    shared = InternalCache(100)  # stands for one LMDB file or one Redis
    first = await start_daemon(world, tmp_path, cache=shared)
    second = await start_daemon(world, tmp_path, cache=shared)
    try:
        assert await first.ask(f"postfix {domain}") == NOTFOUND
        for _ in range(10):
            assert await second.ask(f"postfix {domain}") == NOTFOUND
        assert world.https_requests(domain) == 1
        assert second.responder.refresher.counts["backoff"] == 1
    finally:
        await first.stop()
        await second.stop()


def test_backoff_doubles_from_60_seconds_up_to_the_maximum() -> None:
    assert [backoff_delay(n, 300) for n in range(1, 7)] == [60, 120, 240, 300, 300, 300]
    assert backoff_delay(1, 30) == 30
    assert backoff_delay(1000, 3600) == 3600


async def test_lookups_beyond_max_concurrent_fetches_wait_for_a_slot_within_the_timeout(
    world: World, tmp_path: Path
) -> None:
    slow = _policy_domain(world)
    world.set_policy(slow, World.policy_text("enforce", ["mail.loc"]), delay=2.0)
    daemon = await start_daemon(
        world,
        tmp_path,
        max_concurrent_fetches=1,
        default_zone={"timeout": 1.0},
        zones={"slow": {"timeout": 5.0}},
    )
    try:
        # The only slot is taken for 2 s by a zone with a long timeout.
        blocker = asyncio.ensure_future(daemon.ask(f"slow {slow}"))
        await _until(lambda: world.https_requests(slow) == 1, "the slow fetch to start")
        # A lookup in the default zone waits 1 s for the slot, then gives up:
        # no fetch, nothing recorded against its domain.
        other = _policy_domain(world)
        assert await daemon.ask(f"postfix {other}") == NOTFOUND
        assert daemon.responder.refresher.counts["no-slot"] == 1
        assert world.txt_queries(other) == 0
        assert await daemon.cache.get_failure(other) is None
        assert await blocker == OK_MAIL
        # With the slot free again, a lookup waits for its turn and is fetched.
        queued = _policy_domain(world)
        replies = await asyncio.gather(
            daemon.ask(f"postfix {other}"), daemon.ask(f"postfix {queued}")
        )
        assert list(replies) == [OK_MAIL, OK_MAIL]
    finally:
        await daemon.stop()


# -- the proactive pass ------------------------------------------------------------------------


def _proactive(daemon: Running, **kwargs: Any) -> ProactiveRefresher:
    return ProactiveRefresher(daemon.config, daemon.cache, daemon.responder.refresher, **kwargs)


PROACTIVE_FAST = {"enabled": True, "interval": 1, "grace_ratio": 1000, "jitter": 0}


async def test_a_proactive_pass_picks_up_a_policy_edited_without_a_new_id(
    world: World, tmp_path: Path
) -> None:
    edited = _policy_domain(world)
    unchanged = _policy_domain(world)
    daemon = await start_daemon(world, tmp_path, proactive_policy_fetching=PROACTIVE_FAST)
    try:
        assert await daemon.ask(f"postfix {edited}") == OK_MAIL
        assert await daemon.ask(f"postfix {unchanged}") == OK_MAIL
        world.set_policy(edited, World.policy_text("enforce", ["other.loc"]))  # same TXT id
        # Within cache_grace nothing is checked, and a TXT check would see
        # the same id anyway: still the old policy.
        assert await daemon.ask(f"postfix {edited}") == OK_MAIL
        await asyncio.sleep(0.01)
        report = await _proactive(daemon).run_once()
        assert report is not None
        assert (report.due, report.refreshed, report.changed) == (2, 2, 1)
        assert await daemon.ask(f"postfix {edited}") == OK_OTHER
        assert world.https_requests(edited) == 2
        assert world.https_requests(unchanged) == 2  # body fetched despite the same id
        assert await daemon.cache.get_proactive_ts() > 0
        # Not due again until the interval has passed.
        assert await _proactive(daemon).run_once() is None
    finally:
        await daemon.stop()


async def test_a_proactive_pass_keeps_entries_it_cannot_refresh_and_drops_long_expired_ones(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _policy_domain(world)
    daemon = await start_daemon(world, tmp_path, proactive_policy_fetching=PROACTIVE_FAST)
    try:
        assert await daemon.ask(f"postfix {broken}") == OK_MAIL
        world.set_policy(broken, World.policy_text("enforce", ["mail.loc"]), status=404)
        old = world.fresh_domain("old")
        await daemon.seed(old, enforce("mail.loc", max_age=3600), age=3600 + 2 * 86400)
        caplog.set_level(logging.WARNING, logger="mtasts_fast.refresh")
        await asyncio.sleep(0.01)
        report = await _proactive(daemon).run_once()
        assert report is not None
        assert (report.dropped, report.due, report.kept, report.refreshed) == (1, 1, 1, 0)
        assert daemon.cache.get_nowait(old) is None
        assert await daemon.ask(f"postfix {broken}") == OK_MAIL
        assert any(
            broken in r.getMessage() and "keeping the cached enforce policy" in r.getMessage()
            for r in caplog.records
        )
    finally:
        await daemon.stop()


async def test_a_proactive_pass_spreads_its_fetches_over_the_jitter_window(
    world: World, tmp_path: Path
) -> None:
    domains = [_policy_domain(world) for _ in range(4)]
    settings = dict(PROACTIVE_FAST, interval=10, jitter=1.2)
    daemon = await start_daemon(world, tmp_path, proactive_policy_fetching=settings)
    try:
        for domain in domains:
            assert await daemon.ask(f"postfix {domain}") == OK_MAIL
        await daemon.cache.set_proactive_ts(time.time() - 11)
        await asyncio.sleep(0.01)
        started = time.monotonic()
        report = await _proactive(daemon).run_once()
        elapsed = time.monotonic() - started
        assert report is not None
        assert report.refreshed == 4
        # The last of four fetches starts in the last quarter of the window.
        assert elapsed >= 0.9
    finally:
        await daemon.stop()


async def test_only_one_of_two_processes_sharing_a_cache_runs_the_pass(
    world: World, tmp_path: Path
) -> None:
    domain = _policy_domain(world)
    shared = InternalCache(100)
    first = await start_daemon(
        world, tmp_path, cache=shared, proactive_policy_fetching=PROACTIVE_FAST
    )
    second = await start_daemon(
        world, tmp_path, cache=shared, proactive_policy_fetching=PROACTIVE_FAST
    )
    try:
        assert await first.ask(f"postfix {domain}") == OK_MAIL
        await asyncio.sleep(0.01)
        reports = await asyncio.gather(
            _proactive(first, owner="first").run_once(),
            _proactive(second, owner="second").run_once(),
        )
        assert sorted(r is None for r in reports) == [False, True]
        assert world.https_requests(domain) == 2
    finally:
        await first.stop()
        await second.stop()


class _ReadOnlyCache(InternalCache):
    """Reads work, writes fail: a full disk or a file locked by another process."""

    async def put(self, entry: Any) -> None:
        raise CacheUnavailable("No space left on device")


async def test_a_backend_that_only_fails_writes_is_reported_once_not_per_lookup(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = await start_daemon(world, tmp_path, cache=_ReadOnlyCache(100))
    try:
        caplog.set_level(logging.WARNING, logger="mtasts_fast.refresh")
        for _ in range(5):
            assert await daemon.ask(f"postfix {_policy_domain(world)}") == OK_MAIL
        messages = [r.getMessage() for r in caplog.records]
        assert sum("cache backend write failed" in m for m in messages) == 1
        assert not any("is back" in m and "failed calls" in m for m in messages)
        assert daemon.responder.backend_errors == 5
    finally:
        await daemon.stop()


class _FlakyWriteCache(InternalCache):
    """Writes fail while ``broken`` is set."""

    broken = False

    async def put(self, entry: Any) -> None:
        if self.broken:
            raise CacheUnavailable("No space left on device")
        await super().put(entry)


async def test_a_recovery_counts_the_failures_of_its_own_outage(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = _FlakyWriteCache(100)
    daemon = await start_daemon(world, tmp_path, cache=cache)
    try:
        caplog.set_level(logging.WARNING, logger="mtasts_fast.refresh")
        for failures in (3, 2):
            cache.broken = True
            for _ in range(failures):
                assert await daemon.ask(f"postfix {_policy_domain(world)}") == OK_MAIL
            cache.broken = False
            assert await daemon.ask(f"postfix {_policy_domain(world)}") == OK_MAIL
        messages = [r.getMessage() for r in caplog.records]
        back = [m for m in messages if m.startswith("cache backend is back")]
        assert back == [
            "cache backend is back for writes after 3 failed calls",
            "cache backend is back for writes after 2 failed calls",
        ]
        assert daemon.responder.backend_errors == 5
    finally:
        await daemon.stop()


async def test_the_in_process_backoff_memo_forgets_expired_domains(
    world: World, tmp_path: Path
) -> None:
    clock = Clock()
    daemon = await start_daemon(world, tmp_path, clock=clock, negative_ttl=60)
    try:
        client = await daemon.connect()
        for _ in range(3):
            for _ in range(10):
                domain = world.fresh_domain("gone")
                world.add_domain(domain, txt=None)
                assert await client.ask(f"postfix {domain}") == NOTFOUND
            clock.advance(61)
        # Only the last ten (still within negative_ttl) are remembered.
        assert len(daemon.responder.refresher._retry_at) <= 10 + 4
    finally:
        await daemon.stop()
