"""Shared fixtures: the test world (DNS + HTTPS policy hosts on 127.0.0.0/8)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from mtasts_fast.fetcher import PolicyFetcher
from tests.servers.world import World, WorldUnavailable

pytest_plugins = ["tests.loops", "tests.dane_world"]


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    """DNS server, test CA and HTTPS policy hosts, with the whole catalogue.

    Skipped when 127.0.0.x:443 cannot be bound (not root), unless
    ``MTASTS_REQUIRE_ALL=1``, which turns the skip into a failure.
    """
    instance = World()
    try:
        instance.start()
    except WorldUnavailable as exc:
        if os.environ.get("MTASTS_REQUIRE_ALL", "").strip() not in ("", "0"):
            pytest.fail(f"test world unavailable and MTASTS_REQUIRE_ALL is set: {exc}")
        pytest.skip(f"test world unavailable: {exc}")
    try:
        instance.add_catalogue()
        yield instance
    finally:
        instance.stop()


@pytest.fixture
async def fetcher(world: World) -> AsyncIterator[PolicyFetcher]:
    """A started PolicyFetcher that resolves and fetches in the test world."""
    instance = PolicyFetcher(nameservers=[world.nameserver], ca_file=world.ca_file)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


@pytest.fixture
def fresh_domain(world: World) -> Callable[..., str]:
    """``fresh_domain(prefix="t")`` returns a ``.loc`` name unused so far this session."""
    return world.fresh_domain
