"""Reply rendering for each mode and zone setting (DESIGN.md §4 "Reply rendering")."""

from __future__ import annotations

import pytest

from mtasts_fast.config import ZoneConfig
from mtasts_fast.policy import Policy
from mtasts_fast.reply import NOTFOUND, REPLY_LIMIT, render_policy

ENFORCE = Policy(
    mode="enforce",
    max_age=86400,
    mx=("mx1.enforce.test", "*.mail.enforce.test", "MX2.Enforce.Test", "mx1.enforce.test"),
    lines=(
        "version: STSv1",
        "mode: enforce",
        "mx: mx1.enforce.test",
        "mx: *.mail.enforce.test",
        "mx: MX2.Enforce.Test",
        "mx: mx1.enforce.test",
        "max_age: 86400",
    ),
)
TESTING = Policy("testing", 86400, ("mail.loc",), ("version: STSv1", "mode: testing"))
NONE = Policy("none", 86400, (), ("version: STSv1", "mode: none", "max_age: 86400"))

MATCH = "match=mx1.enforce.test:.mail.enforce.test:mx2.enforce.test"


@pytest.mark.parametrize(
    ("policy", "zone", "expected"),
    [
        pytest.param(
            ENFORCE,
            ZoneConfig(),
            f"OK secure {MATCH} servername=hostname",
            id="enforce-lowercased-dedup-policy-order-wildcard-as-dot",
        ),
        pytest.param(
            ENFORCE, ZoneConfig(require_sni=False), f"OK secure {MATCH}", id="enforce-no-sni"
        ),
        pytest.param(TESTING, ZoneConfig(), "NOTFOUND ", id="testing-is-notfound"),
        pytest.param(
            TESTING,
            ZoneConfig(strict_testing=True),
            "OK secure match=mail.loc servername=hostname",
            id="testing-strict-is-enforced",
        ),
        pytest.param(
            TESTING, ZoneConfig(tlsrpt=True), "NOTFOUND ", id="testing-with-tlsrpt-is-notfound"
        ),
        pytest.param(NONE, ZoneConfig(), "NOTFOUND ", id="none-is-notfound"),
        pytest.param(
            NONE, ZoneConfig(strict_testing=True), "NOTFOUND ", id="none-strict-is-notfound"
        ),
        pytest.param(
            ENFORCE,
            ZoneConfig(tlsrpt=True),
            f"OK secure {MATCH} servername=hostname policy_type=sts "
            "policy_domain=enforce.test mx_host_pattern=mx1.enforce.test "
            "mx_host_pattern=*.mail.enforce.test mx_host_pattern=MX2.Enforce.Test "
            "mx_host_pattern=mx1.enforce.test "
            "{ policy_string = version: STSv1 } { policy_string = mode: enforce } "
            "{ policy_string = mx: mx1.enforce.test } { policy_string = mx: *.mail.enforce.test } "
            "{ policy_string = mx: MX2.Enforce.Test } { policy_string = mx: mx1.enforce.test } "
            "{ policy_string = max_age: 86400 }",
            id="enforce-tlsrpt-attributes-in-order",
        ),
    ],
)
def test_render(policy: Policy, zone: ZoneConfig, expected: str) -> None:
    assert render_policy("enforce.test", policy, zone) == expected.encode()


def test_tlsrpt_leaves_out_lines_with_braces() -> None:
    policy = Policy(
        "enforce",
        600,
        ("mx.example",),
        ("version: STSv1", "ext: a{b", "note: c}d", "mode: enforce"),
    )
    reply = render_policy("example", policy, ZoneConfig(tlsrpt=True, require_sni=False)).decode()
    assert reply == (
        "OK secure match=mx.example policy_type=sts policy_domain=example "
        "mx_host_pattern=mx.example { policy_string = version: STSv1 } "
        "{ policy_string = mode: enforce }"
    )


def test_enforce_without_mx_never_sends_empty_match() -> None:
    assert render_policy("x.test", Policy("enforce", 60, (), ()), ZoneConfig()) == NOTFOUND


