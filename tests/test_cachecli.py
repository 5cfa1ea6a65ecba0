"""``mta-sts-cache`` against a real LMDB cache file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from mtasts_fast.cache import create_cache
from mtasts_fast.cachecli import entry_from_json, entry_to_json, main
from mtasts_fast.config import Config
from tests.cache_contract import make_entry


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mta-sts-daemon.yml"
    path.write_text(f"cache:\n  type: lmdb\n  options:\n    path: {tmp_path / 'cache.lmdb'}\n")
    return path


def _seed(config_file: Path, *domains: str) -> None:
    async def run() -> None:
        config = Config.from_yaml(config_file)
        cache = create_cache(config.cache, config.filename)
        await cache.setup()
        for domain in domains:
            await cache.put(make_entry(domain, fetched_at=time.time()))
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
    assert "cannot be reached from outside" in capsys.readouterr().err


def test_purge_needs_domains_or_all(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(config_file), "purge"]) == 2
    assert "either DOMAIN... or --all" in capsys.readouterr().err


def test_json_round_trip() -> None:
    entry = make_entry("example.com", fetched_at=5.0, checked_at=6.0)
    assert entry_from_json(json.loads(json.dumps(entry_to_json(entry)))).same_as(entry)
