"""DNSSEC-aware DNS queries for the DANE evaluation (RFC 7672 §2.1, RFC 6840 §5.7).

c-ares (the MTA-STS TXT lookup's resolver) neither asks for nor shows the AD
bit, so the DANE lookups make their own queries (wire.py, transport.py; answers
read by dnspython unless of the simplest shapes), to the same resolvers:
``nameservers`` from the configuration, else ``/etc/resolv.conf``'s. Each query:

- has the AD bit set, which asks a validating resolver to say whether the
  answer is authentic even to a client that does not want the signatures
  (RFC 6840 §5.7), and EDNS0 with DO set, for resolvers that predate it
  (RFC 4035 §3.2.1; it is what Postfix itself sends with
  ``smtp_dns_support_level = dnssec``, so both see the same answers);
- goes over UDP with a 1232-byte buffer and is retried over TCP when the
  answer is truncated (transport.py, which also reads answers holding a
  record that does not parse);
- is bounded by the time it is given: every configured resolver is tried in
  turn, twice, each attempt getting an equal share, until one gives a
  definite answer (NOERROR or NXDOMAIN);
- ends in an :class:`Answer` that tells data, NODATA, NXDOMAIN, SERVFAIL,
  any other rcode and timeouts apart, with the answer RRset found by following
  the CNAME chain, the AD bit, and the smallest TTL of what was used (for a
  negative answer the SOA's, RFC 2308 §5).

The AD bit is only as trustworthy as the path to the resolver that set it
(RFC 7672 §2.1; RFC 4035 §4.9.3): only the configured resolvers are asked,
replies from any other address are dropped (transport.py), and :meth:`DaneResolver.remote`
lists the resolvers that are not on loopback so the daemon can warn at start.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from mtasts_fast.dane.transport import exchange
from mtasts_fast.dane.wire import Query, Simple

__all__ = [
    "RESOLV_CONF",
    "Answer",
    "DaneResolver",
    "Status",
    "describe_server",
    "parse_servers",
    "system_servers",
]

_log = logging.getLogger("mtasts_fast.dane")

RESOLV_CONF = "/etc/resolv.conf"
# DNS flag day 2020: the EDNS buffer size that avoids IP fragmentation.
_PAYLOAD = 1232
# Rounds over the resolver list: one lost UDP packet costs one attempt, not
# the whole lookup.
_ROUNDS = 2
# RFC 1034 §3.6.2 leaves chains unbounded; dnspython's own bound is 16 and
# Postfix gives up after 10.
_MAX_CNAME_QUERIES = 8


class Status(enum.Enum):
    """What became of one query."""

    DATA = "data"
    """NOERROR with the asked-for RRset (after the CNAME chain)."""
    NODATA = "nodata"
    """NOERROR, the name exists, no RRset of that type."""
    NXDOMAIN = "nxdomain"
    """The name (or the end of its CNAME chain) does not exist."""
    SERVFAIL = "servfail"
    """SERVFAIL: from a validating resolver, usually a bogus answer."""
    ERROR = "error"
    """Any other rcode (REFUSED, FORMERR...) or an answer that makes no sense."""
    TIMEOUT = "timeout"
    """No resolver answered in time (or none could be reached)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one query, as the DANE evaluation uses it."""

    name: str
    """The name asked, without the trailing dot."""
    rdtype: str
    """The record type asked (``"MX"``, ``"TLSA"``...)."""
    status: Status
    secure: bool = False
    """The resolver set the AD bit: the whole answer validated (RFC 4035 §3.2.3)."""
    records: tuple[dns.rdata.Rdata, ...] = ()
    """The RRset of ``rdtype`` at the end of the CNAME chain (DATA only)."""
    ttl: int = 0
    """Smallest TTL of the chain and the RRset; for NODATA/NXDOMAIN the negative
    TTL, min(SOA TTL, SOA MINIMUM) (RFC 2308 §5); 0 when there was no answer."""
    canonical: str = ""
    """The name at the end of the CNAME chain (``name`` when there is none)."""
    server: str = ""
    """The resolver that gave this answer (``host:port``), if any did."""
    detail: str = ""
    """Why a failure failed: the Extended DNS Error text (RFC 8914) a
    validating resolver attaches to SERVFAIL, or the error seen."""
    malformed: int = 0
    """Records of the answer that did not parse and are left out of
    ``records`` (a TLSA record whose data has the wrong length, say)."""

    @property
    def failed(self) -> bool:
        """SERVFAIL, another rcode or a timeout: nothing can be concluded."""
        return self.status in (Status.SERVFAIL, Status.ERROR, Status.TIMEOUT)

    @property
    def exists(self) -> bool:
        """DATA or NODATA: the name exists."""
        return self.status in (Status.DATA, Status.NODATA)

    def describe(self) -> str:
        """One line, e.g. ``TLSA _25._tcp.mx.example: SERVFAIL from 127.0.0.1:53 (...)``."""
        head = f"{self.rdtype} {self.name}"
        where = f" from {self.server}" if self.server else ""
        if self.status is Status.TIMEOUT:
            return f"{head}: no answer ({self.detail})" if self.detail else f"{head}: no answer"
        security = "secure" if self.secure else "insecure"
        if self.status is Status.DATA:
            count = len(self.records)
            alias = f" via {self.canonical}" if self.canonical != self.name else ""
            return f"{head}: {count} record{'s' if count != 1 else ''}{alias}, {security}"
        if self.status is Status.NODATA:
            return f"{head}: no such record (NODATA), {security}"
        if self.status is Status.NXDOMAIN:
            return f"{head}: no such name (NXDOMAIN), {security}"
        rcode = "SERVFAIL" if self.status is Status.SERVFAIL else "error"
        detail = f" ({self.detail})" if self.detail else ""
        return f"{head}: {rcode}{where}{detail}"


def parse_servers(entries: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``host`` / ``host:port`` / ``[v6]:port`` entries (as the config checks them) as pairs."""
    servers: list[tuple[str, int]] = []
    for entry in entries:
        text = entry.strip()
        host, port = text, 53
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif text.count(":") == 1:
            host, _, number = text.partition(":")
            port = int(number)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"nameserver {entry!r}: not an IP address") from None
        if not 0 < port < 65536:
            raise ValueError(f"nameserver {entry!r}: bad port {port}")
        servers.append((str(address), port))
    return tuple(servers)


