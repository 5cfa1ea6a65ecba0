"""``mta-sts-daemon`` as a real process: start-up, signals, privileges, exit codes."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers.postfix import postfix_program, postmap_config
from tests.socketmap import free_port

REQUIRE_ALL = os.environ.get("MTASTS_REQUIRE_ALL") == "1"


def _daemon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mtasts_fast", *args]


def _write_config(tmp_path: Path, world: Any, **settings: Any) -> tuple[Path, int]:
    port = free_port()
    data = {
        "host": "127.0.0.1",
        "port": port,
        "nameservers": [world.nameserver],
        "ca_file": world.ca_file,
        "shutdown_timeout": 2,
        # The default backend, in a directory the daemon must create itself.
        "cache": {"type": "lmdb", "options": {"path": str(tmp_path / "state" / "cache.lmdb")}},
    }
    data.update(settings)
    path = tmp_path / "mta-sts-daemon.yml"
    path.write_text(yaml.safe_dump(data))
    return path, port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else b""
            raise AssertionError(f"daemon exited with {proc.returncode}: {out.decode()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("daemon did not start listening")


def _ask(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            head, sep, rest = data.partition(b":")
            if sep and len(rest) >= int(head) + 1:
                break
    head, _, rest = data.partition(b":")
    assert rest[int(head) : int(head) + 1] == b","
    return rest[: int(head)]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def _start(config: Path, *args: str, wait_port: int | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            _daemon_cmd("-c", str(config), *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        if wait_port is not None:
            _wait_listening(wait_port, proc)
        return proc

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode()


README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_first_check() -> list[list[str]]:
    """The commands README's Set-up gives for the first check after `make run`."""
    setup = README.read_text(encoding="utf-8").split("\n## Set-up\n", 1)[1].split("\n## ", 1)[0]
    return [
        shlex.split(line)
        for line in setup.splitlines()
        if line.startswith("    ") and ("postmap -q" in line or "mta-sts-query" in line)
    ]


