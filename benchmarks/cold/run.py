#!/usr/bin/env python3
"""The cold path: never-seen domains, mtasts-fast against postfix-mta-sts-resolver 1.5.1.

``make bench-cold`` runs this file (issue 17, item 3). What it does:

1. Starts the test servers (``servers.py``), each a process pinned to core 1:
   the policy hosts (HTTPS on 127.0.0.x:443, a certificate per host from a
   test CA) and the DNS stub (``dnsstub.ColdZone``: TXT, the policy host's A
   record, an insecure MX, the DNSSEC probe's secure SOA).
2. For each cache pairing (``persistent``: our lmdb vs its sqlite;
   ``memory``: internal vs internal) and each repetition, starts a fresh
   daemon of each (taking turns at going first) with an empty cache, pinned
   to core 0, and asks it for N domains it has never seen (``client.py``, in
   this process on core 1): 100 connections, each domain asked ``--asks``
   times in a row so that several connections ask for it at once.
3. Measures per run: new domains answered per second (N ÷ the time until
   the last reply), the daemon's CPU time (supervisor and worker, from
   /proc) per new domain, p50/p99 of each domain's first right answer after
   its first ask, the DNS queries by type and the HTTPS requests per domain
   (counted by the servers), the test servers' and the client's own CPU,
   and how busy each core was.
4. Prints the side-by-side table and saves it, with every run, as
   ``benchmarks/results/<date>-<host>-cold[-<label>].md`` and ``.json``.

Ours runs in the default configuration of issue 17 (``load/daemons.py``):
metrics listener on, ``dane: precedence`` with DANE detection active (the
stub validates the probe), so the first answer for a domain with an
``enforce`` policy also waits for its DANE evaluation (an MX query, insecure:
DANE does not apply). ``nameservers`` and ``ca_file`` point at the test
servers. The peer gets the DNS stub through its launcher (``load/run.py
_launch-peer``) and trusts the test CA through ``SSL_CERT_FILE``, as
``bursts/run.py`` does. Both keep their default zone timeout (4 s).

``--variant`` adds more of ours to each turn, as in ``load/run.py``
(``load/variants.py``): configuration overrides, or ours from another source
tree (``before@COMMIT``: a change against the code before it, same run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

COLD = Path(__file__).resolve().parent
sys.path.insert(0, str(COLD.parent / "load"))

import client  # noqa: E402
import daemons  # noqa: E402
import reporting  # noqa: E402
import runner  # noqa: E402
import variants  # noqa: E402
from report import render_markdown, summarise  # noqa: E402
from runner import OUR_VENV, Server, log  # noqa: E402
from variants import Variant  # noqa: E402

SUFFIX = "cold.test"
POLICY_ID = "cold1"
LOAD_RUN = COLD.parent / "load" / "run.py"


class Helper:
    """One test-server process: a JSON line when ready, then ``stats`` on request."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            ["taskset", "-c", runner.CLIENT_CORE, str(OUR_VENV / "bin" / "python"), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {name} test server did not start")
        self.ready: dict[str, Any] = json.loads(line)

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        data: dict[str, Any] = json.loads(self.proc.stdout.readline())
        data["cpu_ticks"] = runner.cpu_ticks(self.proc.pid)
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def tree_ticks(pid: int) -> int:
    """CPU ticks of ``pid`` and its descendants (our supervisor and its worker)."""
    tree, todo, total = runner.process_tree(), [pid], 0
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, []))
        with contextlib.suppress(OSError):  # gone meanwhile
            total += runner.cpu_ticks(p)
    return total


def core_ticks() -> list[tuple[int, int]]:
    """(busy, total) clock ticks of each core, from /proc/stat."""
    cores = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(x) for x in fields[:8]]
            idle = values[3] + values[4]
            cores.append((sum(values) - idle, sum(values)))
    return cores


