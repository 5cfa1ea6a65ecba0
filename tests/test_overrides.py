"""Local policy overrides (``policy_overrides``, mtasts_fast/overrides.py; issue 16).

The file is read and checked here; then every kind is asked through Postfix's
own client (``postmap -q``) against a daemon in this process and, for what
only a real process shows (SIGHUP, exit status), against ``mta-sts-daemon``
in a subprocess, with the test world's DNS and policy hosts behind it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtasts_fast.cache.internal import InternalCache
from mtasts_fast.errors import ConfigError
from mtasts_fast.overrides import (
    DEFAULT_MAX_AGE,
    ENFORCE_TESTING,
    POSTFIX,
    SKIP,
    STATIC,
    load_overrides,
)
from mtasts_fast.query import main as query_main
from tests.servers.daemon import DaemonProcess
from tests.servers.postfix import postfix_program, postmap_config
from tests.servers.world import World
from tests.socketmap import Running, free_port, start_daemon
from tests.test_postfix_postmap import Postmap

GOOD = "secure match=mail.loc servername=hostname"


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# -- the file ------------------------------------------------------------------------------------

FILE = """\
    skip.example: skip
    .parent.example: skip
    .near.parent.example: encrypt
    testing.example: enforce_testing
    static.example:
      mode: enforce
      mx: [MX1.static.example, "*.mail.static.example"]
    one-mx.example: {mode: testing, mx: mx.one-mx.example, max_age: 86400}
    none.example: {mode: none}
    literal.example: "secure match=.literal.example:literal.example"
    dane.example: dane-only
    Bücher.example.: skip
