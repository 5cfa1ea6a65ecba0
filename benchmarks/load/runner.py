"""What the load, scaling, soak and burst benchmarks share: processes and measurement.

- set-up: building loadgen/refserver, the peer's venv, free ports, config files,
  a work directory, the command-line options every loadgen-driven script has;
- server processes: start (pinned with ``taskset``, open-file limit raised,
  clean environment), wait until they listen, stop; the DNS stub that counts
  what it receives (``dnsstub.py``: it answers nothing, or only the DNSSEC probe);
- /proc: the process tree, RSS of a tree, memory fields, CPU ticks, load average;
- loadgen: one run, its JSON report and the other load on the machine during it,
  repeated while the machine was too busy;
- socketmap client helpers (netstrings).

``reporting.py`` holds what their reports share.

``run.py`` and ``scaling.py`` import this file from their own directory
(``sys.path[0]``); ``soak.py`` and ``bursts/run.py`` put that directory on
``sys.path`` first. Standard library only: ``run.py``'s launchers, which
import it too, run under the peer's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dnsstub import DnsStub as DnsStub  # re-exported: the load scripts' DNS

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
BUILD = BENCH / ".build"
PEER_VENV = BENCH / ".peer"
OUR_VENV = ROOT / ".venv"
PEER_VERSION = "1.5.1"
PEER_REQUIREMENT = f"postfix-mta-sts-resolver[sqlite]=={PEER_VERSION}"

SERVER_CORE = "0"
CLIENT_CORE = "1"
CACHE_GRACE = 10_000_000  # seconds: no revalidation during the run
FD_LIMIT = 65_536
MAP_NAME = "postfix"


# --------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def preflight(prog: str) -> bool:
    """Whether the pinned load benchmarks can run on this machine; says why not."""
    why = None
    if (os.cpu_count() or 1) < 2:
        why = f"needs two cores (daemon on core {SERVER_CORE}, loadgen on core {CLIENT_CORE})"
    elif not shutil.which("taskset"):
        why = "taskset not found (util-linux)"
    elif not (OUR_VENV / "bin" / "mta-sts-daemon").exists():
        why = f"{OUR_VENV}/bin/mta-sts-daemon missing; run `make compile`"
    if why:
        print(f"{prog}: {why}", file=sys.stderr)
    return why is None


def build_tools() -> dict[str, Path]:
    """``loadgen`` and ``refserver``, rebuilt when older than their sources."""
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
    """The interpreter of the peer's venv, installed (from PyPI) when missing or stale."""
    py = PEER_VENV / "bin" / "python"
    probe = "import importlib.metadata as m; print(m.version('postfix_mta_sts_resolver'))"
    if py.exists():
        found = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == PEER_VERSION:
            return py
    log(f"installing {PEER_REQUIREMENT} and uvloop into {PEER_VENV.relative_to(ROOT)}")
    subprocess.run([python, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, PEER_REQUIREMENT, "uvloop"], check=True)
    return py


