"""MTA-STS TXT records and policy bodies (RFC 8461 §3.1, §3.2): pure parsing, no I/O.

Decisions where the RFC leaves room (each is tested in ``tests/test_policy.py``):

TXT record (§3.1)
- A record takes part if it begins with ``v=STSv1`` followed by the end of the
  record or by the ABNF field delimiter (``*WSP ";"``). ``v=STSv10; ...`` and
  ``V=STSv1; ...`` are someone else's records and are discarded, so they never
  count towards the "exactly one" rule; two STSv1 records mean no policy even if
  one of them is broken.
- Fields are ``name=value`` separated by ``;`` with optional spaces or tabs
  around it; a trailing ``;``, empty fields (``;;``) and trailing whitespace are
  tolerated, as the old daemon tolerated them.
- ``id`` is 1-32 ASCII letters or digits. A repeated ``id`` keeps the first one
  (the same rule as §3.2's "first occurrence wins" for policy keys).
- Unknown fields are ignored only if they follow the ABNF extension grammar
  (name ``[A-Za-z0-9][A-Za-z0-9_.-]{0,31}``, value of printable ASCII except
  ``=``, ``;`` and space). Any other field makes the record invalid: a record we
  cannot parse is not a record we can trust to mean what we guess.

Policy body (§3.2)
- Lines end with LF or CRLF; the last terminator is optional; trailing spaces and
  tabs are ignored; blank lines are skipped. A control character anywhere else
  (NUL, a lone CR, ...) makes the policy invalid.
- Every other line must be ``key:`` then optional spaces and the value, with the
  key per the ABNF extension-name grammar; keys are case-sensitive, as the ABNF's
  ``%s"..."`` strings are.
- ``max_age`` is 1-10 ASCII digits. The ABNF allows ten digits while the prose
  caps the value at 31557600 (one year): a larger value is clamped to the cap
  with a warning, as postfix-tlspol does. The old daemon rejects such a policy;
  clamping keeps the domain protected instead of downgrading it to "no policy".
  ``max_age: 0`` is allowed (the ABNF allows it): the policy expires at once.
- ``mx`` values must be host names or ``*.`` plus a host name, in A-label form.
  IP literals, U-labels and junk are dropped with a warning. ``enforce`` and
  ``testing`` need at least one usable ``mx``; ``none`` needs none.
- The first occurrence of a non-``mx`` key wins; later ones give a warning.
  Unknown keys are ignored.

Every message is one short line citing the rule, for logs and ``mta-sts-query``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mtasts_fast.errors import PolicyError
from mtasts_fast.matcher import is_valid_mx_pattern

__all__ = [
    "MAX_AGE_LIMIT",
    "MAX_POLICY_BYTES",
    "MODES",
    "STS_VERSION",
    "Policy",
    "is_text_plain",
    "parse_policy",
    "parse_txt_records",
]

STS_VERSION = "STSv1"
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: "maximum value of 31557600"
MAX_POLICY_BYTES = 65_536  # RFC 8461 §3.3 suggests 64 KiB
MODES = frozenset({"enforce", "testing", "none"})

_WSP = " \t"
# RFC 8461 §3.1: sts-version followed by sts-field-delim (*WSP ";") or the end.
_STS_RECORD = re.compile(r"v=STSv1[ \t]*(?:;|\Z)")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}\Z")  # sts-ext-name
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+\Z")  # sts-ext-value
_ID_VALUE = re.compile(r"[A-Za-z0-9]{1,32}\Z")  # sts-id
_MAX_AGE = re.compile(r"[0-9]{1,10}\Z")  # sts-policy-max-age-value
# A control character other than TAB (LF and CR are handled as line terminators).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SINGLE_KEYS = ("version", "mode", "max_age")
_SHOW = 40  # longest value quoted in a message


def _show(value: str) -> str:
    """Quote ``value`` for a one-line message, shortened if long."""
    if len(value) > _SHOW:
        value = value[:_SHOW] + "..."
    return repr(value)


# --- TXT record (RFC 8461 §3.1) ---------------------------------------------


def parse_txt_records(records: Sequence[str]) -> str:
    """Return the policy id from the TXT records of ``_mta-sts.<domain>``.

    ``records`` holds one string per record, its character-strings already
    joined without separator (§3.1). Raises :class:`PolicyError` when there is
    no usable policy record; per §3.1 the domain then has no available policy.
    """
    candidates = [r for r in records if _STS_RECORD.match(r)]
    if not candidates:
        raise PolicyError("TXT: no record starts with v=STSv1; (RFC 8461 §3.1)")
    if len(candidates) > 1:
        raise PolicyError(
            f"TXT: {len(candidates)} v=STSv1 records, exactly one allowed (RFC 8461 §3.1)"
        )
    return _parse_txt_record(candidates[0])


def _parse_txt_record(record: str) -> str:
    policy_id: str | None = None
    # The first field is "v=STSv1" (checked by the caller); parse the rest.
    for raw in record.rstrip(_WSP).split(";")[1:]:
        field = raw.strip(_WSP)
        if not field:
            continue
        name, eq, value = field.partition("=")
        if not eq or not _EXT_NAME.match(name):
            raise PolicyError(f"TXT: malformed field {_show(field)} (RFC 8461 §3.1)")
        if name == "id":
            if not _ID_VALUE.match(value):
                raise PolicyError(
                    f"TXT: id {_show(value)} is not 1-32 letters or digits (RFC 8461 §3.1)"
                )
            if policy_id is None:
                policy_id = value
        elif not _EXT_VALUE.match(value):
            raise PolicyError(f"TXT: malformed field {_show(field)} (RFC 8461 §3.1)")
    if policy_id is None:
        raise PolicyError("TXT: id field missing (RFC 8461 §3.1)")
    return policy_id


# --- Policy body (RFC 8461 §3.2) --------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated MTA-STS policy."""

    mode: str
    """``"enforce"``, ``"testing"`` or ``"none"``."""
    max_age: int
    """Seconds, 0..:data:`MAX_AGE_LIMIT` (larger values were clamped)."""
    mx: tuple[str, ...]
    """The usable ``mx`` patterns as written in the policy, in policy order."""
    lines: tuple[str, ...]
    """The non-blank policy lines as fetched, without line terminators or
    trailing whitespace (for the TLSRPT ``policy_string``, RFC 8460 §4.4)."""


