"""Group commit: the LMDB writes asked for while the writer is busy, committed together.

Every write of a process goes through one writer thread, one transaction at
a time (``store``). A burst of new domains asks for two writes each (the
policy and the DANE state), and each write used to cost a hand-off to the
writer thread and back and, for the durable cache, an fsync. Here a write
joins a queue; one drainer task takes the write lock and commits everything
queued in one transaction, the jobs in the order they were asked, each
seeing what the ones before it wrote, as if each had its own transaction;
each caller returns once its write is committed. While that transaction is
on the writer thread the next writes queue up for the next one.

A batch whose transaction fails (a job raises, LMDB fails) or cannot fit at
the map's size limit is written again one transaction per job, so every
caller gets exactly the outcome, and the log line, it would have had alone.
A caller cancelled before its job ran leaves it unrun, as one cancelled
while waiting for the writer always did; one cancelled later leaves it to
finish, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import lmdb

__all__ = ["Attempts", "Job", "WriteQueue"]

Job = Callable[["lmdb.Transaction[bytes]"], Any]
#: ``attempts(job, what, quiet)``: the job run in a write transaction, as
#: (committed, its result); (False, None) when the map is full at its limit
#: (logged unless ``quiet``). Called with the write lock held.
Attempts = Callable[[Job, str, bool], Awaitable[tuple[bool, Any]]]
# A queued write: its job, what it writes (for the log), its caller's future.
_Queued = tuple[Job, str, "asyncio.Future[Any]"]


class WriteQueue:
    """The queue of one cache's writes, and the task that commits them."""

    def __init__(self, lock: asyncio.Lock, attempts: Attempts) -> None:
        self._lock = lock
        self._attempts = attempts
        self._queued: list[_Queued] = []
        self._drainer: asyncio.Future[None] | None = None

    async def write(self, job: Job, what: str) -> Any:
        """The job's result once committed (None: dropped, the map being full)."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((job, what, waiter))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        return await waiter

    async def _drain(self) -> None:
        batch: list[_Queued] = []
        try:
            while self._queued:
                async with self._lock:
                    batch = [item for item in self._queued if not item[2].done()]
                    self._queued = []
                    if len(batch) == 1:
                        await self._one(*batch[0])
                    elif batch:
                        await self._together(batch)
        finally:
            self._drainer = None
            # Cancelled (the loop is closing): nobody is left waiting forever.
            for _job, _what, waiter in [*batch, *self._queued]:
                if not waiter.done():
                    waiter.cancel()

    async def _together(self, batch: list[_Queued]) -> None:
        jobs = [job for job, _what, _waiter in batch]
        try:
            done, results = await self._attempts(
                lambda txn: [job(txn) for job in jobs], f"{len(jobs)} writes", True
            )
        except Exception:
            done, results = False, None
        if done:
            for (_job, _what, waiter), result in zip(batch, results, strict=True):
                if not waiter.done():
                    waiter.set_result(result)
            return
        for item in batch:
            await self._one(*item)

    async def _one(self, job: Job, what: str, waiter: asyncio.Future[Any]) -> None:
        if waiter.done():
            return
        try:
            _done, result = await self._attempts(job, what, False)
        except Exception as exc:
            if not waiter.done():
                waiter.set_exception(exc)
        else:
            if not waiter.done():
                waiter.set_result(result)
