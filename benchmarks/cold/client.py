"""The cold benchmark's client: never-seen domains over persistent socketmap connections.

``conns`` connections are opened first (as a running Postfix has them); then
each takes the next request from one shared list and waits for its reply
before it takes another, as smtp(8) does. The list holds each domain
``asks`` times in a row, so that as many connections ask for a domain at
about the same moment (a burst of mail to a new destination) and a daemon
that does not coalesce fetches shows it.

Per domain: when it was first asked and when it first got a right answer
(``OK secure match=<its two mx patterns> servername=hostname``, the match
list compared as a set: the peer's order is a Python set's). Any other reply
is counted by its first word (``TEMP``, ``NOTFOUND``, ``OK`` with other
attributes: ``wrong``), as are timeouts and closed connections.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any

import runner

REPLY_TIMEOUT = 60.0


def expected_match(domain: str) -> frozenset[bytes]:
    """The match list of a cold domain's policy (servers.policy_body), as Postfix gets it."""
    return frozenset((f"mx1.{domain}".encode(), f".mail.{domain}".encode()))


def is_right(reply: bytes, domain: str) -> bool:
    parts = reply.split(b" ")
    if len(parts) != 4 or parts[:2] != [b"OK", b"secure"] or parts[3] != b"servername=hostname":
        return False
    head, _, match = parts[2].partition(b"=")
    return head == b"match" and frozenset(match.split(b":")) == expected_match(domain)


@dataclass
class Outcome:
    """What one pass over the domains saw (times: ``time.perf_counter`` seconds)."""

    domains: list[str]
    first_asked: list[float] = field(default_factory=list)
    first_right: list[float | None] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    started: float = 0.0
    ended: float = 0.0
    client_cpu_s: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.domains)
        self.first_asked = [float("inf")] * n
        self.first_right = [None] * n

    def summary(self) -> dict[str, Any]:
        firsts = sorted(
            (right - asked) * 1000
            for asked, right in zip(self.first_asked, self.first_right, strict=True)
            if right is not None
        )
        answered = len(firsts)
        elapsed = self.ended - self.started
        every = sorted(x * 1000 for x in self.latencies)
        return {
            "domains": len(self.domains),
            "answered": answered,
            "requests": len(self.latencies) + sum(self.errors.values()),
            "elapsed_s": round(elapsed, 4),
            "domains_per_s": answered / elapsed if elapsed > 0 else 0.0,
            "first_ms": {
                "p50": _pct(firsts, 50),
                "p99": _pct(firsts, 99),
                "max": _pct(firsts, 100),
            },
            "reply_ms": {"p50": _pct(every, 50), "p99": _pct(every, 99)},
            "errors": dict(self.errors),
            "client_cpu_s": round(self.client_cpu_s, 4),
        }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(len(values) * q / 100))], 3)


async def _open(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if address.startswith("unix:"):
        return await asyncio.open_unix_connection(address[5:])
    host, _, port = address.rpartition(":")
    return await asyncio.open_connection(host, int(port))


async def look_up(address: str, domains: list[str], asks: int, conns: int) -> Outcome:
    """Ask for every domain ``asks`` times over ``conns`` connections; the outcome."""
    outcome = Outcome(domains)
    work = [i for i in range(len(domains)) for _ in range(asks)]
    position = 0
    streams = await asyncio.gather(*(_open(address) for _ in range(conns)))
    map_name = runner.MAP_NAME.encode()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal position
        while position < len(work):
            index = work[position]
            position += 1
            domain = domains[index]
            sent = time.perf_counter()
            if sent < outcome.first_asked[index]:
                outcome.first_asked[index] = sent
            writer.write(runner.frame(map_name + b" " + domain.encode()))
            try:
                reply = await asyncio.wait_for(runner.read_reply(reader), REPLY_TIMEOUT)
            except TimeoutError:
                outcome.errors["timeout"] += 1
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                outcome.errors["closed"] += 1
                return
            now = time.perf_counter()
            if is_right(reply, domain):
                outcome.latencies.append(now - sent)
                if outcome.first_right[index] is None:
                    outcome.first_right[index] = now
            else:
                word = reply.split(b" ", 1)[0].decode("ascii", "replace")
                outcome.errors["wrong" if word == "OK" else word or "empty"] += 1

    cpu = time.process_time()
    outcome.started = time.perf_counter()
    try:
        await asyncio.gather(*(connection(r, w) for r, w in streams))
    finally:
        outcome.ended = time.perf_counter()
        outcome.client_cpu_s = time.process_time() - cpu
        for _, writer in streams:
            writer.close()
    return outcome
