"""The fetcher's DNS: one c-ares channel at a time, and what runs on it.

:class:`DnsChannel` owns the channel and replaces it once a minute;
:func:`query_txt` asks it for the TXT records of policy discovery, following
CNAMEs (RFC 8461 §3.1); :class:`CaresResolver` resolves the policy host (and
a proxy) on it for the HTTPS client (https_get.py), so that configured
nameservers (:func:`parse_nameservers`) answer every lookup a fetch makes.

c-ares (1.23 and later) keeps answers in an in-process cache, negative ones
included, for up to an hour, and pycares has no option to turn it off: a
stream of never-seen domains grows it by about 1 KB per name (measured: A +
AAAA lookups of 30 000 new names, +27 MB; the same names again, +0). A fresh
channel every _DNS_CHANNEL_LIFETIME seconds bounds it to that window. The
daemon keeps the caches that matter itself, bounded; DNS caching belongs to
the recursive resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import aiodns
import pycares

__all__ = ["CaresResolver", "DnsChannel", "parse_nameservers", "query_txt"]

_DNS_CHANNEL_LIFETIME = 60.0
_MAX_CNAME_CHAIN = 8


def parse_nameservers(entries: Sequence[str]) -> list[str]:
    """Validate ``host`` / ``host:port`` entries and return c-ares server strings.

    ``host`` must be an IP address (IPv6 as ``::1`` or ``[::1]:53``); the port
    defaults to 53. c-ares accepts a port per server, so ports may differ.
    Raises ValueError naming the bad entry.
    """
    servers: list[str] = []
    for entry in entries:
        text = entry.strip()
        host, port = text, "53"
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"nameserver {entry!r}: expected [IPv6]:port")
            port = rest[1:] if rest else "53"
        elif text.count(":") == 1:
            host, port = text.split(":")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"nameserver {entry!r}: not an IP address") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"nameserver {entry!r}: bad port {port!r}")
        shown = f"[{address}]" if address.version == 6 else str(address)
        servers.append(f"{shown}:{int(port)}")
    return servers


class DnsChannel:
    """The c-ares channel of one fetcher, replaced every _DNS_CHANNEL_LIFETIME s.

    Create it anywhere; :meth:`open` it inside the event loop that uses it.
    """

    def __init__(self, servers: Sequence[str]) -> None:
        self._servers = list(servers)
        self._current: aiodns.DNSResolver | None = None
        self._born = 0.0
        # Replaced channels, closed once the queries started on them are over.
        self.retired: set[asyncio.Task[None]] = set()
        self._longest_timeout = 0.0

    def open(self) -> None:
        """Create the first channel (inside the running loop)."""
        self._current = self._new_channel()

    def _new_channel(self) -> aiodns.DNSResolver:
        self._born = time.monotonic()
        return _LoopResolver(nameservers=self._servers or None, loop=asyncio.get_running_loop())

    def allow_for(self, seconds: float) -> None:
        """A query may now run for ``seconds``: retired channels wait for it."""
        self._longest_timeout = max(self._longest_timeout, seconds)

    def current(self) -> aiodns.DNSResolver:
        """The c-ares channel for a new query, replaced every _DNS_CHANNEL_LIFETIME s."""
        if self._current is None:
            raise RuntimeError("the DNS channel is not open")
        if time.monotonic() - self._born >= _DNS_CHANNEL_LIFETIME:
            old, self._current = self._current, self._new_channel()
            task = asyncio.ensure_future(self._retire(old, 2 * self._longest_timeout + 10))
            self.retired.add(task)
            task.add_done_callback(self.retired.discard)
        return self._current

    @staticmethod
    async def _retire(channel: aiodns.DNSResolver, after: float) -> None:
        # Every query on it is bounded by its fetch timeout: let them finish.
        try:
            await asyncio.sleep(after)
        finally:
            await channel.close()

    async def close(self) -> None:
        """Close the current channel and every retired one, now."""
        channel, self._current = self._current, None
        if channel is not None:
            await channel.close()
        # A retiring task made in this turn of the loop has not started yet:
        # cancelled now, it would never run its ``finally`` (and close its
        # channel). One turn lets every one of them reach its sleep.
        await asyncio.sleep(0)
        for task in list(self.retired):
            task.cancel()  # closes its channel now
        if self.retired:
            await asyncio.gather(*self.retired, return_exceptions=True)


class _LoopResolver(aiodns.DNSResolver):
    """aiodns with c-ares's sockets watched by the worker's event loop.

    aiodns (4.x, with pycares 5) runs each channel on a c-ares event thread
    whenever it can: every answer then wakes that thread, which takes the
    GIL from the busy event loop and hands the result back with
    ``call_soon_threadsafe`` (another wake-up). A cold domain costs three
    such hand-offs (TXT, and A + AAAA for the policy host); measured with
    bench-cold, the loop-driven channel saves 0.15-0.25 ms of a worker's CPU
    per new domain. aiodns keeps the loop-driven mode (``sock_state_cb``)
    as its fallback; this chooses it always. (The event thread's other
    feature, noticing a changed resolv.conf, is covered by the channel's
    replacement every _DNS_CHANNEL_LIFETIME seconds.)
    """

    def _make_channel(self, **kwargs: Any) -> tuple[bool, pycares.Channel]:
        # Overrides aiodns's private factory (pinned: aiodns>=4,<5 in pyproject);
        # test_fetcher checks the channel really runs without the event thread.
        weak_self = weakref.ref(self)

        def sock_state(fd: int, readable: bool, writable: bool) -> None:
            this = weak_self()
            if this is not None:
                this._sock_state_cb(fd, readable, writable)

        return False, pycares.Channel(sock_state_cb=sock_state, timeout=self._timeout, **kwargs)


async def query_txt(channel: Callable[[], aiodns.DNSResolver], name: str) -> list[bytes]:
    """TXT record data of ``name``, following CNAMEs (RFC 8461 §3.1).

    A recursive resolver normally returns the CNAME chain and the target's
    records together; if the answer ends at a CNAME we ask for its target.
    Every query goes to ``channel()``. Raises ``aiodns.error.DNSError``, also
    for a CNAME loop or a chain longer than _MAX_CNAME_CHAIN.
    """
    current = name
    for _ in range(_MAX_CNAME_CHAIN):
        answer = await channel().query_dns(current, "TXT")
        texts: list[bytes] = []
        aliases: dict[str, str] = {}
        for rr in answer.answer:
            if isinstance(rr.data, pycares.TXTRecordData):
                texts.append(rr.data.data)  # pycares joins the strings of a record
            elif isinstance(rr.data, pycares.CNAMERecordData):
                aliases[rr.name.lower().rstrip(".")] = rr.data.cname
        if texts:
            return texts
        if not aliases:
            return []
        # Walk the chain in this answer to its end, then query the end.
        seen = set()
        target = current.lower().rstrip(".")
        while target in aliases and target not in seen:
            seen.add(target)
            target = aliases[target].lower().rstrip(".")
        if target in seen:
            raise aiodns.error.DNSError(aiodns.error.ARES_EBADRESP, f"CNAME loop at {target}")
        current = target
    raise aiodns.error.DNSError(aiodns.error.ARES_EBADRESP, "CNAME chain too long")


class CaresResolver:
    """Host addresses from the fetcher's own c-ares channel (https_get.Resolve)."""

    def __init__(self, channel: Callable[[], aiodns.DNSResolver]) -> None:
        self._channel = channel

    async def __call__(self, host: str, port: int) -> list[tuple[int, str]]:
        """The addresses of ``host``, IPv6 and IPv4, as (family, address); OSError if none."""
        # A trailing dot makes the name absolute: no resolv.conf search list.
        name = host if host.endswith(".") else host + "."
        try:
            # No port: only the addresses are used, and c-ares looks a port up
            # as a service name with getservbyname_r, which reads /etc/services
            # on every call (a quarter of the lookup's CPU).
            answer = await self._channel().getaddrinfo(
                name, family=socket.AF_UNSPEC, port=None, type=socket.SOCK_STREAM
            )
        except aiodns.error.DNSError as exc:
            raise OSError(None, f"{host}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
        results = [(node.family, node.addr[0].decode("ascii")) for node in answer.nodes]
        if not results:
            raise OSError(None, f"{host}: no address")
        return results
