"""``mta-sts-query DOMAIN [KNOWN_ID]``: discover and fetch one domain's policy.

Prints what a person needs to debug a domain — the TXT records seen, the
policy, the DANE evaluation (each MX host, whether each answer was secure,
which TLSA records are usable, the decision and why), the reply Postfix
would get, and every RFC 8461 check that failed —
or the same as JSON. With ``-c``, the configuration's ``policy_overrides``
are read too: the entry that applies to the domain is shown, and the reply
is the one the daemon gives with it (the domain is still looked up, to show
what it publishes). Exit status: 0 a valid policy, 1 no policy published,
2 discovery or fetch failed, or a usage/config error (the MTA-STS
policy's status, whatever DANE says).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from mtasts_fast import __version__, defaults
from mtasts_fast.config import Config, ZoneConfig
from mtasts_fast.config.zones import socketmap_zones
from mtasts_fast.errors import ConfigError
from mtasts_fast.logs import LEVELS, configure_logging
from mtasts_fast.overrides import ENFORCE_TESTING, Applied, overrides_for

__all__ = ["build_parser", "console_main", "main"]

EXIT_POLICY = 0
EXIT_NO_POLICY = 1
EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mta-sts-query",
        description="Fetch and check the MTA-STS policy of one domain.",
        epilog="Exit status: 0 valid policy, 1 no policy, 2 fetch failed or error.",
    )
    parser.add_argument("domain", help="the policy domain (U-labels are converted)")
    parser.add_argument(
        "known_id",
        nargs="?",
        help="a policy id already known; if the TXT record still has it, the "
        "policy is not fetched again (as the daemon does)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument(
        "-c",
        "--config",
        help="take nameservers, ca_file and zone settings from this daemon config",
    )
    parser.add_argument(
        "--zone", help="render the Postfix reply for this zone of the config (default zone)"
    )
    parser.add_argument(
        "--nameserver",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="DNS server to ask (repeatable; default: the system resolver)",
    )
    parser.add_argument("--ca-file", help="CA bundle for the HTTPS fetch (default: system store)")
    parser.add_argument(
        "--timeout",
        type=float,
        help=f"seconds for the whole lookup (default: zone timeout, {defaults.ZONE_TIMEOUT})",
    )
    parser.add_argument(
        "--dane",
        choices=["precedence", "all", "off"],
        help="which answers give way to DANE (default: the zone's dane setting, precedence); "
        "off skips the DANE evaluation",
    )
    parser.add_argument(
        "--dnssec-probe-name",
        metavar="NAME",
        help="a signed name the resolver must answer with the AD bit "
        f"(default: the configuration's dnssec_probe_name, {defaults.DNSSEC_PROBE_NAME!r})",
    )
    parser.add_argument(
        "-v", "--verbosity", choices=list(LEVELS), default="warn", help="logging verbosity"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbosity, None)
    from mtasts_fast.keys import normalise_key

    raw = args.domain.encode("utf-8", "surrogateescape")
    domain = normalise_key(raw)
    if domain is None:
        print(
            f"mta-sts-query: {args.domain!r} is not a domain that can have a policy "
            "(IP literal, parent-domain probe or invalid host name)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    zone = ZoneConfig()
    nameservers: tuple[str, ...] = tuple(args.nameserver)
    ca_file = args.ca_file
    applied: Applied | None = None
    overrides_file = None
    probe_name = defaults.DNSSEC_PROBE_NAME
    if args.config:
        try:
            config = Config.from_yaml(args.config)
            overrides = overrides_for(config)
        except ConfigError as exc:
            print(f"mta-sts-query: {exc}", file=sys.stderr)
            return EXIT_ERROR
        if args.zone and args.zone not in socketmap_zones(config.default_zone, config.zones):
            print(f"mta-sts-query: no zone {args.zone!r} in {args.config}", file=sys.stderr)
            return EXIT_ERROR
        zone = config.zone_for(args.zone or "")
        nameservers = nameservers or config.nameservers
        ca_file = ca_file or config.ca_file
        if overrides is not None:
            applied = overrides.apply(domain)
            overrides_file = overrides.filename
        probe_name = config.dnssec_probe_name
    elif args.zone:
        print("mta-sts-query: --zone needs -c/--config", file=sys.stderr)
        return EXIT_ERROR
    timeout = args.timeout if args.timeout is not None else zone.timeout
    if applied is not None and applied.override.kind == ENFORCE_TESTING:
        zone = dataclasses.replace(zone, strict_testing=True)
    dane = DaneOptions(args.dane or zone.dane, args.dnssec_probe_name or probe_name)
    try:
        report = asyncio.run(
            _query(domain, args.known_id, nameservers, ca_file, timeout, zone, dane)
        )
    except (OSError, ValueError) as exc:
        print(f"mta-sts-query: {exc}", file=sys.stderr)
        return EXIT_ERROR
    report["override"] = None
    if applied is not None:
        override = applied.override
        report["override"] = {
            "file": overrides_file,
            "entry": override.entry,
            "kind": override.kind,
            "description": override.describe(),
        }
        if override.kind != ENFORCE_TESTING:
            report["reply"] = applied.payload(zone).decode()
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=False))
    else:
        print(_human(report))
    return int(report["exit_status"])


class DaneOptions(NamedTuple):
    mode: str
    probe_name: str


async def _query(
    domain: str,
    known_id: str | None,
    nameservers: tuple[str, ...],
    ca_file: str | None,
    timeout: float,
    zone: ZoneConfig,
    dane: DaneOptions,
) -> dict[str, Any]:
    from mtasts_fast.dane.report import combined_reply, dane_report
    from mtasts_fast.fetcher import Outcome, PolicyFetcher
    from mtasts_fast.reply import render_policy

    fetcher = PolicyFetcher(nameservers=nameservers, ca_file=ca_file)
    await fetcher.start()
    try:
        # Side by side, each bounded by the timeout, as the daemon would.
        if dane.mode == "off":
            result, dane_part = await fetcher.fetch(domain, timeout, known_id), None
        else:
            result, dane_part = await asyncio.gather(
                fetcher.fetch(domain, timeout, known_id),
                dane_report(domain, nameservers, dane.probe_name, timeout),
            )
    finally:
        await fetcher.close()
    report: dict[str, Any] = {
        "domain": domain,
        "txt_name": f"_mta-sts.{domain}",
        "txt_records": list(result.txt_records),
        "policy_url": f"https://mta-sts.{domain}/.well-known/mta-sts.txt",
        "outcome": result.outcome.name.lower(),
        "policy_id": result.policy_id,
        "stage": result.stage or None,
        "reason": result.reason or None,
        "result_type": result.result_type,
        "warnings": list(result.warnings),
        "policy": None,
        "reply": None,
        "mta_sts_reply": None,
        "dane_mode": dane.mode,
        "dane": dane_part,
    }
    if result.outcome is Outcome.POLICY and result.policy is not None:
        policy = result.policy
        report["policy"] = {
            "mode": policy.mode,
            "max_age": policy.max_age,
            "mx": list(policy.mx),
            "lines": list(policy.lines),
        }
        report["reply"] = render_policy(domain, policy, zone).decode()
        report["exit_status"] = EXIT_POLICY
    elif result.outcome is Outcome.NOT_CHANGED:
        report["exit_status"] = EXIT_POLICY
    elif result.outcome is Outcome.NO_POLICY:
        report["reply"] = "NOTFOUND "
        report["exit_status"] = EXIT_NO_POLICY
    else:
        report["reply"] = "NOTFOUND "
        report["exit_status"] = EXIT_ERROR
    if report["reply"] is not None:
        report["mta_sts_reply"] = report["reply"]
        report["reply"] = combined_reply(dane.mode, report["reply"], dane_part)
    return report


def _human(report: dict[str, Any]) -> str:
    out = [f"domain:      {report['domain']}"]
    records = report["txt_records"]
    if records:
        for record in records:
            out.append(f'TXT record:  {report["txt_name"]} "{record}"')
    else:
        out.append(f"TXT record:  {report['txt_name']} (none)")
    if report["policy_id"]:
        out.append(f"policy id:   {report['policy_id']}")
    outcome = report["outcome"]
    if outcome == "policy":
        policy = report["policy"]
        out.append(f"policy URL:  {report['policy_url']}")
        out.append("policy:")
        out.extend(f"    {line}" for line in policy["lines"])
        out.append(
            f"result:      valid policy, mode {policy['mode']}, max_age {policy['max_age']} s, "
            f"mx {', '.join(policy['mx']) or '(none)'}"
        )
    elif outcome == "not_changed":
        out.append("result:      the TXT id equals the known id; policy not fetched again")
    elif outcome == "no_policy":
        out.append(f"result:      no MTA-STS policy: {report['reason']}")
    else:
        stage, kind = report["stage"], report["result_type"]
        out.append(f"result:      FAILED at {stage} ({kind}): {report['reason']}")
    for warning in report["warnings"]:
        out.append(f"warning:     {warning}")
    override = report.get("override")
    if override is not None:
        out.append(
            f"override:    {override['file']}: entry {override['entry']!r} applies: "
            f"{override['description']}"
        )
    if report["dane"] is not None:
        from mtasts_fast.dane.report import human_lines

        out.extend(human_lines(report["dane"]))
    if report["reply"] is not None:
        if report["reply"] != report["mta_sts_reply"]:
            overridden = override is not None and override["kind"] != ENFORCE_TESTING
            first = "the override comes first" if overridden else "DANE comes first"
            out.append(f"MTA-STS reply: {report['mta_sts_reply']} ({first})")
        out.append(f"Postfix reply: {report['reply']}")
    return "\n".join(out)


def console_main() -> None:
    logging.captureWarnings(True)
    sys.exit(main())
