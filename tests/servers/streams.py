"""Serving connections in the asyncio stream servers of the test world, and ending them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


@contextlib.asynccontextmanager
async def serving(
    tasks: set[asyncio.Task[Any]], writer: asyncio.StreamWriter, *quiet: type[BaseException]
) -> AsyncIterator[None]:
    """Serve one connection in the current task, kept in ``tasks`` meanwhile
    (for close_server to cancel), and close it at the end. A peer that went
    away, the cancellation by close_server and the ``quiet`` exceptions end it
    without a word; anything else is raised, for the loop to report."""
    ended: tuple[type[BaseException], ...] = (
        ConnectionError,
        asyncio.IncompleteReadError,
        asyncio.CancelledError,
        *quiet,
    )
    task = asyncio.current_task()
    assert task is not None
    tasks.add(task)
    try:
        yield
    except ended:
        pass
    finally:
        tasks.discard(task)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def close_server(server: asyncio.Server | None, tasks: set[asyncio.Task[Any]]) -> None:
    """Stop accepting, cancel the tasks serving open connections, wait for both.

    ``Server.wait_closed()`` waits for every connection to end; the tasks
    serving them are cancelled first so that a client that keeps its
    connection open (a tunnel, a stalled request) cannot hold it up.
    """
    if server is not None:
        server.close()
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    if server is not None:
        await server.wait_closed()
