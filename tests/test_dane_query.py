"""``mta-sts-query`` shows the DANE evaluation: each MX host, AD or not, TLSA usable or not,
the decision and why, in the readable and the JSON report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtasts_fast.query import main
from tests.dane_world import PROBE_NAME, DaneWorld, Extra
from tests.servers.dnssec import DaneCase


def _run(
    dane_world: DaneWorld,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    nameserver: str | None = None,
) -> tuple[int, str]:
    code = main(
        [
            "--nameserver",
            nameserver or dane_world.validating,
            "--ca-file",
            dane_world.world.ca_file,
            "--dnssec-probe-name",
            PROBE_NAME,
            *args,
        ]
    )
    return code, capsys.readouterr().out


def test_readable_report(dane_world: DaneWorld, capsys: pytest.CaptureFixture[str]) -> None:
    domain = dane_world.domain(DaneCase.TLSA_3_1_1)
    code, out = _run(dane_world, capsys, domain)
    assert code == 0  # the MTA-STS policy's status
    lines = out.splitlines()
    assert f"DANE:        resolver {dane_world.validating} validates DNSSEC (probe dane.test)" in (
        lines
    )
    assert f"MX:          MX {domain}: 2 records, secure" in lines
    assert f"    host mx1.{domain}: dane: TLSA _25._tcp.mx1.{domain}: 1 of 1 usable" in lines
    assert f"        A mx1.{domain}: 1 record, secure: 127.0.1.1" in lines
    assert f"        AAAA mx1.{domain}: no such record (NODATA), secure" in lines
    assert f"        TLSA _25._tcp.mx1.{domain}: 1 record, secure" in lines
    assert "        TLSA records: 3 1 1 usable" in lines
    assert any(
        line.startswith("decision:    dane-only: all 2 MX hosts have usable TLSA records, kept ")
        for line in lines
    )
    sts = dane_world.sts_reply(DaneCase.TLSA_3_1_1).decode()
    assert f"MTA-STS reply: {sts} (DANE comes first)" in lines
    assert lines[-1] == "Postfix reply: OK dane-only"


def test_json_report(dane_world: DaneWorld, capsys: pytest.CaptureFixture[str]) -> None:
    domain = dane_world.domain(DaneCase.MIXED)
    code, out = _run(dane_world, capsys, "--json", domain)
    assert code == 0
    report = json.loads(out)
    assert report["reply"] == "OK dane"
    assert report["mta_sts_reply"] == dane_world.sts_reply(DaneCase.MIXED).decode()
    assert report["dane_mode"] == "precedence"
    dane = report["dane"]
    assert (dane["validating"], dane["decision"]) == (True, "dane")
    assert dane["reason"].startswith("1 of 2 MX hosts has TLSA records (mx2.")
    assert dane["mx"]["secure"] is True
    assert sorted(dane["mx"]["records"]) == [f"10 mx1.{domain}.", f"20 mx2.{domain}."]
    mx1, mx2 = dane["hosts"]
    assert (mx1["status"], mx1["usable_tlsa"], mx1["tlsa"]) == ("dane", 1, ["3 1 1 usable"])
    assert [(x["type"], x["status"], x["secure"]) for x in mx1["lookups"]] == [
        ("A", "data", True),
        ("AAAA", "nodata", True),
        ("TLSA", "data", True),
    ]
    assert mx2["status"] == "no-tlsa"
    assert mx2["lookups"][-1]["status"] == "nxdomain"


def test_unusable_and_bogus_records_are_named(
    dane_world: DaneWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = _run(dane_world, capsys, "--json", dane_world.domain(DaneCase.PKIX_ONLY))
    dane = json.loads(out)["dane"]
    assert sorted(dane["hosts"][0]["tlsa"]) == ["0 0 1 unusable", "1 1 1 unusable"]
    assert dane["hosts"][0]["status"] == "tls-required"
    _, out = _run(dane_world, capsys, "--json", dane_world.domain(DaneCase.BOGUS_TLSA))
    report = json.loads(out)
    assert report["dane"]["decision"] == "temp"
    bogus = report["dane"]["hosts"][0]
    assert bogus["status"] is None
    assert bogus["lookups"][-1]["status"] == "servfail"
    assert "DNSSEC Bogus" in bogus["lookups"][-1]["detail"]
    assert report["reply"].startswith("TEMP DANE: TLSA _25._tcp.mx1.bogus-tlsa-hosts")


def test_mode_all_and_off(dane_world: DaneWorld, capsys: pytest.CaptureFixture[str]) -> None:
    # A bogus zone: no MTA-STS policy can be discovered (exit 2).
    domain = dane_world.domain(DaneCase.CORRUPT_SIG)
    code, out = _run(dane_world, capsys, "--json", domain)
    report = json.loads(out)
    assert (code, report["reply"], report["dane"]["decision"]) == (2, "NOTFOUND ", "temp")
    _, out = _run(dane_world, capsys, "--json", "--dane", "all", domain)
    assert json.loads(out)["reply"].startswith("TEMP DANE: MX corrupt-sig.dane.test: SERVFAIL")
    code, out = _run(dane_world, capsys, "--dane", "off", dane_world.domain(Extra.ALIAS_MX))
    assert code == 0
    assert "DANE:" not in out
    assert out.splitlines()[-1] == (
        f"Postfix reply: {dane_world.sts_reply(Extra.ALIAS_MX).decode()}"
    )


def test_non_validating_resolver(dane_world: DaneWorld, capsys: pytest.CaptureFixture[str]) -> None:
    domain = dane_world.domain(DaneCase.TLSA_3_1_1)
    code, out = _run(dane_world, capsys, domain, nameserver=dane_world.non_validating)
    assert code == 0
    assert (
        f"DANE:        resolver {dane_world.non_validating} does NOT validate DNSSEC "
        "(probe dane.test)" in out
    )
    assert "decision:    none: resolver" in out
    assert "DANE detection inactive, MTA-STS answers only" in out
    assert out.splitlines()[-1] == (
        f"Postfix reply: {dane_world.sts_reply(DaneCase.TLSA_3_1_1).decode()}"
    )


def test_settings_come_from_the_config(
    dane_world: DaneWorld, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "mta-sts-daemon.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "nameservers": [dane_world.validating],
                "ca_file": dane_world.world.ca_file,
                "dnssec_probe_name": PROBE_NAME,
                "zones": {"legacy": {"dane": "off"}, "everything": {"dane": "all"}},
            }
        )
    )
    domain = dane_world.domain(DaneCase.IMPLICIT_MX)
    replies: dict[str, Any] = {}
    for zone in ("legacy", "everything"):
        code = main(["-c", str(config), "--zone", zone, "--json", domain])
        assert code == 0
        report = json.loads(capsys.readouterr().out)
        replies[zone] = (report["dane_mode"], report["reply"])
    assert replies == {
        "legacy": ("off", dane_world.sts_reply(DaneCase.IMPLICIT_MX).decode()),
        "everything": ("all", "OK dane-only"),
    }