"""


def test_the_file_is_read_into_entries(tmp_path: Path) -> None:
    overrides = load_overrides(str(_write(tmp_path / "o.yml", FILE)))
    assert len(overrides) == 10

    def kind(domain: str) -> str | None:
        found = overrides.find(domain)
        return None if found is None else found.kind

    assert kind("skip.example") == SKIP
    assert kind("sub.skip.example") is None  # a domain entry is that domain only
    assert kind("a.parent.example") == SKIP
    assert kind("a.b.parent.example") == SKIP
    assert kind("parent.example") is None  # .parent: sub-domains only, as in Postfix
    assert kind("near.parent.example") == SKIP
    assert kind("x.near.parent.example") == POSTFIX  # the nearer parent wins
    assert kind("testing.example") == ENFORCE_TESTING
    assert kind("xn--bcher-kva.example") == SKIP  # keys are normalised like lookups
    assert kind("unrelated.example") is None
    static = overrides.find("static.example")
    assert static is not None
    assert static.kind == STATIC
    assert static.policy is not None
    assert static.policy.mode == "enforce"
    assert static.policy.mx == ("mx1.static.example", "*.mail.static.example")
    assert static.policy.max_age == DEFAULT_MAX_AGE
    assert static.policy.lines == (
        "version: STSv1",
        "mode: enforce",
        "mx: mx1.static.example",
        "mx: *.mail.static.example",
        f"max_age: {DEFAULT_MAX_AGE}",
    )
    one = overrides.find("one-mx.example")
    assert one is not None
    assert one.policy is not None
    assert (one.policy.mode, one.policy.mx, one.policy.max_age) == (
        "testing",
        ("mx.one-mx.example",),
        86400,
    )
    literal = overrides.find("literal.example")
    assert literal is not None
    assert literal.postfix == "secure match=.literal.example:literal.example"
    assert literal.entry == "literal.example"
    # The same file read twice is equal (a reload compares the contents).
    assert load_overrides(str(tmp_path / "o.yml")) == overrides


@pytest.mark.parametrize(
    ("text", "entry", "problem"),
    [
        pytest.param("'[x.example]': skip", "[x.example]", "write the domain alone", id="brackets"),
        pytest.param("x.example:25: skip", "x.example:25", "write the domain alone", id="port"),
        pytest.param("192.0.2.1: skip", "192.0.2.1", "not a domain name", id="ip"),
        pytest.param("..x.example: skip", "..x.example", "not a domain name", id="two-dots"),
        pytest.param(
            "x.example: skipp", "x.example", "expected skip, enforce_testing, a Postfix", id="typo"
        ),
        pytest.param(
            "x.example: secure foo=1", "x.example", "invalid attribute name 'foo'", id="postfix"
        ),
        pytest.param(
            "x.example: encrypt match=a",
            "x.example",
            "'match' is invalid at level 'encrypt'",
            id="postfix-match-level",
        ),
        pytest.param(
            "x.example: {mode: enforce}",
            "x.example",
            "mx: mode enforce needs at least one mx pattern",
            id="static-no-mx",
        ),
        pytest.param(
            "x.example: {mode: enforce, mx: [a.example, 192.0.2.1]}",
            "x.example",
            "mx[1]: '192.0.2.1' is not a host name",
            id="static-ip-mx",
        ),
        pytest.param(
            "x.example: {mode: enforcing, mx: [a.example]}",
            "x.example",
            "mode: expected enforce, testing or none, got 'enforcing'",
            id="static-mode",
        ),
        pytest.param(
            "x.example: {mode: enforce, mx: [a.example], max_age: -1}",
            "x.example",
            "max_age: must be between 0 and 31557600",
            id="static-max-age",
        ),
        pytest.param(
            "x.example: {mode: none, mxx: []}",
            "x.example",
            "'mxx': unknown key (a static policy takes mode, mx, max_age)",
            id="static-unknown-key",
        ),
        pytest.param("x.example: 5", "x.example", "got 5", id="number"),
        pytest.param(
            "X.example: skip\nx.example.: encrypt",
            "x.example.",
            "the same domain as the entry 'X.example'",
            id="duplicate",
        ),
        pytest.param("- a.example\n", "", "expected a mapping of domains", id="list"),
        pytest.param("x.example: [\n", "", "invalid YAML", id="yaml"),
    ],
)
def test_an_invalid_file_names_the_file_the_entry_and_the_problem(
    tmp_path: Path, text: str, entry: str, problem: str
) -> None:
    path = _write(tmp_path / "bad.yml", text)
    with pytest.raises(ConfigError) as caught:
        load_overrides(str(path))
    error = caught.value
    assert (error.filename, error.key_path) == (str(path), entry)
    assert problem in error.problem
    assert str(error).startswith(f"{path}: {entry + ': ' if entry else ''}")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_overrides(str(tmp_path / "none.yml"))


# -- through postmap, against a daemon in this process ------------------------------------------


@pytest.fixture
def overrides_file(world: World, tmp_path: Path) -> Path:
    """The test world's domains, and an overrides file for some of them."""
    # Both publish a good enforce policy; the skip entries say never mind.
    world.add_domain("skipped.loc")
    world.add_domain("sub.skipped-parent.loc")
    world.add_domain("skipped-parent.loc")
    # No MTA-STS at all (NXDOMAIN), yet a partner that agreed on TLS.
    world.add_domain("static.loc", txt=None)
    return _write(
        tmp_path / "overrides.yml",
        """\
        skipped.loc: skip
        .skipped-parent.loc: skip
        testing.loc: enforce_testing
        static.loc:
          mode: enforce
          mx: [mx1.static.loc, "*.mail.static.loc"]
        literal-secure.loc: secure match=.literal-secure.loc:literal-secure.loc
        literal-dane.loc: dane-only
        literal-encrypt.loc: encrypt protocols=>=TLSv1.2
        .literal-parent.loc: encrypt
        """,
    )


@pytest.fixture
async def running(world: World, overrides_file: Path) -> AsyncIterator[Running]:
    daemon = await start_daemon(
        world, policy_overrides=str(overrides_file), zones={"tlsrpt": {"tlsrpt": True}}
    )
    try:
        yield daemon
    finally:
        await daemon.stop()


@pytest.fixture
def postmap(running: Running, tmp_path: Path) -> Postmap:
    config = running.config
    return Postmap(
        postfix_program("postmap"),
        postmap_config(tmp_path / "postfix"),
        f"socketmap:inet:{config.host}:{config.port}",
    )


STATIC_TLSRPT = (
    "secure match=mx1.static.loc:.mail.static.loc servername=hostname"
    " policy_type=sts policy_domain=static.loc"
    " mx_host_pattern=mx1.static.loc mx_host_pattern=*.mail.static.loc"
    " { policy_string = version: STSv1 } { policy_string = mode: enforce }"
    " { policy_string = mx: mx1.static.loc } { policy_string = mx: *.mail.static.loc }"
    f" {{ policy_string = max_age: {DEFAULT_MAX_AGE} }}"
)


