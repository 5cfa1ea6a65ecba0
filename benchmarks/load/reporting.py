"""What the load benchmarks' reports share: medians, machine facts, Markdown tables, result files.

Used by ``run.py``, ``scaling.py`` and ``bursts/run.py`` (imported the way
``runner.py`` is). Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from runner import OUR_VENV, ROOT, log


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_stats(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and the req/s range) over repeated loadgen reports of one case."""
    rps = [r["rps"] for r in rs]
    return {
        "reps": len(rs),
        "rps": median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50_ms": median([r["latency_us"]["p50"] / 1000 for r in rs]),
        "p99_ms": median([r["latency_us"]["p99"] / 1000 for r in rs]),
        "p999_ms": median([r["latency_us"]["p999"] / 1000 for r in rs]),
        "cpu_us": median(
            [r["server_cpu_us_per_req"] for r in rs if r["server_cpu_us_per_req"] is not None]
        ),
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown_table(header: Sequence[str], align: str, rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines; ``align`` has one letter a column, ``l`` or ``r``."""

    def line(cells: Sequence[Any]) -> str:
        return "|" + "|".join(f" {c} " if c != "" else " " for c in cells) + "|"

    rule = "|" + "|".join("--:" if a == "r" else "---" for a in align) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


def machine_meta() -> dict[str, Any]:
    """Date, host, CPU, kernel, Python and the commit measured."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "host": socket.gethostname(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def machine_line(meta: dict[str, Any]) -> str:
    return (
        f"- Machine: {meta['cpu']} × {meta['cpus']} cores, Linux {meta['kernel']}, "
        f"Python {meta['python']}"
    )


def commit_text(meta: dict[str, Any]) -> str:
    return f"commit {meta['commit'][:12]}{', dirty tree' if meta['dirty'] else ''}"


def our_version() -> str:
    return subprocess.run(
        [
            str(OUR_VENV / "bin" / "python"),
            "-c",
            "import mtasts_fast; print(mtasts_fast.__version__)",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()


def command_line(script: str) -> str:
    return " ".join([script, *sys.argv[1:]])


def save(results_dir: Path, stem: str, markdown: str, data: dict[str, Any]) -> None:
    """``<stem>.md`` and ``.json`` in ``results_dir`` (``<stem>-2`` and so on if taken)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    base, n = results_dir / stem, 2
    while base.with_suffix(".md").exists():
        base, n = results_dir / f"{stem}-{n}", n + 1
    base.with_suffix(".md").write_text(markdown)
    base.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    path = base.with_suffix(".md")
    log(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} (and .json)")


def publish(markdown: str, data: dict[str, Any], args: argparse.Namespace, suffix: str) -> None:
    """Print the report; unless ``--no-save``, save it and ``data`` as
    ``<date>-<host><suffix>.md`` and ``.json`` in ``--results-dir``."""
    print(markdown)
    meta = data["meta"]
    if not args.no_save:
        stem = f"{dt.date.today().isoformat()}-{meta['host']}{suffix}"
        save(args.results_dir, stem, markdown, data)
    log(f"done in {meta['elapsed_s']:.0f} s")
