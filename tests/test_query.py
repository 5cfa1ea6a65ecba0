"""``mta-sts-query``: readable and JSON reports, exit status 0/1/2."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mtasts_fast.query import main


def _run(world: Any, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--nameserver", world.nameserver, "--ca-file", world.ca_file, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_valid_policy_report(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(world, capsys, "good.loc")
    assert code == 0
    assert 'TXT record:  _mta-sts.good.loc "v=STSv1;id=20180907T090909;"' in out
    assert "policy id:   20180907T090909" in out
    assert "    mode: enforce" in out
    assert "mode enforce, max_age 86400 s, mx mail.loc" in out
    assert "Postfix reply: OK secure match=mail.loc servername=hostname" in out


def test_json_report(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(world, capsys, "--json", "good.loc")
    assert code == 0
    report = json.loads(out)
    assert report["outcome"] == "policy"
    assert report["policy"] == {
        "mode": "enforce",
        "max_age": 86400,
        "mx": ["mail.loc"],
        "lines": ["version: STSv1", "mode: enforce", "mx: mail.loc", "max_age: 86400"],
    }
    assert report["reply"] == "OK secure match=mail.loc servername=hostname"


def test_known_id_unchanged(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    before = world.https_requests("good.loc")
    code, out, _ = _run(world, capsys, "good.loc", "20180907T090909")
    assert code == 0
    assert "policy not fetched again" in out
    assert world.https_requests("good.loc") == before


def test_no_policy_exit_1(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(world, capsys, "no-record.loc")
    assert code == 1
    assert "no MTA-STS policy" in out


@pytest.mark.parametrize(
    ("domain", "result_type"),
    [
        pytest.param("bad-policy2.loc", "sts-policy-invalid", id="enforce-without-mx"),
        pytest.param("bad-cert2.loc", "sts-webpki-invalid", id="certificate-name-mismatch"),
        pytest.param("bad-policy4.loc", "sts-policy-fetch-error", id="http-404"),
    ],
)
def test_failed_fetch_exit_2_names_the_check(
    world: Any, capsys: pytest.CaptureFixture[str], domain: str, result_type: str
) -> None:
    code, out, _ = _run(world, capsys, "--json", domain)
    assert code == 2
    report = json.loads(out)
    assert report["outcome"] == "failed"
    assert report["result_type"] == result_type
    assert report["reason"]


@pytest.mark.parametrize("domain", [".good.loc", "[192.0.2.1]", "bad domain", ""])
def test_unusable_domain_exit_2(
    world: Any, capsys: pytest.CaptureFixture[str], domain: str
) -> None:
    code, _, err = _run(world, capsys, domain)
    assert code == 2
    assert "not a domain that can have a policy" in err
