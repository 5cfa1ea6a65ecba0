"""Does DANE apply to a domain? The RFC 7672 §2.2 walk from MX to TLSA.

:func:`evaluate` asks the validating resolver (resolver.py) and decides one of
the four :mod:`~mtasts_fast.dane.state` decisions:

1. MX RRset of the domain (RFC 7672 §2.2.1). NXDOMAIN: no DANE (there is no
   such domain). NODATA: the domain itself is the implicit MX (RFC 5321 §5.1,
   RFC 7672 §2.2.2), secure only if the denial is. A Null MX (``MX 0 .``, RFC
   7505) accepts no mail: no DANE. An insecure answer: no DANE, whatever the
   hosts publish (§2.2.1: the host names could be forged).
2. For each MX host of a secure MX RRset (at most ``max_hosts``, in preference
   order, concurrently): its A and AAAA RRsets. A host whose name does not
   exist or has no address is skipped, not fatal (postfix-tlspol issue 172:
   one dead MX host made a whole domain TEMP); insecure addresses make an
   ``insecure`` host, whose TLSA records are not looked up (RFC 7672 §2.2.2).
3. For a host with secure addresses, TLSA ``_25._tcp.<host>`` (RFC 7672
   §2.2.3), at the CNAME-expanded name first when the host is an alias and
   then at the original name. Usable records are DANE-TA(2) or DANE-EE(3),
   selector 0 or 1, matching type 0 (non-empty), 1 (32 bytes) or 2 (64
   bytes) (RFC 7672 §3.1, RFC 7218); PKIX-TA(0) and PKIX-EE(1) are unusable
   in SMTP (§3.1.3), and so is a record whose data does not parse; a secure
   TLSA RRset of only unusable records still means "TLS required"
   (``tls-required``).

Any lookup on the way that fails — SERVFAIL from the validating resolver (a
bogus answer, usually), another rcode, or no answer in time — makes the whole
domain ``temp``: answering with a weaker policy instead could hide an attack
(RFC 7672 §2.2: never downgrade on a failed lookup).

The decision: every host that exists a ``dane`` host → ``dane-only``; some
host ``dane`` or ``tls-required`` → ``dane``; none → no DANE. The state is
kept for the smallest TTL of the answers used, clamped to
[``DANE_TTL_MIN``, ``DANE_TTL_MAX``]; a ``temp`` state for ``temp_retry``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TLSA

from mtasts_fast import defaults
from mtasts_fast.dane.resolver import Answer, DaneResolver, Status
from mtasts_fast.dane.state import DANE, DANE_ONLY, NO_DANE, TEMP, DaneHost, DaneState

__all__ = ["Evaluation", "HostEvaluation", "evaluate", "tlsa_usable"]

# RFC 7672 §3.1.1, §3.1.2: DANE-TA(2) and DANE-EE(3).
_USABLE_USAGES = (2, 3)
# RFC 6698 §2.1.2: Cert(0), SPKI(1).
_USABLE_SELECTORS = (0, 1)
# Seconds the evaluation's own timeout waits beyond the queries' deadline.
_GRACE = 0.25
# RFC 6698 §2.1.3: Full(0) any length, SHA2-256(1), SHA2-512(2).
_DIGEST_LENGTHS = {1: 32, 2: 64}


def tlsa_usable(usage: int, selector: int, mtype: int, data: bytes) -> bool:
    """True for a record SMTP can authenticate with (RFC 7672 §3.1).

    (dnspython 2.9 refuses to parse a digest of the wrong length at all, and
    transport.py counts such records as malformed; older versions parse them,
    so the length is checked here too.)
    """
    if usage not in _USABLE_USAGES or selector not in _USABLE_SELECTORS:
        return False
    if mtype == 0:
        return len(data) > 0
    return len(data) == _DIGEST_LENGTHS.get(mtype, -1)


def _usable(record: dns.rdtypes.ANY.TLSA.TLSA) -> bool:
    return tlsa_usable(record.usage, record.selector, record.mtype, record.cert)


def _tlsa_text(record: dns.rdtypes.ANY.TLSA.TLSA) -> str:
    return f"{record.usage} {record.selector} {record.mtype}"


@dataclass
class HostEvaluation:
    """What the evaluation found out about one MX host."""

    name: str
    status: str | None = None
    """One of ``state.HOST_STATUSES``; None when a lookup failed."""
    reason: str = ""
    answers: list[Answer] = field(default_factory=list)
    """Every answer looked at, in the order asked (A, AAAA, TLSA...)."""
    usable: int = 0
    """Usable TLSA records (DANE hosts)."""
    tlsa: list[str] = field(default_factory=list)
    """``"usage selector mtype"`` of each TLSA record, with ``usable``/``unusable``."""
    failure: Answer | None = None
    """The lookup that failed (``status`` is then None)."""

    def host(self) -> DaneHost:
        assert self.status is not None
        return DaneHost(self.name, self.status, self.reason)


@dataclass
class Evaluation:
    """The decision with everything that led to it (``mta-sts-query`` shows it all)."""

    state: DaneState
    mx: Answer | None = None
    """The MX answer (None if the evaluation did not get that far)."""
    implicit_mx: bool = False
    hosts: list[HostEvaluation] = field(default_factory=list)
    skipped_hosts: list[str] = field(default_factory=list)
    """MX hosts beyond ``max_hosts``, not evaluated."""
    ttl: int | None = None
    """The smallest TTL of the answers used (before clamping); None for ``temp``."""


class _Failed(Exception):
    """A lookup failed: the domain is ``temp``."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.describe())
        self.answer = answer


