#!/usr/bin/env python3
"""Idle RSS of ours, started exactly as ``run.py`` starts it, broken down by mapping.

``run.py`` reads the process tree's VmRSS right after each daemon answers and
its start-up checks pass (its "RSS idle" column). This script does the same
start (``daemons.py``: the default configuration of issue 17, the DNS stub,
the seeded lmdb or the launcher that fills the internal cache) for the
pairings asked, then prints, for the supervisor and the worker, what
``/proc/PID/smaps_rollup`` says (private and shared, anonymous and file) and
the mappings that hold the most resident memory (``smaps``, grouped by file).

    .venv/bin/python benchmarks/load/idle_rss.py                  # both pairings, tcp
    .venv/bin/python benchmarks/load/idle_rss.py --pairings memory --json out.json

With ``--verify`` it also runs ``run.py``'s verification pass (every key
once through loadgen) and measures again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import runner
import seeding
from daemons import Daemons
from runner import log
from variants import Variant

ROLLUP_FIELDS = (
    "Rss",
    "Pss",
    "Shared_Clean",
    "Shared_Dirty",
    "Private_Clean",
    "Private_Dirty",
    "Anonymous",
)


def smaps_rollup(pid: int) -> dict[str, int]:
    """The fields of ``/proc/PID/smaps_rollup`` (KiB)."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        if name in ROLLUP_FIELDS:
            found[name] = int(value.split()[0])
    return found


def mappings(pid: int) -> list[dict[str, Any]]:
    """Resident memory per mapped file (anonymous mappings as ``[anon]``), KiB, largest first."""
    groups: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            name = head[5] if len(head) > 5 else "[anon]"
            current = groups.setdefault(name, dict.fromkeys(ROLLUP_FIELDS, 0))
            continue
        field, _, value = line.partition(":")
        if current is not None and field in ROLLUP_FIELDS:
            current[field] += int(value.split()[0])
    rows = [{"mapping": k, **v} for k, v in groups.items() if v["Rss"]]
    return sorted(rows, key=lambda r: -r["Rss"])


def describe(pid: int) -> dict[str, Any]:
    status = runner.memory_kib(pid)
    return {"pid": pid, "status": status, "rollup": smaps_rollup(pid), "mappings": mappings(pid)}


def show(who: str, m: dict[str, Any], top: int) -> None:
    s, r = m["status"], m["rollup"]
    mib = 1024.0
    private = r["Private_Clean"] + r["Private_Dirty"]
    shared = r["Shared_Clean"] + r["Shared_Dirty"]
    log(
        f"{who} {m['pid']}: VmRSS {s['VmRSS'] / mib:.1f} MiB = anon {s['RssAnon'] / mib:.1f} "
        f"+ file {s['RssFile'] / mib:.1f} + shmem {s['RssShmem'] / mib:.1f}; "
        f"private {private / mib:.1f} (dirty {r['Private_Dirty'] / mib:.1f}), "
        f"shared {shared / mib:.1f}, PSS {r['Pss'] / mib:.1f}"
    )
    for row in m["mappings"][:top]:
        priv = row["Private_Clean"] + row["Private_Dirty"]
        log(
            f"    {row['Rss'] / mib:6.2f} MiB  private {priv / mib:6.2f}  "
            f"anon {row['Anonymous'] / mib:6.2f}  {row['mapping']}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="idle_rss.py", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--pairings", default="persistent,memory")
    p.add_argument("--transport", default="tcp", choices=("tcp", "unix"))
    p.add_argument("--domains", type=int, default=1000)
    p.add_argument("--top", type=int, default=14, help="mappings shown per process")
    p.add_argument("--settle", type=float, default=0.0, help="seconds to wait before measuring")
    p.add_argument("--verify", action="store_true", help="also measure after one verify pass")
    p.add_argument("--json", type=Path, help="write every figure there")
    args = p.parse_args(argv)
    tools = runner.build_tools()
    out: list[dict[str, Any]] = []
    dns = runner.DnsStub(__import__("dnsstub").probe_only())
    try:
        with runner.workdir("mtasts-idle-rss-", False) as work:
            records = seeding.make_domains(args.domains)
            daemons = Daemons(work, tools, Path(sys.executable), dns, records)
            ours = Variant("ours")
            for pairing in [x for x in args.pairings.split(",") if x]:
                if pairing == "persistent":
                    why = daemons.seed_persistent(ours)
                    if why:
                        raise RuntimeError(why)
                server, _ = daemons.start_ours(ours, pairing, args.transport)
                try:
                    server.wait_ready()
                    daemons.check_ours(server, ours, pairing, args.transport)
                    time.sleep(args.settle)
                    pids = [server.pid, *runner.children(server.pid)]
                    found = {
                        "pairing": pairing,
                        "idle": [describe(pid) for pid in pids],
                    }
                    log(f"== {pairing} / {args.transport}: idle ==")
                    for who, m in zip(("supervisor", "worker"), found["idle"], strict=False):
                        show(who, m, args.top)
                    if args.verify:
                        keys = work / "keys.txt"
                        seeding.write_keys(keys, records)
                        gen = runner.Loadgen(tools["loadgen"], dns)
                        report = gen.run(server, keys, runner.VERIFY, "verify", [])
                        if report["errors"] or report["lost"] or report["dns_queries"]:
                            raise RuntimeError(f"verify failed: {report}")
                        found["verified"] = [describe(pid) for pid in pids]
                        log(f"== {pairing} / {args.transport}: after the verify pass ==")
                        for who, m in zip(
                            ("supervisor", "worker"), found["verified"], strict=False
                        ):
                            show(who, m, args.top)
                    out.append(found)
                finally:
                    server.stop()
    finally:
        dns.close()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
