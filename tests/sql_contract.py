"""What the SQL backends (``sqlite``, ``postgres``) keep alike in their tables.

A backend's test module subclasses ``SqlTablesContract`` in a class of its own
and implements ``open_cache()`` (a set-up cache on storage the test has to
itself), ``execute()`` and ``fetch()`` (SQL run on that storage beside the
cache, ``?`` marking each parameter) and ``relations()`` (the names of its
tables and indexes); it names its tables of earlier releases and gives the
``undecodable`` fixture: values its columns can hold that decode to nothing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from mtasts_fast.cache.base import Cache
from mtasts_fast.cache.codec import encode_dane, encode_entry, encode_failure
from tests.cache_contract import (
    DANE_STATES,
    FAILURE_RECORDS,
    POLICY_ENTRIES,
    RecordKind,
    assert_same,
    collect,
    make_dane,
    make_entry,
    make_failure,
)


@dataclasses.dataclass(frozen=True)
class Release:
    """The tables of an earlier release, and what this one adds to them."""

    schema: str
    """The attribute of the backend's test class that holds its statements."""
    had_failures: bool
    gains: RecordKind
    new_relations: frozenset[str]


RELEASES = [
    pytest.param(
        Release(
            "first_release_schema",
            had_failures=False,
            gains=FAILURE_RECORDS,
            new_relations=frozenset(
                {"mtasts_failures", "mtasts_failures_retry_at", "mtasts_leases"}
            ),
        ),
        id="first-release-gains-failures-and-leases",
    ),
    pytest.param(
        Release(
            "previous_release_schema",
            had_failures=True,
            gains=DANE_STATES,
            new_relations=frozenset({"mtasts_dane", "mtasts_dane_expires_at"}),
        ),
        id="previous-release-gains-dane-states",
    ),
]

# Each kind's table, and a row of it holding the value given.
UNDECODABLE_ROWS = [
    pytest.param(
        POLICY_ENTRIES, "INSERT INTO mtasts_policy VALUES ('bad.example', 0, 0, ?)", id="policy"
    ),
    pytest.param(
        FAILURE_RECORDS, "INSERT INTO mtasts_failures VALUES ('bad.example', ?, 0)", id="failure"
    ),
    pytest.param(
        DANE_STATES, "INSERT INTO mtasts_dane VALUES ('bad.example', 0, 0, ?)", id="dane-state"
    ),
]

_ENTRY = make_entry("example.com", fetched_at=1000.25, checked_at=1500.5, max_age=60)
_FAILURE = make_failure("example.com", retry_at=time.time() + 300.5)
_STATE = make_dane("example.com", evaluated_at=1000.25, ttl=300.5)

# A record of each kind, the query of its row, and the row it must be: the
# codec's bytes, and the times that the indexes and the newer-wins rule use.
STORED_ROWS = [
    pytest.param(
        POLICY_ENTRIES,
        _ENTRY,
        "SELECT domain, checked_at, expires_at, entry FROM mtasts_policy",
        ("example.com", 1500.5, 1060.25, encode_entry(_ENTRY)),
        id="policy",
    ),
    pytest.param(
        FAILURE_RECORDS,
        _FAILURE,
        "SELECT domain, data, retry_at FROM mtasts_failures",
        ("example.com", encode_failure(_FAILURE), _FAILURE.retry_at),
        id="failure",
    ),
    pytest.param(
        DANE_STATES,
        _STATE,
        "SELECT domain, evaluated_at, expires_at, state FROM mtasts_dane",
        ("example.com", 1000.25, 1300.75, encode_dane(_STATE)),
        id="dane-state",
    ),
]


