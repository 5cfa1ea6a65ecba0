"""Hostile DNS answers and policy hosts (issue 7 item 2, DESIGN.md §4, RFC 8461 §3).

Every case is a domain of the test world that misbehaves in one way: huge or
numerous TXT records, CNAME loops and endless chains, a policy host that drips
one byte per second, sends a body that never ends, a gzip bomb, invalid
UTF-8, NUL bytes, 100 000 ``mx`` lines, a 1 MB line, speaks only TLS 1.0/1.1,
or presents an expired, self-signed, untrusted or wrong-name certificate.

For each: the fetch ends within the zone timeout (TIMEOUT, small here) with a
classified result, using bounded memory; through the real daemon the lookup is
answered ``NOTFOUND `` (RFC 8461 §3.3: no valid policy → as if none), the
failure is logged with its class, nothing is stored, and other lookups on
other connections are answered meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mtasts_fast.cache.lmdb import LmdbCache
from mtasts_fast.fetcher import Outcome, PolicyFetcher
from mtasts_fast.policy import MAX_POLICY_BYTES
from tests.servers.daemon import DaemonProcess, peak_rss, recv_netstring, reset_peak_rss, rss
from tests.servers.daemon import frame as encode_frame
from tests.servers.https import pin_tls_version
from tests.servers.world import GOOD_POLICY, World

TIMEOUT = 2.0
# Sanity bounds, not speed targets: the zone timeout plus room for a loaded
# machine, and memory far below what the hostile peers send (10-100 MB).
TIME_SLACK = 3.0
MIB = 1 << 20
MEMORY_BOUND = 32 * MIB

FETCH_ERROR = "sts-policy-fetch-error"
INVALID = "sts-policy-invalid"
WEBPKI = "sts-webpki-invalid"
DNS_ERROR = "dns-error"

OK_GOOD = b"OK secure match=mail.loc servername=hostname"
NOTFOUND = b"NOTFOUND "


def _gzip_of_zeros(size: int) -> bytes:
    """A gzip member that inflates to ``size`` zero bytes (~1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MIB)
    parts = [packer.compress(block) for _ in range(size // MIB)]
    parts.append(packer.flush())
    return b"".join(parts)


_BOMB_100MB = _gzip_of_zeros(100 * MIB)  # ~100 KB on the wire
_BOMB_UNDER_CAP = _gzip_of_zeros(50 * MIB)  # ~50 KB: fits in the 64 KiB body cap
assert len(_BOMB_UNDER_CAP) < MAX_POLICY_BYTES < len(_BOMB_100MB)

_HEAD = "version: STSv1\nmode: enforce\nmax_age: 86400\n"
_MX_100K = (_HEAD + "".join(f"mx: mx{i}.example.loc\n" for i in range(100_000))).encode()
_LINE_1MB = (_HEAD + "mx: mail.loc\nx-pad: " + "a" * MIB + "\n").encode()


@dataclass(frozen=True)
class Case:
    """A hostile domain: how to build it and the classified result it must give."""

    setup: Callable[[World, str], None]
    outcome: Outcome
    result_type: str | None
    stage: str
    reason: str = ""  # a fragment of FetchResult.reason


def _policy(body: bytes | str, **site: Any) -> Callable[[World, str], None]:
    def setup(world: World, domain: str) -> None:
        world.add_domain(domain)
        world.set_policy(domain, body, **site)

    return setup


def _txt(records: list[Any]) -> Callable[[World, str], None]:
    def setup(world: World, domain: str) -> None:
        world.add_domain(domain, txt=records)

    return setup


def _cname_self_loop(world: World, domain: str) -> None:
    world.add_domain(domain)
    world.set_cname(domain, f"_mta-sts.{domain}")


def _cname_ring(world: World, domain: str) -> None:
    # _mta-sts.<d> → r0.<d> → r1.<d> → ... → r49.<d> → r0.<d>
    world.add_domain(domain)
    world.set_cname(domain, f"r0.{domain}")
    for i in range(50):
        world.zone.set(f"r{i}.{domain}", "CNAME", [f"r{(i + 1) % 50}.{domain}"])


def _cname_chain(world: World, domain: str) -> None:
    # 100 hops before the TXT record: longer than any sane chain.
    world.add_domain(domain)
    world.set_cname(domain, f"c0.{domain}")
    for i in range(99):
        world.zone.set(f"c{i}.{domain}", "CNAME", [f"c{i + 1}.{domain}"])
    world.zone.set(f"c99.{domain}", "TXT", [[b"v=STSv1; id=farfaraway"]])


def _tls_only(version: ssl.TLSVersion) -> Callable[[World, str], None]:
    def setup(world: World, domain: str) -> None:
        world.add_domain(domain)
        world.serve_from(domain, _legacy_server(world, version))

    return setup


_LEGACY_SERVERS: dict[ssl.TLSVersion, Any] = {}


def _legacy_server(world: World, version: ssl.TLSVersion) -> Any:
    server = _LEGACY_SERVERS.get(version)
    if server is None:
        server = world.start_https_server(tls_version=version)
        _LEGACY_SERVERS[version] = server
    return server


def _big_strings(prefix: str, size: int) -> list[bytes]:
    """One TXT record of ``size`` bytes as 255-byte character-strings."""
    raw = (prefix + "x" * (size - len(prefix))).encode()
    return [raw[i : i + 255] for i in range(0, len(raw), 255)]


CASES: dict[str, Case] = {
    # --- DNS ---
    # Two v=STSv1 records of ~30 KB each: a ~61 KB answer (TCP, near the
    # 64 KiB message limit), and RFC 8461 §3.1 allows exactly one record.
    "txt-max-size-answer": Case(
        _txt(
            [
                _big_strings("v=STSv1; id=big1; pad=", 30_500),
                _big_strings("v=STSv1; id=big2; pad=", 30_500),
            ]
        ),
        Outcome.NO_POLICY,
        None,
        "txt",
        "2 v=STSv1 records",
    ),
    "txt-max-size-junk": Case(
        _txt([_big_strings("v=spf1 ", 62_000)]),
        Outcome.NO_POLICY,
        None,
        "txt",
        "no record starts",
    ),
    "txt-hundreds-of-sts-records": Case(
        _txt([f"v=STSv1; id=r{i}" for i in range(400)]),
        Outcome.NO_POLICY,
        None,
        "txt",
        "400 v=STSv1 records",
    ),
    "cname-self-loop": Case(_cname_self_loop, Outcome.FAILED, DNS_ERROR, "dns", "CNAME"),
    "cname-ring-of-50": Case(_cname_ring, Outcome.FAILED, DNS_ERROR, "dns", "CNAME"),
    "cname-chain-of-100": Case(_cname_chain, Outcome.FAILED, DNS_ERROR, "dns", "CNAME"),
    # --- the policy host ---
    "drip-body-1-byte-per-s": Case(
        _policy(GOOD_POLICY, drip=1.0), Outcome.FAILED, FETCH_ERROR, "https", "timed out"
    ),
    "drip-head-1-byte-per-s": Case(
        _policy(GOOD_POLICY, drip=1.0, drip_head=True),
        Outcome.FAILED,
        FETCH_ERROR,
        "https",
        "timed out",
    ),
    "endless-body-until-close": Case(
        _policy(GOOD_POLICY + "\n", framing="close", endless=True),
        Outcome.FAILED,
        FETCH_ERROR,
        "https",
        "body over",
    ),
    "endless-body-chunked": Case(
        _policy(GOOD_POLICY + "\n", framing="chunked", endless=True),
        Outcome.FAILED,
        FETCH_ERROR,
        "https",
        "body over",
    ),
    "gzip-bomb-content-encoding": Case(
        _policy(_BOMB_100MB, headers=[("Content-Encoding", "gzip")]),
        Outcome.FAILED,
        FETCH_ERROR,
        "https",
        "gzip",
    ),
    "gzip-bomb-chunked-content-encoding": Case(
        _policy(_BOMB_100MB, framing="chunked", headers=[("Content-Encoding", "gzip")]),
        Outcome.FAILED,
        FETCH_ERROR,
        "https",
        "gzip",
    ),
    "gzip-bomb-undeclared-under-cap": Case(
        _policy(_BOMB_UNDER_CAP), Outcome.FAILED, INVALID, "policy", "not UTF-8"
    ),
    "invalid-utf8-overlong": Case(
        _policy(GOOD_POLICY.encode() + b"\nx: \xc0\xaf\n"), Outcome.FAILED, INVALID, "policy"
    ),
    "invalid-utf8-surrogate": Case(
        _policy(GOOD_POLICY.encode() + b"\nx: \xed\xa0\x80\n"), Outcome.FAILED, INVALID, "policy"
    ),
    "invalid-utf8-truncated": Case(
        _policy(GOOD_POLICY.encode() + b"\nx: \xe2\x82"), Outcome.FAILED, INVALID, "policy"
    ),
    "invalid-utf8-lone-continuation": Case(
        _policy(b"version: STSv1\n\x80mode: enforce\nmx: mail.loc\nmax_age: 86400\n"),
        Outcome.FAILED,
        INVALID,
        "policy",
    ),
    "nul-in-mx": Case(
        _policy(_HEAD + "mx: mail\x00.loc\n"), Outcome.FAILED, INVALID, "policy", "control"
    ),
    "nul-in-version": Case(
        _policy(GOOD_POLICY.replace("STSv1", "STSv1\x00")),
        Outcome.FAILED,
        INVALID,
        "policy",
        "control",
    ),
    "nul-in-extension-line": Case(
        _policy(GOOD_POLICY + "\nx-ext: a\x00b\n"), Outcome.FAILED, INVALID, "policy", "control"
    ),
    "nul-only-body": Case(_policy(b"\x00" * 4096), Outcome.FAILED, INVALID, "policy", "control"),
    "mx-100000-lines": Case(
        _policy(_MX_100K), Outcome.FAILED, FETCH_ERROR, "https", "Content-Length"
    ),
    "mx-100000-lines-no-length": Case(
        _policy(_MX_100K, framing="close"), Outcome.FAILED, FETCH_ERROR, "https", "body over"
    ),
    "line-of-1mb": Case(_policy(_LINE_1MB), Outcome.FAILED, FETCH_ERROR, "https", "Content-Length"),
    "line-of-1mb-chunked": Case(
        _policy(_LINE_1MB, framing="chunked"), Outcome.FAILED, FETCH_ERROR, "https", "body over"
    ),
    # --- TLS ---
    "tls-1.0-only": Case(_tls_only(ssl.TLSVersion.TLSv1), Outcome.FAILED, FETCH_ERROR, "https"),
    "tls-1.1-only": Case(_tls_only(ssl.TLSVersion.TLSv1_1), Outcome.FAILED, FETCH_ERROR, "https"),
    "cert-expired": Case(_policy(GOOD_POLICY, cert="expired"), Outcome.FAILED, WEBPKI, "https"),
    "cert-self-signed": Case(
        _policy(GOOD_POLICY, cert="self-signed"), Outcome.FAILED, WEBPKI, "https"
    ),
    "cert-untrusted-ca": Case(
        _policy(GOOD_POLICY, cert="untrusted"), Outcome.FAILED, WEBPKI, "https"
    ),
    "cert-wrong-name": Case(
        _policy(GOOD_POLICY, cert="wrong-name"), Outcome.FAILED, WEBPKI, "https", "mismatch"
    ),
}


@pytest.fixture(scope="module")
def hostile(world: World) -> dict[str, str]:
    """Case id → the domain built for it in the test world."""
    domains: dict[str, str] = {}
    for name, case in CASES.items():
        domain = world.fresh_domain("hostile")
        case.setup(world, domain)
        domains[name] = domain
    return domains


# --- fetcher level: classification, time and memory, case by case --------------------------


@pytest.mark.parametrize("name", list(CASES))
async def test_fetch_is_bounded_and_classified(
    fetcher: PolicyFetcher, hostile: dict[str, str], world: World, name: str
) -> None:
    case = CASES[name]
    domain = hostile[name]
    pid = os.getpid()
    before = rss(pid)
    peak_known = reset_peak_rss(pid)
    started = time.monotonic()
    result = await fetcher.fetch(domain, TIMEOUT)
    elapsed = time.monotonic() - started
    grown = (peak_rss(pid) if peak_known else rss(pid)) - before

    assert result.outcome is case.outcome, result
    assert result.result_type == case.result_type, result
    assert result.stage == case.stage, result
    assert case.reason in result.reason, result
    # The reason says something (it is logged and shown by mta-sts-query).
    assert not result.reason.rstrip().endswith(":"), result
    assert result.policy is None
    assert elapsed < TIMEOUT + TIME_SLACK, f"{elapsed:.1f}s"
    # This process also runs the hostile servers; together they stay bounded.
    assert grown < MEMORY_BOUND, f"RSS grew by {grown / MIB:.1f} MiB"


async def test_dripping_host_times_out_in_the_https_stage(
    fetcher: PolicyFetcher, hostile: dict[str, str], world: World
) -> None:
    # The request reached the host; the fetch gave up at the zone timeout
    # while the host was still dripping, not earlier for another reason.
    domain = hostile["drip-body-1-byte-per-s"]
    before = world.https_requests(domain)
    started = time.monotonic()
    result = await fetcher.fetch(domain, TIMEOUT)
    elapsed = time.monotonic() - started
    assert world.https_requests(domain) == before + 1
    assert result.result_type == FETCH_ERROR
    assert TIMEOUT - 0.5 <= elapsed < TIMEOUT + TIME_SLACK


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["tls-1.0", "tls-1.1"]
)
async def test_legacy_tls_hosts_really_speak_their_version(
    world: World, hostile: dict[str, str], version: ssl.TLSVersion
) -> None:
    # Without this, "tls-1.0-only fails" could pass because the host is
    # simply broken. A client that allows the old version gets the policy.
    name = "tls-1.0-only" if version is ssl.TLSVersion.TLSv1 else "tls-1.1-only"
    domain = hostile[name]
    server = _LEGACY_SERVERS[version]

    def fetch() -> tuple[str | None, bytes]:
        ctx = ssl.create_default_context(cafile=world.ca_file)
        pin_tls_version(ctx, version)
        with (
            socket.create_connection((server.ip, 443), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=f"mta-sts.{domain}") as tls,
        ):
            tls.sendall(
                f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.{domain}\r\n\r\n".encode()
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return tls.version(), data

    negotiated, response = await asyncio.to_thread(fetch)
    assert negotiated == {ssl.TLSVersion.TLSv1: "TLSv1", ssl.TLSVersion.TLSv1_1: "TLSv1.1"}[version]
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(GOOD_POLICY.encode())


async def test_hundreds_of_other_records_and_one_policy_record(
    fetcher: PolicyFetcher, world: World
) -> None:
    # The control for the TXT cases: size and count alone are not refused.
    domain = world.fresh_domain("crowded")
    world.add_domain(
        domain,
        txt=[f"v=spf1 ip4:192.0.2.{i % 250} -all" for i in range(300)] + ["v=STSv1; id=amongmany"],
    )
    result = await fetcher.fetch(domain, TIMEOUT)
    assert result.outcome is Outcome.POLICY, result
    assert result.policy_id == "amongmany"


# --- through the daemon: NOTFOUND, logged, nothing stored, others unaffected ---------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, world: World) -> Iterator[DaemonProcess]:
    directory = tmp_path_factory.mktemp("hostile-daemon")
    instance = DaemonProcess(
        directory,
        world,
        default_zone={"timeout": TIMEOUT},
        cache={"type": "lmdb", "options": {"path": str(directory / "cache.lmdb")}},
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def _lmdb_entry(path: Path, domain: str) -> Any:
    async def read() -> Any:
        cache = LmdbCache({"path": str(path)})
        await cache.setup()
        try:
            return await cache.get(domain)
        finally:
            await cache.close()

    return asyncio.run(read())


def test_daemon_answers_notfound_for_every_hostile_domain_at_once(
    daemon: DaemonProcess, hostile: dict[str, str], world: World
) -> None:
    # A well-behaved domain fetched and cached before the storm.
    assert daemon.ask(b"postfix good.loc") == OK_GOOD
    worker = daemon.worker_pid()
    before = rss(worker)
    peak_known = reset_peak_rss(worker)

    # Every hostile lookup at once, one connection each, as smtp(8) would.
    conns: dict[str, socket.socket] = {}
    started = time.monotonic()
    for name, domain in hostile.items():
        sock = daemon.connect(timeout=TIMEOUT + TIME_SLACK + 5)
        sock.sendall(encode_frame(b"postfix " + domain.encode()))
        conns[name] = sock
    try:
        # While they are in flight, others are answered: a cached policy and
        # a fresh domain whose fetch goes through the same DNS and HTTPS host.
        fresh = world.fresh_domain("bystander")
        world.add_domain(fresh, policy=world.policy_text("enforce", ["mx." + fresh]))
        assert daemon.ask(b"postfix good.loc") == OK_GOOD
        assert daemon.ask(b"postfix " + fresh.encode()) == (
            f"OK secure match=mx.{fresh} servername=hostname".encode()
        )
        replies: dict[str, bytes] = {}
        for name, sock in conns.items():
            replies[name] = recv_netstring(sock)
        elapsed = time.monotonic() - started
    finally:
        for sock in conns.values():
            sock.close()

    assert replies == dict.fromkeys(hostile, NOTFOUND)
    # All together took about one zone timeout (they run concurrently).
    assert elapsed < TIMEOUT + TIME_SLACK + 2, f"{elapsed:.1f}s"
    grown = (peak_rss(worker) if peak_known else rss(worker)) - before
    assert grown < MEMORY_BOUND, f"worker RSS grew by {grown / MIB:.1f} MiB"
    assert daemon.worker_pid() == worker

    # Each failure is logged with its class.
    log = daemon.log_text()
    for name, domain in hostile.items():
        case = CASES[name]
        lines = [line for line in log.splitlines() if domain in line]
        assert lines, f"{name}: nothing logged for {domain}"
        if case.result_type is not None:
            assert any(case.result_type in line for line in lines), (name, lines[-3:])

    # Nothing was stored for any of them; the good ones were.
    cache_path = Path(daemon.config["cache"]["options"]["path"])
    for name, domain in hostile.items():
        assert _lmdb_entry(cache_path, domain) is None, name
    assert _lmdb_entry(cache_path, "good.loc") is not None
    assert _lmdb_entry(cache_path, fresh) is not None

    # Asked again (from cache or a new fetch), still NOTFOUND, still serving.
    for name in ("drip-body-1-byte-per-s", "gzip-bomb-content-encoding", "cname-self-loop"):
        assert daemon.ask(b"postfix " + hostile[name].encode(), timeout=TIMEOUT + 5) == NOTFOUND
    assert daemon.ask(b"postfix good.loc") == OK_GOOD