@pytest.mark.parametrize(
    ("key", "zone", "expected"),
    [
        # skip: NOTFOUND although a good enforce policy is published.
        pytest.param("skipped.loc", "postfix", None, id="skip"),
        pytest.param("[skipped.loc]:25", "postfix", None, id="skip-next-hop-form"),
        # A parent entry covers the sub-domains, not the parent itself.
        pytest.param("sub.skipped-parent.loc", "postfix", None, id="skip-parent-entry"),
        pytest.param("skipped-parent.loc", "postfix", GOOD, id="parent-entry-not-the-parent"),
        # enforce_testing: testing.loc publishes mode testing.
        pytest.param("testing.loc", "postfix", GOOD, id="enforce-testing"),
        # A static policy, rendered per zone like a fetched one.
        pytest.param(
            "static.loc",
            "postfix",
            "secure match=mx1.static.loc:.mail.static.loc servername=hostname",
            id="static",
        ),
        pytest.param("static.loc", "tlsrpt", STATIC_TLSRPT, id="static-tlsrpt-zone"),
        # Postfix policies, passed through as written, in every zone.
        pytest.param(
            "literal-secure.loc",
            "postfix",
            "secure match=.literal-secure.loc:literal-secure.loc",
            id="literal-secure",
        ),
        pytest.param("literal-dane.loc", "postfix", "dane-only", id="literal-dane-only"),
        pytest.param("literal-dane.loc", "tlsrpt", "dane-only", id="literal-in-tlsrpt-zone"),
        pytest.param(
            "literal-encrypt.loc", "postfix", "encrypt protocols=>=TLSv1.2", id="literal-encrypt"
        ),
        pytest.param("a.b.literal-parent.loc", "postfix", "encrypt", id="literal-parent-entry"),
        # Without an override, as before.
        pytest.param("good.loc", "postfix", GOOD, id="no-override"),
    ],
)
async def test_each_kind_through_postmap(
    postmap: Postmap, running: Running, world: World, key: str, zone: str, expected: str | None
) -> None:
    code, out, err = await postmap.query(key, zone)
    if expected is None:
        assert (code, out, err) == (1, "", "")
    else:
        assert (code, out, err) == (0, expected + "\n", "")


async def test_overridden_domains_are_never_fetched_nor_cached(
    postmap: Postmap, running: Running, world: World
) -> None:
    for key in ("skipped.loc", "sub.skipped-parent.loc", "static.loc", "literal-dane.loc"):
        await postmap.query(key)
        await postmap.query(key, "tlsrpt")
    for domain in ("skipped.loc", "sub.skipped-parent.loc", "static.loc"):
        assert world.txt_queries(domain) == 0
        assert world.https_requests(domain) == 0
    assert (await running.cache.stats()).entries == 0
    # enforce_testing looks the domain up as usual, and caches what it fetched.
    await postmap.query("testing.loc")
    assert running.cache.get_nowait("testing.loc") is not None
    counts = running.responder.override_counts
    assert counts == {"skip": 4, "static": 2, "postfix": 2, "enforce_testing": 1}


async def test_a_testing_policy_is_enforced_in_its_domain_only(
    postmap: Postmap, world: World
) -> None:
    other = world.fresh_domain("testing")
    world.add_domain(other, policy=World.policy_text("testing", ["mail.loc"]))
    assert await postmap.query("testing.loc") == (0, GOOD + "\n", "")
    assert await postmap.query(other) == (1, "", "")


async def test_an_override_wins_over_a_cached_fetched_policy(
    world: World, overrides_file: Path
) -> None:
    world.add_domain("partner.loc")
    shared = InternalCache(100)  # one cache, as the workers share one
    plain = await start_daemon(world, cache=shared)
    try:
        assert await plain.ask("postfix partner.loc") == b"OK " + GOOD.encode()
    finally:
        await plain.stop()
    cached = shared.get_nowait("partner.loc")
    assert cached is not None
    with overrides_file.open("a") as file:
        file.write("partner.loc: skip\n")
    overriding = await start_daemon(world, cache=shared, policy_overrides=str(overrides_file))
    try:
        assert await overriding.ask("postfix partner.loc") == b"NOTFOUND "
    finally:
        await overriding.stop()
    # The cached policy is untouched: the override never enters the cache.
    after = shared.get_nowait("partner.loc")
    assert after is not None
    assert after.same_as(cached)
    assert world.https_requests("partner.loc") == 1


