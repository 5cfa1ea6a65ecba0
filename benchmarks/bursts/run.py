"""Count the DNS and HTTPS requests each daemon sends for the same bursts of lookups.

    sudo .venv/bin/python benchmarks/bursts/run.py [--save]

Starts the test world (tests/servers/world.py: a DNS server and HTTPS policy
hosts with a test CA, on 127.0.0.0/8, so root for port 443), then, one after
the other, mtasts-fast and postfix-mta-sts-resolver 1.5.1 (installed into
``benchmarks/.peer/`` by ``make bench-load``, or here if missing), each with
its in-memory cache and one process, and sends each the same bursts, every
daemon with its own fresh domains. The servers count what arrives:

1. 500 concurrent lookups (500 connections) of one domain nobody asked before;
2. 100 concurrent lookups of a cached domain past ``cache_grace`` while the
   DNS server holds its TXT answer back for 10 s (latency, TXT queries);
3. 300 lookups, 20 per second, of a domain whose policy host answers 503;
4. 300 lookups, 20 per second, of a domain with no ``_mta-sts`` record;
5. a policy edited on its host without a new TXT id, then two proactive
   passes (interval 3 s): does the daemon serve the edited policy?

Prints a Markdown table; ``--save`` also writes it under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "load")]

import reporting  # noqa: E402
import runner  # noqa: E402
from runner import Server  # noqa: E402

from tests.servers.world import World  # noqa: E402

OUR_DAEMON = runner.OUR_VENV / "bin" / "mta-sts-daemon"
LOAD_RUN = runner.HERE / "run.py"  # its _launch-peer sub-command starts the peer
CACHE_GRACE = 1
TIMEOUT = 4


def daemon(name: str, argv: list[str], port: int, env: Mapping[str, str], log: Path) -> Server:
    """A started daemon, listening: unpinned, this environment, open-file limit as it is."""
    server = Server(name, argv, f"127.0.0.1:{port}", log, cores=None, env=env, fd_limit=False)
    try:
        server.wait_ready(60)
    except BaseException:
        server.stop()
        raise
    return server


async def ask(port: int, key: str, timeout: float = 60) -> tuple[bytes, float]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(runner.frame(f"{runner.MAP_NAME} {key}".encode()))
        reply = await asyncio.wait_for(runner.read_reply(reader), timeout)
        return reply, time.monotonic() - started
    finally:
        writer.close()


@dataclass
class Row:
    burst: str
    results: dict[str, str] = field(default_factory=dict)


def _policy(world: World, mode: str = "enforce", mx: str = "mail.loc", **site: Any) -> str:
    domain = world.fresh_domain("burst")
    world.add_domain(domain, policy=World.policy_text(mode, [mx]), **site)
    return domain


async def burst_new_domain(world: World, port: int) -> str:
    domain = _policy(world)
    replies = await asyncio.gather(*(ask(port, domain) for _ in range(500)))
    ok = sum(1 for reply, _ in replies if reply.startswith(b"OK secure"))
    return (
        f"{world.txt_queries(domain)} TXT + {world.https_requests(domain)} GET "
        f"({ok}/500 answered OK)"
    )


async def burst_stalled_dns(world: World, port: int) -> str:
    domain = _policy(world)
    await ask(port, domain)
    await asyncio.sleep(CACHE_GRACE + 0.5)
    before = world.txt_queries(domain)
    world.stall_dns(f"_mta-sts.{domain}", 10)
    stalled = time.monotonic()
    try:
        replies = await asyncio.gather(*(ask(port, domain) for _ in range(100)))
        # Count once every held-back query has been answered (the DNS server
        # counts a query when it answers it).
        await asyncio.sleep(max(0.0, stalled + 11 - time.monotonic()))
    finally:
        world.stall_dns(f"_mta-sts.{domain}", 0)
    latencies = sorted(t for _, t in replies)
    ok = sum(1 for reply, _ in replies if reply.startswith(b"OK secure"))
    return (
        f"{world.txt_queries(domain) - before} TXT; latency median "
        f"{latencies[50] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms ({ok}/100 OK)"
    )


async def _stream(port: int, domain: str, count: int = 300, rate: float = 20.0) -> None:
    for _ in range(count):
        started = time.monotonic()
        await ask(port, domain)
        await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))


async def burst_down_host(world: World, port: int) -> str:
    domain = _policy(world, status=503)
    await _stream(port, domain)
    return f"{world.txt_queries(domain)} TXT + {world.https_requests(domain)} GET"


async def burst_no_policy(world: World, port: int) -> str:
    domain = world.fresh_domain("burst")
    world.add_domain(domain, txt=None)
    await _stream(port, domain)
    return f"{world.txt_queries(domain)} TXT"


async def burst_edited_policy(world: World, port: int) -> str:
    domain = _policy(world)
    await ask(port, domain)
    world.set_policy(domain, World.policy_text("enforce", ["other.loc"]))  # same TXT id
    await asyncio.sleep(7.5)  # two passes at interval 3 s
    second, _ = await ask(port, domain)
    seen = b"other.loc" in second
    return (
        f"{'serves the edited policy' if seen else 'still serves the old policy'} "
        f"({world.https_requests(domain)} GET)"
    )


BURSTS: list[tuple[str, Callable[[World, int], Any], bool]] = [
    ("500 concurrent lookups of a new domain", burst_new_domain, False),
    ("100 lookups past cache_grace, TXT answer held 10 s", burst_stalled_dns, False),
    ("300 lookups at 20/s, policy host answers 503", burst_down_host, False),
    ("300 lookups at 20/s, no _mta-sts record", burst_no_policy, False),
    ("policy edited without a new id, 7.5 s of proactive passes", burst_edited_policy, True),
]


def write_config(
    work: Path, name: str, settings: dict[str, Any], proactive: dict[str, Any]
) -> tuple[int, Path]:
    """A free port and a config file listening on it, with the settings both daemons share."""
    port = runner.free_port()
    cfg = work / f"{name}-{port}.yml"
    shared = {"cache_grace": CACHE_GRACE, "default_zone": {"timeout": TIMEOUT}}
    proactive = {"interval": 3, "grace_ratio": 1000, **proactive}
    runner.write_yaml(
        cfg,
        {
            "host": "127.0.0.1",
            "port": port,
            **shared,
            **settings,
            "proactive_policy_fetching": proactive,
        },
    )
    return port, cfg


def our_daemon(world: World, work: Path, proactive: bool) -> Server:
    settings = {
        "workers": 1,
        "cache": {"type": "internal"},
        "nameservers": [world.nameserver],
        "ca_file": world.ca_file,
    }
    port, cfg = write_config(work, "ours", settings, {"enabled": proactive, "jitter": 0})
    argv = [str(OUR_DAEMON), "-c", str(cfg)]
    return daemon("mtasts-fast", argv, port, os.environ, work / "ours.log")


def peer_daemon(world: World, work: Path, peer_python: Path, proactive: bool) -> Server:
    cache = {"type": "internal", "options": {"cache_size": 10_000}}
    port, cfg = write_config(work, "peer", {"cache": cache}, {"enabled": proactive})
    # The peer has no nameservers or ca_file setting: the launcher points its
    # resolver at the test DNS server, and Python's SSL honours SSL_CERT_FILE.
    env = {**os.environ, "SSL_CERT_FILE": world.ca_file}
    argv = [
        str(peer_python),
        str(LOAD_RUN),
        "_launch-peer",
        "--dns",
        world.nameserver,
        "--config",
        str(cfg),
    ]
    return daemon("postfix-mta-sts-resolver 1.5.1", argv, port, env, work / "peer.log")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--save", action="store_true", help="write the table to benchmarks/results/"
    )
    args = parser.parse_args()
    peer_python = runner.ensure_peer(sys.executable)
    world = World()
    world.start()
    rows = [Row(name) for name, _, _ in BURSTS]
    try:
        with tempfile.TemporaryDirectory(prefix="mtasts-bursts-") as tmp:
            work = Path(tmp)
            makers: list[tuple[str, Callable[[bool], Server]]] = [
                ("mtasts-fast", lambda p: our_daemon(world, work, p)),
                (
                    "postfix-mta-sts-resolver 1.5.1",
                    lambda p: peer_daemon(world, work, peer_python, p),
                ),
            ]
            for label, make in makers:
                for proactive in (False, True):
                    server = make(proactive)
                    port = server.port
                    assert port is not None  # TCP on 127.0.0.1
                    try:
                        for row, (_, burst, needs_proactive) in zip(rows, BURSTS, strict=True):
                            if needs_proactive == proactive:
                                print(f"{label}: {row.burst} ...", file=sys.stderr, flush=True)
                                row.results[label] = asyncio.run(burst(world, port))
                    finally:
                        server.stop()
    finally:
        world.stop()
    labels = ["mtasts-fast", "postfix-mta-sts-resolver 1.5.1"]
    lines = [
        f"Requests reaching the test DNS/HTTPS servers, {dt.date.today()}, "
        f"`{' '.join(['python', 'benchmarks/bursts/run.py'])}` "
        f"(one process each, in-memory caches, cache_grace {CACHE_GRACE} s, zone timeout "
        f"{TIMEOUT} s). Counts are queries and requests received by the servers, so a "
        "resolver's retransmission of a query held back counts again.",
        "",
        *reporting.markdown_table(
            ["burst", *labels],
            "l" * (1 + len(labels)),
            ([row.burst, *(row.results.get(x, "-") for x in labels)] for row in rows),
        ),
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.save:
        out = ROOT / "benchmarks" / "results" / f"{dt.date.today()}-bursts.md"
        out.write_text(table)
        print(f"saved {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
