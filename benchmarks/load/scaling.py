#!/usr/bin/env python3
"""Scaling benchmark of mtasts-fast alone: cache size, RSS over lookups, workers.

``make bench-scaling`` runs this file. It measures the three issue-5 targets
that ``run.py`` (the side-by-side run against postfix-mta-sts-resolver) does
not, with the same tools: loadgen and the server helpers of ``runner.py``, the
domains of ``seeding.py``. Every lookup is a cache hit on an LMDB cache
seeded beforehand, with ``cache_grace`` of 10⁷ s and a DNS server that never
answers (any lookup that leaves the cache shows up as a counted DNS query).

1. **Cache size.** Two LMDB caches, seeded with 10³ and with 10⁶ domains
   (``put_many``, 1000 entries per commit), each served by its own daemon
   with one worker, both pinned to core 0, loadgen on core 1, 128
   connections over TCP. Three runs, alternated over repetitions:

   - 10³ cache, the hot set: its 1000 domains;
   - 10⁶ cache, the same hot set of 1000 domains (present in both caches):
     the target, req/s and CPU µs/lookup within 15 % of the 10³ cache;
   - 10⁶ cache, all 10⁶ domains in a shuffled order: no in-process memo
     (key normalisation: 65,536 keys; decoded entries: 10,000) can hold
     them, so every lookup normalises, decodes and renders again. Reported
     as the worst case, not as the target.

2. **RSS.** A fresh daemon (one worker, core 0) on the 10⁶ cache: VmRSS,
   RssAnon, RssFile of the worker and of the supervisor right after start,
   after ``--rss-lookups`` (10⁶) lookups over all 10⁶ domains, and after as
   many again. The target is no growth after the first pass (the warm-up).
   LMDB's map is a shared file mapping: the pages a worker has read count in
   its RSS as RssFile (page cache, shared with every process mapping the
   file, reclaimable); RssAnon is the process's own heap.

3. **Workers.** ``workers: 2`` against ``workers: 1`` on this 2-core machine.
   loadgen needs a core too, so raw throughput cannot show the gain; the
   comparison is on server CPU time per lookup (all workers summed, from
   /proc), in two layouts, each alternating the two daemons:

   - *one core*: the daemon pinned to core 0 (both workers of ``workers: 2``
     on the core one worker has), loadgen on core 1. Both cases saturate the
     core alike, so the difference is what a second worker costs: two
     processes on one core cost each other at least as much as on two.
     The target is judged on this layout.
   - *shared*: everything unpinned. The workers then share both cores with
     loadgen, wait for it and answer fewer lookups per wake-up than a
     saturated worker (the voluntary context switches per lookup show it),
     so the second worker looks dearer than it is; shown as a cross-check.

   How SO_REUSEPORT spread the 128 connections over the two workers is read
   from their file descriptors and /proc/net/tcp, and the CPU time each
   worker used from /proc/<pid>/stat. Projection for two free cores:

       projected = 2 × (CPU/lookup, 1 worker) ÷ (CPU/lookup, 2 workers) × balance
       balance   = 0.5 ÷ (largest share of the connections one worker holds)

   The balance factor assumes every connection brings the same lookup rate
   (Postfix's smtp(8) processes each hold one): the worker with the larger
   share saturates its core first. The share of CPU time each worker got is
   printed too, but it is set by the scheduler, not by the daemon.

Prints a Markdown table and saves it, with every raw loadgen report, as
``benchmarks/results/<date>-<host>-scaling.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import reporting
import runner
import seeding
from runner import OUR_VENV, SERVER_CORE, Server, log
from scaling_report import MIB, WORKER_LAYOUTS, render

SHUFFLE_SEED = 8461


# --------------------------------------------------------------------------------------
# The workers: who they are, how a run was spread over them, one lookup
# --------------------------------------------------------------------------------------


def ctx_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of the main thread (the event loop)."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.endswith("ctxt_switches"):
            found[name] = int(value)
    return found["voluntary_ctxt_switches"], found["nonvoluntary_ctxt_switches"]


def workers_of(supervisor: int, count: int, timeout: float = 30.0) -> list[int]:
    """The supervisor's worker processes (its children), once there are ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        kids = runner.children(supervisor)
        if len(kids) == count or time.monotonic() > deadline:
            if len(kids) != count:
                raise RuntimeError(f"supervisor {supervisor} has workers {kids}, not {count}")
            return kids
        time.sleep(0.05)


