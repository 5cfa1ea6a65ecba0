"""Every file in ``config_examples/`` starts the daemon and answers correctly.

Each example is loaded and kept as written, except what this machine must
change: the listener (a free port on 127.0.0.1, a unix socket in the test's
directory), absolute cache file paths (moved into the test's directory), the
addresses of Redis, Redis Sentinel and PostgreSQL (pointed at throwaway
servers from ``tests/servers``; users, databases and master names stay as
written), and the test world's DNS server and CA. Then ``mta-sts-daemon -c
FILE`` runs in a subprocess, in the test's directory (so relative paths, as in
dev.yml, land there), is asked two questions, and must exit 0 on SIGTERM.

For the Redis and PostgreSQL examples, a second test takes the server away
while the daemon runs and brings it back: lookups must be answered all along.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import yaml

from tests.servers.postgres import PostgresServer, PostgresUnavailable
from tests.servers.redis import RedisSentinel, RedisServer, RedisUnavailable
from tests.servers.world import World
from tests.socketmap import free_port
from tests.test_workers import GOOD, Daemon, Started, ask

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "config_examples"
EXAMPLES = sorted([*EXAMPLES_DIR.glob("*.yml"), *EXAMPLES_DIR.glob("*.yaml")])
NOTFOUND = b"NOTFOUND "
BACK_LINE = r"cache backend is back"

_REQUIRE_ALL = os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0")


def _unavailable(what: str, exc: Exception) -> NoReturn:
    if _REQUIRE_ALL:
        pytest.fail(f"{what} unavailable and MTASTS_REQUIRE_ALL is set: {exc}")
    pytest.skip(f"{what} unavailable: {exc}")


def _load(example: Path) -> dict[str, Any]:
    data = yaml.safe_load(example.read_text())
    assert isinstance(data, dict), f"{example.name} is not a mapping"
    return data


def _example(name: str) -> Path:
    path = EXAMPLES_DIR / name
    if not path.exists():
        pytest.fail(f"config_examples/{name} is missing")
    return path


# -- throwaway backend servers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for this module; tests recreate their database."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        _unavailable("PostgreSQL", exc)
    try:
        server.start()
        yield server
    finally:
        server.close()


def _pg_fresh_database(server: PostgresServer, user: str, database: str) -> None:
    """(Re)create ``database`` owned by the login role ``user``, as the example names them."""
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as exc:  # the `postgres` extra is not installed
        _unavailable("asyncpg", exc)

    async def run() -> None:
        conn = await asyncpg.connect(server.dsn("postgres"))
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
            if not exists:
                await conn.execute(f'CREATE ROLE "{user}" LOGIN')
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{database}" OWNER "{user}"')
        finally:
            await conn.close()

    asyncio.run(run())


class Backends:
    """Starts the servers an example needs, on first use; stops them at teardown."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.tmp_path = tmp_path
        self.request = request
        self.redis: RedisServer | None = None
        self.sentinel: RedisSentinel | None = None
        self.postgres: PostgresServer | None = None

    def redis_server(self) -> RedisServer:
        if self.redis is None:
            try:
                server = RedisServer(str(self.tmp_path / "redis"))
                server.start()
            except RedisUnavailable as exc:
                _unavailable("redis-server", exc)
            self.redis = server
        return self.redis

    def redis_sentinel(self, master_name: str) -> RedisSentinel:
        if self.sentinel is None:
            master = self.redis_server()
            try:
                sentinel = RedisSentinel(str(self.tmp_path / "sentinel"), master, name=master_name)
                sentinel.start()
            except RedisUnavailable as exc:
                _unavailable("redis sentinel", exc)
            self.sentinel = sentinel
        return self.sentinel

    def pg_server(self) -> PostgresServer:
        if self.postgres is None:
            server = self.request.getfixturevalue("pg_cluster")
            assert isinstance(server, PostgresServer)
            self.postgres = server
        return self.postgres

    def close(self) -> None:
        for proc in (self.sentinel, self.redis):
            if proc is not None:
                proc.stop()
        # An outage test that failed half-way leaves the shared cluster down.
        pg = self.postgres
        if pg is not None and pg.base is not None and not (pg.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                pg.restart()


@pytest.fixture
def backends(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backends]:
    instance = Backends(tmp_path, request)
    try:
        yield instance
    finally:
        instance.close()


# -- the example, adapted to this machine -------------------------------------------------------


def _state_path(tmp_path: Path, path: Any) -> str:
    """An absolute path moves into the test's directory; a relative one stays as written."""
    if path is not None and not Path(str(path)).is_absolute():
        return str(path)
    name = Path(str(path)).name if path is not None else "cache"
    return str(tmp_path / "state" / name)


def _adapt(
    settings: dict[str, Any], world: World, tmp_path: Path, backends: Backends
) -> dict[str, Any]:
    data = copy.deepcopy(settings)
    data["host"] = "127.0.0.1"
    data["port"] = free_port()
    if data.get("path"):
        data["path"] = str(tmp_path / "mta-sts.sock")
    data["nameservers"] = [world.nameserver]
    data["ca_file"] = world.ca_file

    cache = data.setdefault("cache", {})
    options = cache.get("options")
    if options is None:
        options = cache["options"] = {}
    kind = cache.get("type", "lmdb")
    if kind == "internal":
        pass
    elif kind == "lmdb":
        options["path"] = _state_path(tmp_path, options.get("path"))
    elif kind == "sqlite":
        options["filename"] = _state_path(tmp_path, options.get("filename"))
        Path(options["filename"]).parent.mkdir(parents=True, exist_ok=True)
    elif kind == "redis":
        server = backends.redis_server()
        url = urlsplit(str(options["url"]))
        options["url"] = urlunsplit(url._replace(netloc=f"127.0.0.1:{server.port}"))
    elif kind == "redis_sentinel":
        sentinel = backends.redis_sentinel(str(options["sentinel_master_name"]))
        options["sentinels"] = [list(sentinel.address)]
    elif kind == "postgres":
        pg = backends.pg_server()
        dsn = urlsplit(str(options["dsn"]))
        user = dsn.username or "postgres"
        database = dsn.path.lstrip("/") or user
        _pg_fresh_database(pg, user, database)
        # The example's user and database over the cluster's unix socket, as
        # the example connects (its socket directory written with %2F).
        host = quote(str(pg.socket_dir), safe="")
        options["dsn"] = urlunsplit(dsn._replace(netloc=f"{user}@{host}:{pg.port}"))
    else:
        pytest.fail(f"cache type {kind!r}: this test does not know how to adapt it; extend _adapt")
    return data


@pytest.fixture
def run_example(
    world: World, tmp_path: Path, backends: Backends
) -> Iterator[Callable[[Path], Daemon]]:
    """``run_example(path)`` starts the daemon with that example, adapted, and waits for it."""
    started = Started()

    def _start(example: Path) -> Daemon:
        settings = _adapt(_load(example), world, tmp_path, backends)
        config = tmp_path / example.name
        config.write_text(yaml.safe_dump(settings))
        proc = subprocess.Popen(
            [sys.executable, "-m", "mtasts_fast", "-c", str(config)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        return started.add(proc, config, settings, timeout=30)

    yield _start
    started.end()


def _check_answers(daemon: Daemon) -> None:
    assert ask(daemon.address, b"postfix good.loc") == GOOD, daemon.output
    assert ask(daemon.address, b"postfix no-record.loc") == NOTFOUND, daemon.output


def _cached_in_backend(daemon: Daemon, domain: str) -> bool:
    """Whether ``mta-sts-cache show`` finds ``domain`` in the backend the example names."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from mtasts_fast.cachecli import main; sys.exit(main(sys.argv[1:]))",
            "-c",
            str(daemon.config),
            "show",
            domain,
        ],
        cwd=daemon.config.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode == 0


def _stop_cleanly(daemon: Daemon) -> None:
    code = daemon.stop(timeout=30)
    assert code == 0, daemon.output


# -- tests --------------------------------------------------------------------------------------


def test_examples_are_found() -> None:
    """The glob sees the examples the issue asks for (one per backend, multi-worker LMDB)."""
    names = {path.name for path in EXAMPLES}
    expected = {"internal.yml", "lmdb-workers.yml", "sqlite.yml", "redis.yml"}
    assert expected | {"redis_sentinel.yml", "postgres.yml"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_starts_answers_and_stops(
    example: Path, run_example: Callable[[Path], Daemon]
) -> None:
    daemon = run_example(example)
    _check_answers(daemon)
    # Asked again: now from the cache the example configures...
    _check_answers(daemon)
    # ...which really holds the policy (the internal cache cannot be seen from outside).
    if daemon.settings["cache"].get("type", "lmdb") != "internal":
        assert _cached_in_backend(daemon, "good.loc"), daemon.output
        assert not _cached_in_backend(daemon, "no-record.loc"), daemon.output
    _stop_cleanly(daemon)
    assert "Traceback" not in daemon.output, daemon.output


def _answers_through_outage(
    daemon: Daemon, take_away: Callable[[], None], bring_back: Callable[[], None]
) -> None:
    _check_answers(daemon)  # cached in the backend
    take_away()
    mark = daemon.mark()
    # Every worker is likely asked at least once (new connection each time).
    for _ in range(4):
        _check_answers(daemon)
    daemon.wait_for(r"cache backend \S+ failed", timeout=5, since=mark)
    bring_back()
    deadline = time.monotonic() + 15
    while True:
        _check_answers(daemon)
        if daemon.matches(BACK_LINE) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    daemon.wait_for(BACK_LINE, timeout=0.1, since=mark)
    _check_answers(daemon)
    _stop_cleanly(daemon)


def test_redis_outage_keeps_answering(
    run_example: Callable[[Path], Daemon], backends: Backends
) -> None:
    daemon = run_example(_example("redis.yml"))
    server = backends.redis_server()
    _answers_through_outage(daemon, server.kill, server.start)


def test_postgres_outage_keeps_answering(
    run_example: Callable[[Path], Daemon], backends: Backends
) -> None:
    daemon = run_example(_example("postgres.yml"))
    server = backends.pg_server()
    _answers_through_outage(daemon, server.stop, server.restart)
