#!/usr/bin/env python3
"""Side-by-side socketmap load benchmark: mtasts-fast against postfix-mta-sts-resolver.

``make bench-load`` runs this file. What it does, in order:

1. Builds ``loadgen`` and ``refserver`` (``cc -O2``) into ``benchmarks/.build/``
   if they are missing or older than their sources.
2. Installs postfix-mta-sts-resolver 1.5.1 (with its ``sqlite`` extra and
   uvloop) into its own venv, ``benchmarks/.peer/``, if it is not there.
3. Generates N domains, each with the same ``enforce`` policy shape, and
   seeds both daemons' caches with them (no network is involved):

   - persistent pairing: our ``lmdb`` cache through ``mta-sts-cache import``;
     the peer's ``sqlite`` cache by writing its table ``sts_policy_cache``
     directly (its own schema, ``ts`` = now, so every entry is fresh);
   - in-memory pairing: neither daemon's ``internal`` cache can be reached
     from outside its process, so each daemon is started by a launcher
     (``launch.py _launch-ours`` / ``_launch-peer``, which this file also
     accepts, but with all its imports) that wraps the daemon's cache
     factory: the cache the daemon builds from its own configuration is
     filled, through the cache's own ``put``/``set`` method, right after the
     daemon calls its ``setup``, and the daemon's unmodified ``main`` runs.

   Both daemons get ``cache_grace`` of 10⁷ s and the DNS stub of
   ``dnsstub.py``: a UDP server this script runs, which counts what it
   receives and answers one question only, the DNSSEC probe's (SOA of the
   root, with the AD bit). Ours is pointed at it with ``nameservers``, so its
   DANE detection is active (``dane: precedence``, the default), and every
   domain's DANE state is seeded as ``none`` next to its policy, so a cached
   lookup reads it and never waits for an evaluation (``daemons.py``: ours
   also has a ``metrics`` listener, the default configuration of issue 17).
   The peer has no such setting, so its launcher passes the same address to
   ``aiodns.DNSResolver``. Any lookup that leaves the cache therefore shows up
   as a counted DNS query (and, since it cannot succeed, as a failed or late
   reply).
4. Starts each daemon pinned to core 0 (``taskset -c 0``) and runs loadgen on
   core 1: connections {1, 16, 128, 1024} × 3 repetitions, alternating which
   daemon goes first, over TCP and over a unix socket, for both pairings.
   Each ``--variant`` (``variants.py``: ours with configuration overrides,
   or ours from another source tree) runs in the same rotation.
   ``refserver`` (a trivial C server with a fixed reply of the same size)
   runs in the same rotation in the in-memory pairing: loadgen's own ceiling.
   Each run opens its connections first (in batches, one request each), then
   warms up, then measures; a run during which other processes used more
   than ``--max-other-load`` of core 0 or 1 is repeated (``--retries``).
5. Prints a table and saves it, with every raw loadgen report, as
   ``benchmarks/results/<date>-<host>.md`` and ``.json``.

Server CPU time per lookup comes from ``/proc/<pid>/stat`` (utime + stime of
the daemon and its children) over the measured window, read by loadgen at the
window's edges. On loopback the kernel's TCP cost per request is about the
same for client and server, so throughput alone can hide a server's cost.

Processes, /proc accounting and loadgen runs come from ``runner.py`` (shared
with ``scaling.py``, ``soak/soak.py`` and ``bursts/run.py``); the domains,
the cache seeding and the launchers from ``seeding.py``; each server's
configuration and start-up checks from ``daemons.py``. This file, like
those two, imports only the standard library at module level, because the
peer's launcher runs under the peer's own venv.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import dnsstub
import reporting
import runner
import seeding
import variants
from daemons import Daemons
from run_report import render_markdown, summarise
from runner import Server, log
from variants import Variant

# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


class Bench:
    def __init__(
        self, args: argparse.Namespace, tools: dict[str, Path], peer_python: Path, work: Path
    ) -> None:
        self.args = args
        # Answers the DNSSEC probe (DANE detection active), counts and drops the rest.
        self.dns = runner.DnsStub(dnsstub.probe_only())
        self.loadgen_tool = runner.Loadgen(tools["loadgen"], self.dns)
        self.runs: list[dict[str, Any]] = []
        self.rss: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.records = seeding.make_domains(args.domains)
        self.daemons = Daemons(work, tools, peer_python, self.dns, self.records)
        self.keys = work / "keys.txt"
        seeding.write_keys(self.keys, self.records)
        # Ours first, then each --variant: everything that runs our code.
        self.ours: dict[str, Variant] = {"ours": Variant("ours")}
        for v in args.variant:
            self.ours[v.name] = variants.prepare(v)

    # -- running -----------------------------------------------------------------------

    def loadgen(
        self, server: Server, window: runner.Window, label: str, set_match: bool
    ) -> dict[str, Any]:
        options = ["-e", self.daemons.ref_reply] if server.name == "refserver" else []
        if set_match:
            options.append("-s")
        report = self.loadgen_tool.run(server, self.keys, window, label, options)
        other_load = runner.other_load_per_core(report)
        if other_load is not None:
            report["other_load"] = other_load
        return report

    def measure(self, server: Server, conns: int, label: str, set_match: bool) -> dict[str, Any]:
        """One loadgen run; repeated (at most ``--retries`` times) while other
        processes used more than ``--max-other-load`` of either core, keeping
        the least disturbed attempt."""
        a = self.args
        window = runner.Window(conns, a.duration, a.warmup)
        return runner.least_disturbed(
            lambda: self.loadgen(server, window, label, set_match),
            lambda report: max(report.get("other_load", [0.0, 0.0])),
            label,
            a.max_other_load,
            a.retries,
        )

    def verify(self, server: Server) -> None:
        """A short pass over the keys: every reply must be right and no DNS query sent."""
        peer = server.name == "postfix-mta-sts-resolver"
        report = self.loadgen(server, runner.VERIFY, f"verify {server.name}", peer)
        if report["errors"] or report["lost"] or report["dns_queries"]:
            raise RuntimeError(
                f"{server.name} does not answer every key from its cache: "
                f"{json.dumps(report)}\nlog: {server.logfile}"
            )

    def start(self, pairing: str, transport: str, with_ref: bool) -> dict[str, Server]:
        servers: dict[str, Server] = {}
        try:
            for name, variant in self.ours.items():
                servers[name], self.ours[name] = self.daemons.start_ours(
                    variant, pairing, transport
                )
            servers["peer"] = self.daemons.start_peer(pairing, transport)
            if with_ref:
                servers["ref"] = self.daemons.start_ref(transport)
            for s in servers.values():
                s.wait_ready()
            for name, variant in self.ours.items():
                self.daemons.check_ours(servers[name], variant, pairing, transport)
        except BaseException:
            runner.stop_all(servers.values())
            raise
        return servers

    def section(self, pairing: str, transport: str, with_ref: bool) -> None:
        a = self.args
        servers = self.start(pairing, transport, with_ref)
        try:
            idle = {k: s.rss_kib() for k, s in servers.items()}
            for s in servers.values():
                self.verify(s)
            served = dict.fromkeys(servers, 0)
            warm: dict[str, list[int]] = {}
            # Ours, its variants and the peer take turns, starting one later each repetition.
            turns = [*self.ours, "peer"]
            for rep in range(a.reps):
                for conns in a.connections:
                    shift = rep % len(turns)
                    order = turns[shift:] + turns[:shift]
                    if with_ref:
                        order.insert(0, "ref")
                    for who in order:
                        label = f"{pairing}/{transport}/{who}/c{conns}/r{rep + 1}"
                        report = self.measure(servers[who], conns, label, who == "peer")
                        report.update(pairing=pairing, transport=transport, daemon=who, rep=rep + 1)
                        self.runs.append(report)
                        served[who] += report["requests"]
                        other = report.get("other_load", [0.0, 0.0])
                        log(
                            f"{label:<32} {report['rps']:>9.0f} req/s  "
                            f"p99 {report['latency_us']['p99'] / 1000:7.2f} ms  "
                            f"cpu {report['server_cpu_us_per_req'] or 0:6.2f} us/lookup  "
                            f"errors {report['errors']} lost {report['lost']} "
                            f"dns {report['dns_queries']}  "
                            f"other load {other[0]:.0%}/{other[1]:.0%}"
                            + (f" (attempt {report['attempt']})" if report["attempt"] > 1 else "")
                        )
                if rep == 0:
                    # Warmed up: every connection count has run once.
                    warm = {k: s.rss_kib() for k, s in servers.items()}
            for who, s in servers.items():
                if who == "ref":
                    continue
                after = s.rss_kib()
                self.rss.append(
                    {
                        "pairing": pairing,
                        "transport": transport,
                        "daemon": who,
                        "idle_kib": sum(idle[who]),
                        "after_kib": sum(after),
                        "idle_per_process_kib": idle[who],
                        "warm_per_process_kib": warm.get(who, []),
                        "after_per_process_kib": after,
                        "lookups_measured": served[who],
                    }
                )
        finally:
            runner.stop_all(servers.values())

    def seed_persistent(self) -> str | None:
        """Seed every lmdb of ours and the peer's sqlite; why the pairing is skipped, or None."""
        for variant in self.ours.values():
            why = self.daemons.seed_persistent(variant)
            if why:
                return why
        shown = self.daemons.show(self.ours["ours"], self.records[0]["domain"])
        self.notes.append(
            "`mta-sts-cache show` of a seeded domain in our lmdb before the runs: "
            + "; ".join(" ".join(line.split()) for line in shown.splitlines() if "DANE" in line)
        )
        self.daemons.seed_peer()
        return None

    def run(self) -> None:
        # refserver joins the rotation of one pairing: the in-memory one if it runs.
        ref_pairing = "memory" if "memory" in self.args.pairings else self.args.pairings[0]
        try:
            for pairing in self.args.pairings:
                if pairing == "persistent":
                    why = self.seed_persistent()
                    if why:
                        note = f"persistent pairing (lmdb vs sqlite) skipped: {why}"
                        log(note)
                        self.notes.append(note)
                        continue
                for transport in self.args.transports:
                    log(f"== {pairing} caches over {transport} ==")
                    self.section(pairing, transport, with_ref=pairing == ref_pairing)
        finally:
            self.dns.close()


