"""A throwaway Prometheus server on loopback, scraping one target every second.

Debian's ``prometheus`` package provides the binary (``/usr/bin/prometheus``)
and ``promtool``; the package's own service is never used::

    server = PrometheusServer(tmp_dir, target="127.0.0.1:9461")
    server.start()                      # PrometheusUnavailable if the binary is missing
    server.query('sum by (outcome) (mtasts_lookups_total)')   # the API's "result" list
    server.wait_for(lambda: server.value("up") == 1)
    server.stop()

Its configuration, data directory and log live in ``tmp_dir``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.servers.postfix import unavailable
from tests.servers.processes import stop_process
from tests.socketmap import free_port

__all__ = [
    "PrometheusServer",
    "PrometheusUnavailable",
    "check_exposition",
    "prometheus_binary",
    "promtool",
    "samples",
]

_START_TIMEOUT = 60.0


class PrometheusUnavailable(Exception):
    """prometheus is not installed, or would not start."""


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None
    )
    if path is None:
        raise PrometheusUnavailable("prometheus not found (Debian package: prometheus)")
    return path


def promtool() -> str:
    """The path of ``promtool``; without it the test skips (fails under MTASTS_REQUIRE_ALL=1)."""
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool is not installed (Debian package prometheus)")
    return path


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample line of a text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def check_exposition(text: str) -> None:
    """``promtool check metrics`` prints a lint finding and exits 1 on any: none is allowed."""
    result = subprocess.run(
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), text[:3000]


class PrometheusServer:
    """One Prometheus scraping ``target`` (``host:port``) at ``/metrics`` every second."""

    def __init__(self, directory: str, target: str, *, job: str = "mtasts") -> None:
        self.binary = prometheus_binary()
        self.directory = directory
        self.target = target
        self.job = job
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        os.makedirs(directory, exist_ok=True)

    @property
    def log_file(self) -> str:
        return os.path.join(self.directory, "prometheus.log")

    def start(self) -> None:
        config = os.path.join(self.directory, "prometheus.yml")
        with open(config, "w", encoding="utf-8") as out:
            out.write(
                "global:\n"
                "  scrape_interval: 1s\n"
                "  scrape_timeout: 1s\n"
                "  evaluation_interval: 1s\n"
                "scrape_configs:\n"
                f"  - job_name: {self.job}\n"
                "    static_configs:\n"
                f"      - targets: ['{self.target}']\n"
            )
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={os.path.join(self.directory, 'data')}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=info",
                ],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise PrometheusUnavailable(f"prometheus exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusUnavailable(f"prometheus did not get ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_tail(self) -> str:
        try:
            with open(self.log_file, "rb") as log:
                return log.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API: the ``data.result`` list."""
        url = self.url("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The value of a query that gives one sample (None when it gives none)."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) != 1:
            raise AssertionError(f"{promql!r} gave {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def by_label(self, promql: str, label: str) -> dict[str, float]:
        """``{label value: sample value}`` of a query that gives one series per value."""
        return {
            series["metric"].get(label, ""): float(series["value"][1])
            for series in self.query(promql)
        }

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "a condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: timed out waiting for {what}")
            time.sleep(0.25)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout=15)