def _mx_hosts(answer: Answer) -> tuple[list[str], bool]:
    """The exchanges in preference order, de-duplicated; True for a Null MX (RFC 7505)."""
    records = sorted(
        (r for r in answer.records if isinstance(r, dns.rdtypes.ANY.MX.MX)),
        key=lambda r: r.preference,
    )
    hosts: dict[str, None] = {}
    null = False
    for record in records:
        name = record.exchange.to_text(omit_final_dot=True).lower()
        if name in ("", "."):
            null = True  # RFC 7505 §3: "." is no host; skip it among others
            continue
        hosts.setdefault(name, None)
    return list(hosts), null and not hosts


async def _host(resolver: DaneResolver, name: str, deadline: float) -> HostEvaluation:
    """Steps 2 and 3 for one MX host (module docstring)."""
    result = HostEvaluation(name)
    a, aaaa = await asyncio.gather(
        resolver.query(name, "A", deadline - time.monotonic()),
        resolver.query(name, "AAAA", deadline - time.monotonic()),
    )
    result.answers += [a, aaaa]
    for answer in (a, aaaa):
        if answer.failed:
            result.failure, result.reason = answer, answer.describe()
            return result
    if Status.NXDOMAIN in (a.status, aaaa.status):
        result.status, result.reason = "missing", f"{name} does not exist (NXDOMAIN)"
        return result
    if a.status is not Status.DATA and aaaa.status is not Status.DATA:
        result.status, result.reason = "missing", f"{name} has no A or AAAA record"
        return result
    for answer in (a, aaaa):
        if not answer.secure:
            result.status = "insecure"
            result.reason = f"{answer.rdtype} {name} is insecure: no TLSA lookup (RFC 7672 §2.2.2)"
            return result
    # RFC 7672 §2.2.2: an alias's TLSA records are at the expanded name, or
    # failing that at the name itself (the chain is secure: the addresses are).
    canonical = a.canonical if a.status is Status.DATA else aaaa.canonical
    bases = [canonical] if canonical == name else [canonical, name]
    for base in bases:
        tlsa = await resolver.query(f"_25._tcp.{base}", "TLSA", deadline - time.monotonic())
        result.answers.append(tlsa)
        if tlsa.failed:
            result.failure, result.reason = tlsa, tlsa.describe()
            return result
        if not tlsa.secure:
            result.status = "insecure"
            result.reason = f"TLSA _25._tcp.{base} is insecure (no AD bit)"
            return result
        malformed = tlsa.malformed
        if tlsa.status is not Status.DATA and not malformed:
            continue
        records = [r for r in tlsa.records if isinstance(r, dns.rdtypes.ANY.TLSA.TLSA)]
        result.usable = sum(_usable(r) for r in records)
        result.tlsa = [f"{_tlsa_text(r)} {'usable' if _usable(r) else 'unusable'}" for r in records]
        # A record whose data does not even parse (a digest of the wrong
        # length) is unusable too, and still part of the secure RRset.
        result.tlsa += ["malformed, unusable"] * malformed
        total = len(records) + malformed
        if result.usable:
            result.status = "dane"
            result.reason = f"TLSA _25._tcp.{base}: {result.usable} of {total} usable"
        else:
            shown = ", ".join([*(_tlsa_text(r) for r in records), *["malformed"] * malformed])
            result.status = "tls-required"
            result.reason = (
                f"TLSA _25._tcp.{base}: no usable record ({shown}): "
                "TLS required, no authentication (RFC 7672 §3.1.3)"
            )
        return result
    result.status = "no-tlsa"
    result.reason = f"no TLSA record at _25._tcp.{bases[-1]} (secure denial)"
    return result