class SqlTablesContract:
    old_daemon_schema: tuple[str, ...]
    """postgres-mta-sts-resolver's tables, with rows, that ours live beside."""
    old_daemon_rows: str
    """A query of every row of those tables, in one order."""
    first_release_schema: tuple[str, ...]
    """The tables of the first release, before failure records and leases."""
    previous_release_schema: tuple[str, ...]
    """The tables of the previous release, before DANE states."""

    async def open_cache(self) -> Cache:
        raise NotImplementedError

    async def execute(self, sql: str, *args: object) -> None:
        raise NotImplementedError

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def relations(self) -> set[str]:
        """The names of the tables and indexes there are."""
        raise NotImplementedError

    async def test_rows_are_pruned_and_the_old_daemons_tables_are_left_alone(self) -> None:
        for statement in self.old_daemon_schema:
            await self.execute(statement)
        before = await self.fetch(self.old_daemon_rows)
        ours = "SELECT domain FROM mtasts_policy ORDER BY domain"
        cache = await self.open_cache()
        try:
            now = time.time()
            await cache.put(make_entry("example.com", max_age=10, fetched_at=now - 1000))
            await cache.put(make_entry("fresh.example", fetched_at=now))
            await cache.set_proactive_ts(now)
            assert await cache.prune(now - 500) == 1
            assert await self.fetch(ours) == [("fresh.example",)]  # deleted, not just hidden
            assert await cache.delete("other.example") is False
            assert await cache.purge() == 1
            assert await self.fetch(ours) == []
        finally:
            await cache.close()
        assert await self.fetch(self.old_daemon_rows) == before

    @pytest.mark.parametrize("release", RELEASES)
    async def test_tables_of_an_earlier_release_gain_the_new_ones(self, release: Release) -> None:
        entry = make_entry("old.example", fetched_at=1000.0, checked_at=1500.0)
        failure = make_failure("old.example")
        for statement in getattr(self, release.schema):
            await self.execute(statement)
        await self.execute(
            "INSERT INTO mtasts_policy VALUES (?, ?, ?, ?)",
            "old.example",
            1500.0,
            entry.expires_at,
            encode_entry(entry),
        )
        if release.had_failures:
            await self.execute(
                "INSERT INTO mtasts_failures VALUES (?, ?, ?)",
                "old.example",
                encode_failure(failure),
                failure.retry_at,
            )
        kind = release.gains
        record = kind.make("old.example")
        cache = await self.open_cache()
        try:
            assert_same(await cache.get("old.example"), entry)
            if release.had_failures:
                assert await cache.get_failure("old.example") == failure
            assert await kind.get(cache, "old.example") is None
            await kind.put(cache, record)
            assert_same(await kind.get(cache, "old.example"), record)
            assert await cache.acquire_lease("refresh", "a", 60)
        finally:
            await cache.close()
        assert release.new_relations <= await self.relations()

    @pytest.mark.parametrize(("kind", "insert"), UNDECODABLE_ROWS)
    async def test_rows_that_do_not_decode_read_as_missing(
        self, kind: RecordKind, insert: str, undecodable: object
    ) -> None:
        cache = await self.open_cache()
        try:
            await cache.put(make_entry("good.example"))  # makes the tables
            good = kind.make("good.example")  # for the policy kind, a later check
            await kind.put(cache, good)
            await self.execute(insert, undecodable)
            assert await kind.get(cache, "bad.example") is None
            batches = await collect(cache, 1)
            assert [[e.domain for e in b] for b in batches] == [["good.example"]]
            assert_same(await kind.get(cache, "good.example"), good)
            # A good write replaces the bad row.
            record = kind.make("bad.example")
            await kind.put(cache, record)
            assert_same(await kind.get(cache, "bad.example"), record)
        finally:
            await cache.close()

    @pytest.mark.parametrize(("kind", "record", "query", "row"), STORED_ROWS)
    async def test_stored_row(
        self, kind: RecordKind, record: Any, query: str, row: tuple[Any, ...]
    ) -> None:
        cache = await self.open_cache()
        try:
            await kind.put(cache, record)
        finally:
            await cache.close()
        assert await self.fetch(query) == [row]
