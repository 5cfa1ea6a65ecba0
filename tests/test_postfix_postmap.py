"""Postfix's own socketmap client against the daemon: ``postmap -q``.

Our netstring client in tests/socketmap.py could share a misunderstanding with
the server; Postfix's dict_sockmap cannot. ``postmap -q KEY TABLE`` prints the
value and exits 0 when the table answers ``OK value``, prints nothing and exits 1
on a clean ``NOTFOUND``, and exits 1 with a "fatal: ... query error" on stderr for
anything it cannot parse (or TEMP/PERM) — so each case checks stdout, the exit
status *and* an empty stderr.

The daemon runs in this process (tests/socketmap.py ``start_daemon``) against
the test world's DNS and HTTPS policy hosts; postmap runs as a subprocess
with a throwaway ``-c`` config directory (Debian's package is installed
without a main.cf).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers.postfix import postfix_program, postmap_config
from tests.socketmap import Running, start_daemon

# Zones: the old daemon's usual map name (not configured, so default_zone), a
# TLSRPT zone for Postfix >= 3.10 and a strict_testing zone.
_ZONES = {"tlsrpt": {"tlsrpt": True}, "strict": {"strict_testing": True}}

GOOD = "secure match=mail.loc servername=hostname"
# RFC 8460 §4.4 policy details as Postfix >= 3.10 takes them; good.loc's policy
# is world.GOOD_POLICY, one policy_string per line as fetched.
GOOD_TLSRPT = (
    "secure match=mail.loc servername=hostname policy_type=sts policy_domain=good.loc"
    " mx_host_pattern=mail.loc"
    " { policy_string = version: STSv1 } { policy_string = mode: enforce }"
    " { policy_string = mx: mail.loc } { policy_string = max_age: 86400 }"
)
# The attributes Postfix 3.7 (Debian 12) refuses in a TLS policy: an unknown
# attribute makes the whole policy invalid and every message defer with 4.7.5.
_TLSRPT_ATTRIBUTES = ("policy_type=", "policy_domain=", "mx_host_pattern=", "policy_string")


@dataclass(frozen=True)
class Postmap:
    """How to run postmap against one daemon."""

    program: str
    config_dir: Path
    endpoint: str  # "socketmap:inet:127.0.0.1:PORT" or "socketmap:unix:/path"

    async def query(
        self, key: str, zone: str = "postfix", *, stdin: str | None = None
    ) -> tuple[int, str, str]:
        """``postmap -c DIR -q KEY ENDPOINT:ZONE`` → (exit status, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            self.program,
            "-c",
            str(self.config_dir),
            "-q",
            key,
            f"{self.endpoint}:{zone}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        data = None if stdin is None else stdin.encode()
        out, err = await asyncio.wait_for(proc.communicate(data), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture(params=["inet", "unix"])
async def postmap(
    request: pytest.FixtureRequest, world: Any, tmp_path: Path
) -> AsyncIterator[Postmap]:
    program = postfix_program("postmap")
    config_dir = postmap_config(tmp_path / "postfix")
    # A short directory of its own: tmp_path with the test id in it can pass
    # the 108-byte limit of a unix socket path.
    sock_dir = Path(tempfile.mkdtemp(prefix="mtasts-postmap-"))
    daemon: Running | None = None
    try:
        if request.param == "unix":
            daemon = await start_daemon(world, sock_dir, unix=True, zones=_ZONES)
            endpoint = f"socketmap:unix:{daemon.config.path}"
        else:
            daemon = await start_daemon(world, zones=_ZONES)
            endpoint = f"socketmap:inet:{daemon.config.host}:{daemon.config.port}"
        yield Postmap(program, config_dir, endpoint)
    finally:
        if daemon is not None:
            await daemon.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.parametrize(
    ("key", "zone", "expected"),
    [
        pytest.param("good.loc", "postfix", GOOD, id="enforce"),
        pytest.param("good.loc", "tlsrpt", GOOD_TLSRPT, id="enforce-tlsrpt-zone"),
        pytest.param("testing.loc", "strict", GOOD, id="testing-strict-zone"),
        pytest.param("[good.loc]:25", "postfix", GOOD, id="bracketed-next-hop"),
        pytest.param(
            "xn--bcher-kva.loc",
            "postfix",
            GOOD.replace("mail.loc", "mail.xn--bcher-kva.loc"),
            id="a-label",
        ),
    ],
)
async def test_found(postmap: Postmap, key: str, zone: str, expected: str) -> None:
    code, out, err = await postmap.query(key, zone)
    assert (code, out, err) == (0, expected + "\n", "")


@pytest.mark.parametrize(
    ("key", "zone"),
    [
        # RFC 8461 §5: testing mode must not change delivery → Postfix's own level.
        pytest.param("testing.loc", "postfix", id="testing"),
        pytest.param("testing.loc", "tlsrpt", id="testing-tlsrpt-zone"),
        pytest.param("valid-none.loc", "postfix", id="none"),
        pytest.param("no-record.loc", "postfix", id="no-policy-nxdomain"),
        pytest.param("no-data.loc", "postfix", id="no-policy-nodata"),
        # RFC 8461 §3.3: TXT present but no valid policy → as if no policy.
        pytest.param("bad-policy1.loc", "postfix", id="broken-policy-garbage"),
        pytest.param("bad-policy2.loc", "tlsrpt", id="broken-policy-no-mx"),
        pytest.param("bad-cert1.loc", "postfix", id="policy-host-untrusted-cert"),
        pytest.param("bad-record1.loc", "postfix", id="broken-txt-record"),
        # Postfix's parent-domain probe; RFC 8461 §3.4 forbids inheriting.
        pytest.param(".good.loc", "postfix", id="parent-domain-probe"),
        pytest.param("[192.0.2.1]", "postfix", id="ip-literal"),
    ],
)
async def test_not_found(postmap: Postmap, key: str, zone: str) -> None:
    # Exit 1 with empty stderr is a clean NOTFOUND; a reply postmap could not
    # parse would also exit 1, but with a "fatal: ... query error".
    assert await postmap.query(key, zone) == (1, "", "")


async def test_tlsrpt_attributes_only_in_the_tlsrpt_zone(postmap: Postmap, world: Any) -> None:
    domain = world.fresh_domain("pm")
    world.add_domain(
        domain, policy=world.policy_text("enforce", ["MX1." + domain, "*.mx." + domain])
    )
    plain = await postmap.query(domain, "postfix")
    unknown_zone = await postmap.query(domain, "no-such-zone")
    tlsrpt = await postmap.query(domain, "tlsrpt")
    expected = f"secure match=mx1.{domain}:.mx.{domain} servername=hostname"
    # Postfix 3.7 rejects these attributes, so only the zone that asks for them
    # (and a Postfix >= 3.10 behind it) may ever see them.
    assert plain == (0, expected + "\n", "")
    assert unknown_zone == plain
    for attribute in _TLSRPT_ATTRIBUTES:
        assert attribute not in plain[1]
    code, out, err = tlsrpt
    assert (code, err) == (0, "")
    assert out == (
        f"{expected} policy_type=sts policy_domain={domain}"
        f" mx_host_pattern=MX1.{domain} mx_host_pattern=*.mx.{domain}"
        " { policy_string = version: STSv1 } { policy_string = mode: enforce }"
        f" {{ policy_string = mx: MX1.{domain} }} {{ policy_string = mx: *.mx.{domain} }}"
        " { policy_string = max_age: 86400 }\n"
    )


async def test_many_keys_over_one_connection(postmap: Postmap) -> None:
    # `postmap -q -` reads keys from stdin and asks them one after the other
    # over the same socketmap connection, printing "key<TAB>value" per hit.
    keys = ["good.loc", "no-record.loc", "testing.loc", "GOOD.LOC", "bad-policy1.loc", "good.loc"]
    code, out, err = await postmap.query("-", "postfix", stdin="\n".join(keys) + "\n")
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"good.loc\t{GOOD}", f"GOOD.LOC\t{GOOD}", f"good.loc\t{GOOD}"]
