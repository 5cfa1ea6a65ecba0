"""The Debian 13 ("trixie") test root: find it, use it in a chroot, boot it.

``.ci/debian13-root`` builds the root once per recipe (``make roots``, which
``make test`` runs) into a cache outside the clone; :func:`debian13_root_path`
asks the script where, so the recipe hash is computed in one place. Tests never
build or download it: without it they skip, or fail under ``MTASTS_REQUIRE_ALL=1``.

The cached root is never written by a test. Everything goes through an overlay
(:func:`overlay_root`: overlayfs with the cached root as the read-only lower
layer and an upper layer in the test's scratch directory), which costs nothing
to set up: ``systemd-nspawn --ephemeral`` copies the whole tree on a file
system without btrfs snapshots (about 1 s for the 280 MB root on ext4) and
``--volatile=overlay`` hides what the container wrote once it is gone, while an
overlay mount takes milliseconds and leaves the upper layer for the test to
inspect (or to write configuration into before a boot).

- Chroot: :func:`overlay_root` with ``api_filesystems=True`` mounts fresh
  instances of proc, sysfs, devpts, a tmpfs /dev with the usual device nodes
  and a tmpfs on /dev/shm inside the overlay, and unmounts all of it on exit;
  :func:`run_in_root` runs a command there with ``chroot``.
- Boot: :func:`booted_container` starts ``systemd-nspawn --boot --register=no
  --keep-unit`` on an overlay, waits until ``systemctl is-system-running``
  says the boot is over, and powers it off on exit (SIGRTMIN+4 to the
  container's PID 1, which systemd takes as "poweroff"; SIGKILL on timeout).
  Commands run inside with ``nsenter`` on the container's leader: with
  ``--register=no`` machined knows no machine, so ``systemd-run --machine`` and
  ``machinectl shell`` cannot find it (and machined need not even run: this
  machine's PID 1 is not systemd). ``nsenter --all`` joins the container's
  namespaces but keeps the caller's cgroup and capabilities;
  :meth:`Container.run` with ``as_unit=True`` goes one step further and has
  the container's systemd start the command as a transient unit
  (``systemd-run --wait --pipe``), in the container's own cgroup tree.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from mtasts_fast._compat import NO_EXTENSIONS

__all__ = [
    "BOOT_TIMEOUT",
    "Container",
    "Overlay",
    "RootUnavailable",
    "booted_container",
    "compiled_pass_only",
    "debian13_root_fixture",
    "debian13_root_path",
    "debian13_root_problem",
    "overlay_root",
    "require_all",
    "run_in_root",
    "unavailable",
]

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / ".ci" / "debian13-root"
# Written by the recipe as its last step before the rename into place.
STAMP = Path("etc/mtasts-root")
# The environment of every command in the root: nothing of the caller's leaks in.
ROOT_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C.UTF-8",
}
BOOT_TIMEOUT = 90.0
POWEROFF_TIMEOUT = 30.0
# `systemctl is-system-running` states that mean the boot is over (systemctl(1)).
BOOTED_STATES = frozenset({"running", "degraded", "maintenance"})

# These tests exercise the Debian root, not mtasts_fast's compiled or pure twins,
# so `make test` runs them once: in the compiled pass (test-c), not in test-py.
compiled_pass_only = pytest.mark.skipif(
    NO_EXTENSIONS,
    reason="Debian 13 root tests run once, in the compiled pass (MTASTS_NO_EXTENSIONS is set)",
)


class RootUnavailable(RuntimeError):
    """The root, or a tool to use it, is missing; the message says which."""


def require_all() -> bool:
    """True under ``MTASTS_REQUIRE_ALL=1``: a missing root fails instead of skipping."""
    return os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it under ``MTASTS_REQUIRE_ALL=1``."""
    if require_all():
        pytest.fail(f"{reason} (MTASTS_REQUIRE_ALL is set; `make roots` as root builds it)")
    pytest.skip(reason)


