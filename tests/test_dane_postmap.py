"""Every DANE case as Postfix's own socketmap client sees it: ``postmap -q``.

The daemon runs in this process against the signed tree's validating
resolver (as in test_dane_replies.py); postmap prints the value of an ``OK``
reply and exits 0, exits 1 with nothing on a ``NOTFOUND``, and exits 1 with a
"query error" for a ``TEMP`` (which is what makes smtp(8) defer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.dane_world import PROBE_NAME, DaneWorld, Extra
from tests.servers.dnssec import DaneCase
from tests.servers.postfix import postfix_program, postmap_config
from tests.socketmap import Running, start_daemon
from tests.test_dane_replies import CASES, TEMP_PREFIX, ZONES

pytestmark = pytest.mark.both_loops


@pytest.fixture
async def daemon(dane_world: DaneWorld, tmp_path: Path) -> AsyncIterator[Running]:
    running = await start_daemon(
        dane_world.world,
        tmp_path,
        dane=True,
        nameservers=[dane_world.validating],
        dnssec_probe_name=PROBE_NAME,
        zones=ZONES,
    )
    yield running
    await running.stop()


async def _postmap(conf: Path, daemon: Running, key: str, zone: str) -> tuple[int, str, str]:
    endpoint = f"socketmap:inet:{daemon.config.host}:{daemon.config.port}:{zone}"
    proc = await asyncio.create_subprocess_exec(
        postfix_program("postmap"),
        "-c",
        str(conf),
        "-q",
        key,
        endpoint,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("case", list(CASES), ids=[c.value for c in CASES])
async def test_postmap(
    daemon: Running, dane_world: DaneWorld, tmp_path: Path, case: DaneCase | Extra
) -> None:
    conf = postmap_config(tmp_path / "postfix")
    domain = dane_world.domain(case)
    for zone, reply in zip(ZONES, CASES[case], strict=True):
        code, out, err = await _postmap(conf, daemon, domain, zone)
        if isinstance(reply, str):  # STS: the domain's MTA-STS answer
            expected = dane_world.sts_reply(case).decode().removeprefix("OK ")
            assert (code, out.strip(), err) == (0, expected, ""), zone
        elif reply == TEMP_PREFIX:
            # Postfix reads TEMP as a lookup error: smtp(8) defers (4.7.5).
            assert code != 0, zone
            assert out == ""
            assert "query error" in err or "lookup error" in err, (zone, err)
        elif reply.startswith(b"OK "):
            assert (code, out.strip(), err) == (0, reply[3:].decode(), ""), zone
        else:
            assert (code, out, err) == (1, "", ""), zone