TESTING_ATTRIBUTES = (
    "policy_type=sts policy_domain=enforce.test mx_host_pattern=mail.loc "
    "{ policy_string = version: STSv1 } { policy_string = mode: testing }"
)


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        pytest.param(
            ZoneConfig(tlsrpt=True, tlsrpt_testing_level="may"),
            f"OK may servername=hostname {TESTING_ATTRIBUTES}",
            id="may",
        ),
        pytest.param(
            ZoneConfig(tlsrpt=True, tlsrpt_testing_level="encrypt", require_sni=False),
            f"OK encrypt {TESTING_ATTRIBUTES}",
            id="encrypt-no-sni",
        ),
        pytest.param(
            ZoneConfig(tlsrpt=True, tlsrpt_testing_level="dane"),
            f"OK dane servername=hostname {TESTING_ATTRIBUTES}",
            id="dane",
        ),
        pytest.param(ZoneConfig(tlsrpt=True), "NOTFOUND ", id="default-notfound"),
        pytest.param(
            ZoneConfig(tlsrpt_testing_level="may"), "NOTFOUND ", id="level-without-tlsrpt-zone"
        ),
        pytest.param(
            ZoneConfig(tlsrpt=True, tlsrpt_testing_level="may", strict_testing=True),
            "OK secure match=mail.loc servername=hostname " + TESTING_ATTRIBUTES,
            id="strict-testing-wins",
        ),
    ],
)
def test_testing_policy_reported_at_the_zone_level(zone: ZoneConfig, expected: str) -> None:
    """A testing policy names the zone's level only to carry the TLSRPT attributes."""
    assert render_policy("enforce.test", TESTING, zone) == expected.encode()


def test_testing_level_none_for_mode_none() -> None:
    zone = ZoneConfig(tlsrpt=True, tlsrpt_testing_level="may")
    assert render_policy("enforce.test", NONE, zone) == NOTFOUND


BRACES_ONLY = ("ext: {a}", "other: }")


def test_no_policy_string_means_no_tlsrpt_attributes() -> None:
    """policy_type=sts without a policy_string crashes Postfix 3.10.0-3.10.5."""
    enforce = Policy("enforce", 60, ("mx.example",), BRACES_ONLY)
    testing = Policy("testing", 60, ("mx.example",), BRACES_ONLY)
    zone = ZoneConfig(tlsrpt=True, tlsrpt_testing_level="may")
    assert render_policy("example", enforce, zone) == (
        b"OK secure match=mx.example servername=hostname"
    )
    assert render_policy("example", testing, zone) == NOTFOUND


def test_oversized_tlsrpt_reply_keeps_every_pattern_and_the_strings_that_fit() -> None:
    mx = tuple(f"mx{i:05d}.example.test" for i in range(1500))
    lines = ("version: STSv1", "mode: enforce", *(f"mx: {m}" for m in mx), "max_age: 60")
    policy = Policy("enforce", 60, mx, lines)
    reply = render_policy("example.test", policy, ZoneConfig(tlsrpt=True))
    assert len(reply) <= REPLY_LIMIT
    assert reply.startswith(b"OK secure match=mx00000.example.test:")
    assert reply.count(b"mx_host_pattern=") == 1500
    strings = reply.split(b" { policy_string = ")[1:]
    # In policy order from the first line, as many as fit, the last ones left out.
    assert strings[:3] == [b"version: STSv1 }", b"mode: enforce }", b"mx: mx00000.example.test }"]
    assert 3 < len(strings) < len(lines)
    assert b"max_age: 60" not in reply


def test_patterns_too_many_for_the_reply_drop_the_report() -> None:
    mx = tuple(f"mx{i:05d}.{'a' * 30}.example.test" for i in range(1500))
    policy = Policy("enforce", 60, mx, ("version: STSv1", "mode: enforce"))
    reply = render_policy("example.test", policy, ZoneConfig(tlsrpt=True))
    assert reply.startswith(b"OK secure match=mx00000.")
    assert reply.endswith(b" servername=hostname")
    assert b"policy_type" not in reply
    testing = Policy("testing", 60, mx, ("version: STSv1", "mode: testing"))
    zone = ZoneConfig(tlsrpt=True, tlsrpt_testing_level="may")
    assert render_policy("example.test", testing, zone) == NOTFOUND


def test_reply_too_large_even_without_report_is_notfound() -> None:
    mx = tuple(f"mx{i:06d}.{'a' * 40}.example.test" for i in range(2000))
    policy = Policy("enforce", 60, mx, ())
    assert render_policy("example.test", policy, ZoneConfig()) == NOTFOUND
