"""``mta-sts-cache`` against a real LMDB cache file."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from pathlib import Path

import pytest
import yaml

from mtasts_fast.cache import create_cache
from mtasts_fast.cache.json_form import dane_to_json
from mtasts_fast.cachecli import Progress, entry_from_json, entry_to_json, main
from mtasts_fast.config import Config
from mtasts_fast.dane.state import DaneHost, DaneState
from tests.cache_contract import make_dane, make_entry
from tests.servers.world import World


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mta-sts-daemon.yml"
    path.write_text(f"cache:\n  type: lmdb\n  options:\n    path: {tmp_path / 'cache.lmdb'}\n")
    return path


def _seed(config_file: Path, *domains: str, dane: tuple[DaneState, ...] = ()) -> None:
    async def run() -> None:
        config = Config.from_yaml(config_file)
        cache = create_cache(config.cache, config.filename)
        await cache.setup()
        for domain in domains:
            await cache.put(make_entry(domain, fetched_at=time.time()))
        for state in dane:
            await cache.put_dane(state)
        await cache.close()

    asyncio.run(run())


def test_list_show_purge(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _seed(config_file, "a.example", "b.example")
    assert main(["-c", str(config_file), "list"]) == 0
    out = capsys.readouterr().out
    assert "a.example" in out
    assert "b.example" in out
    assert "enforce" in out

    assert main(["-c", str(config_file), "show", "A.Example."]) == 0
    out = capsys.readouterr().out
    assert "policy id:   20240101T000000" in out
    assert "Postfix reply (default zone): OK secure match=mx1.a.example:.mail.a.example" in out

    assert main(["-c", str(config_file), "purge", "a.example", "nonesuch.example"]) == 1
    captured = capsys.readouterr()
    assert "a.example: purged" in captured.out
    assert "nonesuch.example: not cached" in captured.err
    assert main(["-c", str(config_file), "show", "a.example"]) == 1
    assert main(["-c", str(config_file), "purge", "--all"]) == 0
    assert "purged 1 entries" in capsys.readouterr().out


_MIXED = (
    DaneHost("mx1.mixed.example", "dane", "TLSA 3 1 1: usable"),
    DaneHost("mx2.mixed.example", "no-tlsa", "secure NODATA for _25._tcp.mx2.mixed.example"),
    DaneHost("mx3.mixed.example", "missing", ""),
)


def test_show_prints_the_dane_state(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    state = make_dane(
        "mixed.example",
        decision="dane",
        reason="1 of 2 MX hosts has usable TLSA",
        hosts=_MIXED,
        evaluated_at=now - 60,
        ttl=3600,
    )
    _seed(config_file, "mixed.example", dane=(state,))
    assert main(["-c", str(config_file), "show", "mixed.example"]) == 0
    out = capsys.readouterr().out
    assert "policy id:   20240101T000000" in out  # the policy is still shown
    assert "DANE:        dane (1 of 2 MX hosts has usable TLSA)" in out
    assert "MX host:     mx1.mixed.example dane: TLSA 3 1 1: usable" in out
    assert (
        "MX host:     mx2.mixed.example no-tlsa: secure NODATA for _25._tcp.mx2.mixed.example"
        in out
    )
    assert "MX host:     mx3.mixed.example missing\n" in out
    hosts = [line.split()[2] for line in out.splitlines() if line.startswith("MX host:")]
    assert hosts == ["mx1.mixed.example", "mx2.mixed.example", "mx3.mixed.example"]
    assert "evaluated:   " in out
    assert "Postfix gets the dane answer, not the policy's" in out
    re_evaluate = next(line for line in out.splitlines() if line.startswith("re-evaluate:"))
    assert "(in 35" in re_evaluate  # about 3540 s

    assert main(["-c", str(config_file), "show", "--json", "mixed.example"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["dane"] == dane_to_json(state)
    assert [host["status"] for host in shown["dane"]["hosts"]] == ["dane", "no-tlsa", "missing"]
    assert shown["policy_id"] == "20240101T000000"


def test_show_a_domain_with_only_a_dane_state(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A DANE domain without MTA-STS: cached, so status 0.
    state = make_dane(
        "temp.example",
        decision="temp",
        reason="TLSA _25._tcp.mx1.temp.example: SERVFAIL from the validating resolver",
        hosts=(),
        evaluated_at=time.time() - 120,
        ttl=30,
    )
    insecure = make_dane("insecure.example", decision="none", reason="MX RRset insecure", hosts=())
    _seed(config_file, "policy.example", "insecure.example", dane=(state, insecure))
    assert main(["-c", str(config_file), "show", "temp.example"]) == 0
    out = capsys.readouterr().out
    assert "policy:      (none cached)" in out
    assert "DANE:        temp (TLSA _25._tcp.mx1.temp.example: SERVFAIL" in out
    assert "MX hosts:    (none looked at)" in out
    assert "s ago: evaluated again at the next lookup)" in out
    assert main(["-c", str(config_file), "show", "--json", "temp.example"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"domain": "temp.example", "last_failure": None, "dane": dane_to_json(state)}
    # A policy without a DANE state says so.
    assert main(["-c", str(config_file), "show", "policy.example"]) == 0
    out = capsys.readouterr().out
    assert "DANE:        (none cached)" in out
    assert "DANE comes first" not in out
    # DANE does not apply: the policy's reply is the daemon's.
    assert main(["-c", str(config_file), "show", "insecure.example"]) == 0
    out = capsys.readouterr().out
    assert "DANE:        none (MX RRset insecure)" in out
    assert "DANE comes first" not in out
    assert main(["-c", str(config_file), "show", "--json", "policy.example"]) == 0
    assert json.loads(capsys.readouterr().out)["dane"] is None


def test_purge_forgets_dane_states(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _seed(
        config_file,
        "both.example",
        dane=(make_dane("both.example"), make_dane("dane.example"), make_dane("other.example")),
    )
    # A domain with only a DANE state is cached: purging it succeeds.
    assert main(["-c", str(config_file), "purge", "dane.example", "both.example"]) == 0
    out = capsys.readouterr().out
    assert "dane.example: purged" in out
    assert "both.example: purged" in out
    for domain in ("dane.example", "both.example"):
        assert main(["-c", str(config_file), "show", domain]) == 1
        assert f"{domain}: not cached" in capsys.readouterr().err
    assert main(["-c", str(config_file), "show", "other.example"]) == 0
    capsys.readouterr()
    assert main(["-c", str(config_file), "purge", "--all"]) == 0
    assert "purged 0 entries" in capsys.readouterr().out  # policies are counted
    assert main(["-c", str(config_file), "show", "other.example"]) == 1


def test_dane_states_are_not_listed_or_exported(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # They describe the DNS of the last hours, not a published policy: a new
    # cache evaluates the domains again at their next lookup.
    _seed(config_file, "a.example", dane=(make_dane("a.example"), make_dane("dane.example")))
    dump = tmp_path / "dump.jsonl"
    assert main(["-c", str(config_file), "export", str(dump)]) == 0
    assert [json.loads(line)["domain"] for line in dump.read_text().splitlines()] == ["a.example"]
    assert "dane" not in json.loads(dump.read_text())
    assert main(["-c", str(config_file), "list"]) == 0
    out = capsys.readouterr().out
    assert "a.example" in out
    assert "dane.example" not in out


def test_stats(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _seed(config_file, "a.example", "b.example", "c.example")
    assert main(["-c", str(config_file), "stats"]) == 0
    out = capsys.readouterr().out
    assert "cache type:              lmdb\n" in out
    assert "policies:                3\n" in out
    assert "failure records:         0 " in out
    assert re.search(r"most recently checked:   \d{4}-\d\d-\d\d \S+Z \(\d+ s ago\)", out), out
    assert re.search(r"size: +[\d.]+ MiB \(\d+ bytes\) on disk", out), out
    assert main(["-c", str(config_file), "stats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["type"] == "lmdb"
    assert data["entries"] == 3
    assert data["failures"] == 0
    assert data["oldest_checked"] <= data["newest_checked"] <= time.time()
    assert data["size_bytes"] == (config_file.parent / "cache.lmdb").stat().st_size


def test_stats_of_an_empty_cache(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(config_file), "stats"]) == 0
    out = capsys.readouterr().out
    assert "policies:                0\n" in out
    assert "least recently checked:  -\n" in out


def test_export_import_round_trip(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(config_file, "a.example", "xn--bcher-kva.example")
    dump = tmp_path / "dump.jsonl"
    assert main(["-c", str(config_file), "export", str(dump)]) == 0
    lines = dump.read_text().splitlines()
    assert len(lines) == 2
    other = tmp_path / "other.yml"
    other.write_text(f"cache:\n  type: lmdb\n  options:\n    path: {tmp_path / 'other.lmdb'}\n")
    assert main(["-c", str(other), "import", str(dump)]) == 0
    capsys.readouterr()
    assert main(["-c", str(other), "list", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(item["domain"] for item in listed) == ["a.example", "xn--bcher-kva.example"]


def test_import_rejects_bad_line(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": 1, "domain": "a.example"}\n')
    assert main(["-c", str(config_file), "import", str(bad)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_internal_cache_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "internal.yml"
    config.write_text("cache: {type: internal}\n")
    assert main(["-c", str(config), "list"]) == 2
    assert "private directory of the running daemon" in capsys.readouterr().err


def test_purge_needs_domains_or_all(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(config_file), "purge"]) == 2
    assert "either DOMAIN... or --all" in capsys.readouterr().err


def test_json_round_trip() -> None:
    entry = make_entry("example.com", fetched_at=5.0, checked_at=6.0)
    assert entry_from_json(json.loads(json.dumps(entry_to_json(entry)))).same_as(entry)


# -- warm, and show with a failure record ---------------------------------------------


@pytest.fixture
def warm_config(world: World, tmp_path: Path) -> Path:
    path = tmp_path / "warm.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "nameservers": [world.nameserver],
                "ca_file": world.ca_file,
                "cache": {"type": "lmdb", "options": {"path": str(tmp_path / "warm.lmdb")}},
                "default_zone": {"timeout": 3},
            }
        )
    )
    return path


def test_warm_fetches_a_list_and_prints_a_summary(
    world: World, warm_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = world.fresh_domain("warm")
    world.add_domain(good, policy=World.policy_text("enforce", ["mail.loc"]))
    testing = world.fresh_domain("warm")
    world.add_domain(testing, policy=World.policy_text("testing", ["mail.loc"]))
    absent = world.fresh_domain("warm")
    world.add_domain(absent, txt=None)
    down = world.fresh_domain("warm")
    world.add_domain(down, policy=World.policy_text("enforce", ["mail.loc"]), status=503)
    listing = tmp_path / "domains.txt"
    listing.write_text(
        "# top recipient domains\n"
        f"{good}\n"
        f"  1200 {good.upper()}.\n"  # `uniq -c` output, another spelling: one fetch
        f"{testing}\n\n"
        f"{absent}\n"
        f"{down}\n"
        "[192.0.2.1]\n"
    )
    assert main(["-c", str(warm_config), "warm", str(listing)]) == 0
    captured = capsys.readouterr()
    summary = _summary(captured.out)
    assert summary == {
        "policy: enforce": 1,
        "policy: testing": 1,
        "no-policy": 1,
        "sts-policy-fetch-error": 1,
        "invalid name (skipped)": 1,
        "total": 5,
    }
    # Not a terminal: plain progress lines, the last one complete.
    assert "warm: 4/4 domains done" in captured.err
    assert world.https_requests(good) == 1

    # `show` tells what went wrong with the failing domain and when it is retried.
    # Status 1: no policy is cached for it, but what is known is shown.
    assert main(["-c", str(warm_config), "show", down]) == 1
    out = capsys.readouterr().out
    assert "policy:      (none cached)" in out
    assert "last failure:" in out
    assert "sts-policy-fetch-error at https" in out
    assert "HTTP status 503" in out
    assert "next retry:" in out
    assert main(["-c", str(warm_config), "show", "--json", down]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["last_failure"]["attempts"] == 1
    assert shown["last_failure"]["retry_at"] > time.time()

    # A second run leaves fresh entries alone and respects the backoff...
    assert main(["-c", str(warm_config), "warm", str(listing)]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["already cached"] == 2
    assert summary["backoff"] == 2
    assert world.https_requests(good) == 1
    assert world.https_requests(down) == 1
    # ...unless forced.
    assert main(["-c", str(warm_config), "warm", "--force", str(listing)]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["policy: enforce"] == 1
    assert world.https_requests(good) == 2
    assert world.https_requests(down) == 2

    # Purging a domain forgets its failure too, so the daemon fetches at once.
    assert main(["-c", str(warm_config), "purge", down]) == 0
    assert main(["-c", str(warm_config), "show", down]) == 1
    assert "last failure" not in capsys.readouterr().out


def _summary(out: str) -> dict[str, int]:
    rows: dict[str, int] = {}
    for line in out.splitlines()[1:]:
        name, _, rest = line.rpartition(" ")
        if line.startswith("total"):
            name, number = "total", line.split()[1]
        else:
            number = rest
        rows[name.strip()] = int(number)
    return rows


def test_warm_progress_bar_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = Progress(4, out)
    for _ in range(4):
        progress.step()
    progress.finish()
    text = out.getvalue()
    assert text.startswith("\r[")
    assert f"[{'#' * Progress.WIDTH}] 4/4 100%" in text
    assert text.endswith("\n")


def test_warm_rejects_a_bad_concurrency(
    warm_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(warm_config), "warm", "--concurrency", "0", "x"])
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
