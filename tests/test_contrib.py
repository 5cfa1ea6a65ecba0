"""The systemd units in contrib/: valid for Debian 12's systemd, hardened, and
coherent with the daemon they start (its flags, config path, cache directory,
stop timeout and exit codes).

``systemd-analyze verify`` loads each unit the way systemd would and reports
every unknown or invalid setting; it insists that ExecStart= exists, so the
units are checked from a copy whose ExecStart= names this environment's
``mta-sts-daemon``. ``systemd-analyze security --offline`` rates the sandbox.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtasts_fast import daemon, defaults, workers
from mtasts_fast.config import Config

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
UNITS = ("mta-sts-daemon.service", "mta-sts-daemon@.service")
SOCKETS = ("mta-sts-daemon.socket", "mta-sts-daemon@.socket")
# Debian's Postfix runs smtp(8) chrooted in its queue directory.
POSTFIX_QUEUE = "/var/spool/postfix"
# Where the units expect the daemon: `make VENV=/opt/mta-sts venv` (README).
INSTALLED_DAEMON = "/opt/mta-sts/bin/mta-sts-daemon"
REQUIRE_ALL = os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0")


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        reason = "systemd-analyze not installed (Debian package systemd)"
        if REQUIRE_ALL:
            pytest.fail(f"{reason} and MTASTS_REQUIRE_ALL is set")
        pytest.skip(reason)
    return path


def _venv_daemon() -> Path:
    # The console script installed beside this interpreter (the .venv, or the
    # venv a wheel was installed into).
    path = Path(sys.executable).parent / "mta-sts-daemon"
    assert path.is_file(), f"{path} missing: is mtasts-fast installed in this environment?"
    return path


def _settings(name: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit, every section together, in order per key."""
    out: dict[str, list[str]] = {}
    for raw in (CONTRIB / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{name}: not a setting: {raw!r}"
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def _testable_copy(tmp_path: Path, name: str, *, replace: tuple[str, str] | None = None) -> Path:
    text = (CONTRIB / name).read_text()
    assert f"ExecStart={INSTALLED_DAEMON} " in text
    text = text.replace(f"ExecStart={INSTALLED_DAEMON} ", f"ExecStart={_venv_daemon()} ")
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / name
    path.write_text(text)
    return path


def _instance(path: Path) -> Path:
    # A template is verified through an instance name, as systemd loads it.
    for suffix in ("@.service", "@.socket"):
        if path.name.endswith(suffix):
            return path.with_name(path.name.replace(suffix, "@relay" + suffix[1:]))
    return path


def _verify(analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    # --man=no: Documentation= names pages that are only installed with the
    # package (their sources are checked below).
    return subprocess.run(
        [analyze, "verify", "--man=no", str(_instance(unit))],
        capture_output=True,
        text=True,
        cwd=unit.parent,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    analyze = _systemd_analyze()
    unit = _testable_copy(tmp_path, name)
    result = _verify(analyze, unit)
    # verify exits 0 even for an unknown key: any message at all is a finding.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(("ProtectHome=yes", "ProtectHomme=yes"), id="misspelt-key"),
        pytest.param(("ProtectSystem=strict", "ProtectSystem=very"), id="invalid-value"),
        pytest.param(("SystemCallFilter=@system-service", "SystemCallFilter=@no-such"), id="group"),
    ],
)
def test_systemd_analyze_verify_catches_a_broken_setting(
    tmp_path: Path, change: tuple[str, str]
) -> None:
    # The check above is only worth something if a mistake makes it fail.
    analyze = _systemd_analyze()
    result = _verify(analyze, _testable_copy(tmp_path, UNITS[0], replace=change))
    assert result.stdout + result.stderr != ""


@pytest.mark.parametrize("name", UNITS)
def test_unit_sandbox_exposure_is_low(tmp_path: Path, name: str) -> None:
    analyze = _systemd_analyze()
    unit = _instance(_testable_copy(tmp_path, name))
    # --threshold is in tenths: fail above an exposure of 2.0 ("OK") on
    # systemd's 0-10 scale; a unit with no hardening rates 9.6.
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        cwd=unit.parent,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level" in result.stdout


@pytest.mark.parametrize(
    ("name", "config"),
    [
        pytest.param(UNITS[0], defaults.CONFIG_PATH, id="service"),
        pytest.param(UNITS[1], "/etc/mta-sts-daemon/%i.yml", id="template"),
    ],
)
def test_unit_matches_the_daemon(name: str, config: str) -> None:
    unit = _settings(name)
    assert _one(unit, "Type") == "notify"
    assert _one(unit, "NotifyAccess") == "main"  # only the supervisor notifies
    assert shlex.split(_one(unit, "ExecStart")) == [INSTALLED_DAEMON, "-c", config]
    assert _one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    # The default LMDB cache lives in the state directory systemd creates
    # and hands to the service user.
    state = Path("/var/lib") / _one(unit, "StateDirectory")
    assert Path(defaults.LMDB_PATH).parent == state
    # systemd must not SIGKILL workers that still deliver owed replies.
    stop = float(_one(unit, "TimeoutStopSec").removesuffix("s"))
    assert stop > defaults.SHUTDOWN_TIMEOUT + workers.STOP_MARGIN
    assert _one(unit, "KillMode") == "mixed"
    assert float(_one(unit, "WatchdogSec").removesuffix("s")) >= 10
    assert _one(unit, "RestartPreventExitStatus") == str(daemon.EXIT_CONFIG)
    # A dedicated user, no capabilities, a read-only system.
    assert _one(unit, "User") not in ("", "root")
    assert _one(unit, "CapabilityBoundingSet") == ""
    assert _one(unit, "ProtectSystem") == "strict"
    assert _one(unit, "NoNewPrivileges") == "yes"


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_flags_are_the_daemons(tmp_path: Path, name: str) -> None:
    # Run the unit's own command line (with the example configuration) in
    # --check-config mode: a renamed or dropped flag fails here.
    argv = shlex.split(_one(_settings(name), "ExecStart"))
    argv[0] = str(_venv_daemon())
    argv[argv.index("-c") + 1] = str(CONTRIB / "mta-sts-daemon.yml")
    result = subprocess.run(
        [*argv, "--check-config"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration OK" in result.stdout


def test_example_config_uses_the_units_state_directory() -> None:
    config = Config.from_yaml(CONTRIB / "mta-sts-daemon.yml")
    assert config.cache.type == "lmdb"
    assert config.cache.options["path"] == defaults.LMDB_PATH
    assert (config.host, config.port) == (defaults.HOST, defaults.PORT)
    assert config.zones["QUERYwithTLSRPT"].tlsrpt


@pytest.mark.parametrize("name", UNITS)
def test_documentation_pages_have_sources(name: str) -> None:
    pages = _one(_settings(name), "Documentation").split()
    assert pages
    for page in pages:
        assert page.startswith("man:"), page
        title, _, section = page.removeprefix("man:").rstrip(")").partition("(")
        assert (ROOT / "docs" / "man" / f"{title}.{section}.rst").is_file(), page


@pytest.mark.parametrize("name", SOCKETS)
def test_socket_unit_passes_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    analyze = _systemd_analyze()
    # The socket is verified beside the service it activates.
    _testable_copy(tmp_path, name.replace(".socket", ".service"))
    socket_unit = tmp_path / name
    socket_unit.write_text((CONTRIB / name).read_text())
    result = _verify(analyze, socket_unit)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("name", "path"),
    [
        pytest.param(SOCKETS[0], f"{POSTFIX_QUEUE}/mta-sts/mta-sts-daemon.sock", id="socket"),
        pytest.param(SOCKETS[1], f"{POSTFIX_QUEUE}/mta-sts/%i.sock", id="template"),
    ],
)
def test_socket_unit_serves_postfix_in_its_chroot(name: str, path: str) -> None:
    unit = _settings(name)
    listen = unit["ListenStream"]
    assert listen[0] == path
    # Only Postfix's smtp(8) (group postfix) and root may connect.
    assert (_one(unit, "SocketUser"), _one(unit, "SocketGroup")) == ("root", "postfix")
    assert _one(unit, "SocketMode") == "0660"
    # One daemon for every connection, not one per connection.
    assert _one(unit, "Accept") == "no"
    if name == SOCKETS[0]:
        # The TCP socket is the daemon's default address, which the example
        # configuration names: the start-up line then says "among them".
        config = Config.from_yaml(CONTRIB / "mta-sts-daemon.yml")
        assert listen[1:] == [f"{defaults.HOST}:{defaults.PORT}"]
        assert (config.host, config.port) == (defaults.HOST, defaults.PORT)
    else:
        assert listen[1:] == []  # a port per instance comes from a drop-in


def test_postfix_line_names_the_socket_relative_to_the_queue_directory() -> None:
    """What README and the socket unit tell Postfix is the socket the unit creates."""
    path = _settings(SOCKETS[0])["ListenStream"][0]
    relative = path.removeprefix(POSTFIX_QUEUE + "/")
    line = f"smtp_tls_policy_maps = socketmap:unix:{relative}:postfix"
    for document in (ROOT / "README.md", CONTRIB / SOCKETS[0], CONTRIB / "mta-sts-daemon.yml"):
        assert f"socketmap:unix:{relative}:postfix" in document.read_text(), document
    assert line in (ROOT / "README.md").read_text()
