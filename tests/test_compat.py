"""The extension switch: MTASTS_NO_EXTENSIONS / MTASTS_REQUIRE_EXTENSIONS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Hide the compiled modules from the import system, as a broken build would.
_HIDE_EXTENSIONS = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name in (
            "mtasts_fast._netstring",
            "mtasts_fast._matcher",
            "mtasts_fast._counters",
            "mtasts_fast._fastpath",
        ):
            raise ImportError("hidden by the test: " + name)
        return None
sys.meta_path.insert(0, Hide())
"""


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MTASTS_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", _HIDE_EXTENSIONS + code],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "module",
    [
        "mtasts_fast.netstring",
        "mtasts_fast.matcher",
        "mtasts_fast.counters",
        "mtasts_fast.fastpath",
    ],
)
def test_missing_extension_fails_when_required(module: str) -> None:
    result = _run(f"import {module}", MTASTS_REQUIRE_EXTENSIONS="1")
    assert result.returncode != 0
    assert "hidden by the test" in result.stderr


def test_missing_extension_falls_back_to_python() -> None:
    result = _run(
        "from mtasts_fast import netstring, matcher, counters, fastpath\n"
        "assert netstring.NetstringParser is netstring.NetstringParserPy\n"
        "assert matcher.mx_matches is matcher.mx_matches_py\n"
        "assert counters.CounterArray is counters.CounterArrayPy\n"
        "assert fastpath.FastPath is fastpath.FastPathPy\n"
    )
    assert result.returncode == 0, result.stderr


def test_no_extensions_switch_selects_python() -> None:
    result = _run(
        "import sys; sys.meta_path.pop(0)\n"
        "from mtasts_fast import netstring, matcher, counters, fastpath\n"
        "assert netstring.NetstringParser is netstring.NetstringParserPy\n"
        "assert matcher.mx_matches is matcher.mx_matches_py\n"
        "assert counters.CounterArray is counters.CounterArrayPy\n"
        "assert fastpath.FastPath is fastpath.FastPathPy\n",
        MTASTS_NO_EXTENSIONS="1",
    )
    assert result.returncode == 0, result.stderr


def test_both_switches_is_an_error() -> None:
    result = _run(
        "import mtasts_fast.netstring", MTASTS_NO_EXTENSIONS="1", MTASTS_REQUIRE_EXTENSIONS="1"
    )
    assert result.returncode != 0
    assert "choose one" in result.stderr