def established_per_process(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on local ``port`` held by each of ``pids``."""
    owner: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owner[int(link[8:-1])] = pid
    # By inode: /proc/net/tcp is read in pieces while connections are being
    # opened, so one socket can be listed twice.
    seen: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                f = line.split()
                # f[1] local address:port (hex), f[3] state (01 = ESTABLISHED), f[9] inode
                if f[3] == "01" and int(f[1].rpartition(":")[2], 16) == port:
                    inode = int(f[9])
                    if inode in owner:
                        seen[inode] = owner[inode]
    counts = dict.fromkeys(pids, 0)
    for holder in seen.values():
        counts[holder] += 1
    return counts


def ask(address: str, key: str, timeout: float = 30.0) -> bytes:
    """One lookup over TCP, retried until ``timeout``: a supervisor's port
    accepts before its worker answers."""
    host, _, port = address.rpartition(":")
    request = runner.frame(f"{runner.MAP_NAME} {key}".encode())
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(request)
                reply = b""
                while not reply.endswith(b","):
                    chunk = s.recv(4096)
                    if not chunk:
                        raise OSError("closed")
                    reply += chunk
                return reply
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class WorkerSpread:
    """How the connections and the CPU time of one loadgen run were spread over
    the workers, and their context switches per lookup."""

    def __init__(self, workers: list[int], port: int, conns: int) -> None:
        self.workers, self.port, self.conns = workers, port, conns
        self.spread: dict[int, int] = {}
        self.ticks: dict[int, int] = {}
        self.switches: dict[int, tuple[int, int]] = {}
        self.sampled = 0.0

    def start(self, loadgen: subprocess.Popen[str]) -> None:
        # Sample once every connection is open (they stay open to the end).
        deadline = time.monotonic() + 30
        while loadgen.poll() is None and time.monotonic() < deadline:
            self.spread = established_per_process(self.workers, self.port)
            if sum(self.spread.values()) >= self.conns:
                break
            time.sleep(0.01)
        self.ticks = {w: runner.cpu_ticks(w) for w in self.workers}
        self.switches = {w: ctx_switches(w) for w in self.workers}
        self.sampled = time.monotonic()

    def finish(self, report: dict[str, Any]) -> None:
        workers = self.workers
        used = {w: runner.cpu_ticks(w) - self.ticks[w] for w in workers}
        # Lookups over the sampled span (it includes the warm-up), at the window's rate.
        lookups = report["rps"] * (time.monotonic() - self.sampled) or 1.0
        vol = sum(ctx_switches(w)[0] - self.switches[w][0] for w in workers)
        invol = sum(ctx_switches(w)[1] - self.switches[w][1] for w in workers)
        report["switches_per_1000"] = [
            round(1000 * vol / lookups, 1),
            round(1000 * invol / lookups, 1),
        ]
        total = sum(used.values()) or 1
        report["connections_per_worker"] = [self.spread.get(w, 0) for w in workers]
        report["cpu_share_per_worker"] = [round(used[w] / total, 3) for w in workers]


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


class Scaling:
    def __init__(self, args: argparse.Namespace, tools: dict[str, Path], work: Path) -> None:
        self.args = args
        self.tools = tools
        self.work = work
        self.dns = runner.DnsStub()
        self.loadgen_tool = runner.Loadgen(tools["loadgen"], self.dns)
        self.runs: list[dict[str, Any]] = []
        self.seeding: dict[str, dict[str, Any]] = {}
        self.rss: list[dict[str, Any]] = []
        self.loadavg: dict[str, list[str]] = {}
        self.hot_keys = work / "keys-hot.txt"
        self.spread_keys = work / "keys-all.txt"
        self.spread_rps: float | None = None
        self.spread_lines: list[str] = []

    # -- set-up -----------------------------------------------------------------------

    def write_keys(self) -> None:
        a = self.args
        seeding.write_keys(self.hot_keys, seeding.make_domains(a.hot))
        if not {"size", "rss"} & set(a.parts):
            return
        # Every domain of the large cache once, in a shuffled order: adjacent
        # lookups hit unrelated LMDB pages, as real next-hops do.
        t0 = time.monotonic()
        lines = [seeding.key_line(seeding.domain_record(i)) for i in range(a.big)]
        random.Random(SHUFFLE_SEED).shuffle(lines)
        self.spread_lines = lines
        with self.spread_keys.open("w") as fh:
            fh.writelines(lines)
        log(f"keys file of {a.big:,} shuffled domains written in {time.monotonic() - t0:.1f} s")

    def seed(self, name: str, count: int) -> Path:
        path = self.work / f"{name}.lmdb"
        t0 = time.monotonic()
        done = subprocess.run(
            [
                str(OUR_VENV / "bin" / "python"),
                str(Path(__file__).resolve()),
                *("_seed-lmdb", str(path) + "/", str(count)),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"seeding {path} failed: {done.stdout}{done.stderr[-2000:]}")
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        report["wall_s"] = round(time.monotonic() - t0, 2)
        self.seeding[name] = {"count": count, **report}
        log(
            f"{name} lmdb: {report['entries']:,} entries put in {report['seconds']:.1f} s "
            f"(put_many; {report['wall_s']:.1f} s with start-up), "
            f"data.mdb {report['file_mib']:.0f} MiB"
        )
        return path

    def start(self, name: str, lmdb_path: Path, workers: int, pinned: bool) -> Server:
        port = runner.free_port()
        config = {
            "host": "127.0.0.1",
            "port": port,
            "workers": workers,
            "cache_grace": runner.CACHE_GRACE,
            "shutdown_timeout": 5,
            "nameservers": [self.dns.address],
            "default_zone": {"timeout": 4},
            "cache": {
                "type": "lmdb",
                "options": {
                    "path": str(lmdb_path) + "/",
                    "max_entries": seeding.MAX_ENTRIES,
                    "map_size": seeding.MAP_SIZE,
                },
            },
        }
        cfg = self.work / f"{name}.yml"
        runner.write_yaml(cfg, config)
        return Server(
            name,
            [str(OUR_VENV / "bin" / "mta-sts-daemon"), "-c", str(cfg)],
            f"127.0.0.1:{port}",
            self.work / f"{name}.log",
            cores=SERVER_CORE if pinned else None,
        )

    def ready(self, server: Server, workers: int) -> list[int]:
        """Wait until the server answers a lookup; return its workers' pids."""
        server.wait_ready()
        reply = ask(server.address, "d0000000.bench.test")
        if b"OK secure" not in reply:
            raise RuntimeError(f"{server.name}: unexpected reply {reply!r}")
        return workers_of(server.pid, workers)

    # -- running -----------------------------------------------------------------------

    def loadgen(
        self,
        server: Server,
        keys: Path,
        window: runner.Window,
        label: str,
        workers: list[int] | None = None,
    ) -> dict[str, Any]:
        """One loadgen run. With ``workers``, also how the connections and the CPU
        time were spread over those processes."""
        spread = WorkerSpread(workers, server.port or 0, window.conns) if workers else None
        watch = spread.start if spread else None
        report = self.loadgen_tool.run(server, keys, window, label, watch=watch)
        report["loadavg"] = runner.loadavg()
        per_core = runner.other_load_per_core(report)
        if server.pinned and per_core:
            report["other_load"] = max(per_core)
        else:
            # Unpinned: everything on the machine but the server and loadgen.
            busy = sum(report.get("core_busy") or [])
            util, client = report["server_cpu_util"], report["client_cpu_util"]
            report["other_load"] = round(max(0.0, busy - util - client), 3)
        if spread:
            spread.finish(report)
        return report

    def measure(
        self, server: Server, keys: Path, label: str, workers: list[int] | None = None
    ) -> dict[str, Any]:
        """A loadgen run, repeated (``--retries``) while other processes used more
        than ``--max-other-load`` of a core; the least disturbed attempt is kept."""
        a = self.args
        window = runner.Window(a.connections, a.duration, a.warmup)
        best = runner.least_disturbed(
            lambda: self.loadgen(server, keys, window, label, workers),
            lambda report: float(report["other_load"]),
            label,
            a.max_other_load,
            a.retries,
        )
        if best["errors"] or best["lost"] or best["dns_queries"]:
            raise RuntimeError(f"{label}: not every lookup was a right cached answer: {best}")
        extra = ""
        if workers:
            extra = (
                f"  conns/worker {best['connections_per_worker']}"
                f"  cpu share {best['cpu_share_per_worker']}"
                f"  switches/1000 {best['switches_per_1000']}"
            )
        log(
            f"{label:<28} {best['rps']:>9.0f} req/s  "
            f"cpu {best['server_cpu_us_per_req']:6.2f} us/lookup  "
            f"p99 {best['latency_us']['p99'] / 1000:6.2f} ms  "
            f"other load {best['other_load']:.0%}  load avg {best['loadavg']}" + extra
        )
        return best

    def verify(self, server: Server, keys: Path) -> None:
        report = self.loadgen(server, keys, runner.VERIFY, f"verify {server.name}")
        if report["errors"] or report["lost"] or report["dns_queries"]:
            raise RuntimeError(f"{server.name} does not answer from its cache: {report}")

    # -- the three parts ----------------------------------------------------------------

    def part_size(self, small: Path, big: Path) -> None:
        a = self.args
        log(f"== cache size: {a.small:,} vs {a.big:,} domains ==")
        self.loadavg["size"] = [runner.loadavg()]
        servers: dict[str, Server] = {}
        try:
            servers["small"] = self.start("size-small", small, 1, pinned=True)
            servers["big"] = self.start("size-big", big, 1, pinned=True)
            for s in servers.values():
                self.ready(s, 1)
            self.verify(servers["small"], self.hot_keys)
            self.verify(servers["big"], self.spread_keys)
            cases = [
                ("small", "hot", self.hot_keys),
                ("big", "hot", self.hot_keys),
                ("big", "all", self.spread_keys),
            ]
            for rep in range(a.reps):
                for size, keyset, keys in cases if rep % 2 == 0 else cases[::-1]:
                    label = f"size/{size}/{keyset}/r{rep + 1}"
                    report = self.measure(servers[size], keys, label)
                    report.update(part="size", size=size, keys_set=keyset, rep=rep + 1)
                    self.runs.append(report)
        finally:
            runner.stop_all(servers.values())
        self.loadavg["size"].append(runner.loadavg())
        spread = [r["rps"] for r in self.runs if r.get("keys_set") == "all"]
        self.spread_rps = reporting.median(spread) if spread else None

    def part_rss(self, big: Path) -> None:
        a = self.args
        log(f"== RSS: one worker, {a.big:,} cached domains, {a.rss_lookups:,} lookups twice ==")
        self.loadavg["rss"] = [runner.loadavg()]
        server = self.start("rss", big, 1, pinned=True)
        try:
            (worker,) = self.ready(server, 1)
            time.sleep(1.0)  # let start-up settle (imports done, first reply sent)
            self._rss_sample("idle, just started (1 lookup answered)", server.pid, worker, 0)
            total = 0
            rate = self.spread_rps or 20_000.0
            rotated = self.work / "keys-rotated.txt"
            for n in (1, 2):
                done = runs = 0
                while done < a.rss_lookups:
                    runs += 1
                    # loadgen starts at the first key of its file: each run gets
                    # the keys rotated to where the previous run stopped, so a
                    # pass of 10⁶ lookups visits every domain once, in chunks
                    # short enough not to overshoot by much.
                    offset = total % len(self.spread_lines)
                    with rotated.open("w") as fh:
                        fh.writelines(self.spread_lines[offset:])
                        fh.writelines(self.spread_lines[:offset])
                    duration = min(20.0, max(1.0, (a.rss_lookups - done) / rate))
                    window = runner.Window(a.connections, round(duration, 1), 0.2)
                    report = self.loadgen(server, rotated, window, f"rss/pass{n}")
                    if report["errors"] or report["lost"] or report["dns_queries"]:
                        raise RuntimeError(f"RSS pass {n}: bad replies: {report}")
                    report.update(part="rss", rep=n, key_offset=offset)
                    self.runs.append(report)
                    done += report["requests"]
                    total += report["requests"]
                    rate = max(1000.0, report["rps"])
                    log(
                        f"rss pass {n}: {report['requests']:,} lookups in "
                        f"{report['duration_s']:.1f} s ({report['rps']:.0f}/s) from key "
                        f"{offset:,}, {done:,} in this pass; load avg {report['loadavg']}"
                    )
                self._rss_sample(
                    f"after pass {n} ({runs} loadgen run{'s' if runs > 1 else ''})",
                    server.pid,
                    worker,
                    total,
                )
        finally:
            server.stop()
        self.loadavg["rss"].append(runner.loadavg())

    def _rss_sample(self, when: str, supervisor: int, worker: int, lookups: int) -> None:
        w, s = runner.memory_kib(worker), runner.memory_kib(supervisor)
        self.rss.append({"when": when, "lookups": lookups, "worker": w, "supervisor": s})
        log(
            f"RSS {when}: worker VmRSS {w['VmRSS'] / MIB:.1f} MiB "
            f"(anon {w['RssAnon'] / MIB:.1f}, file {w['RssFile'] / MIB:.1f}), "
            f"supervisor {s['VmRSS'] / MIB:.1f} MiB"
        )

    def part_workers(self, small: Path) -> None:
        """``workers`` 1 vs 2 in two layouts (see WORKER_LAYOUTS)."""
        a = self.args
        self.loadavg["workers"] = [runner.loadavg()]
        for layout, pinned in (("one core", True), ("shared", False)):
            log(f"== workers: 1 vs 2, layout {layout!r}: {WORKER_LAYOUTS[layout]} ==")
            servers: dict[int, Server] = {}
            pids: dict[int, list[int]] = {}
            try:
                for n in (1, 2):
                    servers[n] = self.start(f"workers-{n}-{pinned}", small, n, pinned=pinned)
                for n, s in servers.items():
                    pids[n] = self.ready(s, n)
                    self.verify(s, self.hot_keys)
                for rep in range(a.worker_reps):
                    for n in (1, 2) if rep % 2 == 0 else (2, 1):
                        label = f"workers/{'core0' if pinned else 'shared'}/{n}/r{rep + 1}"
                        report = self.measure(servers[n], self.hot_keys, label, pids[n])
                        report.update(part="workers", layout=layout, workers=n, rep=rep + 1)
                        self.runs.append(report)
            finally:
                runner.stop_all(servers.values())
        self.loadavg["workers"].append(runner.loadavg())

    def run(self) -> None:
        a = self.args
        self.write_keys()
        small = self.seed("small", a.small)
        big = self.seed("big", a.big) if {"size", "rss"} & set(a.parts) else small
        if "size" in a.parts:
            self.part_size(small, big)
        if "rss" in a.parts:
            self.part_rss(big)
        if "workers" in a.parts:
            self.part_workers(small)


def machine_meta() -> dict[str, Any]:
    return {
        **reporting.machine_meta(),
        "version": reporting.our_version(),
        "command": reporting.command_line("benchmarks/load/scaling.py"),
    }


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaling.py", description=(__doc__ or "").partition("\n")[0])
    p.add_argument("--small", type=int, default=1000, help="domains in the small cache")
    p.add_argument("--big", type=int, default=1_000_000, help="domains in the large cache")
    p.add_argument("--hot", type=int, default=1000, help="hot set, looked up in both caches")
    p.add_argument(
        "--rss-lookups", type=int, default=1_000_000, help="lookups per RSS pass (default 10⁶)"
    )
    p.add_argument("--connections", type=int, default=128)
    p.add_argument(
        "--worker-reps",
        type=int,
        default=9,
        help="repetitions of the workers part (default 9: its runs are short, and a "
        "10 %% difference in CPU per lookup needs more than 3 on a busy machine)",
    )
    p.add_argument(
        "--parts",
        type=lambda t: [x for x in t.split(",") if x],
        default=["size", "rss", "workers"],
        help="comma-separated subset of size,rss,workers",
    )
    runner.add_run_options(
        p,
        reps="repetitions (cache size part)",
        quick="smoke test: 2·10⁴ domains, 10⁵ lookups per RSS pass, 1 repetition of 1 s",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_seed-lmdb":
        return seeding.seed_lmdb(argv[1], int(argv[2]))
    args = runner.parse_run_args(build_parser(), argv)
    if args.quick:
        args.big, args.rss_lookups, args.worker_reps = 20_000, 100_000, 1
    bad = [x for x in args.parts if x not in ("size", "rss", "workers")]
    if bad or not 1 <= args.hot <= args.small <= args.big or min(args.reps, args.worker_reps) < 1:
        print("scaling.py: --parts size,rss,workers; --hot <= --small <= --big", file=sys.stderr)
        return 2
    if not runner.preflight("scaling.py"):
        return 2
    tools = runner.build_tools()
    started = time.monotonic()
    with runner.workdir("mtasts-scaling-", args.keep_workdir) as work:
        bench = Scaling(args, tools, work)
        bench.run()
    meta = machine_meta()
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    markdown, targets = render(meta, bench)
    data = {
        "meta": meta,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seeding": bench.seeding,
        "loadavg": bench.loadavg,
        "rss": bench.rss,
        "targets": targets,
        "runs": bench.runs,
    }
    reporting.publish(markdown, data, args, suffix="-scaling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
