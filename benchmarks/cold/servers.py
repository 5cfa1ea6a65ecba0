"""The cold benchmark's test servers, each a process of its own so its CPU time is its own.

    servers.py https --domains N --suffix SUFFIX --ca-out FILE
    servers.py dns --https-ip IP --suffix SUFFIX --policy-id ID

``https``: the policy hosts ``mta-sts.c<N>.<SUFFIX>`` on one ``127.0.0.x:443``
(a free x, like the tests' world), with a certificate per host from a trustme
test CA (ECDSA P-256, made at start, the CA written to ``--ca-out``), picked
by SNI. Each connection gets one HTTP/1.1 answer and is closed: 200
``text/plain`` with the domain's ``enforce`` policy for ``GET
/.well-known/mta-sts.txt`` (RFC 8461 §3.3), 404 otherwise. A small asyncio
protocol on uvloop, no web framework: what it costs is mostly the TLS
handshake, which any policy host pays.

``dns``: ``dnsstub.ColdZone`` on 127.0.0.1 (a free port): the TXT record, the
policy host's address, an insecure MX, and the DNSSEC probe's secure SOA.

Both print one JSON line when ready (``{"ip": ...}`` / ``{"address": ...}``)
and then answer commands on stdin, one JSON line each on stdout:

- ``stats``: what arrived since the last ``stats`` (HTTPS: TLS connections,
  GETs by status and how many domains got 1, 2... GETs; DNS: queries by type
  and how many domains got 1, 2... TXT queries), and the process's CPU
  seconds so far (``resource.getrusage``);
- ``quit`` (or end of input): stop.

Run under the project's venv (trustme, uvloop); ``run.py`` starts them pinned
to the client's core.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import errno
import json
import os
import random
import resource
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "load"))
import dnsstub

POLICY_PATH = b"/.well-known/mta-sts.txt"
MAX_HEAD = 16_384


def policy_body(domain: str) -> bytes:
    """The policy every cold domain publishes (the load benchmark's shape)."""
    return (
        f"version: STSv1\nmode: enforce\nmx: mx1.{domain}\nmx: *.mail.{domain}\nmax_age: 86400\n"
    ).encode()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def histogram(counts: Iterable[int]) -> dict[str, int]:
    """How many names were asked once, twice... (JSON keys are strings)."""
    return {str(k): v for k, v in sorted(collections.Counter(counts).items())}


def serve_commands(stats: Callable[[], dict[str, Any]]) -> None:
    """Answer ``stats`` on stdin with one JSON line each, until ``quit`` or EOF."""
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command == "stats":
            print(json.dumps({**stats(), "cpu_s": round(cpu_seconds(), 4)}), flush=True)


# --------------------------------------------------------------------------------------
# HTTPS
# --------------------------------------------------------------------------------------


class Counts:
    def __init__(self) -> None:
        self.connections = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.gets: collections.Counter[str] = collections.Counter()

    def drain(self) -> dict[str, Any]:
        out = {
            "connections": self.connections,
            "gets": sum(self.gets.values()),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "gets_per_domain": histogram(self.gets.values()),
        }
        self.connections = 0
        self.statuses.clear()
        self.gets.clear()
        return out


class PolicyHost(asyncio.Protocol):
    """One connection: read the request head, answer, close."""

    def __init__(self, counts: Counts, suffix: str) -> None:
        self.counts = counts
        self.suffix = suffix
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.counts.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD and self.transport is not None:
                self.transport.close()
            return
        lines = self.buffer[:end].split(b"\r\n")
        method, _, rest = lines[0].partition(b" ")
        path = rest.partition(b" ")[0]
        host = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"host":
                host = value.strip().lower().partition(b":")[0]
        domain = host.decode("ascii", "replace").removeprefix("mta-sts.")
        if method == b"GET" and path == POLICY_PATH and domain.endswith("." + self.suffix):
            status, body = 200, policy_body(domain)
            self.counts.gets[domain] += 1
        else:
            status, body = 404, b"no such policy\n"
        self.counts.statuses[status] += 1
        head = (
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        assert self.transport is not None
        self.transport.write(head + body)
        self.transport.close()


def certificates(domains: int, suffix: str, ca_out: Path) -> dict[str, ssl.SSLContext]:
    """A server context per policy host, each with its own leaf of one test CA."""
    import trustme

    ca = trustme.CA(organization_name="mtasts-fast cold benchmark CA")
    ca.cert_pem.write_to_path(str(ca_out))
    contexts = {}
    with tempfile.TemporaryDirectory(prefix="mtasts-cold-certs-") as tmp:
        for i in range(domains):
            host = f"mta-sts.c{i:07d}.{suffix}"
            pem = Path(tmp) / "leaf.pem"
            ca.issue_cert(host).private_key_and_cert_chain_pem.write_to_path(str(pem))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(pem))
            contexts[host] = ctx
    return contexts


async def serve_https(args: argparse.Namespace) -> None:
    contexts = certificates(args.domains, args.suffix, Path(args.ca_out))
    default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    default.load_cert_chain(*_default_chain(contexts))

    def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        chosen = contexts.get((name or "").lower())
        if chosen is not None:
            sslobj.context = chosen

    default.sni_callback = pick
    counts = Counts()
    loop = asyncio.get_running_loop()
    server = None
    for last in random.sample(range(2, 255), 60):
        try:
            server = await loop.create_server(
                lambda: PolicyHost(counts, args.suffix),
                f"127.0.0.{last}",
                443,
                ssl=default,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        print(json.dumps({"ip": f"127.0.0.{last}"}), flush=True)
        break
    if server is None:
        raise SystemExit("port 443 is in use on every 127.0.0.x tried")

    async def snapshot() -> dict[str, Any]:
        return counts.drain()

    def stats() -> dict[str, Any]:
        return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(10)

    done = asyncio.Event()

    def commands() -> None:
        serve_commands(stats)
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=commands, daemon=True).start()
    await done.wait()
    server.close()


def _default_chain(contexts: dict[str, ssl.SSLContext]) -> tuple[str, ...]:
    # The context that answers a handshake first needs a certificate of its own;
    # an unknown SNI name gets a throw-away one (and then fails to verify).
    import trustme

    path = Path(tempfile.mkdtemp(prefix="mtasts-cold-default-")) / "default.pem"
    trustme.CA().issue_cert("default.invalid").private_key_and_cert_chain_pem.write_to_path(
        str(path)
    )
    return (str(path),)


# --------------------------------------------------------------------------------------
# DNS
# --------------------------------------------------------------------------------------


def serve_dns(args: argparse.Namespace) -> None:
    zone = dnsstub.ColdZone(args.suffix, args.https_ip, args.policy_id)
    stub = dnsstub.DnsStub(zone)
    stub.count_names = frozenset({"TXT"})
    print(json.dumps({"address": stub.address}), flush=True)

    def stats() -> dict[str, Any]:
        names = stub.drain_names()
        return {
            "types": stub.drain_types(),
            "probes": stub.probes,
            "txt_per_domain": histogram(names.values()),
        }

    try:
        serve_commands(stats)
    finally:
        stub.close()


def main() -> int:
    p = argparse.ArgumentParser(prog="servers.py")
    sub = p.add_subparsers(dest="what", required=True)
    https = sub.add_parser("https")
    https.add_argument("--domains", type=int, required=True)
    https.add_argument("--suffix", required=True)
    https.add_argument("--ca-out", required=True)
    dns = sub.add_parser("dns")
    dns.add_argument("--https-ip", required=True)
    dns.add_argument("--suffix", required=True)
    dns.add_argument("--policy-id", required=True)
    args = p.parse_args()
    if args.what == "dns":
        serve_dns(args)
        return 0
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_https(args))
    else:
        uvloop.run(serve_https(args))
    os._exit(0)  # the command thread may still block on stdin


if __name__ == "__main__":
    sys.exit(main())
