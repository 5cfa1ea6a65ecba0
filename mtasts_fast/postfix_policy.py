"""Postfix's TLS policy grammar, to check a literal policy before it is passed on.

A policy override may be a literal ``smtp_tls_policy_maps`` result
(``encrypt``, ``dane-only``, ``secure match=...``). Postfix reads it with
``tls_policy_lookup_one`` in ``src/smtp/smtp_tls_policy.c`` (postconf(5)
"smtp_tls_policy_maps"; research/rfc-and-postfix.md §1.7), and any mistake
there makes it defer every message to the destination ("client TLS
configuration problem", 4.7.5). So the same rules are checked here, when
the overrides file is read:

- tokens are separated by white space or commas; ``{ name = value }``
  quotes a value with spaces in it;
- the first token is a level: ``none``, ``may``, ``encrypt``, ``dane``,
  ``dane-only``, ``fingerprint``, ``verify`` or ``secure`` (any case);
- then ``name=value`` attributes, names in any case: ``ciphers`` (not
  empty), ``protocols``, ``exclude``, ``servername`` (a host name) once
  each; ``match`` (not empty; only at ``fingerprint``, ``verify`` and
  ``secure``) and ``tafile`` (not empty; only at ``verify`` and ``secure``)
  as often as wanted; ``connection_reuse`` and ``enable_rpk`` ``yes`` or
  ``no``; the TLSRPT attributes of Postfix 3.10 (``policy_type`` ``sts`` or
  ``no-policy-found``, ``policy_domain`` a host name, ``policy_ttl`` digits,
  ``policy_failure`` one of RFC 8460's four, each once; ``policy_string``
  and ``mx_host_pattern`` as often as wanted), which need ``policy_type``;
  any other name is an error;
- Postfix ignores attributes at level ``none`` with a warning; here they
  are refused, since they can only be a mistake.

Which Postfix version knows which attribute (``servername`` 3.4,
``enable_rpk`` 3.9, TLSRPT 3.10) is the operator's business, as in a
Postfix table. The text is passed on as written.
"""

from __future__ import annotations

import re

from mtasts_fast.matcher import is_valid_hostname

__all__ = ["LEVELS", "check_postfix_policy"]

LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure")
_MATCH_LEVELS = ("fingerprint", "verify", "secure")
_PKIX_LEVELS = ("verify", "secure")  # TLS_MUST_PKIX: CA-based trust
_ONCE = (
    "ciphers",
    "protocols",
    "servername",
    "exclude",
    "policy_ttl",
    "policy_type",
    "policy_domain",
    "policy_failure",
)
_MANY = ("match", "tafile", "connection_reuse", "enable_rpk", "policy_string", "mx_host_pattern")
_TLSRPT = ("policy_ttl", "policy_domain", "policy_string", "mx_host_pattern", "policy_failure")
_POLICY_TYPES = ("sts", "no-policy-found")
_POLICY_FAILURES = (
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
    "validation-failure",
)
_SEPARATORS = " \t,"
# A line break would end the Postfix table line, a NUL the C string.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _Problem(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    """Split like Postfix's mystrtokq(): separators outside braces, braces nest."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in _SEPARATORS:
            i += 1
            continue
        start, depth = i, 0
        while i < n and (depth or text[i] not in _SEPARATORS):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth < 0:
                    raise _Problem(f"unbalanced '}}' in {text[start : i + 1]!r}")
            i += 1
        if depth:
            raise _Problem(f"unbalanced '{{' in {text[start:]!r}")
        tokens.append(text[start:i])
    return tokens


def _name_value(token: str) -> tuple[str, str]:
    if token.startswith("{"):
        if not token.endswith("}"):
            raise _Problem(f"malformed attribute {token!r}: text after the closing brace")
        inner = " ".join(token[1:-1].split())  # Postfix normalises white space
        name, eq, value = inner.partition("=")
        name, value = name.strip(), value.strip()
    else:
        name, eq, value = token.partition("=")
    if not eq:
        raise _Problem(f"malformed attribute {token!r}: expected name=value")
    if not name:
        raise _Problem(f"malformed attribute {token!r}: missing attribute name")
    return name.lower(), value


def check_postfix_policy(text: str) -> str:
    """Return ``text`` if Postfix accepts it as a TLS policy; else raise ValueError.

    The message names the rule broken, for ``file: entry: problem``.
    """
    if _CONTROL.search(text):
        raise ValueError("a Postfix policy must be one line without control characters")
    try:
        tokens = _tokens(text)
        if not tokens:
            raise _Problem("empty Postfix policy")
        level = tokens[0].lower()
        if level not in LEVELS:
            raise _Problem(
                f"invalid security level {tokens[0]!r} (Postfix knows {', '.join(LEVELS)})"
            )
        attributes = [_name_value(token) for token in tokens[1:]]
        if level == "none" and attributes:
            raise _Problem("level none takes no attributes (Postfix would ignore them)")
        _check_attributes(level, attributes)
    except _Problem as exc:
        raise ValueError(str(exc)) from None
    return text


def _check_attributes(level: str, attributes: list[tuple[str, str]]) -> None:
    seen: set[str] = set()
    for name, value in attributes:
        if name not in _ONCE and name not in _MANY:
            raise _Problem(f"invalid attribute name {name!r}")
        if name in _ONCE:
            if name in seen:
                raise _Problem(f"attribute {name!r} is given more than once")
            seen.add(name)
        _check_value(level, name, value)
    if "policy_type" not in seen:
        for name, _ in attributes:
            if name in _TLSRPT:
                raise _Problem(f"attribute {name!r} needs policy_type (Postfix >= 3.10)")


def _check_value(level: str, name: str, value: str) -> None:
    if name in ("ciphers", "match", "tafile") and not value:
        raise _Problem(f"attribute {name!r} has an empty value")
    if name == "match" and level not in _MATCH_LEVELS:
        raise _Problem(f"attribute 'match' is invalid at level {level!r}")
    if name == "tafile" and level not in _PKIX_LEVELS:
        raise _Problem(f"attribute 'tafile' is invalid at level {level!r}")
    if name in ("servername", "policy_domain") and not is_valid_hostname(value):
        raise _Problem(f"{name}={value!r} is not a valid host name")
    if name in ("connection_reuse", "enable_rpk") and value.lower() not in ("yes", "no"):
        raise _Problem(f"attribute {name!r} must be yes or no, got {value!r}")
    if name == "policy_ttl" and not (value.isascii() and value.isdigit()):
        raise _Problem(f"policy_ttl={value!r} is not a number of seconds")
    if name == "policy_type" and value.lower() not in _POLICY_TYPES:
        raise _Problem(f"policy_type={value!r} is not one of {', '.join(_POLICY_TYPES)}")
    if name == "policy_failure" and value.lower() not in _POLICY_FAILURES:
        raise _Problem(f"policy_failure={value!r} is not one of {', '.join(_POLICY_FAILURES)}")
