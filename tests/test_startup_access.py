"""Start-up that cannot break after the privilege drop (issue 16, DESIGN.md §9).

Two halves: nothing is imported for the first time after the drop (an
import hook, set right after it, records every first import while the
daemon answers lookups of every kind, reloads and refreshes), and a user
that cannot read the installation, the configuration, the CA file or the
cache is refused at start with exit status 2 and one line naming the path
and the user, instead of workers dying one after the other.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import mtasts_fast
from tests.servers.world import World
from tests.socketmap import free_port
from tests.test_workers import GOOD, READY_LINE, Daemon, Started, ask, daemon_config

REQUIRE_ALL = os.environ.get("MTASTS_REQUIRE_ALL") == "1"

# Installed by the runner right after drop_privileges() returns: every module
# imported for the first time from then on is written to $IMPORT_LOG.
_SPY = """\
import os, sys
import mtasts_fast.daemon as _daemon

class _Spy:
    def find_spec(self, name, path=None, target=None):
        with open(os.environ["IMPORT_LOG"], "a") as log:
            log.write(f"{os.getpid()} {name}\\n")
        return None

_drop = _daemon.drop_privileges

def _drop_and_watch(user, group):
    _drop(user, group)
    sys.meta_path.insert(0, _Spy())

_daemon.drop_privileges = _drop_and_watch
sys.exit(_daemon.main(sys.argv[1:]))
"""

# Lookups that take every path a worker has: cached and fresh policies,
# no policy, each kind of failure (DNS, TLS, HTTP, policy text), the TLSRPT
# rendering, U-labels and A-labels, keys answered without a lookup.
_LOOKUPS = [
    "good.loc",
    "no-record.loc",
    "no-data.loc",
    "servfail.loc",
    "cname.loc",
    "big-txt.loc",
    "bad-cert1.loc",
    "bad-cert2.loc",
    "expired-cert.loc",
    "self-signed.loc",
    "bad-policy1.loc",
    "bad-policy3.loc",
    "bad-policy4.loc",
    "redirect.loc",
    "gzip.loc",
    "charset.loc",
    "eof-body.loc",
    "over-64k.loc",
    "no-https-host.loc",
    "non-utf8.loc",
    "ip-mx.loc",
    "xn--bcher-kva.loc",
    "bücher.loc",
    "[192.0.2.1]",
    ".good.loc",
    "[good.loc]:25",
]


@pytest.fixture
def run_daemon(world: World, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started = Started()

    def _start(*args: str, runner: str | None = None, **settings: Any) -> Daemon:
        config, data = daemon_config(world, tmp_path, **settings)
        command = [sys.executable, "-m", "mtasts_fast"]
        if runner is not None:
            script = tmp_path / "runner.py"
            script.write_text(runner)
            command = [sys.executable, str(script)]
        proc = subprocess.Popen(
            [*command, "-c", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "IMPORT_LOG": str(tmp_path / "imports.log")},
        )
        return started.add(proc, config, data, wait=False)

    yield _start
    started.end()


def _cache(kind: str, tmp_path: Path) -> dict[str, Any]:
    if kind == "lmdb":
        return {"type": "lmdb", "options": {"path": str(tmp_path / "lmdb" / "cache.lmdb")}}
    if kind == "sqlite":
        return {"type": "sqlite", "options": {"filename": str(tmp_path / "cache.sqlite")}}
    return {"type": kind}


@pytest.mark.parametrize("loop", [(), ("--disable-uvloop",)], ids=["uvloop", "asyncio"])
@pytest.mark.parametrize("cache", ["lmdb", "internal", "sqlite"])
def test_nothing_is_imported_after_the_privilege_drop(
    run_daemon: Callable[..., Daemon], tmp_path: Path, loop: tuple[str, ...], cache: str
) -> None:
    d = run_daemon(
        *loop,
        runner=_SPY,
        cache=_cache(cache, tmp_path),
        cache_grace=0,
        default_zone={"timeout": 2},
        zones={"tlsrpt": {"tlsrpt": True, "timeout": 2}},
        proactive_policy_fetching={"enabled": True, "interval": 1, "jitter": 0},
    )
    d.wait_for(READY_LINE, timeout=20)
    for zone in ("postfix", "tlsrpt"):
        for key in _LOOKUPS:
            ask(d.address, f"{zone} {key}".encode())
    ask(d.address, b"postfix good.loc")  # a cached hit, and a revalidation
    d.wait_for("proactive refresh pass done", timeout=10)
    # A reload: new workers, forked from the supervisor after the drop.
    mark = d.mark()
    d.reconfigure(default_zone={"timeout": 2, "require_sni": False})
    d.signal(signal.SIGHUP)
    d.wait_for(r"reloaded .* answering", since=mark, timeout=20)
    assert ask(d.address, b"postfix good.loc") == b"OK secure match=mail.loc"
    assert d.stop() == 0, d.output
    log = tmp_path / "imports.log"
    late = log.read_text() if log.exists() else ""
    assert late == "", f"imported after the privilege drop:\n{late}\n{d.output[-3000:]}"


# -- a user that cannot read what it needs ------------------------------------------------------


def _need_root() -> None:
    if os.geteuid() != 0:
        if REQUIRE_ALL:
            pytest.fail("the run-user tests need root")
        pytest.skip("the run-user tests need root")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory ``nobody`` can search (pytest's own are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="mtasts-access-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _installed_copy(shared: Path, mode: int) -> Path:
    """mtasts_fast copied (compiled modules included) into ``shared/install``, mode ``mode``."""
    install = shared / "install"
    shutil.copytree(Path(mtasts_fast.__file__).parent, install / "mtasts_fast")
    install.chmod(mode)
    return install


def _run_copy(install: Path, config: Path, *args: str) -> subprocess.Popen[bytes]:
    code = (
        f"import sys; sys.path.insert(0, {str(install)!r}); "
        "from mtasts_fast.daemon import main; sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, "-c", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=str(install.parent),
    )


def _config(shared: Path, world: World, port: int, **settings: Any) -> Path:
    ca = shared / "ca.pem"
    shutil.copy(world.ca_file, ca)
    ca.chmod(0o644)
    data: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "nameservers": [world.nameserver],
        "ca_file": str(ca),
        "shutdown_timeout": 2,
        "workers": 2,
        "cache": {"type": "lmdb", "options": {"path": str(shared / "state" / "cache.lmdb")}},
    }
    data.update(settings)
    config = shared / "mta-sts-daemon.yml"
    config.write_text(yaml.safe_dump(data))
    config.chmod(0o644)
    return config


def _finish(proc: subprocess.Popen[bytes], timeout: float = 20) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"still running:\n{out.decode()}") from None
    return proc.returncode, out.decode()


def test_an_installation_the_user_cannot_read_is_refused_in_one_line(
    world: World, shared: Path
) -> None:
    _need_root()
    install = _installed_copy(shared, 0o700)  # root's alone, as under /root
    config = _config(shared, world, free_port())
    started = time.monotonic()
    code, out = _finish(_run_copy(install, config, "-u", "nobody"))
    assert code == 2, out
    assert time.monotonic() - started < 10
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out
    uid = pwd.getpwnam("nobody").pw_uid
    assert f"{install}: not readable by user nobody (uid {uid})" in errors[0]
    assert "mode 0700, owner root:root" in errors[0]
    assert "Traceback" not in out
    assert "started (pid" not in out  # no worker started, none restarted


def test_a_readable_installation_starts_as_before(world: World, shared: Path) -> None:
    _need_root()
    install = _installed_copy(shared, 0o755)
    port = free_port()
    config = _config(shared, world, port)
    proc = _run_copy(install, config, "-u", "nobody")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = ask(("127.0.0.1", port), b"postfix good.loc")
                break
            except OSError:
                assert proc.poll() is None, _finish(proc)
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert reply == GOOD
        # The workers run the copy, as nobody.
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        for pid in [proc.pid, *map(int, children)]:
            assert Path(f"/proc/{pid}").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    finally:
        proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc)
    assert code == 0, out
    assert " ERROR " not in out, out


@pytest.mark.parametrize("what", ["config", "ca_file", "cache"])
def test_files_the_user_cannot_read_are_refused_in_one_line(
    world: World, shared: Path, what: str
) -> None:
    _need_root()
    port = free_port()
    private = shared / "private"
    private.mkdir(mode=0o700)
    settings: dict[str, Any] = {}
    if what == "cache":
        state = private / "state"
        state.mkdir()
        settings["cache"] = {"type": "lmdb", "options": {"path": str(state / "cache.lmdb")}}
        # The user cannot even see that state/ exists: its parent is named.
        expected = f"{private}: not writable by user nobody"
        blocker = "mode 0700, owner root:root"
    config = _config(shared, world, port, **settings)
    if what == "config":
        config.chmod(0o600)
        expected = f"{config}: not readable by user nobody"
        blocker = "mode 0600, owner root:root"
    elif what == "ca_file":
        ca = private / "ca.pem"
        shutil.copy(world.ca_file, ca)
        config.write_text(config.read_text().replace(str(shared / "ca.pem"), str(ca)))
        expected = f"{ca}: not readable by user nobody"
        blocker = f"{private} is not searchable by that user"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtasts_fast", "-c", str(config), "-u", "nobody"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    code, out = _finish(proc)
    assert code == 2, out
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out
    assert expected in errors[0]
    assert blocker in errors[0]
    assert "Traceback" not in out
    assert "started (pid" not in out
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
