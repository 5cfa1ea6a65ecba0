"""``mta-sts-daemon`` with DANE, as a real process: what it says at start, what it logs.

The workers build the DANE resolver and probe themselves after the fork; the
first worker reminds the operator of ``smtp_dns_support_level = dnssec``,
warns about ``dane: off`` and resolvers off this host, and is the one that
warns when the resolver does not validate; every decision that makes a domain
``dane-only``, ``dane`` or ``TEMP`` is logged with its reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dane_world import PROBE_NAME, DaneWorld, Silent
from tests.servers.daemon import DaemonProcess
from tests.servers.dnssec import DaneCase

REMINDER = (
    "DANE answers (dane-only, dane) need smtp_dns_support_level = dnssec in Postfix's main.cf"
)
NOT_VALIDATING = "does not validate DNSSEC: DANE detection inactive, MTA-STS answers only"


@pytest.fixture
def start(tmp_path: Path, dane_world: DaneWorld) -> Iterator[Any]:
    running: list[DaemonProcess] = []

    def run(**settings: Any) -> DaemonProcess:
        data: dict[str, Any] = {
            "nameservers": [dane_world.validating],
            "dnssec_probe_name": PROBE_NAME,
        }
        data.update(settings)
        directory = tmp_path / f"daemon{len(running)}"  # its own config and log
        directory.mkdir()
        daemon = DaemonProcess(directory, dane_world.world, **data)
        running.append(daemon)
        daemon.start()
        return daemon

    yield run
    for daemon in running:
        daemon.stop()


def _wait_for(daemon: DaemonProcess, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in daemon.log_text():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{daemon.log_text()[-3000:]}"
        time.sleep(0.05)
    return daemon.log_text()


def _lines(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


def test_validating_resolver(start: Any, dane_world: DaneWorld) -> None:
    daemon = start()
    log = _wait_for(daemon, "validates DNSSEC")
    assert len(_lines(log, REMINDER)) == 1
    assert not _lines(log, NOT_VALIDATING)
    assert not _lines(log, "is not on this host")
    domain = dane_world.domain(DaneCase.TLSA_3_1_1)
    assert daemon.ask(f"postfix {domain}".encode()) == b"OK dane-only"
    # Why the domain became dane-only.
    log = _wait_for(daemon, f"DANE: {domain} is dane-only")
    assert f"DANE: {domain} is dane-only: all 2 MX hosts have usable TLSA records" in log
    mixed = dane_world.domain(DaneCase.MIXED)
    assert daemon.ask(f"postfix {mixed}".encode()) == b"OK dane"
    _wait_for(daemon, f"DANE: {mixed} is dane: 1 of 2 MX hosts has TLSA records")
    bogus = dane_world.domain(DaneCase.BOGUS_TLSA)
    assert daemon.ask(f"postfix {bogus}".encode()).startswith(b"TEMP DANE: ")
    log = _wait_for(daemon, f"DANE: {bogus} is TEMP")
    (line,) = _lines(log, f"DANE: {bogus} is TEMP")
    assert "WARNING" in line
    assert "TLSA _25._tcp.mx1.bogus-tlsa-hosts.dane.test: SERVFAIL" in line


def test_non_validating_resolver_is_said_once(start: Any, dane_world: DaneWorld) -> None:
    daemon = start(nameservers=[dane_world.non_validating], workers=2)
    log = _wait_for(daemon, NOT_VALIDATING)
    time.sleep(0.5)  # the second worker's probe has run too
    log = daemon.log_text()
    warnings = [line for line in _lines(log, NOT_VALIDATING) if "WARNING" in line]
    assert len(warnings) == 1, log
    assert f"resolver {dane_world.non_validating} {NOT_VALIDATING}" in warnings[0]
    domain = dane_world.domain(DaneCase.TLSA_3_1_1)
    for _ in range(4):  # whichever worker answers
        assert daemon.ask(f"postfix {domain}".encode()) == dane_world.sts_reply(DaneCase.TLSA_3_1_1)


def test_dane_off_warns_and_builds_no_resolver(start: Any, dane_world: DaneWorld) -> None:
    daemon = start(default_zone={"dane": "off"}, zones={"postfix": {"dane": "off"}})
    log = _wait_for(daemon, "dane: off in")
    (line,) = _lines(log, "dane: off in")
    assert "WARNING" in line
    assert "default_zone, zone postfix" in line
    assert "which RFC 8461 §2 forbids" in line
    domain = dane_world.domain(DaneCase.TLSA_3_1_1)
    assert daemon.ask(f"postfix {domain}".encode()) == dane_world.sts_reply(DaneCase.TLSA_3_1_1)
    log = daemon.log_text()
    assert not _lines(log, REMINDER)
    assert not _lines(log, "validate")


def test_resolver_off_this_host_is_warned_about(start: Any, dane_world: DaneWorld) -> None:
    # RFC 7672 §2.1: the AD bit of a resolver across a network is only as
    # good as that network. (192.0.2.1, TEST-NET-1, is never asked here: the
    # first resolver answers.)
    daemon = start(nameservers=[dane_world.validating, "192.0.2.1"])
    log = _wait_for(daemon, "is not on this host")
    (line,) = _lines(log, "is not on this host")
    assert "WARNING" in line
    assert "resolver 192.0.2.1:53 is not on this host" in line
    assert dane_world.validating not in line


def test_states_are_shared_through_the_cache_file(
    start: Any, dane_world: DaneWorld, silent: Silent, tmp_path: Path
) -> None:
    # One daemon evaluates and stores; another process on the same LMDB file
    # (a second worker, a restart) answers from it at once, even with a
    # resolver that answers nothing (an evaluation would end in TEMP).
    cache = {"type": "lmdb", "options": {"path": str(tmp_path / "shared.lmdb")}}
    domain = dane_world.domain(DaneCase.MIXED)
    first = start(cache=cache)
    assert first.ask(f"postfix {domain}".encode()) == b"OK dane"
    first.stop()
    second = start(cache=cache, nameservers=[silent.address])
    started = time.monotonic()
    assert second.ask(f"postfix {domain}".encode()) == b"OK dane"
    assert time.monotonic() - started < 1
    assert f"DANE: {domain} is" not in second.log_text()