# -- mta-sts-query says which entry applied -------------------------------------------------------


def _query_config(world: World, tmp_path: Path, overrides_file: Path) -> Path:
    config = tmp_path / "query.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "nameservers": [world.nameserver],
                "ca_file": world.ca_file,
                "policy_overrides": str(overrides_file),
                "zones": {"tlsrpt": {"tlsrpt": True}},
            }
        )
    )
    return config


@pytest.mark.parametrize(
    ("domain", "entry", "kind", "reply"),
    [
        pytest.param("skipped.loc", "skipped.loc", "skip", "NOTFOUND ", id="skip"),
        pytest.param(
            "sub.skipped-parent.loc", ".skipped-parent.loc", "skip", "NOTFOUND ", id="parent"
        ),
        pytest.param("testing.loc", "testing.loc", "enforce_testing", "OK " + GOOD, id="testing"),
        pytest.param("literal-dane.loc", "literal-dane.loc", "postfix", "OK dane-only", id="lit"),
        pytest.param(
            "static.loc",
            "static.loc",
            "static",
            "OK secure match=mx1.static.loc:.mail.static.loc servername=hostname",
            id="static",
        ),
    ],
)
def test_mta_sts_query_names_the_entry(
    world: World,
    tmp_path: Path,
    overrides_file: Path,
    capsys: pytest.CaptureFixture[str],
    domain: str,
    entry: str,
    kind: str,
    reply: str,
) -> None:
    config = _query_config(world, tmp_path, overrides_file)
    query_main(["-c", str(config), "--json", domain])
    report = json.loads(capsys.readouterr().out)
    assert report["override"]["entry"] == entry
    assert report["override"]["kind"] == kind
    assert report["override"]["file"] == str(overrides_file)
    assert report["reply"] == reply
    query_main(["-c", str(config), domain])
    human = capsys.readouterr().out
    assert f"override:    {overrides_file}: entry {entry!r} applies: " in human
    assert f"Postfix reply: {reply}" in human


