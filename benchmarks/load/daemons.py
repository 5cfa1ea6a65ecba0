"""What ``run.py`` starts: each server's configuration, seeding and start-up checks.

Ours (and each ``--variant``, ``variants.py``) runs in the default
configuration issue 17 names, with only what a benchmark needs on top:

- a ``metrics`` listener on a free loopback port (counting is always on; the
  listener is what an operator turns on): checked with one GET /metrics;
- DANE in ``precedence`` (the default, so nothing to set) and *active*: the
  daemon's ``nameservers`` are the DNS stub of ``dnsstub.py``, which answers
  the DNSSEC probe (SOA of ``dnssec_probe_name``) with the AD bit; the start
  waits for the worker's log line saying so;
- every cached domain's DANE state stored as ``none`` (insecure MX RRset,
  ``seeding.dane_state``), so that a cached lookup reads it and never waits for
  an evaluation: any lookup that did would send a DNS query, which the stub
  counts and never answers;
- ``workers: 1``, ``cache_grace`` 10⁷ s (nothing is revalidated during the
  runs), ``shutdown_timeout`` 5 s; the listener of the section.

The peer and the C reference server are started as before (``run.py``'s
docstring).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import runner
import seeding
import variants
from runner import CACHE_GRACE, Server, log
from variants import Variant

RUN_PY = Path(__file__).resolve().parent / "run.py"
# The in-memory launchers, without run.py's imports (launch.py).
LAUNCH_PY = RUN_PY.parent / "launch.py"
_DANE_ACTIVE = re.compile(r"validates DNSSEC.*DANE detection active")


def dane_expected(config: dict[str, Any]) -> bool:
    """Whether some zone of ``config`` uses DANE (the default zone does unless ``dane: off``)."""
    zones = [config.get("default_zone") or {}, *(config.get("zones") or {}).values()]
    return any((zone or {}).get("dane", "precedence") != "off" for zone in zones)


def wait_dane_active(server: Server, dns: str, timeout: float = 15.0) -> None:
    """Wait until ``server``'s worker logs that the resolver validates DNSSEC (the stub
    at ``dns`` answered its probe); raise if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not _DANE_ACTIVE.search(server.logfile.read_text(errors="replace")):
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name}: DANE detection did not become active within {timeout:g} s "
                f"(resolver {dns}); log:\n{server.logfile.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.05)


