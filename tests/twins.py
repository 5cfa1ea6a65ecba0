"""Both twins, one suite (STYLE.md): fixtures parametrised over the compiled
implementation (id ``c``) and the pure-Python one (id ``py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from mtasts_fast import _compat

_T = TypeVar("_T")

TWINS = [
    pytest.param(
        "c",
        id="c",
        marks=pytest.mark.skipif(_compat.NO_EXTENSIONS, reason="MTASTS_NO_EXTENSIONS=1"),
    ),
    pytest.param("py", id="py"),
]


def compiled(module: str, twin: _T | None) -> _T:
    """``twin``, taken from the compiled ``mtasts_fast.<module>``; None (not built)
    skips the test, or fails it under ``MTASTS_REQUIRE_EXTENSIONS=1``."""
    if twin is None:
        if _compat.REQUIRE_EXTENSIONS:
            pytest.fail(f"mtasts_fast.{module} is not built but MTASTS_REQUIRE_EXTENSIONS is set")
        pytest.skip(f"mtasts_fast.{module} is not built or MTASTS_NO_EXTENSIONS=1")
    return twin


def twin_fixture(module: str, py: Callable[[], _T], c: Callable[[], _T | None]) -> Any:
    """A fixture giving ``c()`` as ``c`` (see ``compiled``) and ``py()`` as ``py``;
    it takes the name it is assigned to in a test module."""

    @pytest.fixture(params=TWINS)
    def twin(request: pytest.FixtureRequest) -> _T:
        return py() if request.param == "py" else compiled(module, c())

    return twin
