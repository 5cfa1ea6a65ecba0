"""A tiny HTTP CONNECT proxy on 127.0.0.1 for the ``https_proxy`` tests.

It only tunnels (``CONNECT host:port``), counts the tunnels it opened and
remembers their targets. Target names are resolved with the ``resolve``
callback (the test world's zone), so it never asks the system resolver.
Runs on whatever event loop starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tests.servers.streams import close_server, serving

__all__ = ["ConnectProxy"]

_MAX_HEAD = 8192


class ConnectProxy:
    def __init__(self, resolve: Callable[[str], str | None]) -> None:
        self._resolve = resolve
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.tunnels = 0
        self.targets: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        await close_server(self._server, self._tasks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with serving(self._tasks, writer, asyncio.LimitOverrunError, ValueError):
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.decode("latin-1").split(" ", 2)
            host, _, port = target.rpartition(":")
            address = self._resolve(host)
            if method != "CONNECT" or address is None or len(head) > _MAX_HEAD:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            up_reader, upstream = await asyncio.open_connection(address, int(port))
            try:
                self.tunnels += 1
                self.targets.append(target)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
            finally:
                upstream.close()
                with contextlib.suppress(Exception):
                    await upstream.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()
