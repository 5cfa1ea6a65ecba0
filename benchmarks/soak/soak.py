#!/usr/bin/env python3
"""Memory and file-descriptor soak of the real ``mta-sts-daemon`` (issue 7, item 6).

``make soak`` runs this file; ``SOAK_SECONDS`` (default 1800) sets how long.
What it does, in order (benchmarks/soak/README.md explains the numbers):

1. Starts the test world of ``tests/servers/world.py`` in a child process
   (fixtures and load generator must not share one GIL): a DNS server and
   HTTPS policy hosts with a throwaway CA, on 127.0.0.0/8 only.
2. Starts ``python -m mtasts_fast`` (supervisor and ``--workers`` workers) with
   the default LMDB cache in a temporary directory, pointed at that world.
3. Primes it: fetches every "hit" domain once (so later lookups are cache
   hits) and sends a burst of distinct parent-domain probes, so the bounded
   in-process memos (normalised keys, decoded LMDB entries) reach their size
   limit before measuring starts instead of filling during the run.
4. Drives ``--connections`` client connections (default 200) for the run:

   ========  ====================================================  ==========
   share     lookup                                                expected
   ========  ====================================================  ==========
   hit       one of ``--hit-domains`` cached enforce domains        ``OK ...``
   miss      a domain never seen before, with a valid policy        ``OK ...``
   fresh     a never-seen domain that fails: NXDOMAIN, broken       ``NOTFOUND``
   failure   policy body, HTTPS host refusing connections, TXT
             query never answered (costs the zone ``timeout``)
   repeat    one of a few fixed failing domains, over and over      ``NOTFOUND``
   failure   (the negative cache, if the daemon has one, absorbs
             these; without one each is fetched again)
   ========  ====================================================  ==========

   Every connection is closed and reopened after a random number of lookups,
   as Postfix recycles its socketmap connections.
5. Every ``--interval`` seconds samples VmRSS, RssAnon (/proc/PID/status) and
   the number of open descriptors (/proc/PID/fd) of the supervisor and of each
   worker, and prints one table row.
6. At the end prints the verdict: after the warm-up (``--warmup``, default 20 %
   of the run), the maximum of each total over the last third of the samples
   must be within ``--rss-tolerance`` (10 %) of the maximum over the first
   third for VmRSS and RssAnon, and within ``--fd-slack`` (20) for descriptors;
   no worker may have been restarted, and no lookup may have failed hard (a
   reset, no reply within 30 s, a ``TEMP`` or malformed reply). A hit or a
   miss answered ``NOTFOUND`` is counted and shown but is not a failure: it is
   what the daemon must answer when a fetch fails (RFC 8461 §3.3), and on a
   loaded host the Python DNS/HTTPS fixtures sometimes miss the timeout.
   Exit status 0 when all of that holds, 1 otherwise.

The soak does not depend on which caching the daemon does for failures: with
negative caching the repeat failures are answered from memory, without it they
are fetched again; the expected reply is ``NOTFOUND`` either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "load")]

import runner  # noqa: E402
from runner import frame, read_reply  # noqa: E402

from tests.servers.world import World, WorldUnavailable  # noqa: E402

# Where an HTTPS policy host is "down": nothing listens on this loopback
# address, so a connection is refused at once (the world uses 127.0.0.2-254).
DEAD_HTTPS_IP = "127.255.255.254"
REPLY_TIMEOUT = 30.0
NOTFOUND = b"NOTFOUND "


def expected_ok(domain: str) -> bytes:
    return b"OK secure match=mx.%s servername=hostname" % domain.encode()


# --- the daemon's processes ----------------------------------------------------------


@dataclasses.dataclass
class ProcSample:
    pid: int
    vm_rss: int  # kB
    rss_anon: int  # kB
    fds: int


def sample_process(pid: int) -> ProcSample | None:
    """None once the process has gone (or is a zombie: no memory left to read)."""
    try:
        memory = runner.memory_kib(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return ProcSample(pid, memory["VmRSS"], memory["RssAnon"], fds)
    except (FileNotFoundError, ProcessLookupError, KeyError):
        return None


@dataclasses.dataclass
class Row:
    elapsed: float
    sup: ProcSample
    workers: list[ProcSample]
    lookups: int
    errors: int

    @property
    def vm_rss(self) -> int:
        return self.sup.vm_rss + sum(w.vm_rss for w in self.workers)

    @property
    def rss_anon(self) -> int:
        return self.sup.rss_anon + sum(w.rss_anon for w in self.workers)

    @property
    def fds(self) -> int:
        return self.sup.fds + sum(w.fds for w in self.workers)


# --- load -------------------------------------------------------------------------------


@dataclasses.dataclass
class Stats:
    by_kind: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    lookups: int = 0
    connections: int = 0
    slowest: float = 0.0


class WorldProcess:
    """The test world in a child process, driven over a pipe.

    The DNS and HTTPS fixtures are Python too; sharing a process (and its GIL)
    with 200 busy client connections would make them slow enough to time out
    the daemon's lookups, which would measure the fixtures, not the daemon.
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_world_main, args=(child,), daemon=True)
        self._proc.start()
        reply = self._conn.recv()
        if isinstance(reply, str):
            self._proc.join()
            raise WorldUnavailable(reply)
        self.nameserver, self.ca_file = reply
        self._lock = threading.Lock()

    def apply(self, ops: list[tuple[str, str]]) -> None:
        """Run ``(how, domain)`` operations in the world; see ``_world_main``."""
        with self._lock:
            self._conn.send(ops)
            self._conn.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send(None)
            self._conn.recv()
        self._proc.join(15)


