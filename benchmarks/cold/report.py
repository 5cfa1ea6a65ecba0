"""The Markdown report of ``cold/run.py``, from what its ``.json`` keeps (``meta``, ``summary``)."""

from __future__ import annotations

import collections
from typing import Any

import reporting
from runner import CLIENT_CORE, PEER_VERSION, SERVER_CORE

DNS_TYPES = ("TXT", "A", "AAAA", "MX", "TLSA")
NAMES = {"persistent": "lmdb vs sqlite", "memory": "internal vs internal"}


def _hist(runs: list[dict[str, Any]], get: Any) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for r in runs:
        total.update(get(r))
    return dict(sorted(total.items(), key=lambda kv: int(kv[0])))


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["pairing"], r["daemon"]), []).append(r)
    med = reporting.median
    rows = []
    for (pairing, daemon), rs in groups.items():
        n = sum(r["domains"] for r in rs)
        types: collections.Counter[str] = collections.Counter()
        for r in rs:
            types.update(r["dns"]["types"])
        queries = sum(types.values())
        connections = sum(r["https"]["connections"] for r in rs)
        cpu = {
            k: sum(r["cpu"][k] for r in rs) for k in ("daemon_s", "dns_s", "https_s", "client_s")
        }
        errors: collections.Counter[str] = collections.Counter()
        for r in rs:
            errors.update(r["errors"])
        rows.append(
            {
                "pairing": pairing,
                "daemon": daemon,
                "reps": len(rs),
                "domains": rs[0]["domains"],
                "domains_per_s": med([r["domains_per_s"] for r in rs]),
                "domains_per_s_range": [
                    min(r["domains_per_s"] for r in rs),
                    max(r["domains_per_s"] for r in rs),
                ],
                "cpu_ms_per_domain": med([r["cpu"]["daemon_s"] / r["domains"] * 1000 for r in rs]),
                "first_p50_ms": med(
                    [r["first_ms"]["p50"] for r in rs if r["first_ms"]["p50"] is not None]
                ),
                "first_p99_ms": med(
                    [r["first_ms"]["p99"] for r in rs if r["first_ms"]["p99"] is not None]
                ),
                "answered": sum(r["answered"] for r in rs),
                "asked": n,
                "errors": dict(errors),
                "dns_per_domain": {t: types[t] / n for t in sorted(types)},
                "dns_queries_per_domain": queries / n,
                "txt_per_domain": _hist(rs, lambda r: r["dns"]["txt_per_domain"]),
                "gets_per_domain": _hist(rs, lambda r: r["https"]["gets_per_domain"]),
                "gets": sum(r["https"]["gets"] for r in rs) / n,
                "connections": connections / n,
                "dns_us_per_query": cpu["dns_s"] / queries * 1e6 if queries else None,
                "https_ms_per_connection": cpu["https_s"] / connections * 1000
                if connections
                else None,
                "servers_ms_per_domain": (cpu["dns_s"] + cpu["https_s"]) / n * 1000,
                "dns_ms_per_domain": cpu["dns_s"] / n * 1000,
                "https_ms_per_domain": cpu["https_s"] / n * 1000,
                "client_ms_per_domain": cpu["client_s"] / n * 1000,
                "core_busy": [med([r["core_busy"][i] for r in rs]) for i in range(2)],
                "other_load": [max(r["other_load"][i] for r in rs) for i in range(2)],
            }
        )
    return rows