def system_servers(filename: str = RESOLV_CONF) -> tuple[tuple[str, int], ...]:
    """The ``nameserver`` lines of ``filename`` (port 53), in order.

    With none, the local machine, as the C library's stub resolver does
    (resolv.conf(5)); an unreadable file counts as one without servers, and
    a line whose value is not an IP address is skipped. (Read here rather
    than by dnspython's stub resolver, whose import costs every worker
    0.8 MiB of resident memory for one file's ``nameserver`` lines.)
    """
    servers: list[tuple[str, int]] = []
    try:
        with open(filename, encoding="utf-8", errors="replace") as conf:
            for line in conf:
                fields = line.split()
                if len(fields) < 2 or fields[0] != "nameserver":
                    continue
                try:
                    servers.append((str(ipaddress.ip_address(fields[1])), 53))
                except ValueError:
                    continue
    except OSError:
        pass
    return tuple(servers) or (("127.0.0.1", 53),)


def describe_server(server: tuple[str, int]) -> str:
    """``host:port`` (``[v6]:port``) of one of :attr:`DaneResolver.servers`."""
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# RFC 8914 §4: the codes a validating resolver gives for a failed validation.
_EDE_NAMES = {
    1: "Unsupported DNSKEY Algorithm",
    2: "Unsupported DS Digest Type",
    5: "DNSSEC Indeterminate",
    6: "DNSSEC Bogus",
    7: "Signature Expired",
    8: "Signature Not Yet Valid",
    9: "DNSKEY Missing",
    10: "RRSIGs Missing",
    11: "No Zone Key Bit Set",
    12: "NSEC Missing",
}


def _extended_error(response: dns.message.Message) -> str:
    """The resolver's Extended DNS Errors (RFC 8914 §2), as one line."""
    parts = []
    for option in response.options:
        if isinstance(option, dns.edns.EDEOption):
            text = f"EDE {option.code}"
            name = _EDE_NAMES.get(option.code)
            if name:
                text += f" ({name})"
            if option.text:
                text += f": {option.text}"
            parts.append(text)
    return "; ".join(parts)


