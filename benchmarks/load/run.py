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

The launchers import only the standard library at module level, because the
peer's launcher runs under the peer's own venv.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
BUILD = BENCH / ".build"
PEER_VENV = BENCH / ".peer"
OUR_VENV = ROOT / ".venv"
PEER_REQUIREMENT = "postfix-mta-sts-resolver[sqlite]==1.5.1"
PEER_VERSION = "1.5.1"

SERVER_CORE = "0"
CLIENT_CORE = "1"
CACHE_GRACE = 10_000_000  # seconds: no revalidation during the run
MAX_AGE = 86_400
FD_LIMIT = 65_536
MAP_NAME = "postfix"


# --------------------------------------------------------------------------------------
# Launchers (run inside the daemon's own interpreter; standard library only up here)
# --------------------------------------------------------------------------------------


def _read_seed(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def launch_ours(args: argparse.Namespace) -> int:
    """Run ``mta-sts-daemon`` with its internal cache filled from the seed file."""
    import mtasts_fast.cache as cache_module
    from mtasts_fast import daemon
    from mtasts_fast.cachecli import entry_from_json

    now = time.time()
    entries = []
    for record in _read_seed(args.seed):
        record["fetched_at"] = record["checked_at"] = now  # fresh at start-up
        entries.append(entry_from_json(record))
    original = cache_module.create_cache

    def create_cache(config: Any, filename: str) -> Any:
        cache = original(config, filename)
        setup = cache.setup

        async def setup_and_fill() -> None:
            await setup()
            for entry in entries:
                await cache.put(entry)
            print(
                f"launcher: {len(entries)} entries put into the {config.type} cache",
                file=sys.stderr,
                flush=True,
            )

        cache.setup = setup_and_fill  # type: ignore[method-assign]
        return cache

    cache_module.create_cache = create_cache
    return daemon.main(["-c", args.config, *args.daemon_args])


def launch_peer(args: argparse.Namespace) -> int:
    """Run the peer's ``mta-sts-daemon`` main with a dead DNS server and, for
    ``--seed``, its internal cache filled through its own ``set``."""
    import aiodns
    from postfix_mta_sts_resolver import daemon, utils
    from postfix_mta_sts_resolver.base_cache import CacheEntry

    dns = [args.dns]
    resolver_init = aiodns.DNSResolver.__init__

    def init(self: Any, nameservers: Any = None, *rest: Any, **kw: Any) -> None:
        resolver_init(self, dns, *rest, **kw)

    aiodns.DNSResolver.__init__ = init  # type: ignore[method-assign]

    if args.seed:
        records = _read_seed(args.seed)
        original = utils.create_cache

        def create_cache(cache_type: str, options: Any) -> Any:
            cache = original(cache_type, options)
            setup = cache.setup

            async def setup_and_fill() -> None:
                await setup()
                now = time.time()
                for r in records:
                    body = peer_policy_body(r)
                    await cache.set(r["domain"], CacheEntry(now, r["policy_id"], body))
                print(
                    f"launcher: {len(records)} entries set in the {cache_type} cache",
                    file=sys.stderr,
                    flush=True,
                )

            cache.setup = setup_and_fill
            return cache

        utils.create_cache = create_cache
    sys.argv = ["mta-sts-daemon", "-c", args.config, *args.daemon_args]
    return int(daemon.main())


def peer_policy_body(record: dict[str, Any]) -> dict[str, Any]:
    # The dict the peer's parser builds from a policy file (mx first, then the
    # other keys in file order; max_age is stored as an int).
    return {
        "mx": list(record["mx"]),
        "version": "STSv1",
        "mode": record["mode"],
        "max_age": record["max_age"],
    }


# --------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_tools() -> dict[str, Path]:
    BUILD.mkdir(exist_ok=True)
    tools = {}
    for name in ("loadgen", "refserver"):
        src, exe = HERE / f"{name}.c", BUILD / name
        if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
            cc = os.environ.get("CC", "cc")
            log(f"building {exe.relative_to(ROOT)}")
            subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
        tools[name] = exe
    return tools


def ensure_peer(python: str) -> Path:
    py = PEER_VENV / "bin" / "python"
    probe = "import importlib.metadata as m; print(m.version('postfix_mta_sts_resolver'))"
    if py.exists():
        found = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == PEER_VERSION:
            return py
    log(f"installing {PEER_REQUIREMENT} and uvloop into {PEER_VENV.relative_to(ROOT)}")
    subprocess.run([python, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PEER_REQUIREMENT,
            "uvloop",
        ],
        check=True,
    )
    return py


def pip_freeze(python: Path) -> list[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )
    return out.stdout.split()


def make_domains(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Records of domains ``start`` to ``start + n - 1`` (scaling.py seeds 10⁶ in chunks)."""
    records = []
    for i in range(start, start + n):
        domain = f"d{i:07d}.bench.test"
        mx = [f"mx1.{domain}", f"*.mail.{domain}"]
        lines = [
            "version: STSv1",
            "mode: enforce",
            *(f"mx: {m}" for m in mx),
            f"max_age: {MAX_AGE}",
        ]
        records.append(
            {
                "format": 1,
                "domain": domain,
                "policy_id": f"bench{i}",
                "mode": "enforce",
                "max_age": MAX_AGE,
                "mx": mx,
                "lines": lines,
                "fetched_at": 0.0,
                "checked_at": 0.0,  # set to "now" when seeded
            }
        )
    return records


def our_reply(record: dict[str, Any]) -> str:
    # mtasts_fast/reply.py: lower-case, policy order, "*.x" written ".x".
    match = ":".join(m[1:] if m.startswith("*.") else m for m in record["mx"])
    return f"OK secure match={match} servername=hostname"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_peer_sqlite(filename: Path, records: list[dict[str, Any]]) -> None:
    """Write the peer's schema (sqlite_cache.py 1.5.1) and one fresh row per domain."""
    now = int(time.time())
    db = sqlite3.connect(filename)
    with db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "create table if not exists proactive_fetch_ts "
            "(id integer primary key, last_fetch_ts integer)"
        )
        db.execute(
            "create table if not exists sts_policy_cache "
            "(domain text, ts integer, pol_id text, pol_body text)"
        )
        db.execute(
            "create unique index if not exists sts_policy_domain on sts_policy_cache (domain)"
        )
        db.execute(
            "create index if not exists sts_policy_domain_ts on sts_policy_cache (domain, ts)"
        )
        db.executemany(
            "insert into sts_policy_cache (domain, ts, pol_id, pol_body) values (?, ?, ?, ?)",
            ((r["domain"], now, r["policy_id"], json.dumps(peer_policy_body(r))) for r in records),
        )
    db.close()


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    # JSON is YAML; avoids needing PyYAML in this process.
    path.write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


class DnsSink:
    """A DNS server that never answers: counts the queries a daemon sends."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def drain(self) -> int:
        count = 0
        for _ in range(1_000_000):
            try:
                self.sock.recvfrom(4096)
            except BlockingIOError:
                break
            count += 1
        return count


def _raise_fd_limit() -> None:
    # Like LimitNOFILE= in a systemd unit: 1024 client connections do not fit
    # the usual soft limit of 1024. Applied to every server alike.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = FD_LIMIT if hard == resource.RLIM_INFINITY else min(FD_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def _clean_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class Server:
    """One server process pinned to the server core (``cores=None``: not pinned)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        address: str,
        logfile: Path,
        cores: str | None = SERVER_CORE,
    ) -> None:
        self.name = name
        self.address = address
        self.logfile = logfile
        self._log = open(logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["taskset", "-c", cores, *argv] if cores else argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
            preexec_fn=_raise_fd_limit,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the server: same pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; "
                    f"log:\n{self.logfile.read_text(errors='replace')[-3000:]}"
                )
            if _can_connect(self.address):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.address} within {timeout} s")

    def rss_kib(self) -> list[int]:
        return tree_rss_kib(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _can_connect(address: str) -> bool:
    if address.startswith("unix:"):
        family, target = socket.AF_UNIX, address[5:]
    else:
        host, _, port = address.rpartition(":")
        family, target = socket.AF_INET, (host, int(port))  # type: ignore[assignment]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(target)
        except OSError:
            return False
    return True


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss_kib(pid: int) -> list[int]:
    """VmRSS of ``pid`` and of each of its descendants (a supervisor and its workers)."""
    tree, todo, sizes = _children(), [pid], []
    while todo:
        p = todo.pop(0)
        todo.extend(tree.get(p, []))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]))
    return sizes


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
        self.dns = DnsSink()
        self.runs: list[dict[str, Any]] = []
        self.rss: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.records = make_domains(args.domains)
        self.seed = work / "seed.jsonl"
        with self.seed.open("w") as fh:
            for r in self.records:
                fh.write(json.dumps(r) + "\n")
        self.keys = work / "keys.txt"
        with self.keys.open("w") as fh:
            for r in self.records:
                fh.write(f"{r['domain']}\t{our_reply(r)}\n")
        self.ref_reply = our_reply(self.records[0])

    # -- configuration -------------------------------------------------------------

    def _listen(self, name: str, transport: str) -> tuple[dict[str, Any], str]:
        if transport == "unix":
            path = self.work / f"{name}.sock"
            return {"path": str(path), "mode": 0o666}, f"unix:{path}"
        port = free_port()
        return {"host": "127.0.0.1", "port": port}, f"127.0.0.1:{port}"

    def start_ours(self, pairing: str, transport: str) -> Server:
        listen, address = self._listen("ours", transport)
        config: dict[str, Any] = {
            **listen,
            "workers": 1,
            "cache_grace": CACHE_GRACE,
            "shutdown_timeout": 5,
            "nameservers": [self.dns.address],
            "default_zone": {"timeout": 4},
        }
        if pairing == "persistent":
            config["cache"] = {
                "type": "lmdb",
                "options": {
                    "path": str(self.work / "ours.lmdb") + "/",
                    "max_entries": max(1_000_000, 2 * len(self.records)),
                },
            }
        else:
            config["cache"] = {
                "type": "internal",
                "options": {"cache_size": max(10_000, 2 * len(self.records))},
            }
        cfg = self.work / f"ours-{pairing}-{transport}.yml"
        write_yaml(cfg, config)
        logfile = self.work / f"ours-{pairing}-{transport}.log"
        if pairing == "persistent":
            argv = [str(OUR_VENV / "bin" / "mta-sts-daemon"), "-c", str(cfg)]
        else:
            argv = [
                str(OUR_VENV / "bin" / "python"),
                str(Path(__file__).resolve()),
                "_launch-ours",
                "--config",
                str(cfg),
                "--seed",
                str(self.seed),
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
            "_launch-peer",
            "--dns",
            self.dns.address,
        ]
        if pairing == "persistent":
            config["cache"] = {
                "type": "sqlite",
                "options": {"filename": str(self.work / "peer.sqlite")},
            }
        else:
            config["cache"] = {
                "type": "internal",
                "options": {"cache_size": max(10_000, 2 * len(self.records))},
            }
            argv += ["--seed", str(self.seed)]
        cfg = self.work / f"peer-{pairing}-{transport}.yml"
        write_yaml(cfg, config)
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
        now = time.time()
        with seed.open("w") as fh:
            for r in self.records:
                fh.write(json.dumps({**r, "fetched_at": now, "checked_at": now}) + "\n")
        # One lmdb environment serves the TCP and the unix sections alike.
        cfg = self.work / "ours-seed.yml"
        write_yaml(
            cfg,
            {
                "workers": 1,
                "cache": {
                    "type": "lmdb",
                    "options": {
                        "path": str(self.work / "ours.lmdb") + "/",
                        "max_entries": max(1_000_000, 2 * len(self.records)),
                    },
                },
            },
        )
        t0 = time.monotonic()
        done = subprocess.run(
            [str(OUR_VENV / "bin" / "mta-sts-cache"), "-c", str(cfg), "import", str(seed)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            return f"mta-sts-cache import into lmdb failed: {done.stderr.strip()[-500:]}"
        log(f"lmdb seeded with {len(self.records)} entries in {time.monotonic() - t0:.1f} s")
        seed_peer_sqlite(self.work / "peer.sqlite", self.records)
        return None

    # -- running -----------------------------------------------------------------------

    def loadgen(
        self,
        server: Server,
        conns: int,
        duration: float,
        warmup: float,
        label: str,
        set_match: bool,
    ) -> dict[str, Any]:
        argv = [
            "taskset",
            "-c",
            CLIENT_CORE,
            str(self.tools["loadgen"]),
            "-c",
            str(conns),
            "-d",
            str(duration),
            "-w",
            str(warmup),
            "-k",
            str(self.keys),
            "-m",
            MAP_NAME,
            "-P",
            str(server.pid),
            "-l",
            label,
        ]
        if server.name == "refserver":
            argv += ["-e", self.ref_reply]
        if set_match:
            argv.append("-s")
        argv.append(server.address)
        self.dns.drain()
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 700, preexec_fn=_raise_fd_limit
        )
        if done.returncode != 0:
            raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr}")
        report: dict[str, Any] = json.loads(done.stdout)
        report["dns_queries"] = self.dns.drain()
        report["server_cpu_util"] = (
            report["server_cpu_s"] / report["duration_s"]
            if report.get("server_cpu_s") is not None
            else None
        )
        # Core time used by neither the server nor loadgen: other load on the machine.
        busy = report.get("core_busy") or []
        core_s, core_c = int(SERVER_CORE), int(CLIENT_CORE)
        if len(busy) > max(core_s, core_c):
            report["other_load"] = [
                round(max(0.0, busy[core_s] - (report["server_cpu_util"] or 0.0)), 3),
                round(max(0.0, busy[core_c] - report["client_cpu_util"]), 3),
            ]
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} died during the run; see {server.logfile}")
        return report

    def measure(self, server: Server, conns: int, label: str, set_match: bool) -> dict[str, Any]:
        """One loadgen run; repeated (at most ``--retries`` times) while other
        processes used more than ``--max-other-load`` of either core, keeping
        the least disturbed attempt."""
        a = self.args
        best: dict[str, Any] | None = None
        for attempt in range(1, a.retries + 2):
            report = self.loadgen(server, conns, a.duration, a.warmup, label, set_match)
            report["attempt"] = attempt
            other = max(report.get("other_load", [0.0, 0.0]))
            if best is None or other < max(best.get("other_load", [0.0, 0.0])):
                best = report
            if other <= a.max_other_load or attempt > a.retries:
                break
            log(f"{label}: other processes used {other:.0%} of a core; measuring again")
        assert best is not None
        return best

    def verify(self, server: Server) -> None:
        """A short pass over the keys: every reply must be right and no DNS query sent."""
        report = self.loadgen(
            server, 8, 1.0, 0.0, f"verify {server.name}", server.name == "postfix-mta-sts-resolver"
        )
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
                        server = servers[who]
                        label = f"{pairing}/{transport}/{who}/c{conns}/r{rep + 1}"
                        report = self.measure(server, conns, label, who == "peer")
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
            for s in servers.values():
                s.stop()

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


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["pairing"], r["transport"], r["connections"], r["daemon"]), []).append(
            r
        )
    rows = []
    for (pairing, transport, conns, daemon), rs in groups.items():
        rps = [r["rps"] for r in rs]
        rows.append(
            {
                "pairing": pairing,
                "transport": transport,
                "connections": conns,
                "daemon": daemon,
                "reps": len(rs),
                "rps": _median(rps),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50_ms": _median([r["latency_us"]["p50"] / 1000 for r in rs]),
                "p99_ms": _median([r["latency_us"]["p99"] / 1000 for r in rs]),
                "p999_ms": _median([r["latency_us"]["p999"] / 1000 for r in rs]),
                "cpu_us": _median(
                    [
                        r["server_cpu_us_per_req"]
                        for r in rs
                        if r["server_cpu_us_per_req"] is not None
                    ]
                ),
                "server_cpu_util": _median(
                    [r["server_cpu_util"] for r in rs if r["server_cpu_util"] is not None]
                ),
                "client_cpu_util": _median([r["client_cpu_util"] for r in rs]),
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


def check_targets(rows: list[dict[str, Any]]) -> list[str]:
    """The speed targets of DESIGN.md §7 / issue 5, one table row each, per transport."""
    by = {(r["pairing"], r["transport"], r["connections"], r["daemon"]): r for r in rows}
    out = []

    def row(what: str, value: str, ok: bool | None) -> None:
        verdict = "–" if ok is None else ("met" if ok else "**not met**")
        out.append(f"| {what} | {value} | {verdict} |")

    for transport in ("tcp", "unix"):
        for pairing, want, name in (
            ("persistent", 12.0, "lmdb vs sqlite"),
            ("memory", 2.0, "internal vs internal"),
        ):
            o, p = (
                by.get((pairing, transport, 128, "ours")),
                by.get((pairing, transport, 128, "peer")),
            )
            if o and p:
                ratio = o["rps"] / p["rps"]
                row(
                    f"{transport}: 128 conns, {name}: req/s ≥ {want:g}× the peer's",
                    f"{ratio:.1f}×",
                    ratio >= want,
                )
                row(
                    f"{transport}: 128 conns, {name}: CPU ≤ 10 µs/lookup",
                    f"{o['cpu_us']:.1f} µs",
                    o["cpu_us"] <= 10.0,
                )
            for conns in (1024,):
                o, p = (
                    by.get((pairing, transport, conns, "ours")),
                    by.get((pairing, transport, conns, "peer")),
                )
                if o and p:
                    ratio = o["rps"] / p["rps"]
                    row(
                        f"{transport}: 1024 conns, {name}: no errors, no reply lost; "
                        f"ratio ≥ {want:g}×",
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
            o, ref = by.get((pairing, transport, 128, "ours")), None
            for ref_pairing in ("memory", "persistent"):
                ref = ref or by.get((ref_pairing, transport, 128, "ref"))
            if o and ref:
                row(
                    f"{transport}: 128 conns, {pairing}: p99 ≤ 1.5× refserver's",
                    f"{o['p99_ms']:.3f} ms vs {ref['p99_ms']:.3f} ms "
                    f"({o['p99_ms'] / ref['p99_ms']:.2f}×)",
                    o["p99_ms"] <= 1.5 * ref["p99_ms"],
                )
    if out:
        out = [
            "Speed targets (DESIGN.md §7, issue 5) in this run:",
            "",
            "| target | this run | |",
            "|---|--:|---|",
            *out,
            "",
        ]
    return out


def render_markdown(
    meta: dict[str, Any], rows: list[dict[str, Any]], rss: list[dict[str, Any]], notes: list[str]
) -> str:
    by = {(r["pairing"], r["transport"], r["connections"], r["daemon"]): r for r in rows}
    out = [f"# Socketmap load benchmark, {meta['date']} on {meta['host']}", ""]
    out += [
        f"- Machine: {meta['cpu']} × {meta['cpus']} cores, Linux {meta['kernel']}, "
        f"Python {meta['python']}",
        f"- mtasts-fast {meta['ours_version']} (commit {meta['commit'][:12]}"
        f"{', dirty tree' if meta['dirty'] else ''}) vs postfix-mta-sts-resolver "
        f"{PEER_VERSION} (uvloop {meta['peer_uvloop']})",
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
    if pairs:
        out += [
            "| cache (ours vs peer) | transport | conns | ours req/s | peer req/s | ratio "
            "| ours CPU µs/lookup | peer CPU µs/lookup | CPU ratio | ours p50 / p99 / p99.9 ms "
            "| peer p50 / p99 / p99.9 ms | errors ours/peer | lost ours/peer | DNS queries |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for pairing, transport in pairs:
            caches = "lmdb vs sqlite" if pairing == "persistent" else "internal vs internal"
            for conns in meta["connections"]:
                o = by.get((pairing, transport, conns, "ours"))
                p = by.get((pairing, transport, conns, "peer"))
                if not o or not p:
                    continue
                out.append(
                    f"| {caches} | {transport} | {conns} | {_k(o['rps'])} | {_k(p['rps'])} "
                    f"| **{o['rps'] / p['rps']:.1f}×** | {o['cpu_us']:.1f} | {p['cpu_us']:.1f} "
                    f"| {p['cpu_us'] / o['cpu_us']:.1f}× "
                    f"| {o['p50_ms']:.3f} / {o['p99_ms']:.3f} / {o['p999_ms']:.3f} "
                    f"| {p['p50_ms']:.3f} / {p['p99_ms']:.3f} / {p['p999_ms']:.3f} "
                    f"| {o['errors']}/{p['errors']} | {o['lost']}/{p['lost']} "
                    f"| {o['dns_queries'] + p['dns_queries']} |"
                )
        out.append("")
    refs = [r for r in rows if r["daemon"] == "ref"]
    if refs:
        out += [
            "Load generator ceiling: loadgen against `refserver` (a trivial C epoll server "
            "sending a fixed reply of the same size), same cores, same run.",
            "",
            "| transport | conns | refserver req/s | p50 / p99 / p99.9 ms | refserver CPU µs/req "
            "| loadgen CPU use | ours (same section) ÷ ceiling |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for r in sorted(refs, key=lambda r: (r["transport"] != "tcp", r["connections"])):
            mine = by.get((r["pairing"], r["transport"], r["connections"], "ours"))
            share = f"{mine['rps'] / r['rps']:.0%}" if mine else "–"
            out.append(
                f"| {r['transport']} | {r['connections']} | {_k(r['rps'])} "
                f"| {r['p50_ms']:.3f} / {r['p99_ms']:.3f} / {r['p999_ms']:.3f} "
                f"| {r['cpu_us']:.1f} | {r['client_cpu_util']:.0%} | {share} |"
            )
        out.append("")
    if rss:
        out += [
            "RSS of the whole process tree (per process in brackets: supervisor first).",
            "",
            "| cache | transport | daemon | RSS idle | RSS after the runs | lookups measured |",
            "|---|---|---|--:|--:|--:|",
        ]

        def mib(sizes: list[int]) -> str:
            total = f"{sum(sizes) / 1024:.1f} MiB"
            if len(sizes) < 2:
                return total
            return total + " [" + " + ".join(f"{x / 1024:.1f}" for x in sizes) + "]"

        for r in rss:
            name = "mtasts-fast" if r["daemon"] == "ours" else "postfix-mta-sts-resolver"
            out.append(
                f"| {r['pairing']} | {r['transport']} | {name} "
                f"| {mib(r['idle_per_process_kib'])} | {mib(r['after_per_process_kib'])} "
                f"| {r['lookups_measured']:,} |"
            )
        out.append("")
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


def machine_meta(args: argparse.Namespace, peer_python: Path) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True)
        return done.stdout.strip()

    ours = subprocess.run(
        [
            str(OUR_VENV / "bin" / "python"),
            "-c",
            "import mtasts_fast; print(mtasts_fast.__version__)",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    freeze = pip_freeze(peer_python)
    uv = next((x.split("==")[1] for x in freeze if x.lower().startswith("uvloop==")), "?")
    return {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "host": socket.gethostname(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "ours_version": ours,
        "peer_freeze": freeze,
        "peer_uvloop": uv,
        "domains": args.domains,
        "duration": args.duration,
        "warmup": args.warmup,
        "reps": args.reps,
        "connections": args.connections,
        "command": " ".join(["benchmarks/load/run.py", *sys.argv[1:]]),
    }


def save(results_dir: Path, meta: dict[str, Any], markdown: str, data: dict[str, Any]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-{meta['host']}"
    base, n = results_dir / stem, 2
    while base.with_suffix(".md").exists():
        base, n = results_dir / f"{stem}-{n}", n + 1
    base.with_suffix(".md").write_text(markdown)
    base.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    return base.with_suffix(".md")


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
    p = argparse.ArgumentParser(
        prog="run.py",
        description="Side-by-side socketmap load benchmark: mtasts-fast vs "
        "postfix-mta-sts-resolver 1.5.1 (see the module docstring).",
    )
    p.add_argument("--domains", type=int, default=1000, help="cached domains (default 1000)")
    p.add_argument(
        "--duration", type=float, default=3.0, help="measured seconds per run (default 3)"
    )
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds (default 0.5)")
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
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
    p.add_argument(
        "--max-other-load",
        type=float,
        default=0.2,
        help="repeat a run when other processes used more than this share of the "
        "server's or loadgen's core during it (default 0.2)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="repeats allowed per run for --max-other-load (default 2)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 repetition of 1 s (a smoke test; the numbers are noisier)",
    )
    p.add_argument("--results-dir", type=Path, default=BENCH / "results")
    p.add_argument("--no-save", action="store_true", help="print the table only")
    p.add_argument(
        "--keep-workdir", action="store_true", help="keep configs, caches, keys and daemon logs"
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
        lp = argparse.ArgumentParser(prog=f"run.py {argv[0]}")
        lp.add_argument("--config", required=True)
        lp.add_argument("--seed")
        lp.add_argument("--dns")
        lp.add_argument("daemon_args", nargs="*")
        largs = lp.parse_args(argv[1:])
        return launch_ours(largs) if argv[0] == "_launch-ours" else launch_peer(largs)

    args = build_parser().parse_args(argv)
    if args.quick:
        args.duration, args.reps, args.warmup, args.retries = 1.0, 1, 0.3, 0
    if not 1 <= args.domains <= 10_000_000 or not 0 < args.duration <= 600 or args.reps < 1:
        print("run.py: --domains 1..10^7, --duration 0..600 s, --reps >= 1", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("run.py: needs two cores (daemon on core 0, loadgen on core 1)", file=sys.stderr)
        return 2
    for tool in ("taskset",):
        if not shutil.which(tool):
            print(f"run.py: {tool} not found (util-linux)", file=sys.stderr)
            return 2
    if not (OUR_VENV / "bin" / "mta-sts-daemon").exists():
        print(f"run.py: {OUR_VENV}/bin/mta-sts-daemon missing; run `make compile`", file=sys.stderr)
        return 2

    tools = build_tools()
    peer_python = ensure_peer(args.python)
    work = Path(tempfile.mkdtemp(prefix="mtasts-bench-"))
    started = time.monotonic()
    try:
        bench = Bench(args, tools, peer_python, work)
        bench.run()
    finally:
        if args.keep_workdir:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    meta = machine_meta(args, peer_python)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    rows = summarise(bench.runs)
    markdown = render_markdown(meta, rows, bench.rss, bench.notes)
    print(markdown)
    if not args.no_save:
        path = save(
            args.results_dir,
            meta,
            markdown,
            {
                "meta": meta,
                "summary": rows,
                "rss": bench.rss,
                "notes": bench.notes,
                "runs": bench.runs,
            },
        )
        log(
            f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
            f"(and .json) after {meta['elapsed_s']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
