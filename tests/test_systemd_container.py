"""mtasts-fast run the way operators run it: systemd as PID 1 in a booted Debian 13 (issue 14).

One container for the whole module (tests/systemd_lab.py): Debian 13 booted
with systemd-nspawn, mtasts-fast installed from its sdist and started by the
commands of README's "Installing as a service", the test DNS, policy host and
receiving MX on the container's private loopback, Debian's Postfix with its
default ``master.cf``. Every test leaves the service as README's steps left
it (socket and service active, the README configuration), so the tests do
not depend on each other's order.

What systemd itself must show: ``Type=notify`` reaching "active" only once a
worker answers; the ``DynamicUser=`` and the LMDB cache in the
``StateDirectory=`` surviving a restart; ``systemd-analyze security``'s score
as README states it; a reload and a restart during a client loop refusing and
failing no lookup (the latter thanks to socket activation, and a control
without the socket unit showing that the loop does notice refusals); the
watchdog aborting a stopped supervisor and restarting it; the supervisor
replacing a killed worker; two template instances side by side; Postfix's
chrooted smtp(8) reaching the daemon through the unix socket in
/var/spool/postfix and delivering an ``enforce`` domain's mail over verified
TLS; the daemon's lines in ``journalctl -u mta-sts-daemon``.

Needs root, systemd-nspawn and the Debian 13 root (``make roots``): without
them the tests skip, and under ``MTASTS_REQUIRE_ALL=1`` they fail with the
reason, as does a container that cannot boot.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mtasts_fast import __version__
from tests.roots import compiled_pass_only
from tests.systemd_lab import (
    CONFIG,
    EDITS,
    ENFORCE,
    MX_HOST,
    MX_IP,
    PORT,
    README,
    UNIT,
    UNIX_SOCKET,
    Lab,
    assert_no_errors,
    readme_block,
    started,
    wait_until,
)

pytestmark = [compiled_pass_only, pytest.mark.slow, pytest.mark.timeout(300)]

GOOD = f"OK secure match={MX_HOST} servername=hostname".encode()
GOOD_NO_SNI = f"OK secure match={MX_HOST}".encode()
PAYLOAD = f"postfix {ENFORCE}".encode()
TCP = ("127.0.0.1", PORT)
POLICY_HOST = f"mta-sts.{ENFORCE}"
# systemd's range for DynamicUser= uids (systemd.exec(5)).
DYNAMIC_UIDS = range(61184, 65520)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with started(tmp_path_factory.mktemp("systemd-lab")) as instance:
        yield instance
        # House rule: an exception the test servers' loop swallowed is a failure.
        assert instance.loop.errors == [], instance.loop.errors


@pytest.fixture
def readme_config(lab: Lab) -> Iterator[dict[str, Any]]:
    """The configuration README's steps left; written back (and restarted on) after the test."""
    original = dict(lab.settings)
    yield dict(original)
    if lab.settings != original:
        lab.write_config(original)
        lab.settings = original
        lab.restart()


def _reconfigure(lab: Lab, settings: dict[str, Any]) -> None:
    lab.settings = settings
    lab.write_config(settings)


# -- installation (README steps 1-3, run by the fixture) ---------------------------------------


def test_readme_steps_install_and_start_the_service(lab: Lab) -> None:
    assert lab.ok("systemctl", "is-enabled", "mta-sts-daemon.socket", UNIT).split() == [
        "enabled",
        "enabled",
    ]
    assert lab.ok("systemctl", "is-active", "mta-sts-daemon.socket", UNIT).split() == [
        "active",
        "active",
    ]
    # Built from the sdist for the container's Python, compiled modules included.
    assert lab.ok("/opt/mta-sts/bin/mta-sts-daemon", "--version").split()[-1] == __version__
    assert lab.ok("/opt/mta-sts/bin/python", "--version").startswith("Python 3.13.")
    lab.ok(
        "/opt/mta-sts/bin/python",
        "-c",
        "import mtasts_fast.netstring, mtasts_fast.matcher",
        env={"MTASTS_REQUIRE_EXTENSIONS": "1"},
    )
    # Only Postfix (group postfix) and root can connect to the unix socket.
    assert lab.ok("stat", "-c", "%U:%G %a %F", UNIX_SOCKET).strip() == "root:postfix 660 socket"
    connect = f"import socket; socket.socket(socket.AF_UNIX).connect({UNIX_SOCKET!r})"
    as_postfix = ("setpriv", "--reuid=postfix", "--regid=postfix", "--init-groups")
    lab.ok(*as_postfix, "python3", "-c", connect)
    as_nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    refused = lab.run(*as_nobody, "python3", "-c", connect)
    assert "PermissionError" in refused.stderr, refused.stderr
    assert lab.ask(TCP, PAYLOAD) == GOOD
    assert lab.ask(UNIX_SOCKET, PAYLOAD) == GOOD
    lab.wait_journal(
        re.escape(
            f"socket activation: serving the 2 sockets systemd passed (mta-sts-daemon.socket): "
            f"unix:{UNIX_SOCKET}, 127.0.0.1:{PORT}; the configured host/port "
            f"(127.0.0.1:{PORT}) is among them"
        )
    )