def parse_policy(text: str) -> tuple[Policy, list[str]]:
    """Parse and validate a policy body; return it with a list of warnings.

    Raises :class:`PolicyError` naming the first rule the body breaks.
    """
    values: dict[str, str] = {}
    mx: list[str] = []
    lines: list[str] = []
    warnings: list[str] = []
    # RFC 8461 §3.2: sts-policy-term = LF / CRLF; the last one is optional.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        line = line.rstrip(_WSP)
        if not line:
            continue
        if _CONTROL.search(line):
            raise PolicyError(f"policy: control character on line {number} (RFC 8461 §3.2)")
        key, colon, value = line.partition(":")
        if not colon or not _EXT_NAME.match(key):
            raise PolicyError(
                f"policy: line {number} is not 'key: value': {_show(line)} (RFC 8461 §3.2)"
            )
        value = value.lstrip(_WSP)
        lines.append(line)
        if key == "mx":
            if is_valid_mx_pattern(value):
                mx.append(value)
            else:
                warnings.append(
                    f"mx: {_show(value)} is not an A-label host name or *. pattern, "
                    "dropped (RFC 8461 §3.2)"
                )
        elif key in _SINGLE_KEYS:
            if key in values:
                warnings.append(
                    f"{key}: repeated on line {number}, first value kept (RFC 8461 §3.2)"
                )
            else:
                values[key] = value
        # Any other key is an extension: ignored (RFC 8461 §3.2).

    for key in _SINGLE_KEYS:
        if key not in values:
            raise PolicyError(f"policy: {key} missing (RFC 8461 §3.2)")
    version = values["version"]
    if version != STS_VERSION:
        raise PolicyError(f"version: {_show(version)} is not STSv1 (RFC 8461 §3.2)")
    mode = values["mode"]
    if mode not in MODES:
        raise PolicyError(f"mode: {_show(mode)} is not enforce, testing or none (RFC 8461 §3.2)")
    raw_age = values["max_age"]
    if not _MAX_AGE.match(raw_age):
        raise PolicyError(f"max_age: {_show(raw_age)} is not 1-10 digits (RFC 8461 §3.2)")
    max_age = int(raw_age)
    if max_age > MAX_AGE_LIMIT:
        warnings.append(f"max_age: {max_age} above {MAX_AGE_LIMIT}, clamped (RFC 8461 §3.2)")
        max_age = MAX_AGE_LIMIT
    if mode != "none" and not mx:
        raise PolicyError(f"mx: no usable mx pattern for mode {mode} (RFC 8461 §3.2)")
    policy = Policy(mode=mode, max_age=max_age, mx=tuple(mx), lines=tuple(lines))
    return policy, warnings


# --- Media type (RFC 8461 §3.3) ---------------------------------------------


def is_text_plain(content_type: str | None) -> bool:
    """True if a Content-Type header value has the media type ``text/plain``.

    Parameters such as ``charset`` are allowed; the comparison ignores case
    and whitespace around the type. A missing header is not ``text/plain``.
    """
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip(" \t")
    return media_type.lower() == "text/plain"
