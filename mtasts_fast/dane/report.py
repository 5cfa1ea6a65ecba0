"""The DANE part of ``mta-sts-query``: the evaluation, every lookup, the decision and why.

:func:`dane_report` probes the resolver (does it validate?) and, if it does
(or cannot tell), evaluates the domain as the daemon would; the result is a
JSON-ready mapping. :func:`human_lines` renders it for a person: each MX host
with its A/AAAA/TLSA answers, whether each carried the AD bit, which TLSA
records are usable, then the decision and its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtasts_fast.dane.evaluate import Evaluation, evaluate
from mtasts_fast.dane.probe import DnssecProbe
from mtasts_fast.dane.reply import reply_payload
from mtasts_fast.dane.resolver import Answer, DaneResolver, describe_server

__all__ = ["combined_reply", "dane_report", "human_lines"]

#: ``decision`` of a report whose resolver does not validate.
INACTIVE = "inactive"


def _answer(answer: Answer) -> dict[str, Any]:
    return {
        "name": answer.name,
        "type": answer.rdtype,
        "status": answer.status.value,
        "secure": answer.secure,
        "ttl": answer.ttl,
        "records": [record.to_text() for record in answer.records],
        "malformed": answer.malformed,
        "canonical": answer.canonical,
        "detail": answer.detail or None,
        "summary": answer.describe(),
    }


def _evaluation(evaluation: Evaluation) -> dict[str, Any]:
    state = evaluation.state
    return {
        "decision": state.decision,
        "reason": state.reason,
        "kept_seconds": round(state.expires_at - state.evaluated_at),
        "ttl": evaluation.ttl,
        "implicit_mx": evaluation.implicit_mx,
        "mx": _answer(evaluation.mx) if evaluation.mx is not None else None,
        "hosts": [
            {
                "name": host.name,
                "status": host.status,
                "reason": host.reason,
                "usable_tlsa": host.usable,
                "tlsa": host.tlsa,
                "lookups": [_answer(a) for a in host.answers],
            }
            for host in evaluation.hosts
        ],
        "skipped_hosts": evaluation.skipped_hosts,
        "reply": reply_payload(state).decode() or None,
    }


async def dane_report(
    domain: str, nameservers: Sequence[str], probe_name: str, timeout: float
) -> dict[str, Any]:
    """Probe the resolver and evaluate ``domain`` (JSON-ready)."""
    resolver = DaneResolver(nameservers)
    probe = DnssecProbe(resolver, probe_name, timeout=timeout, loud=False)
    validating = await probe.check()
    report: dict[str, Any] = {
        "resolvers": [describe_server(s) for s in resolver.servers],
        "remote_resolvers": resolver.remote(),
        "probe_name": probe_name,
        "validating": validating,
    }
    if not probe.active:
        report |= {
            "decision": INACTIVE,
            "reason": f"resolver {resolver.describe()} does not validate DNSSEC: "
            "DANE detection inactive, MTA-STS answers only",
            "reply": None,
        }
        return report
    report |= _evaluation(await evaluate(domain, resolver, timeout))
    return report


def combined_reply(mode: str, sts_reply: str, dane: dict[str, Any] | None) -> str:
    """The reply the daemon gives with zone setting ``dane: mode`` (DESIGN.md §7)."""
    if dane is None or dane.get("reply") is None or mode == "off":
        return sts_reply
    if mode == "precedence" and not sts_reply.startswith("OK secure"):
        return sts_reply
    return str(dane["reply"])


def _lookup_line(lookup: dict[str, Any]) -> str:
    line = f"        {lookup['summary']}"
    if lookup["type"] != "TLSA" and lookup["records"]:
        line += f": {', '.join(lookup['records'])}"
    return line


def human_lines(report: dict[str, Any]) -> list[str]:
    """The DANE section of the readable report."""
    resolvers = ", ".join(report["resolvers"])
    validating = report["validating"]
    if validating is None:
        said = "could not be probed (no answer), taken as validating"
    else:
        said = "validates DNSSEC" if validating else "does NOT validate DNSSEC"
    out = [f"DANE:        resolver {resolvers} {said} (probe {report['probe_name']})"]
    for remote in report["remote_resolvers"]:
        out.append(f"warning:     resolver {remote} is not on this host (RFC 7672 §2.1)")
    if report["decision"] == INACTIVE:
        out.append(f"decision:    none: {report['reason']}")
        return out
    mx = report["mx"]
    if mx is not None:
        out.append(f"MX:          {mx['summary']}")
        if report["implicit_mx"]:
            out.append("             no MX RRset: the domain is its own (implicit) MX host")
    for host in report["hosts"]:
        status = host["status"] or "lookup failed"
        out.append(f"    host {host['name']}: {status}: {host['reason']}")
        out.extend(_lookup_line(lookup) for lookup in host["lookups"])
        if host["tlsa"]:
            out.append(f"        TLSA records: {', '.join(host['tlsa'])}")
    for name in report["skipped_hosts"]:
        out.append(f"    host {name}: not evaluated (beyond the first hosts)")
    kept = f", kept {report['kept_seconds']} s"
    out.append(f"decision:    {report['decision']}: {report['reason']}{kept}")
    return out
