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
     from outside its process, so each daemon is started by a launcher (this
     file, ``_launch-ours`` / ``_launch-peer``) that wraps the daemon's cache
     factory: the cache the daemon builds from its own configuration is
     filled, through the cache's own ``put``/``set`` method, right after the
     daemon calls its ``setup``, and the daemon's unmodified ``main`` runs.

   Both daemons get ``cache_grace`` of 10⁷ s and a dead DNS server: a UDP
   socket this script owns, which never answers and counts what it receives.
   Ours is pointed at it with ``nameservers``; the peer has no such setting,
   so its launcher passes the same address to ``aiodns.DNSResolver``. Any
   lookup that leaves the cache therefore shows up as a counted DNS query
   (and, since it cannot succeed, as a failed or late reply).
4. Starts each daemon pinned to core 0 (``taskset -c 0``) and runs loadgen on
   core 1: connections {1, 16, 128, 1024} × 3 repetitions, alternating which
   daemon goes first, over TCP and over a unix socket, for both pairings.
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
the cache seeding and the launchers from ``seeding.py``. This file, like
those two, imports only the standard library at module level, because the
peer's launcher runs under the peer's own venv.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import reporting
import runner
import seeding
from run_report import render_markdown, summarise
from runner import CACHE_GRACE, OUR_VENV, Server, log

# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


