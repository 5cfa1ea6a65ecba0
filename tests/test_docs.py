"""The man pages (docs/man/*.rst) build cleanly and cannot drift from the code.

Every configuration key that config.py accepts must be described in
mta-sts-daemon.yml(5), in its section, with the default defaults.py holds;
every key described there must exist; every flag, sub-command and positional
argument of the three commands must appear in its page.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtasts_fast import cachecli, config, daemon, defaults, query

MAN = Path(__file__).resolve().parent.parent / "docs" / "man"
PAGES = ("mta-sts-daemon.8", "mta-sts-daemon.yml.5", "mta-sts-query.1", "mta-sts-cache.1")
REQUIRE_ALL = os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0")


def _page(name: str) -> str:
    return (MAN / f"{name}.rst").read_text(encoding="utf-8")


def _sections(text: str) -> dict[str, str]:
    """Top-level sections of a page (headings underlined with ``=``), by title."""
    lines = text.splitlines()
    starts = [
        i
        for i in range(len(lines) - 1)
        if lines[i].strip() and re.fullmatch(r"=+", lines[i + 1]) and i > 0
    ]
    out = {}
    for n, i in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        out[lines[i].strip()] = "\n".join(lines[i + 2 : end])
    return out


def _term_line(section: str, key: str) -> str | None:
    """The first definition-list term line of ``section`` naming ``key``."""
    match = re.search(rf"^``{re.escape(key)}`` \(.*$", section, re.M)
    return match.group(0) if match else None


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- it builds --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_page_builds_without_warnings(name: str, tmp_path: Path) -> None:
    try:
        from docutils.core import publish_string
        from docutils.writers import manpage
    except ImportError:
        if REQUIRE_ALL:
            pytest.fail(
                "docutils missing (the test dependency group) and MTASTS_REQUIRE_ALL is set"
            )
        pytest.skip("docutils not installed")
    # halt_level 2: a docutils warning (bad markup, unknown role) is an error,
    # as `rst2man --strict` in `make man` makes it.
    output = publish_string(
        _page(name),
        writer=manpage.Writer(),
        settings_overrides={"halt_level": 2, "report_level": 2, "output_encoding": "utf-8"},
    )
    roff = output.decode() if isinstance(output, bytes) else output
    title, _, section = name.rpartition(".")
    assert re.search(rf'^\.TH "{re.escape(title)}" "{section}"', roff, re.M | re.I), roff[:300]
    # Notes for the maintainers (".. TODO-LEAD:") are roff comments, never printed.
    printed = [line for line in roff.splitlines() if not line.startswith('.\\"')]
    assert not [line for line in printed if "TODO" in line]
    groff = shutil.which("groff")
    if groff is None:
        if REQUIRE_ALL:
            pytest.fail("groff missing and MTASTS_REQUIRE_ALL is set")
        pytest.skip("groff not installed")
    # -ww: every groff warning; -z: no output, only the diagnostics.
    result = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z"],
        input=roff,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


# -- the configuration page matches config.py and defaults.py -----------------------------------

YML = "mta-sts-daemon.yml.5"

TOP_SECTIONS = ("LISTENER", "POLICY CACHE AND FETCHING", "LOCAL OVERRIDES", "DANE", "MONITORING")

# Keys whose default is one value (the others: "not set", CPU count, ...).
TOP_DEFAULTS: dict[str, object] = {
    "host": defaults.HOST,
    "port": defaults.PORT,
    "reuse_port": defaults.REUSE_PORT,
    "backlog": defaults.BACKLOG,
    "idle_timeout": defaults.IDLE_TIMEOUT,
    "max_connections": defaults.MAX_CONNECTIONS,
    "shutdown_timeout": defaults.SHUTDOWN_TIMEOUT,
    "cache_grace": defaults.CACHE_GRACE,
    "negative_ttl": defaults.NEGATIVE_TTL,
    "fetch_backoff_max": defaults.FETCH_BACKOFF_MAX,
    "max_concurrent_fetches": defaults.MAX_CONCURRENT_FETCHES,
    "dnssec_probe_name": defaults.DNSSEC_PROBE_NAME,
    "dnssec_probe_interval": defaults.DNSSEC_PROBE_INTERVAL,
    "log_format": defaults.LOG_FORMAT,
}
METRICS_DEFAULTS: dict[str, object] = {"host": defaults.METRICS_HOST}
ZONE_DEFAULTS: dict[str, object] = {
    "strict_testing": defaults.STRICT_TESTING,
    "timeout": defaults.ZONE_TIMEOUT,
    "require_sni": defaults.REQUIRE_SNI,
    "tlsrpt": defaults.TLSRPT,
    "tlsrpt_testing_level": defaults.TLSRPT_TESTING_LEVEL,
    "dane": defaults.DANE,
}
PROACTIVE_DEFAULTS: dict[str, object] = {
    "enabled": defaults.PROACTIVE_ENABLED,
    "interval": defaults.PROACTIVE_INTERVAL,
    "concurrency_limit": defaults.PROACTIVE_CONCURRENCY,
    "grace_ratio": defaults.PROACTIVE_GRACE_RATIO,
}
CACHE_DEFAULTS: dict[str, object] = {
    "type": defaults.CACHE_TYPE,
    "path": defaults.LMDB_PATH,
    "map_size": defaults.LMDB_MAP_SIZE,
    "max_entries": defaults.LMDB_MAX_ENTRIES,
    "cache_size": defaults.INTERNAL_CACHE_SIZE,
    "timeout": defaults.SQLITE_TIMEOUT,
    "socket_timeout": defaults.REDIS_SOCKET_TIMEOUT,
    "socket_connect_timeout": defaults.REDIS_SOCKET_CONNECT_TIMEOUT,
}


def _cache_keys() -> set[str]:
    """Every cache option config.py knows by name (pass-through ones aside)."""
    keys = {"type"}
    for known, _ in config._CACHE_BACKENDS.values():
        keys.update(known or ())
    keys.update(config._ALL_CACHE_OPTIONS)
    keys.update(config._REDIS_CHECKED)
    keys.update(("min_size", "max_size"))  # checked by the postgres builder
    return keys


def _top_section_text() -> str:
    sections = _sections(_page(YML))
    return "\n".join(sections[title] for title in TOP_SECTIONS)


@pytest.mark.parametrize("key", config._TOP_KEYS)
def test_every_top_level_key_is_documented(key: str) -> None:
    line = _term_line(_top_section_text(), key)
    assert line is not None, f"``{key}`` has no entry in {YML} {TOP_SECTIONS}"
    if key in TOP_DEFAULTS:
        assert f"default ``{_shown(TOP_DEFAULTS[key])}``" in line, line


def test_every_top_level_key_with_a_default_is_listed_here() -> None:
    # A new simple key must be added to TOP_DEFAULTS (so its default is
    # checked) or be one whose default is not a single value.
    no_single_default = {
        "path", "mode", "owner", "group", "workers", "cache", "proactive_policy_fetching",
        "default_zone", "zones", "nameservers", "ca_file", "policy_overrides", "metrics",
    }  # fmt: skip
    assert set(config._TOP_KEYS) == set(TOP_DEFAULTS) | no_single_default


@pytest.mark.parametrize("key", config._ZONE_KEYS)
def test_every_zone_key_is_documented(key: str) -> None:
    line = _term_line(_sections(_page(YML))["ZONES"], key)
    assert line is not None, key
    assert f"default ``{_shown(ZONE_DEFAULTS[key])}``" in line, line


@pytest.mark.parametrize("key", config._PROACTIVE_KEYS)
def test_every_proactive_key_is_documented(key: str) -> None:
    section = _sections(_page(YML))["PROACTIVE POLICY FETCHING"]
    line = _term_line(section, f"proactive_policy_fetching.{key}")
    assert line is not None, key
    if key in PROACTIVE_DEFAULTS:
        assert f"default ``{_shown(PROACTIVE_DEFAULTS[key])}``" in line, line


@pytest.mark.parametrize("key", config._METRICS_KEYS)
def test_every_metrics_key_is_documented(key: str) -> None:
    line = _term_line(_sections(_page(YML))["MONITORING"], f"metrics.{key}")
    assert line is not None, key
    if key in METRICS_DEFAULTS:
        assert f"default ``{_shown(METRICS_DEFAULTS[key])}``" in line, line


@pytest.mark.parametrize("key", sorted(_cache_keys()))
def test_every_cache_option_is_documented(key: str) -> None:
    section = _sections(_page(YML))["CACHE BACKENDS"]
    assert f"``{key}``" in section, key
    if key in CACHE_DEFAULTS:
        line = _term_line(section, key)
        assert line is not None, key
        assert f"default ``{_shown(CACHE_DEFAULTS[key])}``" in line, line


def test_every_cache_type_is_documented() -> None:
    section = _sections(_page(YML))["CACHE BACKENDS"]
    for kind in config.CACHE_TYPES:
        assert f"**{kind}**:" in section, kind


def test_every_documented_key_exists() -> None:
    sections = _sections(_page(YML))
    known = {
        "LISTENER": set(config._TOP_KEYS),
        "POLICY CACHE AND FETCHING": set(config._TOP_KEYS),
        "DANE": set(config._TOP_KEYS),
        "MONITORING": set(config._TOP_KEYS) | {f"metrics.{k}" for k in config._METRICS_KEYS},
        "ZONES": set(config._ZONE_KEYS),
        "PROACTIVE POLICY FETCHING": {
            f"proactive_policy_fetching.{k}" for k in config._PROACTIVE_KEYS
        },
        "CACHE BACKENDS": _cache_keys(),
    }
    for title, keys in known.items():
        # A term is a line that starts with the key and its type in brackets.
        terms = re.findall(r"^``([a-z_.]+)`` \(", sections[title], re.M)
        assert terms, title
        assert set(terms) <= keys, (title, set(terms) - keys)


# -- the command pages match the argument parsers ---------------------------------------------


def _actions(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """(command path, action) for the parser and every sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, argparse.Action([name], dest="command")
                for inner in sub._actions:
                    yield name, inner
        else:
            yield "", action


