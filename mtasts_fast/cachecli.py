"""``mta-sts-cache``: inspect and manage the policy cache the config names.

    mta-sts-cache [-c FILE] list [--json]
    mta-sts-cache [-c FILE] show DOMAIN [--json]
    mta-sts-cache [-c FILE] stats [--json]
    mta-sts-cache [-c FILE] purge DOMAIN... | --all
    mta-sts-cache [-c FILE] export [FILE]        JSON lines, "-" = stdout
    mta-sts-cache [-c FILE] import [FILE]        JSON lines, "-" = stdin
    mta-sts-cache [-c FILE] warm FILE [--concurrency N] [--force]

Export/import move a cache's policies between backends (e.g. sqlite → lmdb);
failure records and DANE states are not exported (``cache.json_form`` says
why). Warm prefetches a list of domains. Exit status: 0 done, 1 a named
domain is not cached (``show``: no policy and no DANE state), 2 usage or
configuration error, 3 the cache backend is unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from mtasts_fast import __version__, defaults
from mtasts_fast.cache import Cache, CacheUnavailable, create_cache
from mtasts_fast.cache.base import FetchFailure
from mtasts_fast.cache.json_form import (
    dane_to_json,
    entry_from_json,
    entry_to_json,
    failure_to_json,
)
from mtasts_fast.config import Config
from mtasts_fast.dane.state import NO_DANE, DaneState
from mtasts_fast.errors import ConfigError
from mtasts_fast.fetcher import PolicyFetcher
from mtasts_fast.keys import normalise_key
from mtasts_fast.refresh import PolicyRefresher
from mtasts_fast.reply import render_policy

__all__ = ["build_parser", "console_main", "entry_from_json", "entry_to_json", "main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class UsageError(Exception):
    """Bad arguments or input; the message is shown to the user."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mta-sts-cache",
        description="Inspect and manage the MTA-STS policy cache named by the daemon's config.",
        epilog="Exit status: 0 done, 1 domain not cached, 2 usage/config error, "
        "3 cache unavailable.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=defaults.CONFIG_PATH,
        help="the daemon's YAML configuration (default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="one line per cached domain")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    show = commands.add_parser("show", help="everything cached for one domain")
    show.add_argument("domain")
    show.add_argument("--json", action="store_true", help="a JSON object")
    stats = commands.add_parser(
        "stats", help="how many policies and failure records, their age, the size"
    )
    stats.add_argument("--json", action="store_true", help="a JSON object")
    purge = commands.add_parser(
        "purge", help="forget domains (they are fetched and DANE-evaluated again)"
    )
    purge.add_argument("domains", nargs="*", metavar="DOMAIN")
    purge.add_argument(
        "--all",
        action="store_true",
        help="forget every cached policy, failure record and DANE state",
    )
    export = commands.add_parser("export", help="write every entry as JSON lines")
    export.add_argument("file", nargs="?", default="-", help="output file (default: stdout)")
    load = commands.add_parser("import", help="read JSON lines written by export")
    load.add_argument("file", nargs="?", default="-", help="input file (default: stdin)")
    warm = commands.add_parser(
        "warm",
        help="fetch the policies of a list of domains into the cache",
        description="Fetch the MTA-STS policy of every domain in FILE (one per line; "
        "blank lines and #-comments are skipped; the last field of a line counts, "
        "so `sort | uniq -c` output works) and store it, as the daemon would.",
    )
    warm.add_argument("file", help='the list of domains ("-" = stdin)')
    warm.add_argument(
        "--concurrency",
        type=_positive_int,
        default=WARM_CONCURRENCY,
        help="fetches in flight at once (default: %(default)s)",
    )
    warm.add_argument(
        "--force",
        action="store_true",
        help="fetch even domains that are cached and unexpired, or backing off after a failure",
    )
    return parser


