"""Request → reply vectors through a real server, DNS server and HTTPS servers.

The three tables are postfix-mta-sts-resolver's refdata (research/peer.md §5.3):
the same requests must give the same replies, except where DESIGN.md §4 is
deliberately stricter (noted per row).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.socketmap import Running, enforce, start_daemon

pytestmark = pytest.mark.both_loops

OK = "OK secure match=mail.loc servername=hostname"
OK_NOSNI = "OK secure match=mail.loc"
NF = "NOTFOUND "

# request, default, require_sni=false, strict_testing=true
REFDATA = [
    ("test good.loc", OK, OK_NOSNI, OK),
    ("test [good.loc]", OK, OK_NOSNI, OK),
    ("test [good.loc]:123", OK, OK_NOSNI, OK),
    ("test good.loc:123", OK, OK_NOSNI, OK),
    ("test2 good.loc", OK, OK_NOSNI, OK),
    ("test good.loc.", OK, OK_NOSNI, OK),
    ("test .good.loc", NF, NF, NF),
    ("test valid-none.loc", NF, NF, NF),
    ("test testing.loc", NF, NF, OK),
    ("test no-record.loc", NF, NF, NF),
    ("test [no-record.loc]", NF, NF, NF),
    ("test .no-record.loc", NF, NF, NF),
    ("test [1.2.3.4]", NF, NF, NF),
    ("test [a:bb:ccc::dddd]:123", NF, NF, NF),
    ("test bad-record1.loc", NF, NF, NF),
    ("test bad-record2.loc", NF, NF, NF),
    ("test bad-policy1.loc", NF, NF, NF),
    ("test bad-policy2.loc", NF, NF, NF),
    ("test bad-policy3.loc", NF, NF, NF),
    ("test bad-cert1.loc", NF, NF, NF),
    ("test bad-cert2.loc", NF, NF, NF),
]

ZONE_SETTINGS = {
    "default": {},
    "nosni": {"require_sni": False},
    "strict": {"strict_testing": True},
}


def _cases() -> list[Any]:
    cases = []
    for column, name in enumerate(ZONE_SETTINGS, start=1):
        for row in REFDATA:
            cases.append(pytest.param(name, row[0], row[column], id=f"{name}:{row[0]}"))
    return cases


@pytest.mark.parametrize(("zone", "request_text", "expected"), _cases())
async def test_refdata(
    world: Any, tmp_path: Path, zone: str, request_text: str, expected: str
) -> None:
    settings = ZONE_SETTINGS[zone]
    # As in the old daemon's tests: map "test" is unknown (default zone),
    # "test2" is a zone with the same settings.
    daemon = await start_daemon(
        world, tmp_path, default_zone=dict(settings), zones={"test2": dict(settings)}
    )
    try:
        for read_size in (4096, 16, 1):
            reply = await _ask_with_read_size(daemon, request_text, read_size)
            assert reply == expected.encode()
    finally:
        await daemon.stop()


async def _ask_with_read_size(daemon: Running, text: str, read_size: int) -> bytes:
    client = await daemon.connect()
    payload = text.encode()
    client.writer.write(str(len(payload)).encode() + b":" + payload + b",")
    data = b""
    while not data.endswith(b",") or b":" not in data or len(data) < _framed_len(data):
        chunk = await asyncio.wait_for(client.reader.read(read_size), 10)
        assert chunk, "server closed the connection"
        data += chunk
    await client.close()
    head, _, rest = data.partition(b":")
    assert len(rest) == int(head) + 1
    return rest[:-1]


def _framed_len(data: bytes) -> int:
    head, sep, _ = data.partition(b":")
    return len(head) + 1 + int(head) + 1 if sep and head.isdigit() else len(data) + 1


@pytest.fixture
async def daemon(world: Any, tmp_path: Path) -> Any:
    running = await start_daemon(
        world,
        tmp_path,
        cache_grace=0,
        zones={"tlsrpt": {"tlsrpt": True}, "nosni": {"require_sni": False}},
    )
    yield running
    await running.stop()


async def test_fast_expire_policy_is_fetched_again(daemon: Running, world: Any) -> None:
    before = world.https_requests("fast-expire.loc")
    assert await daemon.ask("postfix fast-expire.loc") == OK.encode()
    await asyncio.sleep(1.2)  # max_age 1: the entry has expired
    assert await daemon.ask("postfix fast-expire.loc") == OK.encode()
    assert world.https_requests("fast-expire.loc") == before + 2


async def test_expired_entry_not_served_when_refetch_finds_nothing(daemon: Running) -> None:
    # Seeded long ago with max_age 1; the domain now publishes no record.
    await daemon.seed("no-record.loc", enforce("mail.loc", max_age=1), age=1000)
    assert await daemon.ask("postfix no-record.loc") == NF.encode()


async def test_unexpired_entry_kept_while_fetches_fail(daemon: Running) -> None:
    # RFC 8461 §3.3: an unexpired cached policy stays in force when the
    # refresh fails (DNS times out for blackhole.loc).
    await daemon.seed("blackhole.loc", enforce("mx.blackhole.loc"), age=1000)
    reply = b"OK secure match=mx.blackhole.loc servername=hostname"
    assert await daemon.ask("postfix blackhole.loc") == reply
    assert await daemon.ask("postfix blackhole.loc") == reply


async def test_revalidation_runs_in_background_and_never_blocks(
    daemon: Running, world: Any
) -> None:
    domain = world.fresh_domain()
    world.add_domain(domain, policy=world.policy_text("enforce", ["mx." + domain]))
    await daemon.seed(domain, enforce("old." + domain), age=100, pid="old")
    world.stall_dns("_mta-sts." + domain, 3.0)
    started = time.monotonic()
    assert await daemon.ask("postfix " + domain) == (
        f"OK secure match=old.{domain} servername=hostname".encode()
    )
    assert time.monotonic() - started < 0.5
    world.stall_dns("_mta-sts." + domain, 0)


async def test_new_txt_id_replaces_policy_after_background_check(
    daemon: Running, world: Any
) -> None:
    domain = world.fresh_domain()
    world.add_domain(domain, policy=world.policy_text("enforce", ["new." + domain]))
    await daemon.seed(domain, enforce("old." + domain), age=100, pid="old")
    old = f"OK secure match=old.{domain} servername=hostname".encode()
    new = f"OK secure match=new.{domain} servername=hostname".encode()
    assert await daemon.ask("postfix " + domain) == old
    for _ in range(100):
        reply = await daemon.ask("postfix " + domain)
        if reply == new:
            break
        await asyncio.sleep(0.05)
    assert reply == new


async def test_same_txt_id_confirms_without_https_fetch(daemon: Running, world: Any) -> None:
    domain = world.fresh_domain()
    world.add_domain(domain, policy=world.policy_text("enforce", ["mx." + domain]))
    reply = await daemon.ask("postfix " + domain)
    assert reply == f"OK secure match=mx.{domain} servername=hostname".encode()
    entry = daemon.cache.get_nowait(domain)
    assert entry is not None
    fetched = world.https_requests(domain)
    txt = world.txt_queries(domain)
    entry.checked_at -= 10  # past cache_grace (0): the next lookup revalidates
    assert await daemon.ask("postfix " + domain) == reply
    for _ in range(100):
        if world.txt_queries(domain) > txt:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    assert world.txt_queries(domain) == txt + 1
    assert world.https_requests(domain) == fetched
    confirmed = daemon.cache.get_nowait(domain)
    assert confirmed is not None
    assert confirmed.fetched_at == entry.fetched_at  # max_age still counts from the fetch


async def test_concurrent_misses_share_one_fetch(daemon: Running, world: Any) -> None:
    domain = world.fresh_domain()
    world.add_domain(domain, policy=world.policy_text("enforce", ["mx." + domain]))
    replies = await asyncio.gather(*(daemon.ask("postfix " + domain) for _ in range(50)))
    assert set(replies) == {f"OK secure match=mx.{domain} servername=hostname".encode()}
    # One DNS lookup; a retransmission by c-ares on a loaded machine is the
    # same query again (same id), not a second lookup.
    assert world.distinct_txt_queries(domain) == 1
    assert world.https_requests(domain) == 1


async def test_u_label_and_a_label_share_one_entry(daemon: Running, world: Any) -> None:
    a_label = "xn--bcher-kva.loc"
    before = world.https_requests(a_label)
    first = await daemon.ask("postfix bücher.loc".encode())
    second = await daemon.ask(b"postfix " + a_label.encode())
    third = await daemon.ask("postfix BÜCHER.loc.".encode())
    assert first == second == third
    assert first.startswith(b"OK secure match=")
    assert world.https_requests(a_label) == before + 1


async def test_tlsrpt_zone(daemon: Running) -> None:
    assert await daemon.ask("tlsrpt good.loc") == (
        b"OK secure match=mail.loc servername=hostname policy_type=sts "
        b"policy_domain=good.loc mx_host_pattern=mail.loc "
        b"{ policy_string = version: STSv1 } { policy_string = mode: enforce } "
        b"{ policy_string = mx: mail.loc } { policy_string = max_age: 86400 }"
    )
    assert await daemon.ask("tlsrpt testing.loc") == NF.encode()
    assert await daemon.ask("nosni good.loc") == OK_NOSNI.encode()


GOOD_TLSRPT = (
    b"OK secure match=mail.loc servername=hostname policy_type=sts "
    b"policy_domain=good.loc mx_host_pattern=mail.loc "
    b"{ policy_string = version: STSv1 } { policy_string = mode: enforce } "
    b"{ policy_string = mx: mail.loc } { policy_string = max_age: 86400 }"
)


async def test_postfix_tlspol_map_names_without_zones(daemon: Running) -> None:
    """QUERYwithTLSRPT gets TLSRPT attributes, QUERY the default zone (issue 13)."""
    assert await daemon.ask("QUERYwithTLSRPT good.loc") == GOOD_TLSRPT
    assert await daemon.ask("QUERY good.loc") == OK.encode()
    # Names are case-sensitive, as Postfix sends them: anything else is default.
    assert await daemon.ask("querywithtlsrpt good.loc") == OK.encode()
    assert await daemon.ask("QUERYwithTLSRPT testing.loc") == NF.encode()


async def test_configured_tlspol_zone_wins(world: Any, tmp_path: Path) -> None:
    running = await start_daemon(
        world,
        tmp_path,
        zones={"QUERYwithTLSRPT": {"tlsrpt": False}, "QUERY": {"tlsrpt": True}},
    )
    try:
        assert await running.ask("QUERYwithTLSRPT good.loc") == OK.encode()
        assert await running.ask("QUERY good.loc") == GOOD_TLSRPT
    finally:
        await running.stop()


async def test_testing_policy_at_the_zone_testing_level(world: Any, tmp_path: Path) -> None:
    running = await start_daemon(
        world,
        tmp_path,
        default_zone={"tlsrpt_testing_level": "may"},
        zones={"report": {"tlsrpt": True, "tlsrpt_testing_level": "encrypt"}},
    )
    try:
        # The default zone sends no TLSRPT attributes: the level alone is no use.
        assert await running.ask("postfix testing.loc") == NF.encode()
        assert await running.ask("QUERYwithTLSRPT testing.loc") == (
            b"OK may servername=hostname policy_type=sts policy_domain=testing.loc "
            b"mx_host_pattern=mail.loc { policy_string = version: STSv1 } "
            b"{ policy_string = mode: testing } { policy_string = max_age: 86400 } "
            b"{ policy_string = mx: mail.loc }"
        )
        reply = await running.ask("report testing.loc")
        assert reply.startswith(b"OK encrypt servername=hostname policy_type=sts ")
        # Enforce is unchanged by the testing level; entries shared across zones
        # keep one rendering per zone setting.
        assert await running.ask("report good.loc") == GOOD_TLSRPT
        assert await running.ask("QUERYwithTLSRPT good.loc") == GOOD_TLSRPT
        assert await running.ask("postfix good.loc") == OK.encode()
    finally:
        await running.stop()


async def test_mode_none_replaces_enforce_at_once(daemon: Running, world: Any) -> None:
    domain = world.fresh_domain()
    world.add_domain(domain, policy=world.policy_text("none", []))
    await daemon.seed(domain, enforce("mx." + domain), age=100, pid="old")
    first = await daemon.ask("postfix " + domain)
    assert first.startswith(b"OK secure")
    for _ in range(100):
        if await daemon.ask("postfix " + domain) == NF.encode():
            break
        await asyncio.sleep(0.05)
    assert await daemon.ask("postfix " + domain) == NF.encode()


async def test_invalid_new_policy_never_replaces_valid_one(daemon: Running, world: Any) -> None:
    domain = world.fresh_domain()
    world.add_domain(domain, policy="version: STSv1\nmode: enforce\nmax_age: 86400\n")
    await daemon.seed(domain, enforce("mx." + domain), age=100, pid="old")
    good = f"OK secure match=mx.{domain} servername=hostname".encode()
    assert await daemon.ask("postfix " + domain) == good
    for _ in range(20):
        if world.https_requests(domain):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert world.https_requests(domain) == 1
    assert await daemon.ask("postfix " + domain) == good


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(".good.loc", id="parent-domain-probe"),
        pytest.param("[192.0.2.1]", id="bracketed-ipv4"),
        pytest.param("192.0.2.1", id="bare-ipv4"),
        pytest.param("2001:db8::1", id="unbracketed-ipv6"),
        pytest.param("[IPv6:2001:db8::1]:25", id="postfix-ipv6-form"),
        pytest.param("", id="empty"),
        pytest.param("a" * 64 + ".loc", id="label-over-63"),
        pytest.param(("a" * 60 + ".") * 5 + "loc", id="name-over-253"),
        pytest.param("exa mple.loc", id="space-in-name"),
        pytest.param("/var/spool/postfix/lmtp", id="lmtp-path"),
    ],
)
async def test_unusable_keys_answer_notfound_without_dns(
    daemon: Running, world: Any, key: str
) -> None:
    before = world.zone.total_queries()
    assert await daemon.ask("postfix " + key) == NF.encode()
    assert world.zone.total_queries() == before


async def test_invalid_utf8_key_answers_notfound_without_dns(daemon: Running, world: Any) -> None:
    before = world.zone.total_queries()
    assert await daemon.ask(b"postfix \xff\xfe.loc") == NF.encode()
    assert world.zone.total_queries() == before


async def test_within_cache_grace_no_network_at_all(world: Any, tmp_path: Path) -> None:
    daemon = await start_daemon(world, tmp_path)  # default cache_grace: 60 s
    try:
        domain = world.fresh_domain()
        world.add_domain(domain, policy=world.policy_text("enforce", ["mx." + domain]))
        for _ in range(20):
            assert (await daemon.ask("postfix " + domain)).startswith(b"OK secure")
        await asyncio.sleep(0.2)
        assert world.txt_queries(domain) == 1
        assert world.https_requests(domain) == 1
    finally:
        await daemon.stop()