def test_readme_checks_security_score_and_journal(lab: Lab) -> None:
    """README step 5: status, the daemon's journal lines, the sandbox's score as stated."""
    status, journal, security = (lab.ok("sh", "-c", c) for c in readme_block("systemd-analyze"))
    assert re.search(r"Active: active \(running\)", status), status
    assert re.search(
        rf"mta-sts-daemon\[\d+\]: .* INFO +\[\d+\] mtasts_fast\.workers: mtasts-fast "
        rf"{re.escape(__version__)}: 2 workers answering on "
        rf"unix:{UNIX_SOCKET}, 127\.0\.0\.1:{PORT}",
        journal,
    ), journal
    claimed = re.search(r"the sandbox rates `(\d+\.\d) (\w+)`", README.read_text())
    assert claimed is not None, "README states no systemd-analyze security score"
    measured = re.search(
        r"Overall exposure level for mta-sts-daemon\.service: (\S+) (\w+)", security
    )
    assert measured is not None, security
    assert measured.groups() == claimed.groups(), security


# -- Type=notify, DynamicUser, StateDirectory ---------------------------------------------------


LOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
# In WAL mode only an exclusive locking mode keeps readers out too.
connection.execute("PRAGMA locking_mode=EXCLUSIVE")
connection.execute("BEGIN EXCLUSIVE")
open(sys.argv[2], "w").close()
time.sleep(60)
"""


def test_active_only_once_a_worker_answers(lab: Lab, readme_config: dict[str, Any]) -> None:
    """Type=notify: "activating" for as long as the workers cannot answer, "active" after."""
    # A sqlite cache that another process keeps locked: a worker waits for it
    # (up to the cache's timeout, sqlite.py) before it answers.
    database = "/var/lib/mta-sts/startup.db"
    slow = {"type": "sqlite", "options": {"filename": database, "timeout": 30}}
    _reconfigure(lab, {**readme_config, "cache": slow})
    lab.restart()  # the daemon creates the file, as its user
    lab.ok("systemctl", "stop", UNIT)  # its workers' connections would keep the locker out
    locked = "/root/mtasts-test-locked"  # on the overlay (/run is the container's tmpfs)
    lab.ok("systemd-run", "--unit=mtasts-test-locker", "python3", "-c", LOCKER, database, locked)
    try:
        wait_until(lambda: lab.file(locked).exists(), 10, "the lock")
        lab.ok("systemctl", "reset-failed", UNIT)
        lab.ok("systemctl", "start", "--no-block", UNIT)
        wait_until(lambda: lab.show(UNIT, "ActiveState") == "activating", 10, "the restart")
        supervisor = 0
        for _ in range(15):
            assert lab.show(UNIT, "ActiveState") == "activating", lab.diagnostics()
            supervisor = supervisor or lab.main_pid()
            time.sleep(0.1)
        assert supervisor != 0  # the daemon runs, its workers do not answer yet
        with pytest.raises(TimeoutError):
            lab.ask(TCP, PAYLOAD, timeout=0.5)
    finally:
        lab.run("systemctl", "stop", "mtasts-test-locker")
    # The lock is gone: the workers answer, and only now is the service active.
    assert lab.wait_active(timeout=10) == supervisor
    assert lab.ask(TCP, PAYLOAD) == GOOD

    # A cache that cannot be opened at all never answers: never "active". The
    # start-up check after the privilege drop (access.py) finds it before any
    # worker starts and says which path and which user, in one line.
    _reconfigure(
        lab, {**readme_config, "cache": {"type": "sqlite", "options": {"filename": "/no/cache.db"}}}
    )
    mark = lab.cursor()
    lab.ok("systemctl", "reset-failed", UNIT)
    assert lab.run("systemctl", "restart", UNIT).returncode != 0
    text = lab.journal_text(after=mark)
    assert re.search(r"ERROR .* /: not writable by user uid \d+, who runs the daemon", text), text
    assert "status=2/INVALIDARGUMENT" in text
    assert "Failed with result 'exit-code'" in text
    assert not re.search(r"^Started ", text, re.M), text
    _reconfigure(lab, readme_config)
    lab.restart()
    assert lab.ask(TCP, PAYLOAD) == GOOD


def test_dynamic_user_and_the_lmdb_cache_survive_a_restart(lab: Lab) -> None:
    supervisor = lab.main_pid()
    uids = {lab.uid(pid) for pid in [supervisor, *lab.worker_pids()]}
    assert len(uids) == 1, uids
    assert uids <= set(DYNAMIC_UIDS), uids
    assert lab.show(UNIT, "DynamicUser") == "yes"
    # StateDirectory= with DynamicUser=: /var/lib/mta-sts links to private/mta-sts.
    assert lab.ok("readlink", "/var/lib/mta-sts").strip() == "private/mta-sts"
    owner = lab.ok("stat", "-c", "%u", "/var/lib/private/mta-sts/cache.lmdb").strip()
    assert int(owner) in uids

    assert lab.ask(TCP, PAYLOAD) == GOOD
    fetches = lab.https.requests(POLICY_HOST)
    assert fetches >= 1
    lab.restart()
    assert lab.main_pid() != supervisor
    assert lab.ask(TCP, PAYLOAD) == GOOD
    assert lab.ask(UNIX_SOCKET, PAYLOAD) == GOOD
    # Answered from the LMDB file the previous daemon wrote: no new fetch.
    assert lab.https.requests(POLICY_HOST) == fetches


# -- reload, restart, watchdog ------------------------------------------------------------------


def test_reload_during_lookups_refuses_nothing(lab: Lab, readme_config: dict[str, Any]) -> None:
    loops = [lab.client_loop(TCP, PAYLOAD), lab.client_loop(UNIX_SOCKET, PAYLOAD)]
    for loop in loops:
        loop.start()
    time.sleep(0.3)
    supervisor = lab.main_pid()
    mark = lab.cursor()

    # A changed configuration takes effect.
    _reconfigure(lab, {**readme_config, "default_zone": {"require_sni": False}})
    lab.ok("systemctl", "reload", UNIT)
    lab.wait_journal(rf"reloaded {CONFIG}: 2 workers answering on", after=mark)
    reloaded = time.monotonic()
    time.sleep(0.3)
    assert lab.ask(TCP, PAYLOAD) == GOOD_NO_SNI

    # An invalid one is logged in the journal; the running one is kept.
    invalid = lab.cursor()
    _reconfigure(lab, {**readme_config, "default_zone": {"require_sni": "maybe"}})
    lab.ok("systemctl", "reload", UNIT)
    line = lab.wait_journal(r"keeping the running configuration", after=invalid).message
    assert f"{CONFIG}: default_zone.require_sni: expected true or false" in line
    time.sleep(0.3)
    assert lab.ask(UNIX_SOCKET, PAYLOAD) == GOOD_NO_SNI
    for loop in loops:
        loop.finish()

    assert lab.main_pid() == supervisor
    assert lab.show(UNIT, "ActiveState") == "active"
    for loop in loops:
        assert (loop.refused, loop.failures) == (0, []), lab.diagnostics()
        late = {reply for sent, reply in loop.replies if sent > reloaded}
        assert late == {GOOD_NO_SNI}, late
    assert_no_errors(lab.journal(after=mark), allowed=[r"keeping the running configuration"])


def test_restart_with_socket_activation_refuses_nothing(lab: Lab) -> None:
    loops = [lab.client_loop(TCP, PAYLOAD), lab.client_loop(UNIX_SOCKET, PAYLOAD)]
    for loop in loops:
        loop.start()
    time.sleep(0.3)
    mark = lab.cursor()
    pids = [lab.main_pid()]
    for _ in range(2):
        lab.restart()
        pids.append(lab.main_pid())
        time.sleep(0.3)
    for loop in loops:
        loop.finish()
    assert len(set(pids)) == 3, pids
    for loop in loops:
        assert (loop.refused, loop.failures) == (0, []), lab.diagnostics()
        assert {reply for _, reply in loop.replies} == {GOOD}
    # The socket file stays systemd's: no worker removed it or tried to.
    assert lab.ok("stat", "-c", "%F", UNIX_SOCKET).strip() == "socket"
    assert_no_errors(lab.journal(after=mark))


def test_without_the_socket_unit_a_restart_refuses_connections(lab: Lab) -> None:
    """The control for the test above: the client loop does notice refusals."""
    lab.ok("systemctl", "stop", "mta-sts-daemon.socket", UNIT)
    try:
        mark = lab.cursor()
        lab.start(UNIT)
        # The daemon bound its configured address itself.
        lab.wait_journal(rf"answering on 127\.0\.0\.1:{PORT}$", after=mark)
        assert "socket activation" not in lab.journal_text(after=mark)
        loop = lab.client_loop(TCP, PAYLOAD)
        loop.start()
        time.sleep(0.3)
        lab.restart()
        time.sleep(0.3)
        loop.finish()
        assert loop.refused > 0, lab.diagnostics()
    finally:
        lab.ok("systemctl", "stop", UNIT)
        lab.start("mta-sts-daemon.socket", UNIT)
    assert lab.ask(UNIX_SOCKET, PAYLOAD) == GOOD


def test_watchdog_restarts_a_stopped_supervisor(lab: Lab) -> None:
    dropin = "/etc/systemd/system/mta-sts-daemon.service.d/watchdog.conf"
    watchdog = 2.0
    lab.write(dropin, f"[Service]\nWatchdogSec={watchdog:g}s\n")
    try:
        lab.ok("systemctl", "daemon-reload")
        lab.restart()
        restarts = int(lab.show(UNIT, "NRestarts"))
        supervisor = lab.main_pid()
        loops = [lab.client_loop(TCP, PAYLOAD), lab.client_loop(UNIX_SOCKET, PAYLOAD)]
        for loop in loops:
            loop.start()
        time.sleep(1.5)  # at least one ping at the new interval
        mark = lab.cursor()
        stopped = time.time()
        lab.ok("kill", "-STOP", str(supervisor))
        timeout = lab.wait_journal(r"Watchdog timeout", after=mark, timeout=15)
        # The last ping came at most half an interval before the stop.
        assert watchdog / 2 - 0.2 <= timeout.at - stopped <= watchdog + 1.0, timeout
        wait_until(lambda: lab.main_pid() not in (0, supervisor), 20, "a new supervisor")
        lab.wait_active()
        time.sleep(0.5)
        for loop in loops:
            loop.finish()
        assert int(lab.show(UNIT, "NRestarts")) == restarts + 1
        text = lab.journal_text(after=mark)
        # SIGABRT (WatchdogSignal=), then faulthandler's stack of the supervisor.
        assert re.search(r"Killing process \d+ \(mta-sts-daemon\) with signal SIGABRT", text), text
        assert "Fatal Python error: Aborted" in text, text
        assert re.search(r'File ".*/mtasts_fast/supervisor\.py", line \d+ in run', text), text
        assert "Failed with result 'watchdog'" in text, text
        for loop in loops:
            # Queued on systemd's sockets while no daemon ran.
            assert (loop.refused, loop.failures) == (0, []), lab.diagnostics()
    finally:
        lab.file(dropin).unlink()
        lab.ok("systemctl", "daemon-reload")
        lab.restart()
    assert lab.show(UNIT, "WatchdogUSec") == "30s"


def test_a_killed_worker_is_replaced_by_the_supervisor(lab: Lab) -> None:
    supervisor = lab.main_pid()
    restarts = lab.show(UNIT, "NRestarts")
    workers = lab.worker_pids()
    victim = workers[0]
    mark = lab.cursor()
    lab.ok("kill", "-KILL", str(victim))
    lab.wait_journal(
        rf"worker \d \(pid {victim}\) died \(killed by signal SIGKILL\) after [\d.]+ s; "
        r"restarting in 0\.1 s",
        after=mark,
    )
    lab.wait_journal(r"worker \d \(pid \d+\) answering", after=mark)
    replaced = lab.worker_pids()
    assert len(replaced) == 2, replaced
    assert victim not in replaced, replaced
    # The supervisor repaired it: systemd saw nothing.
    assert (lab.main_pid(), lab.show(UNIT, "NRestarts")) == (supervisor, restarts)
    assert lab.ask(TCP, PAYLOAD) == GOOD


# -- templates ----------------------------------------------------------------------------------


def _install_templates(lab: Lab) -> None:
    lab.sh(
        f"cd mtasts_fast-{__version__}\n"
        "install -m 644 contrib/mta-sts-daemon@.service contrib/mta-sts-daemon@.socket "
        "/etc/systemd/system/"
    )


def test_two_template_instances_side_by_side(lab: Lab) -> None:
    _install_templates(lab)
    # a: socket-activated, its unix socket from the template and a TCP port
    # from a drop-in; b: no socket unit, binds its own port. Own caches.
    lab.write_config(
        {
            "path": "/var/spool/postfix/mta-sts/a.sock",
            "cache": {"type": "lmdb", "options": {"path": "/var/lib/mta-sts/a/"}},
            **EDITS,
        },
        "/etc/mta-sts-daemon/a.yml",
    )
    lab.write(
        "/etc/systemd/system/mta-sts-daemon@a.socket.d/port.conf",
        "[Socket]\nListenStream=127.0.0.1:8471\n",
    )
    lab.write_config(
        {
            "host": "127.0.0.1",
            "port": 8472,
            "cache": {"type": "lmdb", "options": {"path": "/var/lib/mta-sts/b/"}},
            "default_zone": {"require_sni": False},
            **EDITS,
        },
        "/etc/mta-sts-daemon/b.yml",
    )
    units = ["mta-sts-daemon@a.socket", "mta-sts-daemon@a.service", "mta-sts-daemon@b.service"]
    lab.ok("systemctl", "daemon-reload")
    lab.start(*units)
    try:
        assert lab.ask(("127.0.0.1", 8471), PAYLOAD) == GOOD
        assert lab.ask("/var/spool/postfix/mta-sts/a.sock", PAYLOAD) == GOOD
        assert lab.ask(("127.0.0.1", 8472), PAYLOAD) == GOOD_NO_SNI
        assert lab.ask(TCP, PAYLOAD) == GOOD  # the main service, untouched
        pids = {lab.main_pid(unit) for unit in (UNIT, units[1], units[2])}
        assert len(pids) == 3, pids
        lab.wait_journal(
            re.escape(
                "socket activation: serving the 2 sockets systemd passed "
                "(mta-sts-daemon@a.socket): unix:/var/spool/postfix/mta-sts/a.sock, "
                "127.0.0.1:8471; the configured path (unix:/var/spool/postfix/mta-sts/a.sock) "
                "is among them"
            ),
            unit=units[1],
        )
        lab.wait_journal(r"answering on 127\.0\.0\.1:8472$", unit=units[2])
        for name in ("a", "b"):
            lab.ok("test", "-s", f"/var/lib/private/mta-sts/{name}/data.mdb")
    finally:
        lab.ok("systemctl", "stop", *units)


def test_a_reload_keeps_the_unix_socket_the_daemon_bound(lab: Lab) -> None:
    """Python 3.13's asyncio and uvloop unlink a unix server's file on close, unless told not to."""
    _install_templates(lab)
    path = "/var/lib/mta-sts/c.sock"  # in the StateDirectory: the daemon may write there
    settings = {"path": path, "cache": {"type": "internal"}, **EDITS}
    lab.write_config(settings, "/etc/mta-sts-daemon/c.yml")
    unit = "mta-sts-daemon@c.service"
    lab.ok("systemctl", "daemon-reload")
    lab.start(unit)
    try:
        assert lab.ask(path, PAYLOAD) == GOOD
        old = lab.worker_pids(unit)
        mark = lab.cursor()
        lab.write_config(
            {**settings, "default_zone": {"require_sni": False}}, "/etc/mta-sts-daemon/c.yml"
        )
        lab.ok("systemctl", "reload", unit)
        lab.wait_journal(r"reloaded ", unit=unit, after=mark)
        wait_until(lambda: not set(old) & set(lab.worker_pids(unit)), 10, "the old workers")
        assert lab.ok("stat", "-c", "%F", path).strip() == "socket"
        assert lab.ask(path, PAYLOAD) == GOOD_NO_SNI
        assert_no_errors(lab.journal(unit, after=mark))
    finally:
        lab.ok("systemctl", "stop", unit)
    # The supervisor, which bound it, removes it at the end.
    assert lab.run("test", "-e", path).returncode == 1


# -- Postfix ------------------------------------------------------------------------------------

MAIN_CF = f"""\
compatibility_level = 3.10
myhostname = sender.mtasts-systemd.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
alias_maps =
alias_database =
local_transport = error:no local delivery in this test
biff = no
maillog_file = /var/log/postfix.log
smtp_host_lookup = dns
smtp_tls_security_level = may
smtp_tls_CAfile = {"/etc/ssl/mtasts-test-ca.pem"}
smtp_tls_loglevel = 1
smtp_connect_timeout = 5s
"""


def _outcome(lab: Lab, recipient: str, since: int) -> tuple[re.Match[str], str]:
    """smtp(8)'s line that settles ``recipient`` in Postfix's log after ``since``, and the log."""
    log = lab.file("/var/log/postfix.log")
    pattern = re.compile(rf"postfix/smtp\[(\d+)\]: \w+: to=<{re.escape(recipient)}>.*status=(\w+)")

    def text() -> str:
        return log.read_bytes()[since:].decode(errors="replace") if log.exists() else ""

    wait_until(lambda: pattern.search(text()), 30, f"Postfix to settle {recipient}")
    found = pattern.search(text())
    assert found is not None
    return found, text()


def test_postfix_delivers_through_the_socket_in_its_chroot(lab: Lab) -> None:
    lab.write("/etc/postfix/main.cf", MAIN_CF)
    past = time.time() - 60  # Postfix waits for a main.cf younger than 2 s to settle
    os.utime(lab.file("/etc/postfix/main.cf"), (past, past))
    # Debian's default master.cf, untouched: smtp(8) runs chrooted.
    smtp = lab.ok("postconf", "-M", "smtp/unix").split()
    assert smtp[:5] == ["smtp", "unix", "-", "-", "y"], smtp
    log = lab.file("/var/log/postfix.log")

    # The control: the socket's absolute path does not exist inside the chroot.
    outside = f"socketmap:unix:{UNIX_SOCKET}:postfix"
    lab.ok("postconf", "-e", f"smtp_tls_policy_maps = {outside}")
    lab.ok("systemctl", "restart", "postfix")
    recipient = f"user-{secrets.token_hex(4)}@{ENFORCE}"
    lab.ok("sendmail", "-f", "sender@mtasts-systemd.test", recipient, input="Subject: t\n\nhi\n")
    line, text = _outcome(lab, recipient, 0)
    assert line.group(2) == "deferred", text
    assert f"table {outside} lookup error" in text, text
    assert [m for m in lab.receiver.messages() if recipient in m.recipients] == []

    # README step 4, then the deferred mail goes out.
    since = log.stat().st_size
    lab.sh("\n".join(readme_block("postconf -e")))
    policy_maps = "socketmap:unix:mta-sts/mta-sts-daemon.sock:postfix"
    assert lab.ok("postconf", "-h", "smtp_tls_policy_maps").strip() == policy_maps
    lab.ok("postqueue", "-f")
    line, text = _outcome(lab, recipient, since)
    assert line.group(2) == "sent", text
    # "Verified" only at the secure level, which came from the daemon's answer
    # (smtp_tls_security_level is "may").
    assert f"Verified TLS connection established to {MX_HOST}[{MX_IP}]:25" in text, text
    assert "lookup error" not in text, text
    delivered = [m for m in lab.receiver.messages() if recipient in m.recipients]
    assert len(delivered) == 1
    assert delivered[0].tls
    # The smtp(8) that asked the daemon lives in the chroot.
    root = lab.run("readlink", f"/proc/{line.group(1)}/root")
    if root.returncode == 0:  # still running (smtp(8) waits up to max_idle for more mail)
        assert root.stdout.strip() == "/var/spool/postfix"
