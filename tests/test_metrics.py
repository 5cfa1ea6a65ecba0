"""The metrics package in process: layout, regions, counting, totals, health, exposition.

The daemon-level behaviour (two workers, kill -9, SIGHUP, a real Prometheus)
is in test_metrics_daemon.py; the HTTP endpoint in test_metrics_http.py.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass

import pytest

from mtasts_fast import _compat, counters
from mtasts_fast.cache.base import CacheStats
from mtasts_fast.config import Config
from mtasts_fast.metrics import catalogue as cat
from mtasts_fast.metrics import layout as lay
from mtasts_fast.metrics.collector import HEARTBEAT_STALE, Collector
from mtasts_fast.metrics.exposition import escape_label_value, format_value
from mtasts_fast.metrics.layout import Layout
from mtasts_fast.metrics.region import Region
from mtasts_fast.metrics.worker import WorkerMetrics
from tests.servers.prometheus import check_exposition
from tests.servers.prometheus import samples as _samples
from tests.twins import twin_fixture

array = twin_fixture("_counters", lambda: counters.CounterArrayPy, lambda: counters.CounterArrayC)


def _config(**data: object) -> Config:
    return Config.from_mapping({"cache": {"type": "internal"}, **data})


@dataclass
class FakeWorker:
    """What the collector reads of a worker process."""

    slot: int
    region: Region | None
    ready: bool = True
    retiring: bool = False


def _lookups(zone: str, outcome: str, path: str) -> str:
    return f'mtasts_lookups_total{{zone="{zone}",outcome="{outcome}",path="{path}"}}'


# -- catalogue and layout -----------------------------------------------------------------------


def test_names_follow_the_prometheus_conventions() -> None:
    names = [metric.name for metric in cat.ALL]
    assert len(names) == len(set(names))
    for metric in cat.ALL:
        assert re.fullmatch(r"mtasts_[a-z_]+", metric.name), metric.name
        assert metric.name.endswith("_total") == (metric.kind == cat.COUNTER), metric.name
        assert metric.help.strip(), metric.name
        assert "le" not in metric.labels
    assert cat.FETCH_DURATION.name.endswith("_seconds")
    assert cat.CACHE_SIZE.name.endswith("_bytes")


def test_the_issue_s_metric_list_is_covered() -> None:
    """Issue 15 item 1, one assertion per item."""
    assert set(cat.LOOKUPS.labels) == {"zone", "outcome", "path"}
    assert set(cat.OUTCOMES) == {"policy", "no-policy", "temp"}
    assert {"memo", "cache", "fetch", "backoff", "override", "dane"} <= set(cat.PATHS)
    # refresh.py's counts: every fetch result and every RFC 8460 failure type
    assert set(cat.FETCH_RESULTS) == {
        "policy",
        "not-changed",
        "no-policy",
        "dns-error",
        "dns-timeout",
        "sts-policy-fetch-error",
        "sts-policy-invalid",
        "sts-webpki-invalid",
    }
    assert cat.FETCH_DURATION.kind == cat.HISTOGRAM
    for metric in (
        cat.FETCH_COALESCED,
        cat.FETCH_SLOT_WAITS,
        cat.CACHE_ENTRIES,
        cat.CACHE_SIZE,
        cat.BACKEND_ERRORS,
        cat.BACKEND_OUTAGES,
        cat.CONNECTIONS_OPEN,
        cat.CONNECTIONS_REFUSED,
        cat.CONNECTIONS_IDLE_CLOSED,
        cat.BAD_NETSTRINGS,
        cat.WORKER_STARTS,
        cat.WORKER_CRASHES,
        cat.WORKER_RESTARTS,
        cat.RELOADS,
        cat.PROACTIVE_PASSES,
        cat.DANE_DECISIONS_TOTAL,
        cat.BUILD_INFO,
    ):
        assert metric in cat.ALL
    assert set(cat.PROACTIVE_ACTIONS) >= {"due", "refreshed", "changed", "dropped"}
    assert set(cat.DANE_DECISIONS) == {"dane-only", "dane", "none", "temp"}
    assert set(cat.BUILD_INFO.labels) == {"version", "extensions", "python"}


def test_layout_has_a_cell_per_series_of_every_zone() -> None:
    layout = Layout.for_config(_config(zones={"tlsrpt": {"tlsrpt": True}, "b": {}}))
    # postfix-tlspol's two map names are zones whether configured or not.
    assert layout.zones == ("default_zone", "tlsrpt", "b", "QUERY", "QUERYwithTLSRPT")
    indexes = [i for i, _ in layout.indexed_cells()]
    assert indexes == list(range(lay.HEADER_CELLS, lay.HEADER_CELLS + len(layout.cells)))
    lookups = [c for c in layout.cells if c.metric is cat.LOOKUPS]
    assert len(lookups) == 5 * len(cat.OUTCOMES) * len(cat.PATHS)
    table = layout.lookup_cells("tlsrpt")
    assert len({i for row in table for i in row}) == len(cat.OUTCOMES) * len(cat.PATHS)
    assert layout.index(cat.LOOKUPS, "tlsrpt", "temp", "dane") == table[5][2]
    assert layout.size == (lay.HEADER_CELLS + len(layout.cells)) * counters.CELL
    with pytest.raises(KeyError):
        layout.index(cat.LOOKUPS, "nonesuch", "temp", "dane")


def test_a_zone_named_like_the_default_zone_label_shares_its_series() -> None:
    layout = Layout.for_config(_config(zones={"default_zone": {}}))
    assert layout.zones == ("default_zone", "QUERY", "QUERYwithTLSRPT")


# -- counting into a region and summing -------------------------------------------------------


def test_worker_counts_land_in_the_region(array: type[counters.Cells]) -> None:
    config = _config(zones={"z": {}})
    region = Region(Layout.for_config(config), array=array)
    metrics = WorkerMetrics(region)
    cells = metrics.lookup_cells("z")
    metrics.count(cells.memo_policy)
    metrics.count(cells.memo_policy)
    metrics.count(cells.cell("fetch", "temp"))
    metrics.fetched("dns-timeout", 0.3)
    metrics.fetched("policy", 20.0)
    metrics.fetched("failed", 0.001)  # no result type: counted as refresh.py logs it
    metrics.skipped("no-slot")
    metrics.backend_error(outage=True)
    metrics.backend_error(outage=False)
    metrics.connection_accepted(3)
    metrics.connection_closed(2)
    metrics.proactive_pass(aborted=False, due=5, refreshed=4, changed=1, kept=1, dropped=2)
    metrics.dane_decision("dane-only")
    values = {cell.key: value for cell, value in region.values()}
    layout = region.layout

    def value(metric: cat.Metric, *labels: str, part: str = "") -> float:
        return values[(metric.name, labels, part)]

    assert value(cat.LOOKUPS, "z", "policy", "memo") == 2
    assert value(cat.LOOKUPS, "z", "temp", "fetch") == 1
    assert value(cat.LOOKUPS, "default_zone", "policy", "memo") == 0
    assert value(cat.FETCHES, "dns-timeout") == 1
    assert value(cat.FETCHES, "sts-policy-fetch-error") == 1
    assert value(cat.FETCH_DURATION, part="0.5") == 1  # 0.3 s: the (0.25, 0.5] bucket
    assert value(cat.FETCH_DURATION, part="+Inf") == 1  # 20 s
    assert value(cat.FETCH_DURATION, part="0.01") == 1
    assert value(cat.FETCH_DURATION, part="sum") == pytest.approx(20.301)
    assert value(cat.FETCHES_SKIPPED, "no-slot") == 1
    assert value(cat.BACKEND_ERRORS, "internal") == 2
    assert value(cat.BACKEND_OUTAGES, "internal") == 1
    assert value(cat.CONNECTIONS_ACCEPTED) == 1
    assert value(cat.CONNECTIONS_OPEN) == 2
    assert value(cat.PROACTIVE_PASSES, "completed") == 1
    assert value(cat.PROACTIVE_POLICIES, "dropped") == 2
    assert value(cat.DANE_DECISIONS_TOTAL, "dane-only") == 1
    assert layout.backend == "internal"
    region.close()
    assert region.closed
    region.close()  # twice is harmless


def test_totals_survive_the_worker_and_never_go_back(array: type[counters.Cells]) -> None:
    config = _config()
    collector = Collector(config)
    first = FakeWorker(0, collector.new_region(config))
    second = FakeWorker(1, collector.new_region(config))
    for worker in (first, second):
        assert worker.region is not None
    m1, m2 = WorkerMetrics(first.region), WorkerMetrics(second.region)  # type: ignore[arg-type]
    cells = m1.lookup_cells("default_zone")
    for _ in range(5):
        m1.count(cells.memo_policy)
    m2.count(cells.memo_policy)
    m1.connection_accepted(4)
    m1.fetched("policy", 0.02)
    key = _lookups("default_zone", "policy", "memo")
    before = _samples(collector.render([first, second]))
    assert before[key] == 6
    assert before["mtasts_connections_open"] == 4
    # The first worker dies: its counts stay, its gauges go.
    collector.worker_exited(first.region, crashed=True)
    assert first.region is not None
    assert first.region.closed
    replacement = FakeWorker(0, collector.new_region(config))
    collector.worker_started(restart=True)
    after = _samples(collector.render([second, replacement]))
    assert after[key] == 6
    assert after["mtasts_connections_open"] == 0
    assert after["mtasts_fetch_duration_seconds_count"] == 1
    assert after['mtasts_fetch_duration_seconds_bucket{le="0.025"}'] == 1
    assert after['mtasts_fetch_duration_seconds_bucket{le="0.01"}'] == 0
    assert after["mtasts_worker_crashes_total"] == 1
    assert after["mtasts_worker_restarts_total"] == 1
    WorkerMetrics(replacement.region).count(cells.memo_policy)  # type: ignore[arg-type]
    assert _samples(collector.render([second, replacement]))[key] == 7
    # An orderly stop is no crash.
    collector.worker_exited(second.region, crashed=False)
    assert _samples(collector.render([replacement]))["mtasts_worker_crashes_total"] == 1


def test_series_of_a_zone_removed_by_a_reload_keep_their_totals() -> None:
    old, new = _config(zones={"gone": {}}), _config(zones={"new": {}})
    collector = Collector(old)
    worker = FakeWorker(0, collector.new_region(old))
    metrics = WorkerMetrics(worker.region)  # type: ignore[arg-type]
    metrics.count(metrics.lookup_cells("gone").backoff)
    collector.worker_exited(worker.region, crashed=False)
    successor = FakeWorker(0, collector.new_region(new))
    samples = _samples(collector.render([successor]))
    assert samples[_lookups("gone", "no-policy", "backoff")] == 1
    assert samples[_lookups("new", "no-policy", "backoff")] == 0
    assert collector.layout(new) is collector.layout(new)  # built once per configuration
    for _ in range(20):  # reload after reload: the memo stays small
        collector.layout(_config(zones={"new": {}}))
    assert len(collector._layouts) <= 4


def test_cache_gauges_sum_internal_caches_and_keep_the_last_shared_count() -> None:
    config = _config()
    collector = Collector(config)
    workers = [FakeWorker(i, collector.new_region(config)) for i in range(2)]
    for number, worker in enumerate(workers):
        WorkerMetrics(worker.region).cache_stats(  # type: ignore[arg-type]
            CacheStats(10 + number, 2, 1.0, 2.0, None)
        )
    samples = _samples(collector.render(workers))
    assert samples['mtasts_cache_entries{backend="internal"}'] == 21
    assert samples['mtasts_cache_failure_records{backend="internal"}'] == 4
    assert 'mtasts_cache_size_bytes{backend="internal"}' not in samples

    shared = Config.from_mapping({"cache": {"type": "lmdb", "options": {"path": "/x"}}})
    collector = Collector(shared)
    counter = FakeWorker(0, collector.new_region(shared))
    other = FakeWorker(1, collector.new_region(shared))
    WorkerMetrics(counter.region).cache_stats(CacheStats(7, 1, None, None, 4096))  # type: ignore[arg-type]
    samples = _samples(collector.render([counter, other]))
    assert samples['mtasts_cache_entries{backend="lmdb"}'] == 7
    assert samples['mtasts_cache_size_bytes{backend="lmdb"}'] == 4096
    # The worker that counted is replaced: its count is still the last known.
    collector.worker_exited(counter.region, crashed=True)
    samples = _samples(collector.render([other]))
    assert samples['mtasts_cache_entries{backend="lmdb"}'] == 7


def test_health_needs_an_answering_worker_and_a_reachable_backend() -> None:
    config = _config()
    collector = Collector(config)
    worker = FakeWorker(0, collector.new_region(config), ready=False)
    metrics = WorkerMetrics(worker.region)  # type: ignore[arg-type]
    healthy, why = collector.health([], stopping=False)
    assert not healthy
    assert "no worker is answering" in why
    healthy, why = collector.health([worker], stopping=False)
    assert (healthy, why) == (False, "unavailable: no worker is answering lookups (1 starting)")
    worker.ready = True
    metrics.heartbeat()
    metrics.backend_state(True)
    assert collector.health([worker], stopping=False)[0]
    metrics.backend_state(False, "redis: Connection refused")
    healthy, why = collector.health([worker], stopping=False)
    assert not healthy
    assert why == "unavailable: cache backend (internal) unreachable: redis: Connection refused"
    samples = _samples(collector.render([worker]))
    assert samples["mtasts_healthy"] == 0
    assert samples['mtasts_cache_backend_up{backend="internal"}'] == 0
    metrics.backend_state(True)
    assert collector.health([worker], stopping=False)[0]
    assert collector.health([worker], stopping=True) == (
        False,
        "unavailable: the daemon is stopping",
    )
    # A worker whose event loop stopped turning does not answer.
    assert worker.region is not None
    worker.region.cells.set_float(lay.HEARTBEAT, time.monotonic() - HEARTBEAT_STALE - 1)
    healthy, why = collector.health([worker], stopping=False)
    assert not healthy
    assert "1 unresponsive" in why
    assert _samples(collector.render([worker]))['mtasts_workers{state="unresponsive"}'] == 1
    worker.retiring = True
    assert _samples(collector.render([worker]))['mtasts_workers{state="stopping"}'] == 1


def test_reload_results_and_last_reload_gauge() -> None:
    collector = Collector(_config())
    collector.reload_result("invalid")
    assert _samples(collector.render([]))["mtasts_config_last_reload_successful"] == 0
    collector.reload_result("applied")
    collector.reload_result("unchanged")
    samples = _samples(collector.render([]))
    assert samples["mtasts_config_last_reload_successful"] == 1
    assert samples['mtasts_reloads_total{result="invalid"}'] == 1
    assert samples['mtasts_reloads_total{result="applied"}'] == 1
    assert samples['mtasts_reloads_total{result="aborted"}'] == 0


# -- the exposition -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param("plain", "plain", id="plain"),
        pytest.param('a"b', 'a\\"b', id="quote"),
        pytest.param("a\\b", "a\\\\b", id="backslash"),
        pytest.param("a\nb", "a\\nb", id="newline"),
    ],
)
def test_label_values_are_escaped(value: str, text: str) -> None:
    assert escape_label_value(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(3, "3", id="int"),
        pytest.param(2.0, "2", id="whole-float"),
        pytest.param(0.25, "0.25", id="float"),
        pytest.param(float("inf"), "+Inf", id="inf"),
        pytest.param(float("nan"), "NaN", id="nan"),
    ],
)
def test_values_are_formatted(value: float, text: str) -> None:
    assert format_value(value) == text


def test_every_family_has_help_and_type_and_build_info() -> None:
    config = _config(zones={'we"ird\\zone': {}})
    collector = Collector(config)
    worker = FakeWorker(0, collector.new_region(config))
    text = collector.render([worker])
    for metric in cat.ALL:
        assert f"# HELP {metric.name} " in text, metric.name
        assert f"# TYPE {metric.name} {metric.kind}\n" in text, metric.name
    assert 'zone="we\\"ird\\\\zone"' in text
    build = re.search(r'^mtasts_build_info\{version="([^"]+)",extensions="([^"]+)"', text, re.M)
    assert build is not None
    compiled = "counters,fastpath,matcher,netstring"
    assert build.group(2) == ("none" if _compat.NO_EXTENSIONS else compiled)


def test_promtool_accepts_the_exposition() -> None:
    config = _config(zones={"tlsrpt": {}})
    collector = Collector(config)
    worker = FakeWorker(0, collector.new_region(config))
    metrics = WorkerMetrics(worker.region)  # type: ignore[arg-type]
    metrics.fetched("policy", 0.2)
    metrics.cache_stats(CacheStats(1, 0, 1.0, 1.0, None))
    check_exposition(collector.render([worker]))


# -- a worker killed with SIGKILL loses nothing ------------------------------------------------


def test_a_killed_worker_s_counts_are_all_folded(array: type[counters.Cells]) -> None:
    config = _config()
    collector = Collector(config)
    region = Region(collector.layout(config), array=array)
    metrics = WorkerMetrics(region)
    cells = metrics.lookup_cells("default_zone")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            for _ in range(2500):
                metrics.count(cells.memo_policy)
            metrics.fetched("sts-webpki-invalid", 0.1)
            os.write(ready_w, b"x")
            signal.pause()
        finally:
            os._exit(1)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    collector.worker_exited(region, crashed=True)
    samples = _samples(collector.render([]))
    assert samples[_lookups("default_zone", "policy", "memo")] == 2500
    assert samples['mtasts_fetches_total{result="sts-webpki-invalid"}'] == 1
