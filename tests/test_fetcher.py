"""Discovery and fetch against the test world: real DNS, real HTTPS, real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import aiodns
import pytest

from mtasts_fast import __version__, dns_channel
from mtasts_fast.fetcher import FetchResult, Outcome, PolicyFetcher, parse_nameservers
from mtasts_fast.policy import MAX_AGE_LIMIT
from tests.servers.proxy import ConnectProxy
from tests.servers.world import DEFAULT_ID, World

TIMEOUT = 5.0
PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


@pytest.fixture(autouse=True)
def _no_proxy_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fetcher honours https_proxy; the tests decide whether there is one.
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@dataclass(frozen=True)
class Want:
    """What a catalogue domain must give."""

    outcome: Outcome
    result_type: str | None = None
    stage: str = ""
    mode: str | None = None
    mx: tuple[str, ...] = ("mail.loc",)
    max_age: int = 86400
    policy_id: str | None = DEFAULT_ID
    warnings: int = 0
    reason: str = ""


def policy(mode: str = "enforce", **kw: object) -> Want:
    return Want(Outcome.POLICY, stage="policy", mode=mode, **kw)  # type: ignore[arg-type]


def no_policy(stage: str, reason: str = "") -> Want:
    return Want(Outcome.NO_POLICY, stage=stage, policy_id=None, reason=reason)


def failed(result_type: str, stage: str, reason: str = "") -> Want:
    # After a valid TXT record the id is known even though the fetch failed.
    policy_id = None if stage == "dns" else DEFAULT_ID
    return Want(Outcome.FAILED, result_type, stage, reason=reason, policy_id=policy_id)


INVALID = "sts-policy-invalid"
FETCH_ERROR = "sts-policy-fetch-error"
WEBPKI = "sts-webpki-invalid"

CATALOGUE = [
    # research/peer.md §5.1, the old daemon's resolver table.
    pytest.param("good.loc", policy(), id="good"),
    pytest.param("bad-record1.loc", no_policy("txt", "no record starts"), id="bad-record1"),
    pytest.param("bad-record2.loc", no_policy("txt", "no record starts"), id="bad-record2"),
    pytest.param("bad-record3.loc", no_policy("txt", "no record starts"), id="bad-record3"),
    pytest.param("no-record.loc", no_policy("dns", "not found"), id="no-record-nxdomain"),
    pytest.param("no-data.loc", no_policy("dns", "no data"), id="no-data-nodata"),
    pytest.param(
        "bad-policy1.loc", failed(INVALID, "policy", "not 'key: value'"), id="bad-policy1"
    ),
    pytest.param("bad-policy2.loc", failed(INVALID, "policy", "no usable mx"), id="bad-policy2"),
    pytest.param("bad-policy3.loc", failed(FETCH_ERROR, "https", "text/html"), id="bad-policy3"),
    pytest.param("bad-policy4.loc", failed(FETCH_ERROR, "https", "404"), id="bad-policy4"),
    pytest.param("bad-policy5.loc", failed(INVALID, "policy", "max_age"), id="bad-policy5"),
    # Deliberate difference: the old daemon rejects max_age 31557601; we clamp.
    pytest.param("bad-policy6.loc", policy(max_age=MAX_AGE_LIMIT, warnings=1), id="bad-policy6"),
    pytest.param("bad-policy7.loc", failed(INVALID, "policy", "mode missing"), id="bad-policy7"),
    pytest.param("bad-policy8.loc", failed(INVALID, "policy", "doubt"), id="bad-policy8"),
    pytest.param("bad-cert1.loc", failed(WEBPKI, "https", "issuer"), id="bad-cert1-untrusted"),
    pytest.param("bad-cert2.loc", failed(WEBPKI, "https", "mismatch"), id="bad-cert2-name"),
    pytest.param("valid-none.loc", policy("none", mx=()), id="valid-none"),
    pytest.param("testing.loc", policy("testing"), id="testing"),
    pytest.param("fast-expire.loc", policy(max_age=1), id="fast-expire"),
    pytest.param(
        "chunked-overlength.loc", failed(FETCH_ERROR, "https", "body over"), id="chunked-overlength"
    ),
    pytest.param(
        "static-overlength.loc",
        failed(FETCH_ERROR, "https", "Content-Length 131193"),
        id="static-overlength",
    ),
    # Discovery extras.
    pytest.param("two-records.loc", no_policy("txt", "2 v=STSv1"), id="two-records"),
    pytest.param(
        "two-records-one-broken.loc", no_policy("txt", "2 v=STSv1"), id="two-records-one-broken"
    ),
    pytest.param("other-txt.loc", policy(policy_id="withothers"), id="other-txt-ignored"),
    pytest.param("split-txt.loc", policy(policy_id="splittxt01"), id="multi-string-joined"),
    pytest.param("big-txt.loc", policy(policy_id="bigtxt"), id="txt-over-512-bytes-tcp"),
    pytest.param("long-id.loc", no_policy("txt", "not 1-32"), id="id-too-long"),
    pytest.param("bad-id.loc", no_policy("txt", "not 1-32"), id="id-not-alnum"),
    pytest.param("empty-id.loc", no_policy("txt", "not 1-32"), id="id-empty"),
    pytest.param("non-ascii-txt.loc", no_policy("txt", "no record"), id="non-ascii-record-ignored"),
    pytest.param("non-ascii-other.loc", policy(policy_id="asciiok"), id="non-ascii-other-record"),
    pytest.param("cname.loc", policy(policy_id="viacname"), id="txt-behind-cname"),
    pytest.param("cname-nodata.loc", no_policy("dns", "no data"), id="cname-to-nodata"),
    pytest.param("cname-loop.loc", failed("dns-error", "dns", "CNAME loop"), id="cname-loop"),
    pytest.param("servfail.loc", failed("dns-error", "dns", "failure"), id="servfail"),
    pytest.param("refused.loc", failed("dns-error", "dns", "refused"), id="refused"),
    # HTTPS extras.
    pytest.param("expired-cert.loc", failed(WEBPKI, "https", "expired"), id="expired-cert"),
    pytest.param("self-signed.loc", failed(WEBPKI, "https", "self"), id="self-signed"),
    pytest.param("redirect.loc", failed(FETCH_ERROR, "https", "302 redirect"), id="redirect"),
    pytest.param("gzip.loc", failed(FETCH_ERROR, "https", "gzip"), id="gzip-encoding"),
    pytest.param(
        "no-content-type.loc", failed(FETCH_ERROR, "https", "missing"), id="no-content-type"
    ),
    pytest.param("charset.loc", policy(), id="content-type-charset"),
    pytest.param("cache-headers.loc", policy(), id="cache-headers-ignored"),
    pytest.param("eof-body.loc", policy(), id="body-until-close"),
    pytest.param(
        "eof-overlength.loc", failed(FETCH_ERROR, "https", "body over"), id="overlength-until-close"
    ),
    pytest.param("exactly-64k.loc", policy(), id="body-exactly-64k"),
    pytest.param(
        "over-64k.loc", failed(FETCH_ERROR, "https", "Content-Length 65537"), id="body-64k-plus-1"
    ),
    pytest.param(
        "no-https-host.loc", failed(FETCH_ERROR, "https", "cannot connect"), id="no-policy-host"
    ),
    # Policy extras.
    pytest.param("crlf.loc", policy(), id="crlf"),
    pytest.param("dup-keys.loc", policy(warnings=2), id="duplicate-keys-first-wins"),
    pytest.param("ip-mx.loc", policy(warnings=2), id="ip-literal-mx-dropped"),
    pytest.param(
        "huge-max-age.loc", policy(max_age=MAX_AGE_LIMIT, warnings=1), id="max-age-clamped"
    ),
    pytest.param("invalid-mx.loc", failed(INVALID, "policy", "no usable mx"), id="only-invalid-mx"),
    pytest.param("non-utf8.loc", failed(INVALID, "policy", "not UTF-8"), id="non-utf8-body"),
    pytest.param("xn--bcher-kva.loc", policy(mx=("mail.xn--bcher-kva.loc",)), id="idn-a-label"),
]


def check(result: FetchResult, want: Want) -> None:
    assert result.outcome is want.outcome, result
    assert result.result_type == want.result_type, result
    assert result.stage == want.stage, result
    assert result.policy_id == want.policy_id, result
    assert want.reason in result.reason, result
    assert result.reason
    assert "\n" not in result.reason
    assert len(result.warnings) == want.warnings, result
    if want.outcome is Outcome.POLICY:
        assert result.policy is not None
        assert result.policy.mode == want.mode
        assert result.policy.mx == want.mx
        assert result.policy.max_age == want.max_age
    else:
        assert result.policy is None


@pytest.mark.parametrize(("domain", "want"), CATALOGUE)
async def test_catalogue(fetcher: PolicyFetcher, domain: str, want: Want) -> None:
    check(await fetcher.fetch(domain, TIMEOUT), want)


async def test_known_id_skips_https(fetcher: PolicyFetcher, world: World) -> None:
    first = await fetcher.fetch("good.loc", TIMEOUT)
    assert first.outcome is Outcome.POLICY
    fetched, queried = world.https_requests("good.loc"), world.txt_queries("good.loc")

    again = await fetcher.fetch("good.loc", TIMEOUT, known_id=first.policy_id)
    assert again.outcome is Outcome.NOT_CHANGED
    assert again.policy_id == DEFAULT_ID
    assert again.policy is None
    assert again.stage == "txt"
    assert world.https_requests("good.loc") == fetched
    assert world.txt_queries("good.loc") == queried + 1

    other = await fetcher.fetch("good.loc", TIMEOUT, known_id="19990907T090909")
    assert other.outcome is Outcome.POLICY
    assert world.https_requests("good.loc") == fetched + 1


async def test_known_id_is_compared_exactly(fetcher: PolicyFetcher) -> None:
    result = await fetcher.fetch("good.loc", TIMEOUT, known_id=DEFAULT_ID.lower())
    assert result.outcome is Outcome.POLICY


@pytest.mark.parametrize(
    ("domain", "outcome", "result_type"),
    [
        pytest.param("good.loc", Outcome.NOT_CHANGED, None, id="valid"),
        pytest.param("no-record.loc", Outcome.NO_POLICY, None, id="no-record"),
        pytest.param("two-records.loc", Outcome.NO_POLICY, None, id="two-records"),
        pytest.param("servfail.loc", Outcome.FAILED, "dns-error", id="servfail"),
    ],
)
async def test_fetch_txt_id(
    fetcher: PolicyFetcher, world: World, domain: str, outcome: Outcome, result_type: str | None
) -> None:
    before = world.https_requests(domain)
    result = await fetcher.fetch_txt_id(domain, TIMEOUT)
    assert result.outcome is outcome
    assert result.result_type == result_type
    assert result.policy is None
    assert world.https_requests(domain) == before
    if outcome is Outcome.NOT_CHANGED:
        assert result.policy_id == DEFAULT_ID


async def test_blackhole_times_out(fetcher: PolicyFetcher) -> None:
    started = time.monotonic()
    result = await fetcher.fetch("blackhole.loc", 1.0)
    elapsed = time.monotonic() - started
    assert result.outcome is Outcome.FAILED
    assert result.result_type == "dns-timeout"
    assert result.stage == "dns"
    assert 0.9 <= elapsed < 1.5


async def test_slow_policy_host_times_out(fetcher: PolicyFetcher) -> None:
    started = time.monotonic()
    result = await fetcher.fetch("slow-https.loc", 1.0)
    assert time.monotonic() - started < 1.5
    assert result.outcome is Outcome.FAILED
    assert result.result_type == FETCH_ERROR
    assert result.stage == "https"
    assert result.policy_id == DEFAULT_ID
    assert "timed out" in result.reason


async def test_timeout_bounds_the_whole_fetch(fetcher: PolicyFetcher, world: World) -> None:
    # Each stage alone fits in the timeout; together they do not.
    domain = world.fresh_domain()
    world.add_domain(domain, delay=0.6)
    world.stall_dns("_mta-sts." + domain, 0.6)
    started = time.monotonic()
    result = await fetcher.fetch(domain, 1.0)
    assert time.monotonic() - started < 1.4
    assert result.outcome is Outcome.FAILED
    assert result.result_type == FETCH_ERROR
    assert result.stage == "https"


async def test_slow_dns_within_timeout(fetcher: PolicyFetcher, world: World) -> None:
    domain = world.fresh_domain()
    world.add_domain(domain)
    world.stall_dns("_mta-sts." + domain, 0.3)
    result = await fetcher.fetch(domain, TIMEOUT)
    assert result.outcome is Outcome.POLICY


async def test_redirect_is_not_followed(fetcher: PolicyFetcher, world: World) -> None:
    before = world.https_requests("good.loc")
    result = await fetcher.fetch("redirect.loc", TIMEOUT)
    assert result.outcome is Outcome.FAILED
    assert world.https_requests("good.loc") == before


async def test_request_shape(fetcher: PolicyFetcher, world: World) -> None:
    domain = world.fresh_domain()
    world.add_domain(domain)
    await fetcher.fetch(domain, TIMEOUT)
    request = world.last_request(domain)
    assert request is not None
    assert request[":request"] == "GET /.well-known/mta-sts.txt HTTP/1.1"
    assert request["host"] == f"mta-sts.{domain}"
    assert request["user-agent"] == f"mtasts-fast/{__version__}"
    assert request["accept-encoding"] == "identity"
    assert "cookie" not in request


async def test_txt_records_reported(fetcher: PolicyFetcher) -> None:
    result = await fetcher.fetch("other-txt.loc", TIMEOUT)
    assert result.txt_records == ("v=spf1 -all", "v=STSv1; id=withothers", "v=STSv10; id=x")
    result = await fetcher.fetch("non-ascii-other.loc", TIMEOUT)
    assert result.txt_records == ("caf\\xc3\\xa9=1", "v=STSv1; id=asciiok")
    result = await fetcher.fetch("split-txt.loc", TIMEOUT)
    assert result.txt_records == ("v=STSv1; id=splittxt01;",)


async def test_policy_lines_and_warnings(fetcher: PolicyFetcher) -> None:
    result = await fetcher.fetch("ip-mx.loc", TIMEOUT)
    assert result.policy is not None
    assert result.policy.lines == (
        "version: STSv1",
        "mode: enforce",
        "mx: 192.0.2.1",
        "mx: [192.0.2.2]",
        "mx: mail.loc",
        "max_age: 86400",
    )
    assert all(w.startswith("mx: ") for w in result.warnings)


async def test_world_changes_are_seen(fetcher: PolicyFetcher, world: World) -> None:
    domain = world.fresh_domain()
    world.add_domain(
        domain, txt=["v=STSv1; id=one"], policy=world.policy_text("testing", ["a.loc"])
    )
    first = await fetcher.fetch(domain, TIMEOUT)
    assert (first.policy_id, first.policy and first.policy.mode) == ("one", "testing")

    world.set_txt(domain, ["v=STSv1; id=two"])
    world.set_policy(domain, world.policy_text("enforce", ["b.loc", "*.c.loc"]))
    second = await fetcher.fetch(domain, TIMEOUT, known_id="one")
    assert second.policy_id == "two"
    assert second.policy is not None
    assert second.policy.mx == ("b.loc", "*.c.loc")

    world.remove(domain)
    gone = await fetcher.fetch(domain, TIMEOUT, known_id="two")
    assert gone.outcome is Outcome.NO_POLICY


async def test_concurrent_fetches(fetcher: PolicyFetcher, world: World) -> None:
    domains = [world.fresh_domain("c") for _ in range(20)]
    for n, domain in enumerate(domains):
        world.add_domain(domain, txt=[f"v=STSv1; id=n{n}"])
    results = await asyncio.gather(*(fetcher.fetch(d, TIMEOUT) for d in domains))
    assert [r.policy_id for r in results] == [f"n{n}" for n in range(20)]
    assert all(r.outcome is Outcome.POLICY for r in results)


# --- Trust store ------------------------------------------------------------


async def test_system_store_does_not_know_the_test_ca(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    async with PolicyFetcher(nameservers=[world.nameserver]) as fetcher:
        result = await fetcher.fetch("good.loc", TIMEOUT)
    assert result.result_type == WEBPKI


async def test_ssl_cert_file_is_honoured(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", world.ca_file)
    async with PolicyFetcher(nameservers=[world.nameserver]) as fetcher:
        result = await fetcher.fetch("good.loc", TIMEOUT)
    assert result.outcome is Outcome.POLICY


# --- Proxy ------------------------------------------------------------------


async def test_https_proxy_is_used(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = ConnectProxy(world.lookup_a)
    await proxy.start()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("https_proxy", proxy.url)
        async with PolicyFetcher(nameservers=[world.nameserver], ca_file=world.ca_file) as fetcher:
            result = await fetcher.fetch("good.loc", TIMEOUT)
    finally:
        await proxy.close()
    assert result.outcome is Outcome.POLICY
    assert result.policy is not None
    assert result.policy.mode == "enforce"
    assert result.policy.mx == ("mail.loc",)
    assert proxy.tunnels == 1
    assert proxy.targets == ["mta-sts.good.loc:443"]


async def test_dead_proxy_fails(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HTTPS_PROXY", dead)
    monkeypatch.setenv("https_proxy", dead)
    async with PolicyFetcher(nameservers=[world.nameserver], ca_file=world.ca_file) as fetcher:
        result = await fetcher.fetch("good.loc", TIMEOUT)
    assert result.outcome is Outcome.FAILED
    assert result.result_type == FETCH_ERROR
    assert result.stage == "https"


# --- Nameservers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param(["127.0.0.1"], ["127.0.0.1:53"], id="ipv4-default-port"),
        pytest.param(["127.0.0.1:5353"], ["127.0.0.1:5353"], id="ipv4-port"),
        pytest.param([" 192.0.2.1:53 "], ["192.0.2.1:53"], id="surrounding-space"),
        pytest.param(["::1"], ["[::1]:53"], id="ipv6-bare"),
        pytest.param(["[::1]"], ["[::1]:53"], id="ipv6-bracketed"),
        pytest.param(["[2001:db8::1]:5353"], ["[2001:db8::1]:5353"], id="ipv6-port"),
        pytest.param(
            ["127.0.0.1:1053", "192.0.2.1"], ["127.0.0.1:1053", "192.0.2.1:53"], id="ports-differ"
        ),
        pytest.param([], [], id="none-system-resolver"),
    ],
)
def test_parse_nameservers(entries: list[str], expected: list[str]) -> None:
    assert parse_nameservers(entries) == expected


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("localhost", id="host-name"),
        pytest.param("", id="empty"),
        pytest.param("127.0.0.1:0", id="port-0"),
        pytest.param("127.0.0.1:65536", id="port-too-big"),
        pytest.param("127.0.0.1:x", id="port-not-numeric"),
        pytest.param("127.0.0.1:", id="port-empty"),
        pytest.param("[::1", id="unclosed-bracket"),
        pytest.param("[::1]53", id="junk-after-bracket"),
        pytest.param("[127.0.0.1]:53", id="bracketed-ipv4-ok-or-not"),
        pytest.param("1.2.3.4:53:53", id="two-colons"),
    ],
)
def test_parse_nameservers_rejects(entry: str) -> None:
    if entry == "[127.0.0.1]:53":
        # Brackets are for IPv6; ipaddress accepts the IPv4 inside, which is harmless.
        assert parse_nameservers([entry]) == ["127.0.0.1:53"]
        return
    with pytest.raises(ValueError, match="nameserver"):
        parse_nameservers([entry])


def test_fetcher_rejects_bad_nameserver() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        PolicyFetcher(nameservers=["dns.example"])


async def test_second_nameserver_used_when_first_is_dead(world: World) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    async with PolicyFetcher(nameservers=[dead, world.nameserver], ca_file=world.ca_file) as f:
        result = await f.fetch("good.loc", TIMEOUT)
    assert result.outcome is Outcome.POLICY


async def test_fetch_before_start_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        await PolicyFetcher().fetch("good.loc", TIMEOUT)


async def test_default_configuration_starts_and_closes() -> None:
    # System resolver and trust store: nothing to fetch offline, but the
    # resolver channel and the session must come up and go away cleanly.
    fetcher = PolicyFetcher()
    await fetcher.start()
    await fetcher.start()  # idempotent
    await fetcher.close()
    await fetcher.close()


async def test_the_dns_channel_is_replaced_and_the_old_one_closed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # c-ares caches answers (negative ones too) for up to an hour; the fetcher
    # bounds that by using a fresh channel every few minutes. Lifetime 0: a
    # new channel for every query, each closed once its queries are over.
    monkeypatch.setattr(dns_channel, "_DNS_CHANNEL_LIFETIME", 0.0)
    closed: list[object] = []
    real_close = aiodns.DNSResolver.close

    async def counting_close(self: aiodns.DNSResolver) -> None:
        closed.append(self)
        await real_close(self)

    monkeypatch.setattr(aiodns.DNSResolver, "close", counting_close)
    instance = PolicyFetcher(nameservers=[world.nameserver], ca_file=world.ca_file)
    await instance.start()
    try:
        first = instance._channel()
        results = await asyncio.gather(*(instance.fetch("good.loc", 5) for _ in range(3)))
        assert [r.outcome for r in results] == [Outcome.POLICY] * 3
        assert instance._channel() is not first
        assert len(instance._retired) >= 4  # TXT + A lookups, each on its own channel
        assert closed == []  # queries started on them may still be running
    finally:
        retired = len(instance._retired)
        await instance.close()
    # close() closes the current channel and every retired one at once.
    assert len(closed) == retired + 1
    assert len(set(map(id, closed))) == len(closed)


async def test_the_dns_channel_runs_on_the_event_loop_not_a_thread(world: World) -> None:
    # aiodns would run c-ares on its own event thread, handing every answer
    # back across threads (and the GIL): three hand-offs per new domain. The
    # channel is loop-driven instead (dns_channel._LoopResolver): no thread
    # is started, and its sockets are watched by the loop while a query runs.
    threads = threading.active_count()
    instance = PolicyFetcher(nameservers=[world.nameserver], ca_file=world.ca_file)
    await instance.start()
    try:
        channel = instance._channel()
        assert channel._event_thread is False
        lookup = asyncio.ensure_future(instance.fetch("good.loc", 5))
        watched = False
        while not lookup.done():
            watched = watched or bool(channel._read_fds)  # a query's socket, on the loop
            await asyncio.sleep(0)
        assert watched
        assert lookup.result().outcome is Outcome.POLICY
        assert threading.active_count() == threads
    finally:
        await instance.close()


async def test_the_policy_host_is_resolved_without_a_service_lookup(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the addresses are used; given a port, c-ares would look it up as
    # a service name (getservbyname_r reads /etc/services on every call).
    ports: list[object] = []
    real = aiodns.DNSResolver.getaddrinfo

    def recording(self: aiodns.DNSResolver, host: str, **kwargs: Any) -> Any:
        ports.append(kwargs.get("port"))
        return real(self, host, **kwargs)

    monkeypatch.setattr(aiodns.DNSResolver, "getaddrinfo", recording)
    instance = PolicyFetcher(nameservers=[world.nameserver], ca_file=world.ca_file)
    await instance.start()
    try:
        assert (await instance.fetch("good.loc", 5)).outcome is Outcome.POLICY
    finally:
        await instance.close()
    assert ports == [None]