class Daemons:
    """Configurations, caches and start-up of the servers of one ``run.py`` run."""

    def __init__(
        self,
        work: Path,
        tools: dict[str, Path],
        peer_python: Path,
        dns: runner.DnsStub,
        records: list[dict[str, Any]],
    ) -> None:
        self.work = work
        self.tools = tools
        self.peer_python = peer_python
        self.dns = dns
        self.records = records
        self.seed = work / "seed.jsonl"
        seeding.write_seed(self.seed, records)
        self.ref_reply = seeding.our_reply(records[0])
        #: What each start of ours or a variant found (DANE active, metrics answering).
        self.checks: list[dict[str, Any]] = []

    # -- configuration -------------------------------------------------------------

    def listen(self, name: str, transport: str) -> tuple[dict[str, Any], str]:
        if transport == "unix":
            path = self.work / f"{name}.sock"
            return {"path": str(path), "mode": 0o666}, f"unix:{path}"
        port = runner.free_port()
        return {"host": "127.0.0.1", "port": port}, f"127.0.0.1:{port}"

    def lmdb_cache(self, name: str) -> dict[str, Any]:
        # One lmdb environment per daemon serves the TCP and the unix sections alike.
        return {
            "type": "lmdb",
            "options": {
                "path": str(self.work / f"{name}.lmdb") + "/",
                "max_entries": max(1_000_000, 2 * len(self.records)),
            },
        }

    def internal_cache(self) -> dict[str, Any]:
        return {"type": "internal", "options": {"cache_size": max(10_000, 2 * len(self.records))}}

    def ours_config(self, name: str, pairing: str, listen: dict[str, Any]) -> dict[str, Any]:
        return {
            **listen,
            "workers": 1,
            "cache_grace": CACHE_GRACE,
            "shutdown_timeout": 5,
            "nameservers": [self.dns.address],
            "metrics": {"host": "127.0.0.1", "port": runner.free_port()},
            "default_zone": {"timeout": 4},
            "cache": self.lmdb_cache(name) if pairing == "persistent" else self.internal_cache(),
        }

    # -- ours and its variants -------------------------------------------------------

    def start_ours(self, variant: Variant, pairing: str, transport: str) -> tuple[Server, Variant]:
        """Start ours (``variant.name == "ours"``) or a variant; the variant comes back
        with the keys its tree did not know (``variants.fit_config``)."""
        name = variant.name
        listen, address = self.listen(name, transport)
        cfg = self.work / f"{name}-{pairing}-{transport}.yml"
        variant = variants.fit_config(variant, self.ours_config(name, pairing, listen), cfg)
        logfile = self.work / f"{name}-{pairing}-{transport}.log"
        if pairing == "persistent":
            argv = [str(variant.venv / "bin" / "mta-sts-daemon"), "-c", str(cfg)]
        else:
            argv = [
                str(variant.venv / "bin" / "python"),
                str(LAUNCH_PY),
                "_launch-ours",
                *("--config", str(cfg), "--seed", str(self.seed)),
            ]
        label = "mtasts-fast" if name == "ours" else f"mtasts-fast ({name})"
        return Server(label, argv, address, logfile), variant

    def check_ours(self, server: Server, variant: Variant, pairing: str, transport: str) -> None:
        """After ``wait_ready``: DANE detection active (unless every zone has DANE off)
        and the metrics endpoint answering, as configured; recorded in ``checks``."""
        cfg = self.work / f"{variant.name}-{pairing}-{transport}.yml"
        config = json.loads(cfg.read_text())
        found: dict[str, Any] = {"daemon": variant.name, "pairing": pairing, "transport": transport}
        expected = dane_expected(config)
        if expected:
            wait_dane_active(server, self.dns.address)
        found["dane_expected"] = found["dane_active"] = expected
        metrics = config.get("metrics")
        if metrics:
            url = f"http://127.0.0.1:{metrics['port']}/metrics"
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = reply.read()
            found["metrics_bytes"] = len(body)
        self.checks.append(found)

    def seed_persistent(self, variant: Variant) -> str | None:
        """Seed ``variant``'s lmdb (policies, then DANE states); return why the
        pairing is skipped, or None."""
        venv = variant.venv
        probe = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import mtasts_fast.cache.lmdb"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            return f"the lmdb cache of {variant.name} is not available ({last})"
        seed = self.work / "seed-now.jsonl"
        seeding.write_seed(seed, self.records, now=time.time())
        cfg = self.work / f"{variant.name}-seed.yml"
        runner.write_yaml(cfg, {"workers": 1, "cache": self.lmdb_cache(variant.name)})
        t0 = time.monotonic()
        done = subprocess.run(
            [str(venv / "bin" / "mta-sts-cache"), "-c", str(cfg), "import", str(seed)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            return f"mta-sts-cache import into lmdb failed: {done.stderr.strip()[-500:]}"
        seed_dane = ["_seed-dane", "--config", str(cfg), "--seed", str(seed)]
        dane = subprocess.run(
            [str(venv / "bin" / "python"), str(RUN_PY), *seed_dane],
            capture_output=True,
            text=True,
        )
        if dane.returncode != 0:
            return f"seeding the DANE states failed: {dane.stderr.strip()[-500:]}"
        states = json.loads(dane.stdout)["states"]
        log(
            f"{variant.name}: lmdb seeded with {len(self.records)} policies and {states} "
            f"DANE states in {time.monotonic() - t0:.1f} s"
        )
        return None

    def show(self, variant: Variant, domain: str) -> str:
        """``mta-sts-cache show DOMAIN`` on ``variant``'s lmdb (for the report's check)."""
        cfg = self.work / f"{variant.name}-seed.yml"
        done = subprocess.run(
            [str(variant.venv / "bin" / "mta-sts-cache"), "-c", str(cfg), "show", domain],
            capture_output=True,
            text=True,
        )
        return done.stdout + done.stderr

    # -- the peer and the reference ----------------------------------------------------

    def start_peer(self, pairing: str, transport: str) -> Server:
        listen, address = self.listen("peer", transport)
        config: dict[str, Any] = {
            **listen,
            "cache_grace": CACHE_GRACE,
            "shutdown_timeout": 5,
            "default_zone": {"timeout": 4},
        }
        argv = [str(self.peer_python), str(LAUNCH_PY), *("_launch-peer", "--dns", self.dns.address)]
        if pairing == "persistent":
            config["cache"] = {
                "type": "sqlite",
                "options": {"filename": str(self.work / "peer.sqlite")},
            }
        else:
            config["cache"] = self.internal_cache()
            argv += ["--seed", str(self.seed)]
        cfg = self.work / f"peer-{pairing}-{transport}.yml"
        runner.write_yaml(cfg, config)
        logfile = self.work / f"peer-{pairing}-{transport}.log"
        return Server("postfix-mta-sts-resolver", [*argv, "--config", str(cfg)], address, logfile)

    def seed_peer(self) -> None:
        seeding.seed_peer_sqlite(self.work / "peer.sqlite", self.records)

    def start_ref(self, transport: str) -> Server:
        _, address = self.listen("ref", transport)
        argv = [str(self.tools["refserver"]), "-r", self.ref_reply, "-t", "3600", address]
        return Server("refserver", argv, address, self.work / f"ref-{transport}.log")