# Fetches in flight for `warm`: enough to finish ten thousand domains in a few
# minutes, few enough not to look like an attack to anyone's DNS or web server.
WARM_CONCURRENCY = 20


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_yaml(args.config)
        if config.cache.type == "internal":
            raise UsageError(
                f"{config.filename}: cache.type: the 'internal' cache lives in a private "
                "directory of the running daemon and goes when it stops; mta-sts-cache "
                "works with lmdb, sqlite, redis, redis_sentinel and postgres"
            )
        cache = create_cache(config.cache, config.filename)
        return asyncio.run(_run(cache, config, args))
    except ConfigError as exc:
        print(f"mta-sts-cache: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"mta-sts-cache: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CacheUnavailable as exc:
        print(f"mta-sts-cache: cache unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except OSError as exc:
        print(f"mta-sts-cache: {exc}", file=sys.stderr)
        return EXIT_USAGE


async def _run(cache: Cache, config: Config, args: argparse.Namespace) -> int:
    await cache.setup()
    try:
        if args.command == "list":
            return await _list(cache, args.json)
        if args.command == "show":
            return await _show(cache, config, _domain(args.domain), args.json)
        if args.command == "stats":
            return await _stats(cache, config, args.json)
        if args.command == "purge":
            return await _purge(cache, args.domains, args.all)
        if args.command == "export":
            return await _export(cache, args.file)
        if args.command == "warm":
            return await _warm(cache, config, args.file, args.concurrency, args.force)
        return await _import(cache, args.file)
    finally:
        await cache.close()


def _domain(text: str) -> str:
    domain = normalise_key(text.encode("utf-8", "surrogateescape"))
    if domain is None:
        raise UsageError(f"{text!r} is not a domain that can have a policy")
    return domain


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def _list(cache: Cache, as_json: bool) -> int:
    out = sys.stdout
    if not as_json:
        out.write(f"{'DOMAIN':<40} {'MODE':<8} {'ID':<33} EXPIRES\n")
    async for batch in cache.scan():
        for entry in sorted(batch, key=lambda e: e.domain):
            if as_json:
                out.write(json.dumps(entry_to_json(entry)) + "\n")
            else:
                out.write(
                    f"{entry.domain:<40} {entry.policy.mode:<8} {entry.policy_id:<33} "
                    f"{_when(entry.expires_at)}\n"
                )
    return EXIT_OK


async def _show(cache: Cache, config: Config, domain: str, as_json: bool) -> int:
    entry = await cache.get(domain)
    failure = await cache.get_failure(domain)
    dane = await cache.get_dane(domain)
    if entry is None and failure is None and dane is None:
        print(f"{domain}: not cached", file=sys.stderr)
        return EXIT_NOT_FOUND
    # Status 1 means "nothing cached that answers for it": neither a policy
    # nor a DANE state (a remembered failure is still shown).
    status = EXIT_OK if entry is not None or dane is not None else EXIT_NOT_FOUND
    if as_json:
        data: dict[str, Any] = entry_to_json(entry) if entry is not None else {"domain": domain}
        data["last_failure"] = failure_to_json(failure) if failure is not None else None
        data["dane"] = dane_to_json(dane) if dane is not None else None
        print(json.dumps(data, indent=2))
        return status
    print(f"domain:      {domain}")
    if entry is None:
        print("policy:      (none cached)")
    else:
        reply = render_policy(domain, entry.policy, config.default_zone).decode()
        print(f"policy id:   {entry.policy_id}")
        print(f"mode:        {entry.policy.mode}")
        print(f"max_age:     {entry.policy.max_age} s")
        print(f"mx:          {', '.join(entry.policy.mx) or '(none)'}")
        print(f"fetched:     {_when(entry.fetched_at)} (last HTTPS fetch)")
        print(f"checked:     {_when(entry.checked_at)} (last TXT confirmation)")
        print(f"expires:     {_when(entry.expires_at)}")
        print("policy:")
        for line in entry.policy.lines:
            print(f"    {line}")
        print(f"Postfix reply (default zone): {reply}")
    if failure is not None:
        _print_failure(failure)
    _print_dane(dane)
    return status


# What the size of each backend measures.
_SIZE_MEANS = {
    "lmdb": "on disk",
    "sqlite": "on disk (the database file and its write-ahead log)",
    "redis": "of Redis memory (our keys)",
    "redis_sentinel": "of Redis memory (our keys)",
    "postgres": "in PostgreSQL (our tables and their indexes)",
}


async def _stats(cache: Cache, config: Config, as_json: bool) -> int:
    stats = await cache.stats()
    if as_json:
        data = {"type": config.cache.type, **dataclasses.asdict(stats)}
        print(json.dumps(data, indent=2))
        return EXIT_OK
    now = time.time()

    def when(ts: float | None) -> str:
        return "-" if ts is None else f"{_when(ts)} ({_ago(now - ts)})"

    print(f"cache type:              {config.cache.type}")
    print(f"policies:                {stats.entries}")
    print(
        f"failure records:         {stats.failures} (failed fetches and domains without a policy)"
    )
    print(f"least recently checked:  {when(stats.oldest_checked)}")
    print(f"most recently checked:   {when(stats.newest_checked)}")
    if stats.size_bytes is not None:
        size = f"{stats.size_bytes / 2**20:.1f} MiB ({stats.size_bytes} bytes)"
        print(f"size:                    {size} {_SIZE_MEANS.get(config.cache.type, '')}".rstrip())
    return EXIT_OK


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _print_failure(failure: FetchFailure) -> None:
    now = time.time()
    if failure.retry_at > now:
        wait = f"in {round(failure.retry_at - now)} s"
    else:
        wait = "at the next lookup"
    if failure.no_policy:
        print(f"no policy:   {_when(failure.failed_at)}: {failure.reason or 'no TXT record'}")
    else:
        print(
            f"last failure: {_when(failure.failed_at)}: {failure.result_type} at "
            f"{failure.stage}: {failure.reason} ({failure.attempts} in a row)"
        )
    print(f"next retry:  {_when(failure.retry_at)} ({wait})")


def _print_dane(state: DaneState | None) -> None:
    if state is None:
        print("DANE:        (none cached)")
        return
    print(f"DANE:        {state.decision} ({state.reason})")
    print(f"evaluated:   {_when(state.evaluated_at)} (DNSSEC lookups)")
    left = round(state.expires_at - time.time())
    when = f"in {left} s" if left > 0 else f"{-left} s ago: evaluated again at the next lookup"
    print(f"re-evaluate: {_when(state.expires_at)} ({when})")
    if not state.hosts:
        print("MX hosts:    (none looked at)")
    for host in state.hosts:
        why = f": {host.reason}" if host.reason else ""
        print(f"MX host:     {host.name} {host.status}{why}")
    if state.decision != NO_DANE:
        # The reply above is the policy's; the daemon's is not (RFC 8461 §2).
        print(
            "DANE comes first: in a zone with `dane: precedence` (the default) or `all`,"
            f" Postfix gets the {state.decision} answer, not the policy's"
        )


async def _purge(cache: Cache, domains: list[str], purge_all: bool) -> int:
    if purge_all == bool(domains):
        raise UsageError("purge takes either DOMAIN... or --all")
    if purge_all:
        count = await cache.purge()
        print(f"purged {count} entries")
        return EXIT_OK
    status = EXIT_OK
    for text in domains:
        domain = _domain(text)
        # Forgetting a failure too lets the next lookup fetch at once, and
        # forgetting the DANE state makes it evaluate the domain afresh.
        had_entry = await cache.delete(domain)
        had_failure = await cache.delete_failure(domain)
        had_dane = await cache.delete_dane(domain)
        if had_entry or had_failure or had_dane:
            print(f"{domain}: purged")
        else:
            print(f"{domain}: not cached", file=sys.stderr)
            status = EXIT_NOT_FOUND
    return status


async def _export(cache: Cache, target: str) -> int:
    # A command-line tool: blocking file I/O in the one task is fine.
    out: IO[str] = sys.stdout if target == "-" else open(target, "w", encoding="utf-8")  # noqa: SIM115, ASYNC230
    count = 0
    try:
        async for batch in cache.scan():
            for entry in batch:
                out.write(json.dumps(entry_to_json(entry), ensure_ascii=False) + "\n")
                count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {count} entries", file=sys.stderr)
    return EXIT_OK


async def _import(cache: Cache, source: str) -> int:
    src: IO[str] = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115, ASYNC230
    count = 0
    try:
        for number, line in enumerate(src, start=1):
            if not line.strip():
                continue
            try:
                entry = entry_from_json(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                raise UsageError(f"{source}: line {number}: {exc}") from None
            await cache.put(entry)
            count += 1
    finally:
        if src is not sys.stdin:
            src.close()
    print(f"imported {count} entries", file=sys.stderr)
    return EXIT_OK


async def _warm(cache: Cache, config: Config, source: str, concurrency: int, force: bool) -> int:
    domains, invalid = _read_domain_list(source)
    config = dataclasses.replace(config, max_concurrent_fetches=concurrency)
    fetcher = PolicyFetcher(nameservers=config.nameservers, ca_file=config.ca_file)
    await fetcher.start()
    refresher = PolicyRefresher(config, cache, fetcher)
    progress = Progress(len(domains), sys.stderr)
    outcomes: dict[str, int] = {}
    pending = iter(domains)
    timeout = config.default_zone.timeout

    def count(outcome: str) -> None:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        progress.step()

    async def work() -> None:
        for domain in pending:
            entry = await cache.get(domain)
            if not force and entry is not None and time.time() < entry.expires_at:
                count("already cached")
                continue
            if force:
                await cache.delete_failure(domain)
            fresh, _, kind = await refresher.refresh(domain, None, timeout, previous=entry)
            if fresh is not None and fresh is not entry:
                count(f"policy: {fresh.policy.mode}")
            else:
                count(kind)

    try:
        await asyncio.gather(*(work() for _ in range(min(concurrency, len(domains) or 1))))
    finally:
        progress.finish()
        await fetcher.close()
    if invalid:
        outcomes["invalid name (skipped)"] = invalid
    _print_summary(outcomes, len(domains) + invalid, progress.elapsed())
    return EXIT_OK


def _read_domain_list(source: str) -> tuple[list[str], int]:
    """Normalised, de-duplicated domains from ``source``, and how many lines were not names."""
    src: IO[str] = sys.stdin if source == "-" else open(source, encoding="utf-8", errors="replace")  # noqa: SIM115
    seen: dict[str, None] = {}
    invalid = 0
    try:
        for line in src:
            text = line.split("#", 1)[0].split()
            if not text:
                continue
            domain = normalise_key(text[-1].encode("utf-8", "surrogateescape"))
            if domain is None:
                invalid += 1
            else:
                seen.setdefault(domain)
    finally:
        if src is not sys.stdin:
            src.close()
    return list(seen), invalid


class Progress:
    """A progress bar on a terminal; a plain line every few seconds otherwise."""

    WIDTH = 30
    PLAIN_EVERY = 5.0  # seconds between lines when not a terminal

    def __init__(self, total: int, out: IO[str]) -> None:
        self._total = total
        self._out = out
        self._tty = out.isatty()
        self._done = 0
        self._started = time.monotonic()
        self._shown = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def step(self) -> None:
        self._done += 1
        now = time.monotonic()
        interval = 0.1 if self._tty else self.PLAIN_EVERY
        if now - self._shown >= interval or self._done == self._total:
            self._shown = now
            self._show()

    def _show(self) -> None:
        total = max(self._total, 1)
        rate = self._done / max(self.elapsed(), 1e-9)
        if self._tty:
            filled = self.WIDTH * self._done // total
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            self._out.write(
                f"\r[{bar}] {self._done}/{self._total} {100 * self._done // total:3d}% "
                f"{rate:6.1f}/s"
            )
        else:
            self._out.write(f"warm: {self._done}/{self._total} domains done ({rate:.1f}/s)\n")
        self._out.flush()

    def finish(self) -> None:
        if self._tty:
            self._out.write("\n")
            self._out.flush()


def _print_summary(outcomes: dict[str, int], total: int, elapsed: float) -> None:
    print(f"{'OUTCOME':<32} {'DOMAINS':>8}")
    for name, number in sorted(outcomes.items(), key=lambda item: (-item[1], item[0])):
        print(f"{name:<32} {number:>8}")
    print(f"{'total':<32} {total:>8}   ({elapsed:.1f} s)")


def console_main() -> None:
    sys.exit(main())