def _world_main(conn: Any) -> None:
    world = World()
    try:
        world.start()
    except WorldUnavailable as exc:
        conn.send(str(exc))
        return
    conn.send((world.nameserver, world.ca_file))
    try:
        while (ops := conn.recv()) is not None:
            for how, domain in ops:
                if how == "good":
                    world.add_domain(domain, policy=world.policy_text("enforce", [f"mx.{domain}"]))
                elif how == "broken":
                    world.add_domain(domain, policy="this is not a policy\n")
                elif how == "https-down":
                    world.add_domain(domain)
                    world.zone.set(f"mta-sts.{domain}", "A", [DEAD_HTTPS_IP])
                elif how == "dns-timeout":
                    world.add_domain(domain)
                    world.stall_dns(f"_mta-sts.{domain}", None)
                elif how == "remove":
                    world.remove(domain)
                elif how != "nxdomain":  # nxdomain: never added, every name is NXDOMAIN
                    raise ValueError(how)
            conn.send(True)
        conn.send(True)
    finally:
        world.stop()


FAILING = ("nxdomain", "broken", "https-down", "dns-timeout")


class Load:
    """Owns the fresh domains and the client connections."""

    def __init__(self, world: WorldProcess, port: int, args: argparse.Namespace) -> None:
        self.world = world
        self.port = port
        self.args = args
        self.stats = Stats()
        self.hits: list[str] = []
        self.repeat_failures: list[str] = []
        self.stop = asyncio.Event()
        self._rng = random.Random(args.seed)
        self._names = itertools.count(1)
        self._ready: dict[str, asyncio.Queue[str]] = {
            how: asyncio.Queue() for how in ("good", *FAILING)
        }
        self._used: list[str] = []
        self._wanted = asyncio.Event()

    def name(self, prefix: str) -> str:
        return f"{prefix}{next(self._names)}-{self._rng.getrandbits(24):06x}.loc"

    async def _apply(self, ops: list[tuple[str, str]]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.world.apply, ops)

    # domains

    async def setup_domains(self) -> None:
        self.hits = [self.name("hit") for _ in range(self.args.hit_domains)]
        ops = [("good", d) for d in self.hits]
        for i in range(12):
            domain = self.name("rep")
            ops.append((FAILING[i % 3], domain))
            self.repeat_failures.append(domain)
        for i in range(0, len(ops), 2000):
            await self._apply(ops[i : i + 2000])

    async def keep_domains_ready(self) -> None:
        """Register fresh domains ahead of use, in batches; remove used ones."""
        while True:
            ops: list[tuple[str, str]] = [("remove", d) for d in self._used]
            self._used = []
            added: list[tuple[str, str]] = []
            for how, queue in self._ready.items():
                if queue.qsize() < 100:
                    added += [(how, self.name(f"f{how[:2]}")) for _ in range(200)]
            if ops or added:
                await self._apply(ops + added)
                for how, domain in added:
                    self._ready[how].put_nowait(domain)
            self._wanted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), 0.5)

    async def fresh(self, how: str) -> str:
        queue = self._ready[how]
        if queue.qsize() < 100:
            self._wanted.set()
        return await queue.get()

    # one lookup

    async def pick(self) -> tuple[str, bytes, bytes, str | None]:
        """(kind, key, expected reply, fresh domain to remove afterwards)."""
        roll = self._rng.random()
        a = self.args
        if roll < a.miss_share:
            domain = await self.fresh("good")
            return "miss", domain.encode(), expected_ok(domain), domain
        roll -= a.miss_share
        if roll < a.fresh_failure_share:
            how = self._rng.choice(("nxdomain", "broken", "https-down", "dns-timeout"))
            if how == "dns-timeout" and self._rng.random() > a.timeout_fraction:
                how = "https-down"
            domain = await self.fresh(how)
            return f"fail-{how}", domain.encode(), NOTFOUND, domain
        roll -= a.fresh_failure_share
        if roll < a.repeat_failure_share:
            domain = self._rng.choice(self.repeat_failures)
            return "repeat-fail", domain.encode(), NOTFOUND, None
        domain = self._rng.choice(self.hits)
        return "hit", domain.encode(), expected_ok(domain), None

    async def client(self, index: int) -> None:
        rng = random.Random(self.args.seed * 1000 + index)
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), REPLY_TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                self.stats.errors[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            self.stats.connections += 1
            try:
                for _ in range(rng.randint(1, self.args.max_per_connection)):
                    if self.stop.is_set():
                        break
                    kind, key, expected, fresh = await self.pick()
                    started = time.monotonic()
                    try:
                        writer.write(frame(b"postfix " + key))
                        reply = await asyncio.wait_for(read_reply(reader), REPLY_TIMEOUT)
                    finally:
                        if fresh is not None:
                            self._used.append(fresh)
                    took = time.monotonic() - started
                    self.stats.slowest = max(self.stats.slowest, took)
                    self.stats.lookups += 1
                    self.stats.by_kind[kind] += 1
                    if reply != expected:
                        self.stats.errors[f"{kind}: {reply[:40]!r}"] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                self.stats.errors[f"io: {type(exc).__name__}"] += 1
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    # priming

    async def prime(self) -> None:
        """Fetch every hit domain once; fill the key memos to their bound."""
        queue = list(self.hits)
        failures: Counter[str] = Counter()

        async def fetch_some() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                while queue:
                    domain = queue.pop()
                    writer.write(frame(b"postfix " + domain.encode()))
                    reply = await asyncio.wait_for(read_reply(reader), REPLY_TIMEOUT)
                    if reply != expected_ok(domain):
                        failures[reply[:40].decode("ascii", "replace")] += 1
            finally:
                writer.close()

        await asyncio.gather(*(fetch_some() for _ in range(64)))
        if failures:
            raise SystemExit(f"priming: unexpected replies {dict(failures)}")

        # Parent-domain probes are answered at once, but each distinct key is
        # remembered by the worker's normalisation memo (bounded, cleared when
        # full). Twice the bound per worker, pipelined over many connections so
        # SO_REUSEPORT spreads them over every worker.
        per_conn = 4096
        total = self.args.memo_fill
        batches = [range(i, min(i + per_conn, total)) for i in range(0, total, per_conn)]

        async def probe(batch: range) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                writer.write(b"".join(frame(b"postfix .p%d.prime.loc" % i) for i in batch))
                for _ in batch:
                    reply = await asyncio.wait_for(read_reply(reader), REPLY_TIMEOUT)
                    if reply != NOTFOUND:
                        raise SystemExit(f"priming: probe answered {reply!r}")
            finally:
                writer.close()

        for start in range(0, len(batches), 16):
            await asyncio.gather(*(probe(b) for b in batches[start : start + 16]))


# --- report -----------------------------------------------------------------------------


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


HEADER = (
    f"{'t (s)':>7} {'VmRSS sup':>9} {'VmRSS wrk':>9} {'RssAnon Σ':>9} "
    f"{'fd sup':>6} {'fd wrk':>6} {'lookups/s':>9} {'errors':>6}"
)


def format_row(row: Row, rate: float) -> str:
    return (
        f"{row.elapsed:7.0f} {mib(row.sup.vm_rss):>9} "
        f"{mib(sum(w.vm_rss for w in row.workers)):>9} {mib(row.rss_anon):>9} "
        f"{row.sup.fds:>6} {sum(w.fds for w in row.workers):>6} {rate:9.0f} {row.errors:>6}"
    )


@dataclasses.dataclass
class Verdict:
    flat: bool
    lines: list[str]


def judge(rows: list[Row], args: argparse.Namespace, restarts: int, errors: int) -> Verdict:
    measured = [r for r in rows if r.elapsed >= args.warmup]
    lines: list[str] = []
    if len(measured) < 6:
        return Verdict(False, [f"only {len(measured)} samples after warm-up; need 6 or more"])
    third = len(measured) // 3
    first, last = measured[:third], measured[-third:]
    flat = True
    for name, unit in (("vm_rss", "MiB"), ("rss_anon", "MiB")):
        a = max(getattr(r, name) for r in first)
        b = max(getattr(r, name) for r in last)
        ok = b <= a * (1 + args.rss_tolerance)
        flat &= ok
        lines.append(
            f"{name}: first-third max {mib(a)} {unit}, last-third max {mib(b)} {unit} "
            f"({(b - a) / a * 100:+.1f} %, limit +{args.rss_tolerance * 100:.0f} %) "
            f"{'ok' if ok else 'GROWING'}"
        )
    a = max(r.fds for r in first)
    b = max(r.fds for r in last)
    ok = b <= a + args.fd_slack
    flat &= ok
    lines.append(
        f"fds: first-third max {a}, last-third max {b} ({b - a:+d}, limit +{args.fd_slack}) "
        f"{'ok' if ok else 'GROWING'}"
    )
    if restarts:
        flat = False
        lines.append(f"workers restarted: {restarts} (a worker died)")
    if errors:
        flat = False
        lines.append(
            f"lookups that failed (reset, no reply in {REPLY_TIMEOUT:.0f} s, TEMP): {errors}"
        )
    return Verdict(flat, lines)


def is_hard_error(kind: str) -> bool:
    """A connection or protocol failure, or a TEMP reply: never acceptable.

    ``NOTFOUND`` for a hit or a miss is not one: it is what the daemon must
    answer when the policy fetch fails (RFC 8461 §3.3), and on a loaded host
    the Python DNS/HTTPS fixtures do sometimes miss the zone timeout. Those
    are counted and shown, but the verdict is about memory and descriptors.
    """
    return not kind.endswith("b'NOTFOUND '")


# --- main ------------------------------------------------------------------------------


def write_config(directory: Path, world: WorldProcess, port: int, args: argparse.Namespace) -> Path:
    config = directory / "soak.yml"
    config.write_text(
        f"host: 127.0.0.1\n"
        f"port: {port}\n"
        f"workers: {args.workers}\n"
        f"nameservers: ['{world.nameserver}']\n"
        f"ca_file: {world.ca_file}\n"
        f"shutdown_timeout: 5\n" + cache_section(directory, args) + f"default_zone:\n"
        f"  timeout: {args.zone_timeout}\n"
    )
    return config


def cache_section(directory: Path, args: argparse.Namespace) -> str:
    if args.cache == "internal":
        return f"cache:\n  type: internal\n  options:\n    cache_size: {args.max_entries}\n"
    return (
        f"cache:\n  type: lmdb\n  options:\n"
        f"    path: {directory / 'cache.lmdb'}\n"
        f"    max_entries: {args.max_entries}\n"
    )


async def soak(world: WorldProcess, proc: subprocess.Popen[bytes], port: int, args: Any) -> int:
    load = Load(world, port, args)
    await load.setup_domains()
    keeper = asyncio.ensure_future(load.keep_domains_ready())
    print(f"priming: {len(load.hits)} hit domains, {args.memo_fill} probe keys", flush=True)
    started = time.monotonic()
    await load.prime()
    print(f"primed in {time.monotonic() - started:.0f} s", flush=True)

    initial_workers = set(runner.children(proc.pid))
    seen_workers = set(initial_workers)
    clients = [asyncio.ensure_future(load.client(i)) for i in range(args.connections)]
    rows: list[Row] = []
    print(HEADER, flush=True)
    t0 = time.monotonic()
    last_lookups, last_t = 0, t0
    try:
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                print(f"daemon exited with {proc.returncode}", flush=True)
                return 1
            pids = runner.children(proc.pid)
            seen_workers.update(pids)
            sup = sample_process(proc.pid)
            workers = [s for s in (sample_process(p) for p in pids) if s is not None]
            if sup is not None:
                errors = sum(load.stats.errors.values())
                row = Row(now - t0, sup, workers, load.stats.lookups, errors)
                rows.append(row)
                rate = (load.stats.lookups - last_lookups) / max(now - last_t, 1e-9)
                print(format_row(row, rate), flush=True)
                last_lookups, last_t = load.stats.lookups, now
            if now - t0 >= args.seconds:
                break
            await asyncio.sleep(min(args.interval, max(0.0, t0 + args.seconds - now)))
    finally:
        load.stop.set()
        await asyncio.wait(clients, timeout=REPLY_TIMEOUT + 5)
        for task in clients:
            task.cancel()
        keeper.cancel()

    restarts = len(seen_workers - initial_workers)
    stats = load.stats
    print()
    print(
        f"lookups: {stats.lookups} in {args.seconds:.0f} s "
        f"({stats.lookups / args.seconds:.0f}/s), connections opened: {stats.connections}, "
        f"slowest reply: {stats.slowest:.2f} s"
    )
    print("by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.by_kind.items())))
    if stats.errors:
        print(
            "unexpected replies: " + ", ".join(f"{k} ×{v}" for k, v in stats.errors.most_common(10))
        )
    hard = sum(n for kind, n in stats.errors.items() if is_hard_error(kind))
    verdict = judge(rows, args, restarts, hard)
    print(f"warm-up: first {args.warmup:.0f} s excluded; {len(rows)} samples in all")
    for line in verdict.lines:
        print("  " + line)
    print("VERDICT: " + ("flat" if verdict.flat else "NOT flat"), flush=True)
    return 0 if verdict.flat else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 1800)))
    p.add_argument("--interval", type=float, default=None, help="sample period (s)")
    p.add_argument("--warmup", type=float, default=None, help="seconds not judged (20 %%)")
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--hit-domains", type=int, default=12_000)
    p.add_argument("--cache", choices=("lmdb", "internal"), default="lmdb")
    p.add_argument("--max-entries", type=int, default=20_000, help="cache bound (entries)")
    p.add_argument("--memo-fill", type=int, default=4 * 65_536, help="distinct probe keys")
    p.add_argument("--miss-share", type=float, default=0.03)
    p.add_argument("--fresh-failure-share", type=float, default=0.03)
    p.add_argument("--repeat-failure-share", type=float, default=0.04)
    p.add_argument("--timeout-fraction", type=float, default=0.1, help="of dns-timeout picks")
    p.add_argument("--zone-timeout", type=float, default=10.0)
    p.add_argument("--max-per-connection", type=int, default=500)
    p.add_argument("--rss-tolerance", type=float, default=0.10)
    p.add_argument("--fd-slack", type=int, default=20)
    p.add_argument("--seed", type=int, default=8461)
    p.add_argument("--log", type=Path, default=None, help="daemon log (default: temp dir)")
    args = p.parse_args(argv)
    if args.interval is None:
        args.interval = max(5.0, args.seconds / 60)
    if args.warmup is None:
        args.warmup = args.seconds * 0.2
    return args


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        world = WorldProcess()
    except WorldUnavailable as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mtasts-soak-") as tmp:
        directory = Path(tmp)
        port = runner.free_port()
        config = write_config(directory, world, port, args)
        log_path = args.log or directory / "daemon.log"
        log_path.write_bytes(b"")  # this run's log only: tracebacks are counted in it
        # Not pinned, this environment (MTASTS_NO_EXTENSIONS and the like pass
        # through), the open-file limit as it is.
        daemon = runner.Server(
            "mta-sts-daemon",
            [sys.executable, "-m", "mtasts_fast", "-c", str(config), "-v", "warning"],
            f"127.0.0.1:{port}",
            log_path,
            cores=None,
            env=os.environ,
            cwd=ROOT,
            fd_limit=False,
        )
        proc = daemon.proc
        try:
            try:
                daemon.wait_ready(30.0)
            except RuntimeError as exc:
                raise SystemExit(str(exc)) from None
            print(
                f"daemon pid {proc.pid}, {args.workers} workers, port {port}, "
                f"{args.connections} connections, {args.seconds:.0f} s, "
                f"sample every {args.interval:.0f} s",
                flush=True,
            )
            with asyncio.Runner(loop_factory=_loop_factory()) as loop:
                code = loop.run(soak(world, proc, port, args))
        finally:
            daemon.stop()
            world.stop()
        text = Path(log_path).read_text(errors="replace")
        tracebacks = text.count("Traceback")
        errors = sum(1 for line in text.splitlines() if " ERROR " in line or "CRITICAL" in line)
        print(
            f"daemon log: {len(text.splitlines())} lines, {errors} ERROR, {tracebacks} tracebacks"
        )
        if tracebacks:
            print("\n".join(text.splitlines()[-40:]))
            code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