def test_readme_first_check_works_as_written(world: Any, tmp_path: Path, start: Any) -> None:
    # A fresh Debian has no nc: the README asks with Postfix's own client and
    # with mta-sts-query. Run here as written, except for what this machine
    # must change: the port, postmap's -c (Debian's postfix package comes
    # without a main.cf) and the test world's DNS server and CA.
    commands = _readme_first_check()
    assert [argv[0] for argv in commands] == ["postmap", ".venv/bin/mta-sts-query"]
    postmap, query = commands
    domain = postmap[2]
    assert query[1:] == [domain]
    world.add_domain(
        domain, policy=world.policy_text("enforce", [f"{domain}-smtp-in.l.example", "*.mx.example"])
    )
    config, port = _write_config(tmp_path, world)
    proc = start(config, wait_port=port)
    endpoint = postmap[3]
    assert endpoint == "socketmap:inet:127.0.0.1:8461:postfix"
    program = postfix_program("postmap")
    answered = subprocess.run(
        [program, "-c", str(postmap_config(tmp_path / "postfix")), *postmap[1:3],
         endpoint.replace(":8461:", f":{port}:")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    expected = f"secure match={domain}-smtp-in.l.example:.mx.example servername=hostname"
    assert (answered.returncode, answered.stdout, answered.stderr) == (0, expected + "\n", "")
    fetched = subprocess.run(
        [sys.executable, "-c", "from mtasts_fast.query import console_main; console_main()",
         *query[1:], "--nameserver", world.nameserver, "--ca-file", world.ca_file],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched
    assert f"Postfix reply: OK {expected}" in fetched.stdout
    code, out = _stop(proc)
    assert code == 0, out


def test_old_daemon_internal_config_starts_unchanged(
    world: Any, tmp_path: Path, start: Any
) -> None:
    # postfix-mta-sts-resolver 1.5.1's internal-cache example, verbatim apart
    # from the port (and DNS/CA settings the test network needs, added below).
    port = free_port()
    text = f"""\
host: 127.0.0.1
port: {port}
reuse_port: true
shutdown_timeout: 20
cache:
  type: internal
  options:
    cache_size: 10000
default_zone:
  strict_testing: false
  timeout: 4
zones:
  myzone:
    strict_testing: false
    timeout: 4
"""
    config = tmp_path / "old.yml"
    config.write_text(text + f"nameservers: ['{world.nameserver}']\nca_file: {world.ca_file}\n")
    proc = start(config, "-v", "debug", wait_port=port)
    assert _ask(port, b"postfix good.loc") == b"OK secure match=mail.loc servername=hostname"
    assert _ask(port, b"myzone good.loc") == b"OK secure match=mail.loc servername=hostname"
    assert _ask(port, b"postfix testing.loc") == b"NOTFOUND "
    code, out = _stop(proc)
    assert code == 0, out


def test_sigterm_stops_gracefully_and_removes_pidfile(
    world: Any, tmp_path: Path, start: Any
) -> None:
    config, port = _write_config(tmp_path, world)
    pidfile = tmp_path / "daemon.pid"
    proc = start(config, "-p", str(pidfile), wait_port=port)
    assert pidfile.read_text().strip() == str(proc.pid)
    with socket.create_connection(("127.0.0.1", port)) as idle:
        started = time.monotonic()
        code, out = _stop(proc)
        assert idle.recv(10) == b""  # the idle client sees EOF
    assert code == 0, out
    assert time.monotonic() - started < 3
    assert "stopping gracefully" in out
    assert not pidfile.exists()


def test_second_signal_forces_exit(world: Any, tmp_path: Path, start: Any) -> None:
    config, port = _write_config(tmp_path, world, shutdown_timeout=60)
    proc = start(config, wait_port=port)
    # A lookup that hangs (the DNS server never answers) keeps a reply owed,
    # so the graceful stop would wait for it.
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"21:postfix blackhole.loc,")
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=5)
    sock.close()
    assert proc.returncode == 1
    assert b"exiting now" in out


def test_sighup_does_not_kill(world: Any, tmp_path: Path, start: Any) -> None:
    config, port = _write_config(tmp_path, world)
    logfile = tmp_path / "daemon.log"
    proc = start(config, "-l", str(logfile), wait_port=port)
    logfile.rename(tmp_path / "daemon.log.1")  # as logrotate would
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert proc.poll() is None
    assert _ask(port, b"postfix .x") == b"NOTFOUND "
    code, out = _stop(proc)
    assert code == 0, out
    assert "SIGHUP" in logfile.read_text()  # written to the reopened file
    # Both files were created without write access for others, whatever the
    # umask (the test runner's is usually 022; the daemon's may be 0).
    for path in (logfile, tmp_path / "daemon.log.1"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o027 == 0, oct(path.stat().st_mode)


def test_log_file_is_not_world_writable_under_umask_0(
    world: Any, tmp_path: Path, start: Any
) -> None:
    config, port = _write_config(tmp_path, world)
    logfile = tmp_path / "umask0.log"
    old = os.umask(0)
    try:
        proc = start(config, "-l", str(logfile), wait_port=port)
    finally:
        os.umask(old)
    code, out = _stop(proc)
    assert code == 0, out
    assert stat.S_IMODE(logfile.stat().st_mode) == 0o640


def test_listen_failure_exits_1_with_reason(world: Any, tmp_path: Path, start: Any) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config, _ = _write_config(tmp_path, world, port=port, reuse_port=False)
        proc = start(config)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.decode()


def test_privilege_drop_after_binding(
    world: Any, tmp_path: Path, start: Any, request: pytest.FixtureRequest
) -> None:
    if os.geteuid() != 0:
        if REQUIRE_ALL:
            pytest.fail("the privilege-drop test needs root")
        pytest.skip("the privilege-drop test needs root")
    nobody = pwd.getpwnam("nobody")
    # Port 841 is privileged: binding it proves the bind happens before the drop.
    port = 841
    # pytest's temporary directories are root-only; the cache directory the
    # daemon creates for its unprivileged user must be reachable by it.
    shared = Path(tempfile.mkdtemp(prefix="mtasts-drop-"))
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    shared.chmod(0o755)
    state = shared / "state" / "cache.lmdb"
    # The run user reads the configuration and the CA file again at a
    # reload, so the daemon refuses to start unless it can (test_startup_access).
    ca_file = shared / "ca.pem"
    shutil.copy(world.ca_file, ca_file)
    ca_file.chmod(0o644)
    config, _ = _write_config(
        shared,
        world,
        port=port,
        workers=2,
        ca_file=str(ca_file),
        cache={"type": "lmdb", "options": {"path": str(state)}},
    )
    os.chmod(config, 0o644)
    proc = start(config, "-u", "nobody", wait_port=port)
    # The daemon created the cache directory for the user it runs as.
    assert state.parent.stat().st_uid == nobody.pw_uid
    assert oct(state.parent.stat().st_mode & 0o777) == oct(0o750)
    reply = _ask(port, b"postfix good.loc")
    # The supervisor and every worker it forked run with all IDs dropped.
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(workers) == 2
    for pid in [str(proc.pid), *workers]:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert fields["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert fields["Groups"].split() in ([], [str(nobody.pw_gid)])
    code, out = _stop(proc)
    assert reply == b"OK secure match=mail.loc servername=hostname", out
    assert code == 0, out


def test_root_without_user_warns(world: Any, tmp_path: Path, start: Any) -> None:
    if os.geteuid() != 0:
        if REQUIRE_ALL:
            pytest.fail("the running-as-root warning test needs root")
        pytest.skip("only meaningful as root")
    config, port = _write_config(tmp_path, world)
    proc = start(config, wait_port=port)
    code, out = _stop(proc)
    assert code == 0
    assert "running as root" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("port: abc\n", "port: expected an integer", id="wrong-type"),
        pytest.param("default_zone:\n  timout: 3\n", "default_zone.timout", id="unknown-key"),
        pytest.param("port: [1\n", "line", id="yaml-syntax"),
        pytest.param("cache:\n  type: nosuch\n", "cache.type", id="unknown-cache"),
    ],
)
def test_invalid_config_exits_2_naming_file_and_key(
    tmp_path: Path, content: str, message: str
) -> None:
    config = tmp_path / "bad.yml"
    config.write_text(content)
    result = subprocess.run(
        _daemon_cmd("-c", str(config)), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    result = subprocess.run(
        _daemon_cmd("-c", str(missing)), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("")  # empty file: all defaults
    result = subprocess.run(
        _daemon_cmd("--check-config", "-c", str(good)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_unreadable_ca_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "ca.yml"
    config.write_text(f"ca_file: {tmp_path / 'missing.pem'}\n")
    result = subprocess.run(
        _daemon_cmd("-c", str(config)), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "ca_file: cannot load" in result.stderr
    assert str(config) in result.stderr


def test_uncreatable_lmdb_directory_exits_1(world: Any, tmp_path: Path, start: Any) -> None:
    (tmp_path / "regular-file").write_text("not a directory")
    path = tmp_path / "regular-file" / "state" / "cache.lmdb"
    config, _ = _write_config(
        tmp_path, world, cache={"type": "lmdb", "options": {"path": str(path)}}
    )
    proc = start(config)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert "cache.options.path: cannot create" in out.decode()
    assert "Traceback" not in out.decode()