async def evaluate(
    domain: str,
    resolver: DaneResolver,
    timeout: float,
    *,
    temp_retry: float = defaults.FETCH_BACKOFF_MIN,
    max_hosts: int = defaults.DANE_MAX_MX_HOSTS,
    clock: Callable[[], float] = time.time,
) -> Evaluation:
    """Evaluate ``domain`` (a lower-case A-label); never raises for anything DNS does."""
    deadline = time.monotonic() + timeout
    evaluation = Evaluation(DaneState(domain, TEMP, "", (), 0.0, 0.0))
    try:
        # Every query is bounded by the deadline and ends in an answer (a
        # TIMEOUT one at worst) that names what went unanswered; this is a
        # safety net only, a little later, so as not to pre-empt that.
        async with asyncio.timeout(timeout + _GRACE):
            decision, reason, hosts = await _walk(domain, resolver, deadline, max_hosts, evaluation)
    except TimeoutError:
        reason = f"no answer from {resolver.describe()} within {timeout:g} s"
        decision, hosts = TEMP, ()
    except _Failed as failure:
        decision, reason, hosts = TEMP, failure.answer.describe(), ()
    now = clock()
    if decision == TEMP:
        evaluation.ttl = None
        expires = now + temp_retry
    else:
        ttl = float(evaluation.ttl if evaluation.ttl is not None else defaults.DANE_TTL_MIN)
        expires = now + min(max(ttl, defaults.DANE_TTL_MIN), defaults.DANE_TTL_MAX)
    evaluation.state = DaneState(domain, decision, reason, hosts, now, expires)
    return evaluation


def _use(evaluation: Evaluation, answer: Answer) -> None:
    """Count ``answer``'s TTL in the state's lifetime."""
    if evaluation.ttl is None or answer.ttl < evaluation.ttl:
        evaluation.ttl = answer.ttl


async def _walk(
    domain: str,
    resolver: DaneResolver,
    deadline: float,
    max_hosts: int,
    evaluation: Evaluation,
) -> tuple[str, str, tuple[DaneHost, ...]]:
    mx = await resolver.query(domain, "MX", deadline - time.monotonic())
    evaluation.mx = mx
    if mx.failed:
        raise _Failed(mx)
    _use(evaluation, mx)
    if mx.status is Status.NXDOMAIN:
        return NO_DANE, f"{domain} does not exist (NXDOMAIN)", ()
    if not mx.secure:
        what = "MX RRset" if mx.status is Status.DATA else "denial of an MX RRset"
        return NO_DANE, f"{what} of {domain} is insecure (no AD bit)", ()
    if mx.status is Status.NODATA:
        # RFC 7672 §2.2.2: a secure "no MX" makes the domain its own MX host.
        evaluation.implicit_mx = True
        names = [domain]
    else:
        names, null = _mx_hosts(mx)
        if null:
            return NO_DANE, "Null MX (RFC 7505): the domain accepts no mail", ()
    evaluation.skipped_hosts = names[max_hosts:]
    names = names[:max_hosts]
    results = await asyncio.gather(*(_host(resolver, name, deadline) for name in names))
    evaluation.hosts = list(results)
    for result in results:
        if result.failure is not None:
            raise _Failed(result.failure)
    for result in results:
        # A missing host's denial counts too: the host may appear.
        for answer in result.answers:
            _use(evaluation, answer)
    hosts = tuple(result.host() for result in results)
    return _decide(domain, hosts, evaluation)


def _decide(
    domain: str, hosts: tuple[DaneHost, ...], evaluation: Evaluation
) -> tuple[str, str, tuple[DaneHost, ...]]:
    existing = [h for h in hosts if h.status != "missing"]
    dane = [h for h in existing if h.status == "dane"]
    tls_required = [h for h in existing if h.status == "tls-required"]
    missing = len(hosts) - len(existing)
    notes = []
    if missing:
        notes.append(f"{missing} MX host{'s' if missing != 1 else ''} skipped (no such host)")
    if evaluation.skipped_hosts:
        beyond = len(evaluation.skipped_hosts)
        notes.append(f"{beyond} MX hosts beyond the first {len(hosts)} not evaluated")
    suffix = f"; {'; '.join(notes)}" if notes else ""
    kind = "implicit MX host" if evaluation.implicit_mx else "MX host"
    if not existing:
        return NO_DANE, f"no {kind} of {domain} exists{suffix}", hosts
    if len(dane) == len(existing) and not evaluation.skipped_hosts:
        count = len(existing)
        what = f"the {kind} has" if count == 1 else f"all {count} {kind}s have"
        return DANE_ONLY, f"{what} usable TLSA records{suffix}", hosts
    if dane or tls_required:
        have = len(dane) + len(tls_required)
        others = [h for h in existing if h.status != "dane"]
        example = f" ({others[0].name}: {others[0].reason})" if others else ""
        verb = "has" if have == 1 else "have"
        reason = f"{have} of {len(existing)} {kind}s {verb} TLSA records{example}{suffix}"
        return DANE, reason, hosts
    first = existing[0]
    return NO_DANE, f"no {kind} has TLSA records ({first.name}: {first.reason}){suffix}", hosts
