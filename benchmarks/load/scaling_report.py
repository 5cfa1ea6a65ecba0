"""The Markdown report of ``scaling.py``: one section a part, then the targets.

``render`` needs only what the ``.json`` keeps (``args``, ``loadavg``,
``seeding``, ``rss``, ``runs``), so a saved run can be rendered again.
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol

import reporting
from runner import CLIENT_CORE, SERVER_CORE

# Where the daemons of the workers comparison run. "one core" squeezes both
# workers of `workers: 2` onto the core one worker has, so both cases are
# saturated alike and the second worker costs only what two processes on one
# core cost each other (a bound on what they cost each other on two cores).
# "shared" is everything unpinned: the workers then share the cores with
# loadgen, wait for it, and answer fewer lookups per wake-up than a saturated
# worker, which makes the second worker look more expensive than it is.
WORKER_LAYOUTS = {
    "one core": f"daemon pinned to core {SERVER_CORE}, loadgen on core {CLIENT_CORE}",
    "shared": "daemon and loadgen unpinned on both cores",
}
MIB = 1024


class Results(Protocol):
    """A ``Scaling`` after its run, or the same fields read back from its ``.json``."""

    args: argparse.Namespace
    runs: list[dict[str, Any]]
    rss: list[dict[str, Any]]
    seeding: dict[str, dict[str, Any]]
    loadavg: dict[str, list[str]]


def _n(count: int) -> str:
    """10³, 10⁶ for powers of ten, else the number."""
    exp = len(str(count)) - 1
    if count == 10**exp and exp > 1:
        return "10" + str(exp).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
    return f"{count:,}"


def _groups(runs: list[dict[str, Any]], part: str, *key: str) -> dict[Any, dict[str, Any]]:
    """The runs of one part, grouped by the values of ``key``, with their medians."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("part") == part:
            groups.setdefault(tuple(r[k] for k in key), []).append(r)
    return {k: _group(rs) for k, rs in groups.items()}


def _group(rs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        **reporting.run_stats(rs),
        "cpu_util": reporting.median([r["server_cpu_util"] for r in rs]),
        "other_load": max(r["other_load"] for r in rs),
        "runs": rs,
    }


def _section(heading: str, text: str, header: list[str], align: str, rows: Any) -> list[str]:
    """A section of the report: heading, what its table shows, the table."""
    return [f"## {heading}", "", text, "", *reporting.markdown_table(header, align, rows), ""]


def _target(what: str, value: str, ok: bool) -> dict[str, Any]:
    return {"target": what, "value": value, "ok": ok}


def render(meta: dict[str, Any], bench: Results) -> tuple[str, list[dict[str, Any]]]:
    a = bench.args
    out = [f"# mtasts-fast scaling benchmark, {meta['date']} on {meta['host']}", ""]
    out += [
        f"{reporting.machine_line(meta)}; mtasts-fast {meta['version']} "
        f"({reporting.commit_text(meta)})",
        f"- Command: `{meta['command']}`; {a.connections} connections over TCP, "
        f"{a.duration} s measured after {a.warmup} s warm-up, {a.reps} repetition(s) "
        f"({a.worker_reps} for the workers; medians shown), alternated; every lookup a "
        "cache hit (no DNS query, no error, no reply lost)",
        "- Load average (1/5/15 min) at the start and end of each part: "
        + "; ".join(f"{k}: {v[0]} → {v[-1]}" for k, v in bench.loadavg.items()),
    ]
    for name, s in bench.seeding.items():
        out.append(
            f"- LMDB seeding ({name}): {s['entries']:,} entries with `put_many` "
            f"(1000 per commit) in {s['seconds']:.1f} s, data.mdb {s['file_mib']:.0f} MiB"
        )
    out.append("")
    targets: list[dict[str, Any]] = []
    out += _render_size(bench, targets)
    out += _render_rss(bench, targets)
    out += _render_workers(bench, targets)
    if targets:
        rows = [(t["target"], t["value"], reporting.verdict(t["ok"])) for t in targets]
        out += ["## Targets (issue 5) in this run", ""]
        out += [*reporting.markdown_table(["target", "this run", ""], "lrl", rows), ""]
    return "\n".join(out).rstrip() + "\n", targets