def _exactly_one(hist: dict[str, int], domains: int) -> str:
    once = hist.get("1", 0)
    return f"{once}/{domains}"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def render_markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    by = {(r["pairing"], r["daemon"]): r for r in rows}
    named = meta.get("variants") or []
    daemons = ["ours", *(v["name"] for v in named), "peer"]
    pairings = [p for p in meta["pairings"] if (p, "ours") in by or (p, "peer") in by]
    out = [f"# Cold path benchmark, {meta['date']} on {meta['host']}", ""]
    out += [
        reporting.machine_line(meta),
        f"- mtasts-fast {meta['ours_version']} ({reporting.commit_text(meta)}) vs "
        f"postfix-mta-sts-resolver {PEER_VERSION}",
        f"- Each run: a fresh daemon with an empty cache (core {SERVER_CORE}), "
        f"{meta['domains']} never-seen domains with a valid enforce policy, asked over "
        f"{meta['conns']} {meta['transport'].upper()} connections, each domain by "
        f"{meta['asks']} connections in a row (client, DNS stub and policy hosts on core "
        f"{CLIENT_CORE}); {meta['reps']} runs per daemon and cache, alternated, medians shown.",
        "- Ours: default configuration (metrics listener on, `dane: precedence` with DANE "
        "detection active: each new enforce domain also gets its DANE evaluation, an "
        "insecure MX RRset here). Both: default zone timeout (4 s).",
        f"- Command: `{meta['command']}`",
        "- New domains/s: domains ÷ time until the last reply. CPU: daemon utime+stime "
        "(supervisor and worker) over the run ÷ domains: DNS, TLS, HTTP, parse, DANE, store "
        "and the socketmap replies. First answer: a domain's first right reply after its "
        "first ask.",
        "",
    ]
    table = []
    for p in pairings:
        o, q = by.get((p, "ours")), by.get((p, "peer"))
        if not o or not q:
            continue
        table.append(
            [
                NAMES[p],
                *(f"{o['domains_per_s']:.0f}", f"{q['domains_per_s']:.0f}"),
                f"**{o['domains_per_s'] / q['domains_per_s']:.1f}×**",
                *(f"{o['cpu_ms_per_domain']:.2f}", f"{q['cpu_ms_per_domain']:.2f}"),
                f"{q['cpu_ms_per_domain'] / o['cpu_ms_per_domain']:.1f}×",
                f"{o['first_p50_ms']:.1f} / {o['first_p99_ms']:.1f}",
                f"{q['first_p50_ms']:.1f} / {q['first_p99_ms']:.1f}",
                f"{o['answered']}/{o['asked']} · {q['answered']}/{q['asked']}",
                _errors(o) + " · " + _errors(q),
            ]
        )
    header = [
        *("cache (ours vs peer)", "ours new domains/s", "peer new domains/s", "ratio"),
        *("ours CPU ms/domain", "peer CPU ms/domain", "CPU ratio"),
        *("ours first answer p50 / p99 ms", "peer first answer p50 / p99 ms"),
        *("domains answered ours · peer", "other replies ours · peer"),
    ]
    out += [*reporting.markdown_table(header, "l" + "r" * 9, table), ""]
    out += _variant_table(named, pairings, by)

    requests = []
    for p in pairings:
        for who in daemons:
            r = by.get((p, who))
            if not r:
                continue
            per = r["dns_per_domain"]
            others = sum(v for t, v in per.items() if t not in DNS_TYPES)
            requests.append(
                [
                    *(NAMES[p].split(" vs ")[who == "peer"], _who(who)),
                    *(f"{per.get(t, 0):.2f}" for t in DNS_TYPES),
                    f"{others:.2f}",
                    f"{r['dns_queries_per_domain']:.2f}",
                    _exactly_one(r["txt_per_domain"], r["asked"]),
                    *(f"{r['connections']:.2f}", f"{r['gets']:.2f}"),
                    _exactly_one(r["gets_per_domain"], r["asked"]),
                ]
            )
    header = [
        *("cache", "daemon", *(f"{t}/domain" for t in DNS_TYPES), "other/domain"),
        *("DNS queries/domain", "domains with exactly 1 TXT query"),
        *("TLS connections/domain", "GETs/domain", "domains with exactly 1 GET"),
    ]
    out += [
        "Requests reaching the test servers per new domain (as received: a resolver's "
        "retransmission counts again; the DNSSEC probe at start is not counted).",
        "",
        *reporting.markdown_table(header, "ll" + "r" * 10, requests),
        "",
    ]

    cost = []
    for p in pairings:
        for who in daemons:
            r = by.get((p, who))
            if r:
                cost.append(
                    [
                        *(NAMES[p].split(" vs ")[who == "peer"], _who(who)),
                        f"{r['cpu_ms_per_domain']:.2f}",
                        f"{r['dns_us_per_query']:.0f}" if r["dns_us_per_query"] else "–",
                        f"{r['https_ms_per_connection']:.2f}"
                        if r["https_ms_per_connection"]
                        else "–",
                        *(f"{r['dns_ms_per_domain']:.2f}", f"{r['https_ms_per_domain']:.2f}"),
                        f"{r['client_ms_per_domain']:.2f}",
                        f"{_test_side(r):.0%}",
                        "/".join(f"{x:.0%}" for x in r["core_busy"]),
                        "/".join(f"{x:.0%}" for x in r["other_load"]),
                    ]
                )
    header = [
        *("cache", "daemon", "daemon CPU ms/domain", "DNS stub CPU µs/query"),
        *("policy host CPU ms/TLS connection", "DNS stub ms/domain", "policy hosts ms/domain"),
        *("client ms/domain", f"test side's use of core {CLIENT_CORE}"),
        *(f"cores {SERVER_CORE}/{CLIENT_CORE} busy", "other load (max)"),
    ]
    busiest = max((_test_side(r) for r in rows), default=0.0)
    out += [
        "What the test servers and the client cost (CPU time of their processes over the "
        f"runs; they share core {CLIENT_CORE}, the daemon has core {SERVER_CORE}). Other "
        "load: core time used by none of these (other processes on the machine).",
        "",
        *reporting.markdown_table(header, "ll" + "r" * 9, cost),
        "",
    ]
    if busiest > 0.8:
        out += [
            f"- The test side used up to {busiest:.0%} of core {CLIENT_CORE}: near its "
            "ceiling, the rate may be the test servers' and the client's, not the daemon's "
            f"(the daemon's core {SERVER_CORE} busy figure tells).",
            "",
        ]
    out += _targets(pairings, by)
    return "\n".join(out).rstrip() + "\n"