class Cold:
    def __init__(self, args: argparse.Namespace, peer_python: Path, work: Path) -> None:
        self.args = args
        self.peer_python = peer_python
        self.work = work
        self.domains = [f"c{i:07d}.{SUFFIX}" for i in range(args.domains)]
        self.ca_file = work / "cold-ca.pem"
        self.runs: list[dict[str, Any]] = []
        self.hz = os.sysconf("SC_CLK_TCK")
        self.starts = 0  # numbers each daemon start: its cache files are its own
        self.ours: dict[str, Variant] = {"ours": Variant("ours")}
        for v in args.variant:
            self.ours[v.name] = variants.prepare(v)
        started = time.monotonic()
        servers = str(COLD / "servers.py")
        https = ["--domains", str(args.domains), "--suffix", SUFFIX, "--ca-out", str(self.ca_file)]
        self.https = Helper("https", [servers, "https", *https])
        dns = ["--https-ip", self.https.ready["ip"], "--suffix", SUFFIX, "--policy-id", POLICY_ID]
        self.dns = Helper("dns", [servers, "dns", *dns])
        log(
            f"test servers up in {time.monotonic() - started:.1f} s: policy hosts on "
            f"{self.https.ready['ip']}:443 ({args.domains} certificates), DNS on "
            f"{self.dns.ready['address']}"
        )

    def close(self) -> None:
        self.dns.stop()
        self.https.stop()

    def _listen(self, name: str) -> tuple[dict[str, Any], str]:
        if self.args.transport == "unix":
            path = self.work / f"{name}.sock"
            return {"path": str(path), "mode": 0o666}, f"unix:{path}"
        port = runner.free_port()
        return {"host": "127.0.0.1", "port": port}, f"127.0.0.1:{port}"

    def start_ours(self, name: str, pairing: str, tag: str) -> Server:
        """Start ours (``name == "ours"``) or the ``--variant`` of that name."""
        variant = self.ours[name]
        listen, address = self._listen(f"{name}-{tag}")
        cache: dict[str, Any] = {"type": "internal"}
        if pairing == "persistent":
            path = str(self.work / f"{name}-{tag}.lmdb") + "/"
            cache = {"type": "lmdb", "options": {"path": path}}
        config = {
            **listen,
            "workers": 1,
            "shutdown_timeout": 5,
            "nameservers": [self.dns.ready["address"]],
            "ca_file": str(self.ca_file),
            "metrics": {"host": "127.0.0.1", "port": runner.free_port()},
            "cache": cache,
        }
        cfg = self.work / f"{name}-{tag}.yml"
        variant = self.ours[name] = variants.fit_config(variant, config, cfg)
        argv = [str(variant.venv / "bin" / "mta-sts-daemon"), "-c", str(cfg)]
        label = "mtasts-fast" if name == "ours" else f"mtasts-fast ({name})"
        server = Server(label, argv, address, self.work / f"{name}-{tag}.log")
        try:
            server.wait_ready()
            if daemons.dane_expected(json.loads(cfg.read_text())):
                daemons.wait_dane_active(server, self.dns.ready["address"])
        except BaseException:
            server.stop()
            raise
        return server

    def start_peer(self, pairing: str, tag: str) -> Server:
        listen, address = self._listen(f"peer-{tag}")
        cache: dict[str, Any] = {"type": "internal"}
        if pairing == "persistent":
            cache = {"type": "sqlite", "options": {"filename": str(self.work / f"peer-{tag}.db")}}
        cfg = self.work / f"peer-{tag}.yml"
        runner.write_yaml(cfg, {**listen, "shutdown_timeout": 5, "cache": cache})
        argv = [str(self.peer_python), str(LOAD_RUN), "_launch-peer"]
        argv += ["--dns", self.dns.ready["address"], "--config", str(cfg)]
        # No ca_file setting: Python's default context honours SSL_CERT_FILE.
        env = {**runner.clean_env(), "SSL_CERT_FILE": str(self.ca_file)}
        server = Server(
            "postfix-mta-sts-resolver", argv, address, self.work / f"peer-{tag}.log", env=env
        )
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def one(self, who: str, pairing: str, rep: int) -> dict[str, Any]:
        a = self.args
        self.starts += 1
        # A new cache file for every start, a repeated run's too: never-seen domains.
        tag = f"{pairing}-{rep}-{self.starts}"
        if who == "peer":
            server = self.start_peer(pairing, tag)
        else:
            server = self.start_ours(who, pairing, tag)
        try:
            self.dns.stats(), self.https.stats()  # what came before the run: not counted
            dns0, https0 = (
                runner.cpu_ticks(self.dns.proc.pid),
                runner.cpu_ticks(self.https.proc.pid),
            )
            daemon0, cores0, wall0 = tree_ticks(server.pid), core_ticks(), time.monotonic()
            outcome = asyncio.run(client.look_up(server.address, self.domains, a.asks, a.conns))
            daemon1, cores1, wall1 = tree_ticks(server.pid), core_ticks(), time.monotonic()
            dns, https = self.dns.stats(), self.https.stats()
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} died during the run; see {server.logfile}")
        finally:
            server.stop()
        summary = outcome.summary()
        fetched = sum(https["gets_per_domain"].values())
        if fetched < summary["answered"]:
            raise RuntimeError(
                f"{who}: {summary['answered']} domains answered but only {fetched} fetched: "
                f"not a cold cache (see {server.logfile})"
            )
        # The /proc figures cover the client's connecting too: shares of that time.
        seconds = wall1 - wall0
        hz = self.hz
        busy = [(b1 - b0) / hz / seconds for (b0, _), (b1, _) in zip(cores0, cores1, strict=True)]
        cpu = {
            "daemon_s": (daemon1 - daemon0) / hz,
            "dns_s": (dns["cpu_ticks"] - dns0) / hz,
            "https_s": (https["cpu_ticks"] - https0) / hz,
            "client_s": summary["client_cpu_s"],
        }
        core0, core1 = int(runner.SERVER_CORE), int(runner.CLIENT_CORE)
        other = [
            max(0.0, busy[core0] - cpu["daemon_s"] / seconds),
            max(0.0, busy[core1] - (cpu["dns_s"] + cpu["https_s"] + cpu["client_s"]) / seconds),
        ]
        report = {
            "daemon": who,
            "pairing": pairing,
            "rep": rep,
            **summary,
            "cpu": cpu,
            "dns": {k: dns[k] for k in ("types", "txt_per_domain")},
            "https": {k: https[k] for k in ("connections", "gets", "statuses", "gets_per_domain")},
            "core_busy": [round(x, 3) for x in busy],
            "other_load": [round(x, 3) for x in other],
        }
        log(
            f"{pairing}/{who}/r{rep}: {summary['domains_per_s']:.0f} new domains/s, "
            f"cpu {cpu['daemon_s'] / a.domains * 1000:.2f} ms/domain, first answer p50 "
            f"{summary['first_ms']['p50']} p99 {summary['first_ms']['p99']} ms, "
            f"{summary['answered']}/{a.domains} answered, errors {summary['errors']}, "
            f"DNS {dns['types']}, GETs {https['gets']}, cores busy "
            + "/".join(f"{x:.0%}" for x in busy[:2])
        )
        return report

    def run(self) -> None:
        a = self.args
        for pairing in a.pairings:
            log(f"== {pairing} caches ==")
            turns = [*self.ours, "peer"]
            for rep in range(1, a.reps + 1):
                # Ours, its variants and the peer take turns, starting one later each time.
                shift = (rep - 1) % len(turns)
                for who in turns[shift:] + turns[:shift]:
                    # A run during which other processes used more than
                    # --max-other-load of a core is measured again (a fresh daemon).
                    report = runner.least_disturbed(
                        functools.partial(self.one, who, pairing, rep),
                        lambda report: max(report["other_load"]),
                        f"{pairing}/{who}/r{rep}",
                        a.max_other_load,
                        a.retries,
                    )
                    self.runs.append(report)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cold/run.py", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--domains", type=int, default=2000, help="new domains per run (default 2000)")
    p.add_argument("--conns", type=int, default=100, help="client connections (default 100)")
    p.add_argument(
        "--asks", type=int, default=4, help="connections asking for each domain at once (default 4)"
    )
    p.add_argument("--reps", type=int, default=3, help="runs per daemon and pairing (default 3)")
    p.add_argument(
        "--pairings",
        type=runner.csv_choices(("persistent", "memory")),
        default=["persistent", "memory"],
        help="persistent (lmdb vs sqlite), memory (internal vs internal); default both",
    )
    p.add_argument("--transport", choices=("tcp", "unix"), default="tcp")
    p.add_argument(
        "--variant",
        type=variants.argument,
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,... | NAME@TREE[:KEY=VALUE,...]",
        help="also measure ours with these config overrides and/or from another source tree, "
        "as in load/run.py (load/variants.py); repeatable",
    )
    p.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        help="measure a run again when other processes used more than this share of "
        "either core during it (default 0.25)",
    )
    p.add_argument("--retries", type=int, default=2, help="repeats allowed per run (default 2)")
    p.add_argument("--quick", action="store_true", help="300 domains, 1 repetition")
    p.add_argument("--label", default="", help="saved as <date>-<host>-cold-<label>.md/.json")
    p.add_argument("--results-dir", type=Path, default=runner.BENCH / "results")
    p.add_argument("--no-save", action="store_true", help="print the table only")
    p.add_argument("--keep-workdir", action="store_true", help="keep configs, caches, logs")
    p.add_argument(
        "--python",
        default=shutil.which("python3") or sys.executable,
        help="interpreter for the peer's venv (default: python3)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.domains, args.reps, args.retries = 300, 1, 0
    if not 1 <= args.domains <= 100_000 or args.conns < 1 or args.asks < 1 or args.reps < 1:
        print("cold/run.py: --domains 1..10^5, --conns, --asks, --reps >= 1", file=sys.stderr)
        return 2
    if len({v.name for v in args.variant}) < len(args.variant):
        print("cold/run.py: two --variant with the same name", file=sys.stderr)
        return 2
    if not runner.preflight("cold/run.py"):
        return 2
    peer_python = runner.ensure_peer(args.python)
    # This process is the client: on the client core, with the test servers.
    os.sched_setaffinity(0, {int(runner.CLIENT_CORE)})
    started = time.monotonic()
    with runner.workdir("mtasts-cold-", args.keep_workdir) as work:
        cold = Cold(args, peer_python, work)
        try:
            cold.run()
        finally:
            cold.close()
    meta = {
        **reporting.machine_meta(),
        "ours_version": reporting.our_version(),
        "peer_freeze": runner.pip_freeze(peer_python),
        **{k: getattr(args, k) for k in ("domains", "conns", "asks", "reps", "pairings")},
        "max_other_load": args.max_other_load,
        "loadavg": runner.loadavg(),
        "transport": args.transport,
        "command": reporting.command_line("benchmarks/cold/run.py"),
        "variants": [v.meta() for name, v in cold.ours.items() if name != "ours"],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    rows = summarise(cold.runs)
    markdown = render_markdown(meta, rows)
    suffix = "-cold" + (f"-{args.label}" if args.label else "")
    data = {"meta": meta, "summary": rows, "runs": cold.runs}
    reporting.publish(markdown, data, args, suffix=suffix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