@functools.cache
def debian13_root_path() -> Path:
    """Where ``.ci/debian13-root`` keeps the root of its current recipe (built or not)."""
    result = subprocess.run(
        ["bash", str(RECIPE), "--print-path"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return Path(result.stdout.strip())


def debian13_root_problem(*, boot: bool = False) -> str | None:
    """Why the root cannot be used here (``boot``: booted too), or None if it can."""
    if os.geteuid() != 0:
        return "the Debian 13 root needs root (chroot, mount, systemd-nspawn)"
    root = debian13_root_path()
    if not (root / STAMP).is_file():
        return f"the Debian 13 root {root} is not built (`make roots` builds it)"
    tools = ["chroot", "mount", "umount"] + (["systemd-nspawn", "nsenter"] if boot else [])
    missing = [tool for tool in tools if _which(tool) is None]
    if missing:
        packages = "coreutils, util-linux, systemd-container"
        return f"{', '.join(missing)} not installed (Debian packages {packages})"
    return None


# Named apart from the fixture so that a test module imports it without a lint
# warning for a parameter that shadows the import.
@pytest.fixture(scope="session", name="debian13_root")
def debian13_root_fixture() -> Path:
    """``debian13_root``: the cached root's path (read-only: use it through :func:`overlay_root`).

    Skips when the root cannot be used here, or fails under ``MTASTS_REQUIRE_ALL=1``.
    """
    problem = debian13_root_problem()
    if problem is not None:
        unavailable(problem)
    return debian13_root_path()


def _which(tool: str) -> str | None:
    for directory in (
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ):
        candidate = Path(directory, tool)
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _is_cached_root(path: Path) -> bool:
    return path.resolve().parent == debian13_root_path().parent


def _run_host(argv: Sequence[str], timeout: float = 30) -> None:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )


def _unmount(target: Path) -> None:
    """Unmount ``target``; a mount still busy after a few tries is detached lazily."""
    for _ in range(20):
        result = subprocess.run(
            ["umount", str(target)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return
        if "busy" not in result.stderr:
            raise RuntimeError(f"umount {target} failed: {result.stderr.strip()}")
        time.sleep(0.1)
    _run_host(["umount", "--lazy", str(target)])


# fstype, source, target inside the root, options: what chrooted tools expect.
# All fresh instances, none a bind of the host's mounts (unmounting a bind of a
# shared /dev propagates to the host's own /dev/pts). /dev is a tmpfs holding
# copies of the few device nodes (as systemd-nspawn makes it), not devtmpfs:
# should a killed test leave it mounted, the later removal of its scratch
# directory deletes these copies, not the host's /dev.
_API_FILESYSTEMS = (
    ("proc", "proc", "proc", "nosuid,nodev,noexec"),
    ("sysfs", "sysfs", "sys", "ro,nosuid,nodev,noexec"),
    ("tmpfs", "dev", "dev", "mode=0755,nosuid,size=1m"),
    ("devpts", "devpts", "dev/pts", "newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec"),
    ("tmpfs", "shm", "dev/shm", "mode=1777,nosuid,nodev"),
)
# Character devices for the tmpfs /dev: name -> (major, minor) (devices.txt).
_DEVICES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}


def _populate_dev(dev: Path) -> None:
    """Device nodes, links and mount points of a fresh tmpfs /dev."""
    for name, (major, minor) in _DEVICES.items():
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(dev / name, 0o666)  # mknod's mode passes through the umask
    for name, target in _DEV_LINKS.items():
        os.symlink(target, dev / name)
    for name in ("pts", "shm"):
        (dev / name).mkdir()


@dataclass(frozen=True)
class Overlay:
    """A writable view of the root: ``path`` is the merged tree, ``upper`` what changed."""

    path: Path
    upper: Path


@contextlib.contextmanager
def overlay_root(root: Path, scratch: Path, *, api_filesystems: bool = False) -> Iterator[Overlay]:
    """Mount an overlay of ``root`` under ``scratch``; unmount everything on exit.

    ``api_filesystems`` also mounts /proc, /sys, /dev, /dev/pts and /dev/shm inside
    it, for tools that need them under ``chroot``. Whatever is written goes to
    ``scratch/upper``; the root itself is only ever overlayfs's lower layer.
    """
    for path in (root, scratch):
        # overlayfs separates its options with "," and lower layers with ":".
        if any(char in str(path) for char in ",:"):
            raise ValueError(f"overlay paths cannot contain ',' or ':': {path}")
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for directory in (upper, work, merged):
        directory.mkdir(parents=True)
    options = f"lowerdir={root},upperdir={upper},workdir={work}"
    _run_host(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)])
    mounted = [merged]
    try:
        if api_filesystems:
            for fstype, source, target, fs_options in _API_FILESYSTEMS:
                _run_host(["mount", "-t", fstype, "-o", fs_options, source, str(merged / target)])
                mounted.append(merged / target)
                if target == "dev":
                    _populate_dev(merged / target)
        yield Overlay(path=merged, upper=upper)
    finally:
        errors: list[str] = []
        for mountpoint in reversed(mounted):
            try:
                _unmount(mountpoint)
            except RuntimeError as exc:  # go on: the overlay itself must come off too
                errors.append(str(exc))
        if errors:
            raise RuntimeError("; ".join(errors))


