"""The Markdown report of ``run.py``: side-by-side table, loadgen's ceiling, RSS, targets.

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


def _latencies(r: dict[str, Any]) -> str:
    return f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f} / {r['p999_ms']:.3f}"


def check_targets(rows: list[dict[str, Any]]) -> list[str]:
    """The speed targets of DESIGN.md §7 / issue 5, one table row each, per transport."""
    by = {(r["pairing"], r["transport"], r["connections"], r["daemon"]): r for r in rows}
    found: list[tuple[str, str, str]] = []

    def row(what: str, value: str, ok: bool) -> None:
        found.append((what, value, reporting.verdict(ok)))

    def ours_and_peer(pairing: str, transport: str, conns: int) -> tuple[Any, Any]:
        ours, peer = (pairing, transport, conns, "ours"), (pairing, transport, conns, "peer")
        return by.get(ours), by.get(peer)

    for transport in ("tcp", "unix"):
        for pairing, want, name in (
            ("persistent", 12.0, "lmdb vs sqlite"),
            ("memory", 2.0, "internal vs internal"),
        ):
            for conns in (128, 1024):
                o, p = ours_and_peer(pairing, transport, conns)
                if not o or not p:
                    continue
                ratio = o["rps"] / p["rps"]
                what = f"{transport}: {conns} conns, {name}"
                if conns == 128:
                    row(f"{what}: req/s ≥ {want:g}× the peer's", f"{ratio:.1f}×", ratio >= want)
                    row(f"{what}: CPU ≤ 10 µs/lookup", f"{o['cpu_us']:.1f} µs", o["cpu_us"] <= 10.0)
                else:
                    row(
                        f"{what}: no errors, no reply lost; ratio ≥ {want:g}×",
                        f"{o['errors']} errors, {o['lost']} lost; {ratio:.1f}×",
                        o["errors"] == 0 and o["lost"] == 0 and ratio >= want,
                    )
        for pairing in ("persistent", "memory"):
            o = by.get((pairing, transport, 16, "ours"))
            if o:
                row(
                    f"{transport}: 16 conns, {pairing}: p99 < 0.5 ms",
                    f"{o['p99_ms']:.3f} ms",
                    o["p99_ms"] < 0.5,
                )
            o = by.get((pairing, transport, 128, "ours"))
            ref = by.get(("memory", transport, 128, "ref")) or by.get(
                ("persistent", transport, 128, "ref")
            )
            if o and ref:
                row(
                    f"{transport}: 128 conns, {pairing}: p99 ≤ 1.5× refserver's",
                    f"{o['p99_ms']:.3f} ms vs {ref['p99_ms']:.3f} ms "
                    f"({o['p99_ms'] / ref['p99_ms']:.2f}×)",
                    o["p99_ms"] <= 1.5 * ref["p99_ms"],
                )
    if not found:
        return []
    return [
        "Speed targets (DESIGN.md §7, issue 5) in this run:",
        "",
        *reporting.markdown_table(["target", "this run", ""], "lrl", found),
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
                "mtasts-fast" if r["daemon"] == "ours" else "postfix-mta-sts-resolver",
                *(mib(r["idle_per_process_kib"]), mib(r["after_per_process_kib"])),
                f"{r['lookups_measured']:,}",
            ]
            for r in rss
        ]
        header = ["cache", "transport", "daemon", "RSS idle", "RSS after the runs"]
        out += [
            "RSS of the whole process tree (per process in brackets: supervisor first).",
            "",
            *reporting.markdown_table([*header, "lookups measured"], "lllrrr", memory),
            "",
        ]
    out += check_targets(rows)
    worst = max(
        (max(r["other_load_server_core"], r["other_load_client_core"]) for r in rows), default=0.0
    )
    notes = [
        *notes,
        f"Other load on the machine during the measured windows (core time used by "
        f"neither the server nor loadgen, from /proc/stat): at most {worst:.0%} of a core "
        f"in any run; per-run figures in the .json (`other_load`).",
    ]
    out += [f"- {n}" for n in notes]
    return "\n".join(out).rstrip() + "\n"