class Bench:
    def __init__(
        self, args: argparse.Namespace, tools: dict[str, Path], peer_python: Path, work: Path
    ) -> None:
        self.args = args
        self.tools = tools
        self.peer_python = peer_python
        self.work = work
        self.dns = runner.DnsSink()
        self.loadgen_tool = runner.Loadgen(tools["loadgen"], self.dns)
        self.runs: list[dict[str, Any]] = []
        self.rss: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.records = seeding.make_domains(args.domains)
        self.seed = work / "seed.jsonl"
        seeding.write_seed(self.seed, self.records)
        self.keys = work / "keys.txt"
        seeding.write_keys(self.keys, self.records)
        self.ref_reply = seeding.our_reply(self.records[0])

    # -- configuration -------------------------------------------------------------

    def _listen(self, name: str, transport: str) -> tuple[dict[str, Any], str]:
        if transport == "unix":
            path = self.work / f"{name}.sock"
            return {"path": str(path), "mode": 0o666}, f"unix:{path}"
        port = runner.free_port()
        return {"host": "127.0.0.1", "port": port}, f"127.0.0.1:{port}"

    def _lmdb_cache(self) -> dict[str, Any]:
        # One lmdb environment serves the TCP and the unix sections alike.
        return {
            "type": "lmdb",
            "options": {
                "path": str(self.work / "ours.lmdb") + "/",
                "max_entries": max(1_000_000, 2 * len(self.records)),
            },
        }

    def _internal_cache(self) -> dict[str, Any]:
        return {"type": "internal", "options": {"cache_size": max(10_000, 2 * len(self.records))}}

    def start_ours(self, pairing: str, transport: str) -> Server:
        listen, address = self._listen("ours", transport)
        config: dict[str, Any] = {
            **listen,
            "workers": 1,
            "cache_grace": CACHE_GRACE,
            "shutdown_timeout": 5,
            "nameservers": [self.dns.address],
            "default_zone": {"timeout": 4},
            "cache": self._lmdb_cache() if pairing == "persistent" else self._internal_cache(),
        }
        cfg = self.work / f"ours-{pairing}-{transport}.yml"
        runner.write_yaml(cfg, config)
        logfile = self.work / f"ours-{pairing}-{transport}.log"
        if pairing == "persistent":
            argv = [str(OUR_VENV / "bin" / "mta-sts-daemon"), "-c", str(cfg)]
        else:
            argv = [
                str(OUR_VENV / "bin" / "python"),
                str(Path(__file__).resolve()),
                "_launch-ours",
                *("--config", str(cfg), "--seed", str(self.seed)),
            ]
        return Server("mtasts-fast", argv, address, logfile)

    def start_peer(self, pairing: str, transport: str) -> Server:
        listen, address = self._listen("peer", transport)
        config: dict[str, Any] = {
            **listen,
            "cache_grace": CACHE_GRACE,
            "shutdown_timeout": 5,
            "default_zone": {"timeout": 4},
        }
        argv = [
            str(self.peer_python),
            str(Path(__file__).resolve()),
            *("_launch-peer", "--dns", self.dns.address),
        ]
        if pairing == "persistent":
            config["cache"] = {
                "type": "sqlite",
                "options": {"filename": str(self.work / "peer.sqlite")},
            }
        else:
            config["cache"] = self._internal_cache()
            argv += ["--seed", str(self.seed)]
        cfg = self.work / f"peer-{pairing}-{transport}.yml"
        runner.write_yaml(cfg, config)
        logfile = self.work / f"peer-{pairing}-{transport}.log"
        return Server("postfix-mta-sts-resolver", [*argv, "--config", str(cfg)], address, logfile)

    def start_ref(self, transport: str) -> Server:
        _, address = self._listen("ref", transport)
        argv = [str(self.tools["refserver"]), "-r", self.ref_reply, "-t", "3600", address]
        return Server("refserver", argv, address, self.work / f"ref-{transport}.log")

    def seed_persistent(self) -> str | None:
        """Seed lmdb and sqlite; return why the pairing is skipped, or None."""
        probe = subprocess.run(
            [str(OUR_VENV / "bin" / "python"), "-c", "import mtasts_fast.cache.lmdb"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            return f"our lmdb cache is not available yet ({last})"
        seed = self.work / "seed-now.jsonl"
        seeding.write_seed(seed, self.records, now=time.time())
        cfg = self.work / "ours-seed.yml"
        runner.write_yaml(cfg, {"workers": 1, "cache": self._lmdb_cache()})
        t0 = time.monotonic()
        done = subprocess.run(
            [str(OUR_VENV / "bin" / "mta-sts-cache"), "-c", str(cfg), "import", str(seed)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            return f"mta-sts-cache import into lmdb failed: {done.stderr.strip()[-500:]}"
        log(f"lmdb seeded with {len(self.records)} entries in {time.monotonic() - t0:.1f} s")
        seeding.seed_peer_sqlite(self.work / "peer.sqlite", self.records)
        return None

    # -- running -----------------------------------------------------------------------

    def loadgen(
        self, server: Server, window: runner.Window, label: str, set_match: bool
    ) -> dict[str, Any]:
        options = ["-e", self.ref_reply] if server.name == "refserver" else []
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

    def section(self, pairing: str, transport: str, with_ref: bool) -> None:
        a = self.args
        servers: dict[str, Server] = {}
        try:
            servers["ours"] = self.start_ours(pairing, transport)
            servers["peer"] = self.start_peer(pairing, transport)
            if with_ref:
                servers["ref"] = self.start_ref(transport)
            for s in servers.values():
                s.wait_ready()
            idle = {k: s.rss_kib() for k, s in servers.items()}
            for s in servers.values():
                self.verify(s)
            served = dict.fromkeys(servers, 0)
            for rep in range(a.reps):
                for conns in a.connections:
                    order = ["ours", "peer"] if rep % 2 == 0 else ["peer", "ours"]
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
                        "after_per_process_kib": after,
                        "lookups_measured": served[who],
                    }
                )
        finally:
            runner.stop_all(servers.values())

    def run(self) -> None:
        # refserver joins the rotation of one pairing: the in-memory one if it runs.
        ref_pairing = "memory" if "memory" in self.args.pairings else self.args.pairings[0]
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


def machine_meta(args: argparse.Namespace, peer_python: Path) -> dict[str, Any]:
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
    }


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _csv(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        items = [x for x in text.split(",") if x]
        for x in items:
            if x not in choices:
                raise argparse.ArgumentTypeError(f"{x!r} is not one of {', '.join(choices)}")
        return items

    return parse


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
        type=_csv(("persistent", "memory")),
        default=["persistent", "memory"],
        help="persistent (lmdb vs sqlite), memory (internal vs internal)",
    )
    p.add_argument("--transports", type=_csv(("tcp", "unix")), default=["tcp", "unix"])
    runner.add_run_options(
        p,
        reps="repetitions (default 3)",
        quick="1 repetition of 1 s (a smoke test; the numbers are noisier)",
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

    args = runner.parse_run_args(build_parser(), argv)
    if not 1 <= args.domains <= 10_000_000 or not 0 < args.duration <= 600 or args.reps < 1:
        print("run.py: --domains 1..10^7, --duration 0..600 s, --reps >= 1", file=sys.stderr)
        return 2
    if not runner.preflight("run.py"):
        return 2

    tools = runner.build_tools()
    peer_python = runner.ensure_peer(args.python)
    started = time.monotonic()
    with runner.workdir("mtasts-bench-", args.keep_workdir) as work:
        bench = Bench(args, tools, peer_python, work)
        bench.run()
    meta = machine_meta(args, peer_python)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    rows = summarise(bench.runs)
    data = {"meta": meta, "summary": rows, "rss": bench.rss, "notes": bench.notes}
    markdown = render_markdown(meta, rows, bench.rss, bench.notes)
    reporting.publish(markdown, {**data, "runs": bench.runs}, args, suffix="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