def _render_size(bench: Results, targets: list[dict[str, Any]]) -> list[str]:
    a = bench.args
    size = _groups(bench.runs, "size", "size", "keys_set")
    if not size:
        return []
    small, big = _n(a.small), _n(a.big)
    names = {"hot": f"hot set ({a.hot:,})", "all": f"all {big}, shuffled"}
    rows = [
        [
            small if key[0] == "small" else big,
            names[key[1]],
            f"{g['rps']:,.0f} ({g['rps_min']:,.0f}–{g['rps_max']:,.0f})",
            *(f"{g['cpu_us']:.2f}", f"{g['p50_ms']:.3f} / {g['p99_ms']:.3f}"),
            *(f"{g['cpu_util']:.0%}", f"{g['other_load']:.0%}"),
        ]
        for key in (("small", "hot"), ("big", "hot"), ("big", "all"))
        if (g := size.get(key))
    ]
    out = _section(
        f"Cache size: {small} vs {big} cached domains",
        f"LMDB cache, `workers: 1` pinned to core {SERVER_CORE}, loadgen on core "
        f"{CLIENT_CORE}. Hot set: the same {a.hot:,} domains, present in both caches. "
        f"All: every one of the {big} domains once, shuffled (loadgen starts from the "
        f"first key each run, so the first run also pays the worker's first touch of "
        f"those LMDB pages).",
        [
            *("cache", "keys looked up", "req/s (min–max)", "CPU µs/lookup", "p50 / p99 ms"),
            *("server core use", "other load"),
        ],
        "llrrrrr",
        rows,
    )
    base, hot = size.get(("small", "hot")), size.get(("big", "hot"))
    spread = size.get(("big", "all"))
    if base and hot:
        rps_ratio = hot["rps"] / base["rps"]
        cpu_ratio = hot["cpu_us"] / base["cpu_us"]
        out.append(
            f"Hot set, {big} ÷ {small}: req/s {rps_ratio:.3f}×, CPU per lookup "
            f"{cpu_ratio:.3f}×."
            + (
                f" All {big} domains ÷ hot set on {small}: req/s "
                f"{spread['rps'] / base['rps']:.3f}×, CPU per lookup "
                f"{spread['cpu_us'] / base['cpu_us']:.3f}× (extra information: the "
                f"in-process memos hold 65,536 keys and 10,000 decoded entries)."
                if spread
                else ""
            )
        )
        out.append("")
        what = f"{big} vs {small} cached domains (hot set)"
        targets.append(
            _target(f"{what}: req/s within 15 %", f"{rps_ratio:.3f}×", abs(rps_ratio - 1) <= 0.15)
        )
        targets.append(
            _target(
                f"{what}: CPU/lookup within 15 %",
                f"{hot['cpu_us']:.2f} vs {base['cpu_us']:.2f} µs ({cpu_ratio:.3f}×)",
                abs(cpu_ratio - 1) <= 0.15,
            )
        )
    return out


def _render_rss(bench: Results, targets: list[dict[str, Any]]) -> list[str]:
    a = bench.args
    if not bench.rss:
        return []

    def mib(kib: int) -> str:
        return f"{kib / MIB:.1f} MiB"

    rows = [
        [
            *(s["when"], f"{s['lookups']:,}"),
            *(mib(s["worker"][k]) for k in ("VmRSS", "RssAnon", "RssFile")),
            *(mib(s["supervisor"][k]) for k in ("VmRSS", "RssAnon")),
        ]
        for s in bench.rss
    ]
    out = _section(
        f"RSS of one worker over {_n(a.rss_lookups)} + {_n(a.rss_lookups)} lookups",
        f"A fresh daemon (`workers: 1`, core {SERVER_CORE}) on the {_n(a.big)} cache; "
        f"loadgen ({a.connections} connections) over all {_n(a.big)} domains, shuffled; "
        "each loadgen run (≤ 20 s) goes on in the key list where the previous one "
        "stopped, so a pass of as many lookups as domains visits each domain once. "
        "From /proc/PID/status. RssFile is LMDB's memory map: page-cache pages the "
        "worker has read, shared with every process mapping the file and reclaimable; "
        "RssAnon is the process's own memory. Lookups: replies counted in loadgen's "
        "windows (warm-up replies come on top).",
        [
            *("when", "lookups", "worker VmRSS", "worker RssAnon", "worker RssFile"),
            *("supervisor VmRSS", "supervisor RssAnon"),
        ],
        "lrrrrrr",
        rows,
    )
    if len(bench.rss) == 3:
        first, second = bench.rss[1], bench.rss[2]
        grown = second["worker"]["RssAnon"] - first["worker"]["RssAnon"]
        lookups = second["lookups"] - first["lookups"]
        per = grown * 1024 / lookups if lookups else 0.0
        vm = second["worker"]["VmRSS"] - first["worker"]["VmRSS"]
        out.append(
            f"Second pass: worker RssAnon {grown / MIB:+.2f} MiB ({per:+.2f} bytes per "
            f"lookup), VmRSS {vm / MIB:+.2f} MiB, supervisor VmRSS "
            f"{(second['supervisor']['VmRSS'] - first['supervisor']['VmRSS']) / MIB:+.2f}"
            f" MiB. Criterion: the worker's own memory grows by less than 1 byte per "
            f"lookup after the first pass (a leak of one small object per lookup would "
            f"show as tens of bytes)."
        )
        out.append("")
        targets.append(
            _target(
                "RSS: no growth after warm-up (worker RssAnon, 2nd pass)",
                f"{grown / MIB:+.2f} MiB over {lookups:,} lookups",
                per < 1.0,
            )
        )
    return out


