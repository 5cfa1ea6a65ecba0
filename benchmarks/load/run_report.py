"""The Markdown report of ``run.py``: side-by-side table, variants, loadgen's ceiling, RSS, targets.

Everything here works on what the ``.json`` keeps (``meta``, ``summary``,
``rss``, ``notes``; ``summarise`` makes the summary from ``runs``), so a saved
run can be rendered again.
"""

from __future__ import annotations

from typing import Any

import reporting
from runner import CLIENT_CORE, PEER_VERSION, SERVER_CORE


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        key = (r["pairing"], r["transport"], r["connections"], r["daemon"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (pairing, transport, conns, daemon), rs in groups.items():
        cpu_util = [r["server_cpu_util"] for r in rs if r["server_cpu_util"] is not None]
        rows.append(
            {
                "pairing": pairing,
                "transport": transport,
                "connections": conns,
                "daemon": daemon,
                **reporting.run_stats(rs),
                "server_cpu_util": reporting.median(cpu_util),
                "client_cpu_util": reporting.median([r["client_cpu_util"] for r in rs]),
                "other_load_server_core": max(r.get("other_load", [0, 0])[0] for r in rs),
                "other_load_client_core": max(r.get("other_load", [0, 0])[1] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "lost": sum(r["lost"] for r in rs),
                "dns_queries": sum(r["dns_queries"] for r in rs),
            }
        )
    return rows


def _k(v: float) -> str:
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def _daemon_name(daemon: str) -> str:
    if daemon == "peer":
        return "postfix-mta-sts-resolver"
    return "mtasts-fast" if daemon == "ours" else f"mtasts-fast ({daemon})"


def _latencies(r: dict[str, Any]) -> str:
    return f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f} / {r['p999_ms']:.3f}"


def _worker_mib(sizes: list[int]) -> float | None:
    """The worker's RSS (the second process of ours' tree: supervisor first), MiB."""
    return sizes[1] / 1024 if len(sizes) > 1 else None


def check_targets(rows: list[dict[str, Any]], rss: list[dict[str, Any]]) -> list[str]:
    """The targets of issue 17 (item 2), one table row each."""
    by = {(r["pairing"], r["transport"], r["connections"], r["daemon"]): r for r in rows}
    found: list[tuple[str, str, str]] = []

    def row(what: str, value: str, ok: bool) -> None:
        found.append((what, value, reporting.verdict(ok)))

    names = {"persistent": "lmdb vs sqlite", "memory": "internal vs internal"}
    for transport, cpu_max in (("tcp", 7.0), ("unix", 4.0)):
        ref = by.get(("memory", transport, 128, "ref")) or by.get(
            ("persistent", transport, 128, "ref")
        )
        for pairing, want in (("persistent", 25.0), ("memory", 5.0)):
            o = by.get((pairing, transport, 128, "ours"))
            p = by.get((pairing, transport, 128, "peer"))
            what = f"{transport}, {names[pairing]}"
            if o:
                row(
                    f"{what}: CPU ≤ {cpu_max:g} µs per cached lookup (128 conns)",
                    f"{o['cpu_us']:.2f} µs",
                    o["cpu_us"] <= cpu_max,
                )
            if o and ref:
                ratio = o["p99_ms"] / ref["p99_ms"]
                row(
                    f"{what}: p99 ≤ 1.3× refserver's (128 conns)",
                    f"{o['p99_ms']:.3f} vs {ref['p99_ms']:.3f} ms ({ratio:.2f}×)",
                    ratio <= 1.3,
                )
            if o and p:
                ratio = o["rps"] / p["rps"]
                what_ratio = f"{what}: req/s ≥ {want:g}× the peer's (128 conns)"
                row(what_ratio, f"{ratio:.1f}×", ratio >= want)
            o = by.get((pairing, transport, 1024, "ours"))
            if o:
                row(
                    f"{what}: 1024 conns, zero errors",
                    f"{o['errors']} errors, {o['lost']} lost",
                    o["errors"] == 0 and o["lost"] == 0,
                )
    ours_rss = [r for r in rss if r["daemon"] == "ours"]
    idle = [m for r in ours_rss if (m := _worker_mib(r["idle_per_process_kib"])) is not None]
    if idle:
        row("idle worker RSS ≤ 30 MiB (largest section)", f"{max(idle):.1f} MiB", max(idle) <= 30.0)
    growth = [
        (after - warm, f"{r['pairing']}/{r['transport']}")
        for r in ours_rss
        if (warm := _worker_mib(r.get("warm_per_process_kib", []))) is not None
        and (after := _worker_mib(r["after_per_process_kib"])) is not None
    ]
    if growth:
        worst, where = max(growth)
        row(
            "worker RSS: no growth after warm-up (≤ 1 MiB, end vs after repetition 1)",
            f"{worst:+.1f} MiB ({where})",
            worst <= 1.0,
        )
    if not found:
        return []
    return [
        "Targets of issue 17 (item 2) in this run:",
        "",
        *reporting.markdown_table(["target", "this run", ""], "lrl", found),
        "",
    ]


def variant_table(meta: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Ours and each ``--variant``, side by side, with what each costs against ours."""
    named = meta.get("variants") or []
    if not named:
        return []
    by = {(r["pairing"], r["transport"], r["connections"], r["daemon"]): r for r in rows}
    caches = {"persistent": "lmdb", "memory": "internal"}
    table = []
    for pairing, transport in sorted(
        {(r["pairing"], r["transport"]) for r in rows if r["daemon"] == "ours"},
        key=lambda p: (p[0] != "persistent", p[1] != "tcp"),
    ):
        for conns in meta["connections"]:
            o = by.get((pairing, transport, conns, "ours"))
            if not o:
                continue
            for v in [{"name": "ours"}, *named]:
                r = by.get((pairing, transport, conns, v["name"]))
                if not r:
                    continue
                mine = v["name"] == "ours"
                dcpu = r["cpu_us"] - o["cpu_us"]
                table.append(
                    [
                        *(caches[pairing], transport, conns, v["name"]),
                        *(_k(r["rps"]), f"{r['cpu_us']:.2f}", f"{r['p99_ms']:.3f}"),
                        f"{r['errors']}/{r['lost']}",
                        r["dns_queries"],
                        "–" if mine else f"{dcpu:+.2f} µs ({dcpu / o['cpu_us']:+.0%})",
                        "–" if mine else f"{r['rps'] / o['rps']:.2f}×",
                        "–" if mine else f"{r['p99_ms'] / o['p99_ms']:.2f}×",
                    ]
                )
    header = [
        *("cache", "transport", "conns", "daemon", "req/s", "CPU µs/lookup", "p99 ms"),
        *("errors/lost", "DNS queries", "CPU cost vs ours", "req/s vs ours", "p99 vs ours"),
    ]
    return [
        "Variants of ours, in the same rotation (medians):",
        "",
        *(f"- `{v['name']}`: {v['describe']}" for v in named),
        "",
        *reporting.markdown_table(header, "llrl" + "r" * 8, table),
        "",
    ]


def render_markdown(
    meta: dict[str, Any], rows: list[dict[str, Any]], rss: list[dict[str, Any]], notes: list[str]
) -> str:
    by = {(r["pairing"], r["transport"], r["connections"], r["daemon"]): r for r in rows}
    out = [f"# Socketmap load benchmark, {meta['date']} on {meta['host']}", ""]
    out += [
        reporting.machine_line(meta),
        f"- mtasts-fast {meta['ours_version']} ({reporting.commit_text(meta)}) vs "
        f"postfix-mta-sts-resolver {PEER_VERSION} (uvloop {meta['peer_uvloop']})",
        f"- {meta['domains']} cached enforce policies; daemons on core {SERVER_CORE}, loadgen "
        f"on core {CLIENT_CORE}; {meta['duration']} s measured after {meta['warmup']} s "
        f"warm-up, {meta['reps']} repetitions (medians shown), daemons alternated",
        f"- Command: `{meta['command']}`",
        "- req/s: replies per second (each connection: one request, wait for the reply, "
        "next). CPU: server utime+stime per lookup from /proc/<pid>/stat over the window. "
        "Latency: send-to-reply. Ratio: ours ÷ peer (req/s), peer ÷ ours (CPU).",
        "",
    ]
    pairs = sorted(
        {(r["pairing"], r["transport"]) for r in rows if r["daemon"] != "ref"},
        key=lambda p: (p[0] != "persistent", p[1] != "tcp"),
    )
    side_by_side = []
    for pairing, transport in pairs:
        caches = "lmdb vs sqlite" if pairing == "persistent" else "internal vs internal"
        for conns in meta["connections"]:
            o = by.get((pairing, transport, conns, "ours"))
            p = by.get((pairing, transport, conns, "peer"))
            if o and p:
                side_by_side.append(
                    [
                        *(caches, transport, conns, _k(o["rps"]), _k(p["rps"])),
                        f"**{o['rps'] / p['rps']:.1f}×**",
                        *(f"{o['cpu_us']:.1f}", f"{p['cpu_us']:.1f}"),
                        f"{p['cpu_us'] / o['cpu_us']:.1f}×",
                        *(_latencies(o), _latencies(p)),
                        *(f"{o['errors']}/{p['errors']}", f"{o['lost']}/{p['lost']}"),
                        o["dns_queries"] + p["dns_queries"],
                    ]
                )
    if pairs:
        header = [
            *("cache (ours vs peer)", "transport", "conns", "ours req/s", "peer req/s"),
            *("ratio", "ours CPU µs/lookup", "peer CPU µs/lookup", "CPU ratio"),
            *("ours p50 / p99 / p99.9 ms", "peer p50 / p99 / p99.9 ms"),
            *("errors ours/peer", "lost ours/peer", "DNS queries"),
        ]
        out += [*reporting.markdown_table(header, "ll" + "r" * 12, side_by_side), ""]
    out += variant_table(meta, rows)
    refs = sorted(
        (r for r in rows if r["daemon"] == "ref"),
        key=lambda r: (r["transport"] != "tcp", r["connections"]),
    )
    if refs:
        ceiling = []
        for r in refs:
            mine = by.get((r["pairing"], r["transport"], r["connections"], "ours"))
            ceiling.append(
                [
                    *(r["transport"], r["connections"], _k(r["rps"]), _latencies(r)),
                    *(f"{r['cpu_us']:.1f}", f"{r['client_cpu_util']:.0%}"),
                    f"{mine['rps'] / r['rps']:.0%}" if mine else "–",
                ]
            )
        header = [
            *("transport", "conns", "refserver req/s", "p50 / p99 / p99.9 ms"),
            *("refserver CPU µs/req", "loadgen CPU use", "ours (same section) ÷ ceiling"),
        ]
        out += [
            "Load generator ceiling: loadgen against `refserver` (a trivial C epoll server "
            "sending a fixed reply of the same size), same cores, same run.",
            "",
            *reporting.markdown_table(header, "l" + "r" * 6, ceiling),
            "",
        ]
    if rss:

        def mib(sizes: list[int]) -> str:
            total = f"{sum(sizes) / 1024:.1f} MiB"
            if len(sizes) < 2:
                return total
            return total + " [" + " + ".join(f"{x / 1024:.1f}" for x in sizes) + "]"

        memory = [
            [
                *(r["pairing"], r["transport"]),
                _daemon_name(r["daemon"]),
                mib(r["idle_per_process_kib"]),
                mib(r["warm_per_process_kib"]) if r.get("warm_per_process_kib") else "–",
                mib(r["after_per_process_kib"]),
                f"{r['lookups_measured']:,}",
            ]
            for r in rss
        ]
        header = ["cache", "transport", "daemon", "RSS idle", "after repetition 1"]
        out += [
            "RSS of the whole process tree (per process in brackets: supervisor first), "
            "idle before the runs, after the first repetition (every connection count "
            "once: warmed up) and after the last.",
            "",
            *reporting.markdown_table(
                [*header, "after the runs", "lookups measured"], "lllrrrr", memory
            ),
            "",
        ]
    out += check_targets(rows, rss)
    worst = max(
        (max(r["other_load_server_core"], r["other_load_client_core"]) for r in rows), default=0.0
    )
    checks = meta.get("checks") or []
    if checks:
        active = sum(1 for c in checks if c.get("dane_active"))
        expected = sum(1 for c in checks if c.get("dane_expected", True))
        scraped = sum(1 for c in checks if c.get("metrics_bytes"))
        probes = meta.get("dns_probes", {})
        notes = [
            f"Start-up checks of ours and its variants: DANE detection active (the stub "
            f"answered the DNSSEC probe, the worker logged it) in {active} of the {expected} "
            f"starts with DANE on ({len(checks)} starts); GET /metrics answered in {scraped}; "
            f"DNSSEC probe queries: {probes.get('received', '?')} received, "
            f"{probes.get('answered', '?')} answered; every other DNS query is in the "
            "`DNS queries` columns (none allowed: each server's verification pass fails on one).",
            *notes,
        ]
    notes = [
        *notes,
        f"Other load on the machine during the measured windows (core time used by "
        f"neither the server nor loadgen, from /proc/stat): at most {worst:.0%} of a core "
        f"in any run; per-run figures in the .json (`other_load`).",
    ]
    out += [f"- {n}" for n in notes]
    return "\n".join(out).rstrip() + "\n"
