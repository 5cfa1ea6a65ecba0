"""Metrics and health of a real daemon: two workers, kill -9, SIGHUP, Prometheus, Redis.

The daemon runs as a subprocess (tests/servers/daemon.py) with its metrics
endpoint on a port of its own; the tests send scripted traffic over the
socketmap port and read ``/metrics`` and ``/healthz`` as an operator's
Prometheus would, and as a real one does in the last tests.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from mtasts_fast.metrics import catalogue as cat
from tests.servers.daemon import DaemonProcess
from tests.servers.prometheus import (
    PrometheusServer,
    PrometheusUnavailable,
    check_exposition,
    promtool,
    samples,
)
from tests.servers.redis import RedisServer, RedisUnavailable
from tests.servers.world import World
from tests.socketmap import free_port
from tests.test_dashboard import queries as dashboard_queries

REQUIRE_ALL = os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0")
FAILURE_TYPES = (
    "dns-error",
    "dns-timeout",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
)
GOOD = b"OK secure match=mail.loc servername=hostname"
# The start of an enforce reply in any zone (tlsrpt: true adds attributes).
ENFORCE = b"OK secure match=mail.loc"
NOTFOUND = b"NOTFOUND "


def _missing(what: str) -> NoReturn:
    if REQUIRE_ALL:
        pytest.fail(f"{what} and MTASTS_REQUIRE_ALL is set")
    pytest.skip(what)


class MetricsDaemon(DaemonProcess):
    """``mta-sts-daemon`` with ``metrics: {port: ...}`` and helpers to read it."""

    def __init__(self, directory: Path, world: World, **settings: Any) -> None:
        self.metrics_port = free_port()
        settings.setdefault("metrics", {"port": self.metrics_port})
        super().__init__(directory, world, **settings)

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def exposition(self) -> str:
        status, text = self.get("/metrics")
        assert status == 200, text
        return text

    def scrape(self) -> dict[str, float]:
        return samples(self.exposition())

    def wait_until(
        self, predicate: Callable[[dict[str, float]], bool], what: str, timeout: float = 20.0
    ) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            now = self.scrape()
            if predicate(now):
                return now
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def wait_answering(self, workers: int) -> dict[str, float]:
        return self.wait_until(
            lambda m: (
                m['mtasts_workers{state="answering"}'] == workers
                and m['mtasts_workers{state="starting"}'] == 0
                and m['mtasts_workers{state="stopping"}'] == 0
            ),
            f"{workers} answering workers",
        )

    def lookup(self, domain: str, zone: str = "postfix") -> bytes:
        return self.ask(f"{zone} {domain}".encode())


def lookups(m: dict[str, float], zone: str = "default_zone") -> dict[tuple[str, str], float]:
    """(outcome, path) -> count for ``zone``, memo and cache hits merged as "hit"."""
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    pattern = re.compile(
        rf'^mtasts_lookups_total\{{zone="{re.escape(zone)}",outcome="([^"]+)",path="([^"]+)"\}}$'
    )
    for series, value in m.items():
        match = pattern.match(series)
        if match and value:
            outcome, path = match.groups()
            out[(outcome, "hit" if path in ("memo", "cache") else path)] += int(value)
    return dict(out)


def counters_only(m: dict[str, float]) -> dict[str, float]:
    names = tuple(f"{metric.name}" for metric in cat.ALL if metric.kind == cat.COUNTER)
    histograms = tuple(f"{m.name}_" for m in cat.ALL if m.kind == cat.HISTOGRAM)
    return {k: v for k, v in m.items() if k.startswith(names) or k.startswith(histograms)}


@pytest.fixture
def started(tmp_path: Path, world: World) -> Iterator[Callable[..., MetricsDaemon]]:
    daemons: list[MetricsDaemon] = []

    def start(**settings: Any) -> MetricsDaemon:
        directory = tmp_path / f"daemon{len(daemons)}"
        directory.mkdir()
        daemon = MetricsDaemon(directory, world, **settings)
        daemons.append(daemon)
        daemon.start()
        daemon.wait_answering(int(daemon.config["workers"]))
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


# -- scripted traffic ---------------------------------------------------------------------------


class Traffic:
    """Lookups of fresh domains with known outcomes, and the counts they must leave."""

    def __init__(self, world: World, daemon: MetricsDaemon) -> None:
        self.world = world
        self.daemon = daemon
        self.lookups: collections.Counter[tuple[str, str]] = collections.Counter()
        self.fetches: collections.Counter[str] = collections.Counter()
        # Connections made before (the start-up probe of the test harness).
        self.connections = int(daemon.scrape()["mtasts_connections_accepted_total"])

    def _ask(self, domain: str, zone: str = "postfix") -> bytes:
        self.connections += 1
        return self.daemon.lookup(domain, zone)

    def _failing_domain(self, kind: str) -> str:
        world = self.world
        domain = world.fresh_domain("f")
        if kind == "dns-error":
            world.add_domain(domain)
            world.set_rcode(f"_mta-sts.{domain}", "SERVFAIL")
        elif kind == "dns-timeout":
            world.add_domain(domain)
            world.stall_dns(f"_mta-sts.{domain}", None)
        elif kind == "sts-policy-fetch-error":
            world.add_domain(domain, status=404)
        elif kind == "sts-policy-invalid":
            world.add_domain(domain, policy="garbage")
        elif kind == "sts-webpki-invalid":
            world.add_domain(domain, cert="untrusted")
        else:
            raise AssertionError(kind)
        return domain

    def run(self, *, misses: int, hits: int, failures: int, zone: str = "postfix") -> None:
        """``misses`` new policy domains, ``hits`` lookups of them, ``failures`` per type."""
        policy = []
        for _ in range(misses):
            domain = self.world.fresh_domain("p")
            self.world.add_domain(domain)
            assert self._ask(domain, zone).startswith(ENFORCE)
            policy.append(domain)
        self.lookups[("policy", "fetch")] += misses
        self.fetches["policy"] += misses
        for number in range(hits):
            assert self._ask(policy[number % len(policy)], zone).startswith(ENFORCE)
        self.lookups[("policy", "hit")] += hits
        failing = [
            (kind, self._failing_domain(kind)) for kind in FAILURE_TYPES for _ in range(failures)
        ]
        no_policy = self.world.fresh_domain("n")
        self.world.add_domain(no_policy, txt=None)
        failing.append(("no-policy", no_policy))
        for kind, domain in failing:
            assert self._ask(domain, zone) == NOTFOUND, kind
            self.fetches[kind] += 1
        self.lookups[("no-policy", "fetch")] += len(failing)
        # Asked again: the failure (or "no policy") is remembered, no fetch.
        for _kind, domain in failing:
            assert self._ask(domain, zone) == NOTFOUND
        self.lookups[("no-policy", "backoff")] += len(failing)
        for key in ("[192.0.2.1]", ".parent.example"):
            assert self._ask(key, zone) == NOTFOUND
        self.lookups[("no-policy", "invalid-key")] += 2

    def check(self, m: dict[str, float], zones: dict[str, str] | None = None) -> None:
        """Every lookup, fetch and connection counted exactly once."""
        zones = zones or {"default_zone": "postfix"}
        seen: collections.Counter[tuple[str, str]] = collections.Counter()
        for label in zones:
            seen.update(lookups(m, label))
        assert dict(seen) == dict(self.lookups)
        for result in cat.FETCH_RESULTS:
            assert m[f'mtasts_fetches_total{{result="{result}"}}'] == self.fetches[result], result
        assert m["mtasts_fetch_duration_seconds_count"] == sum(self.fetches.values())
        assert m["mtasts_connections_accepted_total"] == self.connections
        assert m["mtasts_bad_netstrings_total"] == 0


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_counts_are_exact_across_workers_a_kill_9_and_a_reload(
    world: World, started: Callable[..., MetricsDaemon]
) -> None:
    daemon = started(workers=2, default_zone={"timeout": 1})
    traffic = Traffic(world, daemon)
    traffic.run(misses=3, hits=20, failures=2)
    before_kill = daemon.scrape()
    traffic.check(before_kill)
    assert before_kill["mtasts_worker_starts_total"] == 2
    # Both workers answered some of it (SO_REUSEPORT spreads the connections):
    # otherwise this would not test the sum.
    assert daemon.worker_pids()

    victim = daemon.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    after_kill = daemon.wait_until(
        lambda m: (
            m["mtasts_worker_restarts_total"] == 1 and m['mtasts_workers{state="answering"}'] == 2
        ),
        "the killed worker's replacement",
    )
    traffic.check(after_kill)  # nothing the killed worker counted is lost
    assert after_kill["mtasts_worker_crashes_total"] == 1
    assert after_kill["mtasts_worker_starts_total"] == 3
    for series, value in counters_only(before_kill).items():
        assert after_kill[series] >= value, series

    traffic.run(misses=2, hits=10, failures=1)
    traffic.check(daemon.scrape())

    # A reload that adds a zone replaces both workers; the totals stay.
    settings = dict(daemon.config)
    settings["zones"] = {"tlsrpt": {"tlsrpt": True, "timeout": 1}}
    daemon.config_path.write_text(yaml.safe_dump(settings))
    os.kill(daemon.pid, signal.SIGHUP)
    after_reload = daemon.wait_until(
        lambda m: (
            m['mtasts_reloads_total{result="applied"}'] == 1
            and m['mtasts_workers{state="answering"}'] == 2
        ),
        "the reload",
    )
    traffic.check(after_reload)
    assert after_reload["mtasts_worker_starts_total"] == 5
    assert after_reload["mtasts_worker_crashes_total"] == 1
    assert after_reload["mtasts_config_last_reload_successful"] == 1

    tlsrpt = Traffic(world, daemon)
    tlsrpt.run(misses=1, hits=5, failures=1, zone="tlsrpt")
    final = daemon.scrape()
    assert lookups(final, "tlsrpt") == dict(tlsrpt.lookups)
    assert lookups(final, "default_zone") == dict(traffic.lookups)
    total_fetches = traffic.fetches + tlsrpt.fetches
    for result in cat.FETCH_RESULTS:
        assert final[f'mtasts_fetches_total{{result="{result}"}}'] == total_fetches[result]
    assert final["mtasts_connections_accepted_total"] == tlsrpt.connections


def test_promtool_accepts_the_live_exposition(
    world: World, started: Callable[..., MetricsDaemon]
) -> None:
    promtool()  # before starting a daemon for nothing
    daemon = started(workers=2)
    Traffic(world, daemon).run(misses=1, hits=3, failures=0)
    text = daemon.exposition()
    check_exposition(text)
    for metric in cat.ALL:
        assert f"# TYPE {metric.name} {metric.kind}" in text


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_sums(
    world: World, started: Callable[..., MetricsDaemon], tmp_path: Path
) -> None:
    daemon = started(workers=2, default_zone={"timeout": 1})
    try:
        prometheus = PrometheusServer(
            str(tmp_path / "prometheus"), f"127.0.0.1:{daemon.metrics_port}"
        )
        prometheus.start()
    except PrometheusUnavailable as exc:
        _missing(str(exc))
    try:
        prometheus.wait_for(
            lambda: prometheus.value('up{job="mtasts"}') == 1, what="a first scrape"
        )
        traffic = Traffic(world, daemon)
        traffic.run(misses=4, hits=40, failures=1)
        expected_by_outcome: collections.Counter[str] = collections.Counter()
        for (outcome, _), count in traffic.lookups.items():
            expected_by_outcome[outcome] += count
        query = "sum by (outcome) (mtasts_lookups_total)"
        prometheus.wait_for(
            lambda: (
                {k: v for k, v in prometheus.by_label(query, "outcome").items() if v}
                == dict(expected_by_outcome)
            ),
            what="the scraped lookups",
        )
        by_result = prometheus.by_label("sum by (result) (mtasts_fetches_total)", "result")
        assert {k: v for k, v in by_result.items() if v} == dict(traffic.fetches)
        hits = prometheus.value('sum(mtasts_lookups_total{path=~"memo|cache"})')
        assert hits == 40
        # Both workers counted (the sum is over them), and the rate is the
        # traffic's: 40 + ... lookups within the last minute.
        rate = prometheus.value("sum(rate(mtasts_lookups_total[1m]))")
        assert rate is not None
        assert rate > 0
        increase = prometheus.value("sum(increase(mtasts_lookups_total[1m]))")
        assert increase is not None
        assert increase >= sum(traffic.lookups.values()) * 0.5  # extrapolated, not exact
        ratio = prometheus.value(
            'sum(mtasts_lookups_total{path=~"memo|cache"}) / sum(mtasts_lookups_total)'
        )
        assert ratio == pytest.approx(40 / sum(traffic.lookups.values()))
        assert prometheus.value("mtasts_healthy") == 1
        assert prometheus.value('mtasts_workers{state="answering"}') == 2
        # Every query of contrib/grafana-dashboard.json runs and finds data.
        for expr in dashboard_queries():
            prometheus.query(expr)
        empty = [expr for expr in dashboard_queries() if not prometheus.query(expr)]
        assert not [e for e in empty if "dane" not in e and "proactive" not in e], empty
        quantile = prometheus.value(
            "histogram_quantile(0.5, sum by (le) (rate(mtasts_fetch_duration_seconds_bucket[1m])))"
        )
        assert quantile is not None
        assert 0 < quantile <= 10
    finally:
        prometheus.stop()


def test_healthz_follows_the_redis_backend(
    world: World, started: Callable[..., MetricsDaemon], tmp_path: Path
) -> None:
    try:
        redis = RedisServer(str(tmp_path / "redis"))
        redis.start()
    except RedisUnavailable as exc:
        _missing(str(exc))
    try:
        daemon = started(workers=2, cache={"type": "redis", "options": {"url": redis.url()}})
        status, body = daemon.get("/healthz")
        assert (status, body) == (
            200,
            "ok: 2 worker(s) answering, cache backend (redis) reachable\n",
        )
        redis.kill()
        deadline = time.monotonic() + 20
        while (status := daemon.get("/healthz")[0]) != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, body = daemon.get("/healthz")
        assert status == 503, body
        assert body.startswith("unavailable: cache backend (redis) unreachable: redis: ")
        m = daemon.scrape()
        assert m['mtasts_cache_backend_up{backend="redis"}'] == 0
        assert m["mtasts_healthy"] == 0
        # Lookups go on meanwhile (fetches, in-process fallback).
        assert daemon.lookup("good.loc") == GOOD
        redis.start()
        deadline = time.monotonic() + 20
        while daemon.get("/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.get("/healthz")[0] == 200
        m = daemon.scrape()
        assert m['mtasts_cache_backend_up{backend="redis"}'] == 1
        # One outage per worker, each found by its probe (or a lookup) and recovered.
        assert m['mtasts_cache_backend_outages_total{backend="redis"}'] == 2
        assert m['mtasts_cache_backend_errors_total{backend="redis"}'] >= 2
        assert "cache backend is back for reads" in daemon.log_text()
    finally:
        redis.stop()


def test_healthz_is_503_without_an_answering_worker(
    world: World, started: Callable[..., MetricsDaemon]
) -> None:
    daemon = started(workers=1)
    worker = daemon.worker_pid()
    os.kill(worker, signal.SIGSTOP)  # its event loop stops: no heartbeat
    try:
        deadline = time.monotonic() + 15
        while daemon.get("/healthz")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = daemon.get("/healthz")
        assert status == 503
        assert body == "unavailable: no worker is answering lookups (1 unresponsive)\n"
    finally:
        os.kill(worker, signal.SIGCONT)
    deadline = time.monotonic() + 15
    while daemon.get("/healthz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.get("/healthz")[0] == 200


def test_json_logs_parse_line_by_line(world: World, started: Callable[..., MetricsDaemon]) -> None:
    daemon = started(workers=2, log_format="json", default_zone={"timeout": 1})
    assert daemon.lookup("bad-policy4.loc") == NOTFOUND
    assert daemon.lookup("good.loc") == GOOD
    with daemon.connect() as sock:
        sock.sendall(b"3:abc;")  # a bad netstring
        sock.recv(100)
    supervisor = daemon.pid
    daemon.stop()
    lines = daemon.log_text().splitlines()
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert list(record)[:10] == [
            "timestamp",
            "level",
            "pid",
            "worker",
            "logger",
            "event",
            "domain",
            "result_type",
            "reason",
            "message",
        ]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
        assert record["level"] in ("debug", "info", "warning", "error", "critical")
    failed = [r for r in records if r["event"] == "fetch-failed"]
    assert len(failed) == 1
    assert failed[0]["domain"] == "bad-policy4.loc"
    assert failed[0]["result_type"] == "sts-policy-fetch-error"
    assert failed[0]["reason"]
    assert failed[0]["level"] == "warning"
    assert failed[0]["worker"] in (1, 2)
    assert failed[0]["pid"] != supervisor
    started_lines = [r for r in records if r["event"] == "worker-started"]
    assert len(started_lines) == 2
    assert all(r["worker"] is None and r["pid"] == supervisor for r in started_lines)
    assert [r for r in records if r["event"] == "bad-netstring"]


def test_a_reload_switches_the_log_format(
    world: World, started: Callable[..., MetricsDaemon]
) -> None:
    daemon = started(workers=1)
    settings = dict(daemon.config)
    settings["log_format"] = "json"
    daemon.config_path.write_text(yaml.safe_dump(settings))
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_until(
        lambda m: m['mtasts_reloads_total{result="applied"}'] == 1, "the reload", timeout=20
    )
    assert daemon.lookup("bad-policy1.loc") == NOTFOUND
    daemon.stop()
    lines = daemon.log_text().splitlines()
    text = [line for line in lines if not line.startswith("{")]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    # Text until the reload.
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]+ +\[\d+\] mtasts_fast", text[0])
    events = {record["event"] for record in records}
    # The new worker and the supervisor write JSON from then on.
    assert {"worker-started", "worker-answering", "fetch-failed"} <= events


def test_text_logs_stay_the_default(world: World, started: Callable[..., MetricsDaemon]) -> None:
    daemon = started(workers=1)
    daemon.stop()
    first = daemon.log_text().splitlines()[0]
    assert re.match(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|DEBUG|WARNING) +\[\d+\] mtasts_fast", first
    )


def _unix_get(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def test_metrics_on_a_unix_socket(world: World, tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    daemon = DaemonProcess(tmp_path, world, metrics={"path": str(path), "mode": 0o600})
    daemon.start()
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        deadline = time.monotonic() + 10
        while True:
            data = _unix_get(path, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            if data.startswith(b"HTTP/1.1 200 OK\r\n") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert data.endswith(b"reachable\n")
        assert b"mtasts_build_info{" in _unix_get(path, b"GET /metrics HTTP/1.0\r\n\r\n")
    finally:
        daemon.stop()
    assert not path.exists()


def test_no_metrics_listener_by_default(world: World, tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, world)
    daemon.start()
    try:
        assert daemon.ask(b"postfix good.loc") == GOOD
        assert "metrics on" not in daemon.log_text()
    finally:
        daemon.stop()


def test_a_metrics_port_in_use_stops_the_start(world: World, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        daemon = DaemonProcess(tmp_path, world, metrics={"port": port})
        with pytest.raises(AssertionError, match="daemon exited with 1"):
            daemon.start()
        assert f"metrics: cannot listen on 127.0.0.1:{port}" in daemon.log_text()