def run_in_root(
    root: Path,
    argv: Sequence[str],
    *,
    timeout: float = 60,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` under ``chroot root`` with a clean environment (``ROOT_ENV`` + ``env``).

    ``root`` is an :class:`Overlay` path, never the cached root (refused, so a test
    cannot change what later tests see).
    """
    if _is_cached_root(root):
        raise ValueError(f"{root} is the cached root: run commands in an overlay_root() of it")
    return _run_through(["chroot", str(root)], argv, timeout=timeout, input=input, env=env)


def _run_through(
    prefix: Sequence[str],
    argv: Sequence[str],
    *,
    timeout: float,
    input: str | None,
    env: Mapping[str, str] | None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` through ``prefix`` (``chroot``, ``nsenter``) with a clean
    environment (``ROOT_ENV`` + ``env``); its output as text, stdin only ``input``."""
    environment = [f"{key}={value}" for key, value in {**ROOT_ENV, **(env or {})}.items()]
    return subprocess.run(
        [*prefix, "/usr/bin/env", "-i", *environment, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        check=False,
    )


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc/*/stat)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class Container:
    """A booted ``systemd-nspawn`` container; ``leader`` is its PID 1 as the host sees it."""

    process: subprocess.Popen[bytes]
    log: Path
    leader: int = 0
    state: str = ""
    boot_seconds: float = 0.0
    exit_status: int | None = None
    started: float = field(default_factory=time.monotonic)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60,
        input: str | None = None,
        as_unit: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container; ``as_unit``: as a transient unit of its systemd."""
        command = list(argv)
        if as_unit:
            # --pipe hands our stdin/stdout/stderr to the unit; --wait makes
            # systemd-run exit with the unit's status.
            command = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--", *command]
        nsenter = ("nsenter", f"--target={self.leader}", "--all", "--root", "--wd")
        return _run_through(nsenter, command, timeout=timeout, input=input, env=env)

    def console(self) -> str:
        """What the container wrote on its console so far (systemd's boot and shutdown lines)."""
        return self.log.read_text(errors="replace")

    def _find_leader(self, deadline: float) -> None:
        """Wait for nspawn's child to become the container's systemd (after its exec)."""
        own_pid_ns = os.readlink("/proc/self/ns/pid")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"systemd-nspawn exited ({self.process.returncode}):\n{self.console()}"
                )
            for pid in _children(self.process.pid):
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    pid_ns = os.readlink(f"/proc/{pid}/ns/pid")
                except OSError:
                    continue
                if comm == "systemd" and pid_ns != own_pid_ns:
                    self.leader = pid
                    return
            time.sleep(0.02)
        raise TimeoutError(f"no container PID 1 appeared:\n{self.console()}")

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait until the boot is over; return ``systemctl is-system-running``'s state."""
        deadline = time.monotonic() + timeout
        if not self.leader:
            self._find_leader(deadline)
        while time.monotonic() < deadline:
            # --wait blocks while "starting"; before dbus and PID 1's private
            # socket are up it fails at once, hence the loop.
            left = max(1.0, deadline - time.monotonic())
            try:
                result = self.run(["systemctl", "is-system-running", "--wait"], timeout=left)
            except subprocess.TimeoutExpired:
                break
            self.state = result.stdout.strip()
            if self.state in BOOTED_STATES:
                self.boot_seconds = time.monotonic() - self.started
                return self.state
            if self.process.poll() is not None:
                raise RuntimeError(f"container exited while booting:\n{self.console()}")
            time.sleep(0.05)
        raise TimeoutError(
            f"not booted after {timeout} s (state {self.state!r}):\n{self.console()}"
        )

    def poweroff(self, timeout: float = POWEROFF_TIMEOUT) -> int:
        """Shut down cleanly (SIGRTMIN+4 = poweroff to systemd); kill on timeout.

        Returns systemd-nspawn's exit status: 0 after a clean poweroff.
        """
        if self.process.poll() is None:
            if self.leader:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGRTMIN + 4)
            else:  # never booted: nothing to shut down cleanly
                self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                # SIGKILL to a PID 1 ends its whole pid namespace; nspawn follows.
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
                self.process.kill()
                self.process.wait(10)
        self.exit_status = self.process.returncode
        return self.exit_status


@contextlib.contextmanager
def booted_container(
    tree: Path,
    *,
    timeout: float = BOOT_TIMEOUT,
    extra_args: Sequence[str] = (),
) -> Iterator[Container]:
    """Boot ``tree`` (an :class:`Overlay` path) with systemd-nspawn; power it off on exit.

    The container gets a network namespace of its own with only a loopback
    (``--private-network``): nothing it starts can reach or clash with the host's
    ports. ``extra_args`` go to systemd-nspawn before ``--boot``'s init arguments.
    """
    if _is_cached_root(tree):
        raise ValueError(f"{tree} is the cached root: boot an overlay_root() of it")
    log = tree.parent / "console.log"
    command = [
        "systemd-nspawn",
        f"--directory={tree}",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--private-network",
        # The console to a file: systemd's status lines explain a failed boot.
        "--console=read-only",
        "--setenv=SYSTEMD_COLORS=0",
        *extra_args,
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    container = Container(process=process, log=log, started=started)
    try:
        container.wait_booted(timeout)
        yield container
    finally:
        container.poweroff()