def _test_side(r: dict[str, Any]) -> float:
    """Share of a core the test servers and the client used at the measured rate."""
    per_domain = r["dns_ms_per_domain"] + r["https_ms_per_domain"] + r["client_ms_per_domain"]
    return float(per_domain * r["domains_per_s"] / 1000)


def _who(daemon: str) -> str:
    if daemon == "peer":
        return "postfix-mta-sts-resolver"
    return "mtasts-fast" if daemon == "ours" else f"mtasts-fast ({daemon})"


def _variant_table(
    named: list[dict[str, Any]], pairings: list[str], by: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    """Ours and each ``--variant``, with what each costs against ours."""
    table = []
    for p in pairings:
        o = by.get((p, "ours"))
        for v in named:
            r = by.get((p, v["name"]))
            if not o or not r:
                continue
            dcpu = r["cpu_ms_per_domain"] - o["cpu_ms_per_domain"]
            table.append(
                [
                    *(NAMES[p].split(" vs ")[0], v["name"], f"{r['domains_per_s']:.0f}"),
                    f"{r['cpu_ms_per_domain']:.2f}",
                    f"{r['first_p50_ms']:.1f} / {r['first_p99_ms']:.1f}",
                    f"{r['answered']}/{r['asked']}",
                    f"{r['domains_per_s'] / o['domains_per_s']:.2f}×",
                    f"{dcpu:+.2f} ms ({dcpu / o['cpu_ms_per_domain']:+.0%})",
                ]
            )
    if not table:
        return []
    header = [
        *("cache", "variant", "new domains/s", "CPU ms/domain", "first answer p50 / p99 ms"),
        *("domains answered", "new domains/s vs ours", "CPU cost vs ours"),
    ]
    return [
        "Variants of ours, in the same turns:",
        "",
        *(f"- `{v['name']}`: {v['describe']}" for v in named),
        "",
        *reporting.markdown_table(header, "ll" + "r" * 6, table),
        "",
    ]


def _errors(r: dict[str, Any]) -> str:
    if not r["errors"]:
        return "0"
    return ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items()))


def _targets(pairings: list[str], by: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    found = []
    for p in pairings:
        o, q = by.get((p, "ours")), by.get((p, "peer"))
        if o and q:
            ratio = o["domains_per_s"] / q["domains_per_s"]
            found.append(
                (
                    f"{NAMES[p]}: new domains/s ≥ 3× the peer's",
                    f"{ratio:.1f}×",
                    reporting.verdict(ratio >= 3),
                )
            )
        if o:
            txt = o["txt_per_domain"] == {"1": o["asked"]}
            gets = o["gets_per_domain"] == {"1": o["asked"]}
            found.append(
                (
                    f"{NAMES[p].split(' vs ')[0]}: exactly one TXT query and one GET per domain",
                    f"TXT {_exactly_one(o['txt_per_domain'], o['asked'])}, "
                    f"GET {_exactly_one(o['gets_per_domain'], o['asked'])} domains",
                    reporting.verdict(txt and gets),
                )
            )
    if not found:
        return []
    return [
        "Targets of issue 17 (item 3) in this run:",
        "",
        *reporting.markdown_table(["target", "this run", ""], "lrl", found),
        "",
    ]