def _render_workers(bench: Results, targets: list[dict[str, Any]]) -> list[str]:
    a = bench.args
    w = _groups(bench.runs, "workers", "layout", "workers")
    if not w:
        return []
    rows = []
    for key in sorted(w, key=lambda k: (list(WORKER_LAYOUTS).index(k[0]), k[1])):
        g = w[key]
        conns = "; ".join("/".join(str(c) for c in r["connections_per_worker"]) for r in g["runs"])
        shares = "; ".join(
            "/".join(f"{s:.0%}" for s in r["cpu_share_per_worker"]) for r in g["runs"]
        )
        switches = "; ".join(
            f"{r['switches_per_1000'][0]:.0f} / {r['switches_per_1000'][1]:.0f}" for r in g["runs"]
        )
        rows.append(
            [
                *(key[0], key[1], f"{g['rps']:,.0f}", f"{g['cpu_us']:.2f}"),
                *(f"{g['cpu_util']:.2f} cores", conns, shares, switches),
                f"{g['other_load']:.0%}",
            ]
        )
    header = [
        *("layout", "workers", "req/s", "CPU µs/lookup (all workers)", "server CPU use"),
        *("connections per worker", "CPU share per worker"),
        *("context switches per 1000 lookups (voluntary / involuntary)", "other load"),
    ]
    out = _section(
        "Workers: `workers: 2` vs `workers: 1`",
        f"{a.connections} connections, hot set on the {_n(a.small)} cache, two layouts: "
        + "; ".join(f"*{k}*: {v}" for k, v in WORKER_LAYOUTS.items())
        + ". On two cores shared with loadgen, throughput cannot show the gain, so the "
        "comparison is on server CPU time per lookup (the workers and the idle "
        "supervisor, from /proc/PID/stat over loadgen's window). Connections per "
        "worker: established sockets in each worker's fd table; CPU share: each "
        "worker's utime+stime; context switches of the workers' event-loop threads "
        "(/proc/PID/status) per lookup: voluntary ones are waits for work (few lookups "
        "per wake-up, so the fixed cost of a loop iteration is shared by fewer), "
        "involuntary ones are preemptions.",
        header,
        "l" + "r" * 8,
        rows,
    )
    out += [
        "Projection for two free cores = 2 × (CPU/lookup, 1 worker) ÷ (CPU/lookup, 2 "
        "workers) × balance, balance = 0.5 ÷ the larger worker's median share of the "
        "connections (each connection bringing the same lookup rate, the worker with "
        "more saturates first):",
        "",
    ]
    for layout in WORKER_LAYOUTS:
        one, two = w.get((layout, 1)), w.get((layout, 2))
        if not one or not two:
            continue
        c1, c2 = one["cpu_us"], two["cpu_us"]
        m = reporting.median(
            [
                max(r["connections_per_worker"]) / sum(r["connections_per_worker"])
                for r in two["runs"]
            ]
        )
        cpu_m = reporting.median([max(r["cpu_share_per_worker"]) for r in two["runs"]])
        projected = 2 * c1 / c2 * 0.5 / m
        out.append(
            f"- *{layout}*: 2 × {c1:.2f} ÷ {c2:.2f} × {0.5 / m:.3f} = "
            f"**{projected:.2f}×**; with the CPU-time split instead (larger share "
            f"{cpu_m:.3f}): {2 * c1 / c2 * 0.5 / cpu_m:.2f}×; without a balance factor "
            f"(a closed loop keeps both workers saturated whatever the split): "
            f"{2 * c1 / c2:.2f}×."
        )
        if layout == "one core":
            targets.append(
                _target(
                    "`workers: 2` ≥ 1.7× one worker (projected from the one-core layout, "
                    "see method)",
                    f"{projected:.2f}×",
                    projected >= 1.7,
                )
            )
    out.append("")
    return out
