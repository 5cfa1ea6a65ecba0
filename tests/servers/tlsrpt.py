"""sys4's TLSRPT reporter (tlsrpt-reporter, RFC 8460) in the Debian 13 root.

Postfix 3.10 (``smtp_tlsrpt_enable = yes``) sends one datagram per TLS session
result to ``tlsrpt-collectd``, which counts them per policy in SQLite.
``tlsrpt-fetcher`` reads a finished day back out, and ``tlsrpt-reportd`` turns
it into the RFC 8460 JSON report and delivers it to the ``rua`` of the
domain's ``_smtp._tls`` TXT record (by ``sendmail`` for ``mailto:``)::

    reporter = TlsrptReporter(overlay, netns.name, Path("/var/lib/tlsrpt-test"))
    reporter.start_collectd()          # main.cf: smtp_tlsrpt_socket_name = reporter.socket
    ...                                # mail goes out; Postfix reports
    reporter.wait_sessions(n)          # n session results counted
    day = reporter.close_day()         # the collectd's own day roll-over
    reporter.fetch(day)                # domains; fetch(day, domain): the counts
    reporter.run_reportd(day, sendmail="/usr/sbin/sendmail -C /pf/conf -i -t",
                         done=lambda: ...)

The collectd labels the data with the UTC day it arrived and only hands out
finished days; reportd only reports yesterday. Instead of waiting for midnight,
:meth:`close_day` sends the collectd SIGUSR2, its development hook for the day
roll-over (``switch_to_next_day(RolloverReason.MANUALLYINDUCED)`` in
tlsrpt_reporter/tlsrpt.py): today's counts become yesterday's and the day is
closed, exactly as at midnight. Nothing of the reporter is patched or faked.

All three run chrooted into the overlay (their Python 3.13 venv lives there)
and inside the test's network namespace (``ip netns exec``), so the namespace's
clean-up ends them whatever happens to the test.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.servers.processes import stop_process

__all__ = ["TlsrptReporter"]

_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8")


class TlsrptReporter:
    """collectd, fetcher and reportd with their files under ``directory`` (a chroot path)."""

    def __init__(self, chroot: Path, netns: str, directory: Path) -> None:
        self.chroot = chroot
        self.netns = netns
        self.directory = directory
        self.socket = directory / "tlsrpt.sock"
        self.collectd_db = directory / "collectd.sqlite"
        self.reportd_db = directory / "reportd.sqlite"
        self.collectd_log = directory / "collectd.log"
        self.reportd_log = directory / "reportd.log"
        self.fetcher_log = directory / "fetcher.log"
        self._collectd: subprocess.Popen[bytes] | None = None

    def host_path(self, path: Path) -> Path:
        return self.chroot / path.relative_to("/")

    @property
    def storage(self) -> str:
        return f"sqlite://{self.collectd_db}"

    def _command(self, *argv: str) -> list[str]:
        return [
            *("ip", "netns", "exec", self.netns),
            *("chroot", str(self.chroot), "/usr/bin/env", "-i", *_ENV),
            *argv,
        ]

    # --- collectd ---

    def start_collectd(self, *, socket_group: str = "postfix", timeout: float = 20.0) -> None:
        """Start tlsrpt-collectd; return once its socket exists."""
        host_dir = self.host_path(self.directory)
        host_dir.mkdir(parents=True, exist_ok=True)
        argv = self._command(
            "tlsrpt-collectd",
            *("--storage", self.storage),
            *("--socketname", str(self.socket)),
            # smtp(8) runs as the mail_owner: its group may write to the socket.
            *("--socketgroup", socket_group, "--socketmode", "0220"),
            # Commit every datagram and wake up every second: the fetcher and
            # the test see a session's result at once.
            *("--sockettimeout", "1", "--max_uncommited_datagrams", "1"),
            *("--logfilename", str(self.collectd_log), "--log_level", "debug"),
            *("--pidfilename", str(self.directory / "collectd.pid")),
        )
        out = (host_dir / "collectd.out").open("ab")
        with out:
            self._collectd = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        socket = self.host_path(self.socket)
        deadline = time.monotonic() + timeout
        while not socket.exists():
            if self._collectd.poll() is not None:
                raise RuntimeError(f"tlsrpt-collectd exited:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tlsrpt-collectd made no socket in {timeout} s:\n{self.logs()}")
            time.sleep(0.05)

    def stop_collectd(self) -> None:
        proc, self._collectd = self._collectd, None
        stop_process(proc, timeout=10)

    def results(self) -> list[dict[str, Any]]:
        """Today's rows of the collectd's database: day, domain, policy, counts."""
        path = self.host_path(self.collectd_db)
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT day, domain, policy, cntrtotal, cntrfailure FROM finalresults"
            ).fetchall()
        return [
            {"day": d, "domain": dom, "policy": json.loads(p), "total": t, "failures": f}
            for d, dom, p, t, f in rows
        ]

    def wait_sessions(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``count`` session results are committed; the rows."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.results()
            if sum(row["total"] for row in rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)

    def close_day(self, timeout: float = 20.0) -> str:
        """Roll the collectd over to a new day (SIGUSR2); the day the data now belongs to."""
        assert self._collectd is not None, "tlsrpt-collectd is not running"
        yesterday = self.host_path(self.collectd_db.with_name(self.collectd_db.name + ".yesterday"))
        before = yesterday.stat().st_mtime_ns if yesterday.exists() else 0
        self._collectd.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while True:
            if yesterday.exists() and yesterday.stat().st_mtime_ns != before:
                with contextlib.closing(
                    sqlite3.connect(f"file:{yesterday}?mode=ro", uri=True)
                ) as db:
                    row = db.execute("SELECT daycomplete FROM daystatus").fetchone()
                if row is not None:
                    return str(row[0])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no day roll-over in {timeout} s:\n{self.logs()}")
            time.sleep(0.1)

    # --- fetcher ---

    def fetch(self, day: str, domain: str | None = None) -> subprocess.CompletedProcess[str]:
        """``tlsrpt-fetcher DAY [DOMAIN]``: the domain list, or one domain's counts (JSON)."""
        argv = self._command(
            "tlsrpt-fetcher",
            *("--storage", self.storage, "--logfilename", str(self.fetcher_log)),
            day,
            *([domain] if domain else []),
        )
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    def fetcher_command(self) -> str:
        """The fetcher as reportd runs it (inside the chroot: no prefix)."""
        return f"tlsrpt-fetcher --storage {self.storage} --logfilename {self.fetcher_log}"

    # --- reportd ---

    def run_reportd(
        self,
        *,
        sendmail: str,
        organization: str,
        contact: str,
        sender: str,
        done: Callable[[], bool],
        extra: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> None:
        """Run tlsrpt-reportd until ``done()`` (e.g. "the report arrived"); then stop it."""
        argv = self._command(
            "tlsrpt-reportd",
            *("--dbname", str(self.reportd_db), "--fetchers", self.fetcher_command()),
            *("--organization_name", organization, "--contact_info", contact),
            *("--sender_address", sender, "--sendmail_script", sendmail),
            # Deliver at once (the default spreads reports over ten hours) and
            # run the main loop every second.
            *("--spread_out_delivery", "1", "--interval_main_loop", "1"),
            *("--logfilename", str(self.reportd_log), "--log_level", "debug"),
            *("--pidfilename", str(self.directory / "reportd.pid")),
            *extra,
        )
        out_path = self.host_path(self.directory) / "reportd.out"
        with out_path.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not done():
                if proc.poll() is not None:
                    raise RuntimeError(f"tlsrpt-reportd exited ({proc.returncode}):\n{self.logs()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tlsrpt-reportd did not finish in {timeout} s")
                time.sleep(0.2)
        finally:
            stop_process(proc, timeout=10)

    def logs(self) -> str:
        parts = []
        for name in ("collectd.log", "collectd.out", "fetcher.log", "reportd.log", "reportd.out"):
            path = self.host_path(self.directory) / name
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')}")
        return "\n".join(parts)
