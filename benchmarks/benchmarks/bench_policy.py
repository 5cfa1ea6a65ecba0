"""Policy text and TXT record parsing (``policy.parse_policy``, ``parse_txt_records``).

Parsing runs once per HTTPS fetch, not per lookup; these catch regressions in
the fetch path. ``impl`` switches the compiled or pure ``is_valid_mx_pattern``
that checks each ``mx`` line (the ``py`` case runs a copy of ``parse_policy``
whose globals name the pure check).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, ClassVar

from mtasts_fast import matcher, policy


def policy_text(mx_count: int) -> str:
    mx = "".join(f"mx: {'*.' if i % 2 else ''}mx{i}.example.com\r\n" for i in range(mx_count))
    return f"version: STSv1\r\nmode: enforce\r\n{mx}max_age: 604800\r\n"


def _with_pure_check() -> Callable[[str], Any]:
    fn = policy.parse_policy
    scope = {**vars(policy), "is_valid_mx_pattern": matcher.is_valid_mx_pattern_py}
    return types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)


PARSE = {"py": _with_pure_check()}
if vars(policy)["is_valid_mx_pattern"] is not matcher.is_valid_mx_pattern_py:
    PARSE["c"] = policy.parse_policy
IMPLS = sorted(PARSE)
TEXTS = {count: policy_text(count) for count in (3, 20)}
TXT = ["v=spf1 -all", "v=STSv1; id=20240101T000000;"]
for _text in TEXTS.values():
    assert len({PARSE[i](_text)[0] for i in IMPLS}) == 1


class ParsePolicy:
    """Parsing and validating a policy body."""

    params: ClassVar[list[Any]] = [IMPLS, [3, 20]]
    param_names: ClassVar[list[str]] = ["impl", "mx"]

    def time_parse_policy(self, impl: str, mx_count: int) -> None:
        """``parse_policy()`` of a CRLF policy body with 3 or 20 ``mx`` lines."""
        PARSE[impl](TEXTS[mx_count])


class ParseTxt:
    """Parsing the ``_mta-sts`` TXT record set."""

    def time_parse_txt_records(self) -> None:
        """``parse_txt_records()`` of a two-record answer (one of them STSv1)."""
        policy.parse_txt_records(TXT)