def _mentioned(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.mark.parametrize(
    ("page", "parser"),
    [
        pytest.param("mta-sts-daemon.8", daemon.build_parser(), id="mta-sts-daemon"),
        pytest.param("mta-sts-query.1", query.build_parser(), id="mta-sts-query"),
        pytest.param("mta-sts-cache.1", cachecli.build_parser(), id="mta-sts-cache"),
    ],
)
def test_every_flag_and_argument_is_documented(page: str, parser: argparse.ArgumentParser) -> None:
    text = _page(page)
    options = _sections(text)["OPTIONS"] + _sections(text).get("COMMANDS", "")
    missing = []
    for command, action in _actions(parser):
        if action.option_strings:
            for flag in action.option_strings:
                if not _mentioned(options, flag):
                    missing.append(f"{command} {flag}".strip())
        else:
            word = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
            if not _mentioned(text, word):
                missing.append(f"{command} {word}".strip())
    assert missing == []


def test_synopsis_of_the_daemon_lists_every_flag() -> None:
    synopsis = _sections(_page("mta-sts-daemon.8"))["SYNOPSIS"]
    for action in daemon.build_parser()._actions:
        if action.option_strings and action.dest not in ("help", "version"):
            assert _mentioned(synopsis, action.option_strings[0]), action.option_strings


# -- the metrics are documented where operators look ---------------------------------------------


@pytest.mark.parametrize("page", ["README", "mta-sts-daemon.8"])
def test_every_metric_is_documented(page: str) -> None:
    from mtasts_fast.metrics import catalogue

    if page == "README":
        text = (MAN.parent.parent / "README.md").read_text(encoding="utf-8")
        text = text[text.index("## Monitoring") :]
    else:
        text = _sections(_page(page))["MONITORING"]
    missing = [m.name for m in catalogue.ALL if not re.search(rf"\b{m.name}\b", text)]
    assert missing == []