class DaneResolver:
    """Asks the configured resolvers, with the AD bit, for the DANE evaluation."""

    def __init__(self, nameservers: Sequence[str] = (), *, resolv_conf: str = RESOLV_CONF) -> None:
        servers = parse_servers(nameservers)
        #: ``(address, port)`` of every resolver asked, in order.
        self.servers: tuple[tuple[str, int], ...] = servers or system_servers(resolv_conf)
        #: Questions sent, one per attempt (for the metrics).
        self.queries = 0

    def describe(self) -> str:
        return ", ".join(describe_server(s) for s in self.servers)

    def remote(self) -> list[str]:
        """The resolvers not on loopback, whose AD bit crosses a network (RFC 7672 §2.1)."""
        return [
            describe_server(s) for s in self.servers if not ipaddress.ip_address(s[0]).is_loopback
        ]

    async def query(self, name: str, rdtype: str, timeout: float) -> Answer:
        """Ask for ``rdtype`` at ``name`` (absolute, no trailing dot needed) within ``timeout``."""
        deadline = time.monotonic() + timeout
        current = name.rstrip(".")
        # What the CNAMEs followed so far add: their smallest TTL, and
        # whether every answer on the way was secure.
        chain_ttl: int | None = None
        chain_secure = True
        for _ in range(_MAX_CNAME_QUERIES):
            answer, pending = await self._ask(current, rdtype, deadline - time.monotonic())
            if chain_ttl is not None:
                answer = _chained(answer, name, chain_ttl, chain_secure)
            if pending is None:
                return answer
            # The resolver stopped at a CNAME without following it (or without
            # saying the target is absent): ask for the target, as a stub would.
            chain_ttl = answer.ttl if chain_ttl is None else min(chain_ttl, answer.ttl)
            chain_secure = chain_secure and answer.secure
            current = pending
        return Answer(name, rdtype, Status.ERROR, detail="CNAME chain too long")

    async def _ask(self, name: str, rdtype: str, timeout: float) -> tuple[Answer, str | None]:
        """One question, to each resolver in turn until one answers definitely.

        Returns the answer and, when the answer ends at a CNAME whose target
        the resolver did not resolve, that target.
        """
        deadline = time.monotonic() + timeout
        attempts = list(self.servers) * _ROUNDS
        share = timeout / len(attempts)
        answered: set[tuple[str, int]] = set()
        last: Answer | None = None
        errors: list[str] = []
        for server in attempts:
            if server in answered:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            answer, pending = await self._ask_one(server, name, rdtype, min(share, remaining))
            if answer.status is Status.TIMEOUT:
                errors.append(answer.detail)
                continue
            if answer.status in (Status.SERVFAIL, Status.ERROR):
                # Another resolver may do better; a bogus answer stays bogus.
                answered.add(server)
                last = answer
                continue
            return answer, pending
        if last is not None:
            return last, None
        detail = "; ".join(dict.fromkeys(errors)) or f"within {timeout:.3g} s"
        return Answer(name, rdtype, Status.TIMEOUT, detail=detail), None

    async def ask(self, server: tuple[str, int], name: str, rdtype: str, timeout: float) -> Answer:
        """One question to one of :attr:`servers` only (the probe asks each in turn)."""
        answer, _pending = await self._ask_one(server, name.rstrip(".") or ".", rdtype, timeout)
        return answer

    async def _ask_one(
        self, server: tuple[str, int], name: str, rdtype: str, timeout: float
    ) -> tuple[Answer, str | None]:
        # AD (RFC 6840 §5.7), EDNS0 with DO and a _PAYLOAD buffer (wire.py).
        query = Query(name, rdtype, _PAYLOAD)
        self.queries += 1
        shown = describe_server(server)
        try:
            result = await exchange(server[0], server[1], query, timeout)
        except TimeoutError:
            return Answer(name, rdtype, Status.TIMEOUT, detail=f"{shown} timed out"), None
        except (OSError, EOFError) as exc:
            what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            detail = f"{shown}: {what or type(exc).__name__}"
            return Answer(name, rdtype, Status.TIMEOUT, detail=detail), None
        if result.simple is not None:
            answer, pending = _simple(name, rdtype, result.simple, shown), None
        else:
            assert result.response is not None
            answer, pending = _classify(name, rdtype, result.response, shown)
        if result.malformed:
            answer = dataclasses.replace(answer, malformed=result.malformed)
        return answer, pending


def _chained(answer: Answer, name: str, chain_ttl: int, chain_secure: bool) -> Answer:
    """``answer`` as the end of a CNAME chain that began at ``name``."""
    if answer.failed:
        return dataclasses.replace(answer, name=name)
    return dataclasses.replace(
        answer,
        name=name,
        secure=answer.secure and chain_secure,  # a chain is as secure as its weakest link
        ttl=min(answer.ttl, chain_ttl),
    )


def _classify(
    name: str, rdtype: str, response: dns.message.Message, server: str
) -> tuple[Answer, str | None]:
    rcode = response.rcode()
    secure = bool(response.flags & dns.flags.AD)
    if rcode == dns.rcode.SERVFAIL:
        return Answer(
            name, rdtype, Status.SERVFAIL, server=server, detail=_extended_error(response)
        ), None
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        detail = dns.rcode.to_text(rcode)
        extended = _extended_error(response)
        if extended:
            detail += f" ({extended})"
        return Answer(name, rdtype, Status.ERROR, server=server, detail=detail), None
    try:
        assert isinstance(response, dns.message.QueryMessage)
        chain = response.resolve_chaining()
    except (dns.exception.DNSException, AssertionError) as exc:
        detail = f"unusable answer: {exc or type(exc).__name__}"
        return Answer(name, rdtype, Status.ERROR, server=server, detail=detail), None
    canonical = chain.canonical_name.to_text(omit_final_dot=True)
    ttl = int(chain.minimum_ttl)
    if chain.answer is not None:
        records = tuple(chain.answer)
        return Answer(name, rdtype, Status.DATA, secure, records, ttl, canonical, server), None
    status = Status.NXDOMAIN if rcode == dns.rcode.NXDOMAIN else Status.NODATA
    pending: str | None = None
    if chain.cnames and status is Status.NODATA and not _has_soa(response):
        # The chain ends at a target the answer says nothing about.
        pending = canonical
    return Answer(name, rdtype, status, secure, (), ttl, canonical, server), pending


def _simple(name: str, rdtype: str, simple: Simple, server: str) -> Answer:
    """What :func:`_classify` makes of an answer of one of wire.py's shapes."""
    if simple.records:
        status = Status.DATA
    else:
        status = Status.NXDOMAIN if simple.nxdomain else Status.NODATA
    return Answer(name, rdtype, status, simple.secure, simple.records, simple.ttl, name, server)


def _has_soa(response: dns.message.Message) -> bool:
    return any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority)
