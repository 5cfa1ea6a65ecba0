"""Smoke tests of the Debian 13 root (tests/roots.py, built by .ci/debian13-root).

What the later Postfix 3.10 and systemd tests rely on: Postfix 3.10 with
TLSRPT support (linked with libtlsrpt, RFC 8460 reporting), installed
unconfigured; Python 3.13; sys4's tlsrpt-reporter commands; a container that
boots to multi-user.target and powers off cleanly; and a cached root that no
test changes. Needs root and the built root: skipped without them, failed
instead under ``MTASTS_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.roots import (
    Container,
    Overlay,
    booted_container,
    compiled_pass_only,
    debian13_root_fixture,  # noqa: F401  (provides the debian13_root fixture)
    debian13_root_problem,
    overlay_root,
    run_in_root,
    unavailable,
)

pytestmark = compiled_pass_only

# Entries of the tree: (mode, size, mtime, ctime) by path. ctime moves on any
# change of content or metadata, so an unchanged map means an unchanged tree.
Snapshot = dict[str, tuple[int, int, int, int]]


def _snapshot(root: Path) -> Snapshot:
    entries: Snapshot = {}
    for directory, dirs, files in os.walk(root):
        for name in (directory, *(os.path.join(directory, entry) for entry in dirs + files)):
            info = os.lstat(name)
            entries[name] = (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return entries


@pytest.fixture(scope="module")
def pristine(debian13_root: Path) -> Snapshot:
    """The cached root as it was before this module's first test that asked for it."""
    return _snapshot(debian13_root)


@pytest.fixture(scope="module")
def chroot(
    debian13_root: Path, pristine: Snapshot, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Overlay]:
    """An overlay of the root with /proc, /sys and /dev, shared by this module's chroot tests."""
    with overlay_root(
        debian13_root, tmp_path_factory.mktemp("chroot"), api_filesystems=True
    ) as overlay:
        # postconf reads main.cf even for defaults; the root has none ("No
        # configuration"), so an empty one goes into the overlay.
        main_cf = overlay.path / "etc/postfix/main.cf"
        main_cf.write_text("")
        # Postfix rereads a main.cf modified within the last second until it is
        # older (about 2 s here): date it back so that postconf answers at once.
        past = time.time() - 60
        os.utime(main_cf, (past, past))
        yield overlay


def _ok(overlay: Overlay, *argv: str) -> str:
    result = run_in_root(overlay.path, argv)
    assert result.returncode == 0, f"{argv}: {result.returncode} {result.stderr}"
    return result.stdout


def test_postfix_is_3_10(chroot: Overlay) -> None:
    assert re.fullmatch(r"3\.10\.\d+", _ok(chroot, "postconf", "-h", "mail_version").strip())


def test_postfix_links_libtlsrpt(chroot: Overlay) -> None:
    """smtp(8) reports TLS results through libtlsrpt (Postfix built with TLSRPT)."""
    assert re.search(
        r"^\s*libtlsrpt\.so\.0 => /", _ok(chroot, "ldd", "/usr/lib/postfix/sbin/smtp"), re.M
    )


def test_postfix_knows_tlsrpt_parameters(chroot: Overlay) -> None:
    """Postfix 3.10's TLSRPT parameters exist (an unknown name makes postconf fail)."""
    out = _ok(chroot, "postconf", "-d", "smtp_tlsrpt_enable", "smtp_tlsrpt_socket_name")
    assert "smtp_tlsrpt_enable = no" in out
    assert "smtp_tlsrpt_socket_name =" in out


def test_postfix_installed_unconfigured(debian13_root: Path) -> None:
    """With "No configuration" there is no main.cf: a booted root starts no Postfix."""
    assert (debian13_root / "etc/postfix/master.cf").is_file()
    assert not (debian13_root / "etc/postfix/main.cf").exists()


def test_python_is_3_13(chroot: Overlay) -> None:
    assert re.fullmatch(r"Python 3\.13\.\d+", _ok(chroot, "python3", "--version").strip())


@pytest.mark.parametrize("command", ["tlsrpt-collectd", "tlsrpt-fetcher", "tlsrpt-reportd"])
def test_tlsrpt_reporter_commands(chroot: Overlay, command: str) -> None:
    assert f"usage: {command}" in _ok(chroot, command, "--help")


def test_chroot_has_api_filesystems(chroot: Overlay) -> None:
    """/proc, /sys, /dev (with working nodes and a pty pair) inside the chroot."""
    script = (
        "import os; print(os.path.isfile('/proc/self/status'), os.path.isdir('/sys/class'),"
        " len(open('/dev/urandom', 'rb').read(8)), open('/dev/null', 'w').write('x'),"
        " os.ttyname(os.openpty()[1]))"
    )
    assert _ok(chroot, "python3", "-c", script).split() == ["True", "True", "8", "1", "/dev/pts/0"]


def test_run_in_root_refuses_the_cached_root(debian13_root: Path) -> None:
    with pytest.raises(ValueError, match="cached root"):
        run_in_root(debian13_root, ["true"])


@pytest.fixture
def container(debian13_root: Path, pristine: Snapshot, tmp_path: Path) -> Iterator[Container]:
    problem = debian13_root_problem(boot=True)
    if problem is not None:
        unavailable(problem)
    with overlay_root(debian13_root, tmp_path) as overlay, booted_container(overlay.path) as booted:
        yield booted


def test_boots_to_multi_user(container: Container) -> None:
    assert container.state == "running", container.run(["systemctl", "--failed"]).stdout
    assert container.run(["systemctl", "is-active", "multi-user.target"]).stdout.strip() == "active"
    assert container.run(["hostname"]).stdout.strip() == "mtasts-trixie"


def test_no_listener_on_port_25(container: Container) -> None:
    listeners = container.run(["ss", "-Hltn"]).stdout
    assert not re.search(r":25\s", listeners), listeners
    # Only a loopback of its own (--private-network): the host's interfaces stay outside.
    links = container.run(["ip", "-o", "link", "show"]).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]


def test_run_as_unit_is_in_the_containers_cgroup(container: Container) -> None:
    """as_unit: the container's systemd runs the command as a transient service."""
    result = container.run(["cat", "/proc/self/cgroup"], as_unit=True)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^0::/system\.slice/run-.+\.service$", result.stdout, re.M), result.stdout


def test_powers_off_cleanly(container: Container) -> None:
    assert container.poweroff() == 0
    assert not Path(f"/proc/{container.leader}").exists()
    assert "Powering off." in container.console()


def test_cached_root_unchanged(debian13_root: Path, pristine: Snapshot, tmp_path: Path) -> None:
    """Writes in a chroot and in a booted container land in the overlay, never in the cache.

    Last in the module: ``pristine`` was taken before the first test here.
    """
    marker = "etc/mtasts-test-marker"
    with overlay_root(debian13_root, tmp_path / "chroot", api_filesystems=True) as overlay:
        assert run_in_root(overlay.path, ["touch", f"/{marker}"]).returncode == 0
    assert (overlay.upper / marker).exists()
    if debian13_root_problem(boot=True) is None:
        with (
            overlay_root(debian13_root, tmp_path / "boot") as booted_overlay,
            booted_container(booted_overlay.path) as booted,
        ):
            assert booted.run(["touch", f"/{marker}"]).returncode == 0
        assert (booted_overlay.upper / marker).exists()
    assert not (debian13_root / marker).exists()
    assert _snapshot(debian13_root) == pristine
    # Everything the context managers mounted is gone again.
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
