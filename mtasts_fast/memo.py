"""Bounded in-process memos that stay at their size instead of emptying."""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["make_room"]


def make_room(memo: dict[Any, Any], limit: int) -> int:
    """Drop the oldest eighth of ``memo`` once it holds ``limit`` entries; how many went.

    Dicts keep insertion order, so the first keys are the oldest inserted.
    Emptying a full memo at once would make a worker's memory saw-tooth and
    throw away the hot entries with the cold; dropping the oldest eighth keeps
    it near ``limit`` for good, which is what a memory bound should look like
    to an operator watching RSS, and costs one pass over an eighth of it
    every ``limit / 8`` insertions.
    """
    if len(memo) < limit:
        return 0
    dropped = list(itertools.islice(memo, max(1, limit // 8)))
    for key in dropped:
        del memo[key]
    return len(dropped)