def machine_meta(args: argparse.Namespace, peer_python: Path, bench: Bench) -> dict[str, Any]:
    freeze = runner.pip_freeze(peer_python)
    uv = next((x.split("==")[1] for x in freeze if x.lower().startswith("uvloop==")), "?")
    return {
        **reporting.machine_meta(),
        "ours_version": reporting.our_version(),
        "peer_freeze": freeze,
        "peer_uvloop": uv,
        "domains": args.domains,
        "duration": args.duration,
        "warmup": args.warmup,
        "reps": args.reps,
        "connections": args.connections,
        "command": reporting.command_line("benchmarks/load/run.py"),
        "variants": [v.meta() for name, v in bench.ours.items() if name != "ours"],
        "checks": bench.daemons.checks,
        "dns_probes": {"received": bench.dns.probes, "answered": bench.dns.probes_answered},
    }


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description=(__doc__ or "").partition("\n")[0])
    p.add_argument("--domains", type=int, default=1000, help="cached domains (default 1000)")
    p.add_argument(
        "--connections",
        type=_csv_ints,
        default=[1, 16, 128, 1024],
        help="comma-separated connection counts (default 1,16,128,1024)",
    )
    p.add_argument(
        "--pairings",
        type=runner.csv_choices(("persistent", "memory")),
        default=["persistent", "memory"],
        help="persistent (lmdb vs sqlite), memory (internal vs internal)",
    )
    p.add_argument(
        "--transports", type=runner.csv_choices(("tcp", "unix")), default=["tcp", "unix"]
    )
    p.add_argument(
        "--variant",
        type=variants.argument,
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,... | NAME@TREE[:KEY=VALUE,...]",
        help="also measure ours with these config overrides and/or from another source tree "
        "(a directory or a commit, built under benchmarks/.trees/); repeatable; each adds "
        "as much time as ours takes (variants.py)",
    )
    runner.add_run_options(
        p,
        reps="repetitions (default 3)",
        quick="1 repetition of 1 s (a smoke test; the numbers are noisier)",
    )
    p.add_argument(
        "--label",
        default="",
        help="saved as <date>-<host>-<label>.md/.json (default: <date>-<host>.md)",
    )
    p.add_argument(
        "--python",
        default=shutil.which("python3") or sys.executable,
        help="interpreter for the peer's venv (default: python3)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_launch-ours", "_launch-peer"):
        return seeding.launch_main(argv[0], argv[1:])
    if argv and argv[0] == "_seed-dane":
        return seeding.seed_dane(argv[1:])

    args = runner.parse_run_args(build_parser(), argv)
    if not 1 <= args.domains <= 10_000_000 or not 0 < args.duration <= 600 or args.reps < 1:
        print("run.py: --domains 1..10^7, --duration 0..600 s, --reps >= 1", file=sys.stderr)
        return 2
    if len({v.name for v in args.variant}) < len(args.variant):
        print("run.py: two --variant with the same name", file=sys.stderr)
        return 2
    if not runner.preflight("run.py"):
        return 2

    tools = runner.build_tools()
    peer_python = runner.ensure_peer(args.python)
    started = time.monotonic()
    with runner.workdir("mtasts-bench-", args.keep_workdir) as work:
        bench = Bench(args, tools, peer_python, work)
        bench.run()
    meta = machine_meta(args, peer_python, bench)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    rows = summarise(bench.runs)
    data = {"meta": meta, "summary": rows, "rss": bench.rss, "notes": bench.notes}
    markdown = render_markdown(meta, rows, bench.rss, bench.notes)
    suffix = f"-{args.label}" if args.label else ""
    reporting.publish(markdown, {**data, "runs": bench.runs}, args, suffix=suffix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
