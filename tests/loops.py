"""pytest plugin: run ``both_loops`` tests under asyncio and uvloop, and fail any
async test whose event loop reported an unhandled exception."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.get_closest_marker("both_loops") is None:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
async def loop_guard() -> AsyncIterator[list[dict[str, Any]]]:
    """Collect what the loop's exception handler sees; the test fails if anything."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        seen.append(context)
        _loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    yield seen
    loop.set_exception_handler(None)
    if seen:
        pytest.fail(f"the event loop logged unhandled exceptions: {seen!r}")


@pytest.fixture
async def collect_garbage(loop_guard: list[dict[str, Any]]) -> AsyncIterator[None]:
    """Collect garbage while the loop still runs, so that loop_guard also sees
    futures whose exception nobody retrieved (reported when they are freed)."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _guard_both_loops(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("both_loops") is not None:
        request.getfixturevalue("loop_guard")