def pip_freeze(python: Path) -> list[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )
    return out.stdout.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    # JSON is YAML; avoids needing PyYAML in this process.
    path.write_text(json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def workdir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary directory for configs, caches, keys and logs; removed unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def csv_choices(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated items, each one of ``choices``."""

    def parse(text: str) -> list[str]:
        items = [x for x in text.split(",") if x]
        for x in items:
            if x not in choices:
                raise argparse.ArgumentTypeError(f"{x!r} is not one of {', '.join(choices)}")
        return items

    return parse


def add_run_options(p: argparse.ArgumentParser, reps: str, quick: str) -> None:
    """The options every loadgen-driven benchmark has (``reps``, ``quick``: their help)."""
    p.add_argument("--reps", type=int, default=3, help=reps)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument(
        "--duration", type=float, default=3.0, help="measured seconds per run (default 3)"
    )
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds (default 0.5)")
    p.add_argument(
        "--max-other-load",
        type=float,
        default=0.2,
        help="repeat a run when other processes used more than this share of a core "
        "during it (default 0.2)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="repeats allowed per run for --max-other-load (default 2)",
    )
    p.add_argument("--results-dir", type=Path, default=BENCH / "results")
    p.add_argument("--no-save", action="store_true", help="print the table only")
    p.add_argument(
        "--keep-workdir", action="store_true", help="keep configs, caches, keys and daemon logs"
    )


def parse_run_args(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed; ``--quick`` makes it one repetition of 1 s and no retry."""
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.reps, args.warmup, args.retries = 1.0, 1, 0.3, 0
    return args


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    # Like LimitNOFILE= in a systemd unit: 1024 client connections do not fit
    # the usual soft limit of 1024. Applied to every server alike.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = FD_LIMIT if hard == resource.RLIM_INFINITY else min(FD_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def clean_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class Server:
    """One server process, its output appended to ``logfile``.

    The load benchmarks' defaults: pinned to the server core (``cores=None``:
    not pinned), a clean environment (``env``: this one instead) and the
    open-file limit raised (``fd_limit=False``: inherited).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        address: str,
        logfile: Path,
        *,
        cores: str | None = SERVER_CORE,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        fd_limit: bool = True,
    ) -> None:
        self.name = name
        self.address = address
        self.logfile = logfile
        self.pinned = cores is not None
        self.port = None if address.startswith("unix:") else int(address.rpartition(":")[2])
        self._log = open(logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["taskset", "-c", cores, *argv] if cores is not None else argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=clean_env() if env is None else dict(env),
            cwd=cwd,
            preexec_fn=raise_fd_limit if fd_limit else None,
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
            if can_connect(self.address):
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


def can_connect(address: str) -> bool:
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


def stop_all(servers: Iterable[Server]) -> None:
    for server in servers:
        server.stop()


# --------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------


def process_tree() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process."""
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


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a supervisor's workers), sorted."""
    return sorted(process_tree().get(pid, []))


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem of one process (KiB); none for a zombie."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            found[name] = int(value.split()[0])
    return found


def tree_rss_kib(pid: int) -> list[int]:
    """VmRSS of ``pid`` and of each of its descendants (a supervisor and its workers)."""
    tree, todo, sizes = process_tree(), [pid], []
    while todo:
        p = todo.pop(0)
        todo.extend(tree.get(p, []))
        with contextlib.suppress(OSError, KeyError):
            sizes.append(memory_kib(p)["VmRSS"])
    return sizes


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, all its threads, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------------------
# loadgen
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Window:
    """One loadgen run's shape: connections, measured seconds, warm-up seconds."""

    conns: int
    duration: float
    warmup: float


VERIFY = Window(8, 1.0, 0.0)  # a short pass over the keys before measuring


class Loadgen:
    """Runs ``loadgen`` against one server (on the client core when the server is pinned)."""

    def __init__(self, exe: Path, dns: DnsStub) -> None:
        self.exe = exe
        self.dns = dns

    def run(
        self,
        server: Server,
        keys: Path,
        window: Window,
        label: str,
        options: Sequence[str] = (),
        watch: Callable[[subprocess.Popen[str]], None] | None = None,
    ) -> dict[str, Any]:
        """loadgen's JSON report, with the DNS queries the server sent meanwhile
        (``dns_queries``) and the server's CPU use (``server_cpu_util``, cores).
        ``watch`` is called while loadgen runs (it gets the process)."""
        argv = [
            str(self.exe),
            *("-c", str(window.conns), "-d", str(window.duration), "-w", str(window.warmup)),
            *("-k", str(keys), "-m", MAP_NAME, "-P", str(server.pid), "-l", label),
            *options,
            server.address,
        ]
        if server.pinned:
            argv = ["taskset", "-c", CLIENT_CORE, *argv]
        self.dns.drain()
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=raise_fd_limit,
        )
        try:
            if watch:
                watch(proc)
            out, err = proc.communicate(timeout=window.duration + 700)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed ({proc.returncode}): {err}")
        report: dict[str, Any] = json.loads(out)
        report["dns_queries"] = self.dns.drain()
        report["server_cpu_util"] = (
            report["server_cpu_s"] / report["duration_s"]
            if report.get("server_cpu_s") is not None
            else None
        )
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} died during the run; see {server.logfile}")
        return report


def other_load_per_core(report: dict[str, Any]) -> list[float] | None:
    """Time of the server core and of the client core used by neither the server
    nor loadgen (other load on the machine), from loadgen's ``core_busy``."""
    busy = report.get("core_busy") or []
    core_s, core_c = int(SERVER_CORE), int(CLIENT_CORE)
    if len(busy) <= max(core_s, core_c):
        return None
    return [
        round(max(0.0, busy[core_s] - (report["server_cpu_util"] or 0.0)), 3),
        round(max(0.0, busy[core_c] - report["client_cpu_util"]), 3),
    ]


def least_disturbed(
    attempt: Callable[[], dict[str, Any]],
    disturbance: Callable[[dict[str, Any]], float],
    label: str,
    max_other_load: float,
    retries: int,
) -> dict[str, Any]:
    """One run, repeated (at most ``retries`` times) while other processes used
    more than ``max_other_load`` of a core during it; the least disturbed
    attempt is kept, its number in ``attempt``."""
    best: dict[str, Any] | None = None
    for n in range(1, retries + 2):
        report = attempt()
        report["attempt"] = n
        other = disturbance(report)
        if best is None or other < disturbance(best):
            best = report
        if other <= max_other_load or n > retries:
            break
        log(f"{label}: other processes used {other:.0%} of a core; measuring again")
    assert best is not None
    return best


# --------------------------------------------------------------------------------------
# Socketmap client
# --------------------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """One netstring: Postfix's socketmap framing."""
    return b"%d:%b," % (len(payload), payload)


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b":")
    body = await reader.readexactly(int(head[:-1]) + 1)
    if body[-1:] != b",":
        raise ValueError(f"reply not terminated by ',': {body[-20:]!r}")
    return body[:-1]
