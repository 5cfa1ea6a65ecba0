"""Postfix's TLS policy grammar (mtasts_fast/postfix_policy.py), as smtp_tls_policy.c reads it."""

from __future__ import annotations

import re

import pytest

from mtasts_fast.postfix_policy import LEVELS, check_postfix_policy


@pytest.mark.parametrize(
    "text",
    [
        *(pytest.param(level, id=f"level-{level}") for level in LEVELS),
        pytest.param("SECURE match=nexthop", id="level-any-case"),
        pytest.param("secure match=.bank.example:bank.example", id="secure-match"),
        pytest.param("encrypt protocols=>=TLSv1.2", id="protocols"),
        pytest.param("encrypt protocols=!SSLv2:!SSLv3 ciphers=high", id="protocols-ciphers"),
        pytest.param("encrypt,protocols=>=TLSv1.2", id="comma-separated"),
        pytest.param("encrypt exclude=aNULL:eNULL", id="exclude"),
        pytest.param("fingerprint match=b6:b4:72 match=51:e9", id="fingerprint-two-matches"),
        pytest.param("verify tafile=/etc/postfix/ta.pem match=hostname", id="verify-tafile"),
        pytest.param("secure servername=hostname connection_reuse=YES", id="servername-reuse"),
        pytest.param("may enable_rpk=no", id="enable-rpk"),
        pytest.param("dane-only ciphers=high", id="dane-only-ciphers"),
        pytest.param(
            "secure match=mail.example policy_type=sts policy_domain=example.com "
            "mx_host_pattern=mail.example { policy_string = version: STSv1 } "
            "{ policy_string = mode: enforce } policy_ttl=86400",
            id="tlsrpt-attributes",
        ),
        pytest.param("may policy_type=no-policy-found", id="no-policy-found"),
        pytest.param(
            "secure policy_type=sts policy_failure=sts-policy-invalid", id="policy-failure"
        ),
    ],
)
def test_postfix_accepts(text: str) -> None:
    assert check_postfix_policy(text) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", "empty Postfix policy", id="empty"),
        pytest.param("sekure", "invalid security level 'sekure'", id="unknown-level"),
        pytest.param("encrypt match=x", "'match' is invalid at level 'encrypt'", id="match-level"),
        pytest.param("secure match=", "'match' has an empty value", id="empty-match"),
        pytest.param("secure ciphers=", "'ciphers' has an empty value", id="empty-ciphers"),
        pytest.param("secure foo=bar", "invalid attribute name 'foo'", id="unknown-attribute"),
        pytest.param(
            "secure ciphers=high ciphers=medium", "'ciphers' is given more than once", id="twice"
        ),
        pytest.param(
            "secure servername=bad_name!", "servername='bad_name!' is not a valid", id="sni"
        ),
        pytest.param("encrypt tafile=/x", "'tafile' is invalid at level 'encrypt'", id="tafile"),
        pytest.param(
            "encrypt connection_reuse=maybe", "must be yes or no, got 'maybe'", id="reuse-value"
        ),
        pytest.param("none protocols=TLSv1.2", "level none takes no attributes", id="none-attrs"),
        pytest.param(
            "secure policy_domain=example.com", "needs policy_type", id="tlsrpt-without-type"
        ),
        pytest.param("secure policy_type=dane", "policy_type='dane' is not one of", id="type"),
        pytest.param(
            "secure policy_type=sts policy_failure=oops",
            "policy_failure='oops' is not one of",
            id="failure",
        ),
        pytest.param(
            "secure policy_type=sts policy_ttl=1d", "policy_ttl='1d' is not a number", id="ttl"
        ),
        pytest.param("secure { policy_string = x", "unbalanced '{'", id="open-brace"),
        pytest.param("secure x}", "unbalanced '}'", id="close-brace"),
        pytest.param("secure match", "expected name=value", id="no-equals"),
        pytest.param("secure =x", "missing attribute name", id="no-name"),
        pytest.param("encrypt\nsecure", "one line without control characters", id="newline"),
    ],
)
def test_postfix_refuses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_postfix_policy(text)