def test_mta_sts_query_without_an_entry(
    world: World, tmp_path: Path, overrides_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _query_config(world, tmp_path, overrides_file)
    assert query_main(["-c", str(config), "--json", "good.loc"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["override"] is None
    assert report["reply"] == "OK " + GOOD


# -- mta-sts-daemon: start, --check-config, SIGHUP ----------------------------------------------


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


def _postmap_for(daemon: DaemonProcess, tmp_path: Path) -> Postmap:
    return Postmap(
        postfix_program("postmap"),
        postmap_config(tmp_path / "postfix"),
        f"socketmap:inet:127.0.0.1:{daemon.port}",
    )


def test_sighup_applies_an_edited_file_and_keeps_the_old_one_if_invalid(
    world: World, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    domain = world.fresh_domain("reload")
    world.add_domain(domain)
    file = _write(tmp_path / "overrides.yml", "unrelated.loc: skip\n")
    daemon = DaemonProcess(tmp_path, world, workers=2, policy_overrides=str(file))
    daemons.append(daemon)
    daemon.start()
    daemon.wait_for_log(r"2 workers answering on")
    assert "policy overrides: 1 entries in" in daemon.log_text()
    postmap = _postmap_for(daemon, tmp_path)
    # Fetched and cached (lmdb) before any override names it.
    assert asyncio.run(postmap.query(domain)) == (0, GOOD + "\n", "")

    file.write_text(f"{domain}: dane-only\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for_log(r"reloaded .*: 2 workers answering")
    # The edited file wins over the cached fetched policy, in every worker.
    for _ in range(10):
        assert asyncio.run(postmap.query(domain)) == (0, "dane-only\n", "")

    pids = daemon.worker_pids()
    file.write_text(f"{domain}: dane-onli\n")
    daemon.proc.send_signal(signal.SIGHUP)
    line = daemon.wait_for_log(r".*keeping the running configuration").group(0)
    assert f"{file}: {domain}: expected skip, enforce_testing, a Postfix policy" in line
    assert daemon.worker_pids() == pids
    assert asyncio.run(postmap.query(domain)) == (0, "dane-only\n", "")

    # Back to no entry: the fetched policy, still cached, answers again.
    file.write_text("")
    daemon.proc.send_signal(signal.SIGHUP)
    deadline_log = r"reloaded .*: 2 workers answering"
    daemon.wait_for_log(rf"(?s)keeping the running configuration.*{deadline_log}")
    assert asyncio.run(postmap.query(domain)) == (0, GOOD + "\n", "")
    assert world.https_requests(domain) == 1
    # Unchanged on the next SIGHUP (logrotate's): nothing is replaced.
    pids = daemon.worker_pids()
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for_log(r"configuration unchanged; workers keep running")
    assert daemon.worker_pids() == pids


@pytest.mark.parametrize("check_only", [False, True], ids=["start", "check-config"])
def test_an_invalid_file_at_start_exits_2_naming_file_entry_and_problem(
    world: World, tmp_path: Path, check_only: bool
) -> None:
    file = _write(
        tmp_path / "overrides.yml",
        """\
        fine.loc: skip
        broken.loc: {mode: enforce, mx: ["mail.loc", "not a host"]}
        """,
    )
    config = tmp_path / "daemon.yml"
    config.write_text(yaml.safe_dump({"port": 1, "policy_overrides": str(file)}))
    args = ["--check-config"] if check_only else []
    result = subprocess.run(
        [sys.executable, "-m", "mtasts_fast", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result
    assert result.stderr == (
        f"mta-sts-daemon: {file}: broken.loc: mx[1]: 'not a host' is not a host name or "
        "*. pattern (RFC 8461 §3.2)\n"
    )
    assert result.stdout == ""


def test_check_config_counts_the_entries(tmp_path: Path) -> None:
    file = _write(tmp_path / "overrides.yml", "a.loc: skip\n.b.loc: encrypt\n")
    config = tmp_path / "daemon.yml"
    config.write_text(yaml.safe_dump({"policy_overrides": str(file)}))
    result = subprocess.run(
        [sys.executable, "-m", "mtasts_fast", "-c", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result
    assert result.stdout == (
        f"{config}: configuration OK (policy overrides: 2 entries in {file})\n"
    )


def test_the_run_user_must_read_the_overrides_file(
    world: World, request: pytest.FixtureRequest
) -> None:
    if os.geteuid() != 0:
        if os.environ.get("MTASTS_REQUIRE_ALL") == "1":
            pytest.fail("needs root")
        pytest.skip("needs root")
    shared = Path(tempfile.mkdtemp(prefix="mtasts-ovr-"))
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    shared.chmod(0o755)
    file = _write(shared / "overrides.yml", "a.loc: skip\n")
    file.chmod(0o600)
    ca = shared / "ca.pem"
    shutil.copy(world.ca_file, ca)
    ca.chmod(0o644)
    config = shared / "daemon.yml"
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "ca_file": str(ca),
        "policy_overrides": str(file),
        "cache": {"type": "internal"},
    }
    config.write_text(yaml.safe_dump(settings))
    config.chmod(0o644)
    result = subprocess.run(
        [sys.executable, "-m", "mtasts_fast", "-c", str(config), "-u", "nobody"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result
    assert f"{file}: not readable by user nobody" in result.stderr
    assert "the policy overrides file, read again on SIGHUP" in result.stderr


def test_the_example_file_loads() -> None:
    example = (
        Path(__file__).parent.parent / "config_examples" / "overrides" / "policy-overrides.yml"
    )
    overrides = load_overrides(str(example))
    kinds = {
        domain: found.kind
        for domain in (
            "broken-partner.example",
            "host.lab.example",
            "testing-partner.example",
            "partner.example",
            "bank.example",
            "dane-partner.example",
            "legacy.example",
        )
        if (found := overrides.find(domain)) is not None
    }
    assert kinds == {
        "broken-partner.example": SKIP,
        "host.lab.example": SKIP,
        "testing-partner.example": ENFORCE_TESTING,
        "partner.example": STATIC,
        "bank.example": POSTFIX,
        "dane-partner.example": POSTFIX,
        "legacy.example": POSTFIX,
    }
    assert overrides.find("lab.example") is None
