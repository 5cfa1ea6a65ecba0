"""Type stubs for the compiled twin of :mod:`mtasts_fast.fastpath`."""

from collections.abc import Callable, MutableMapping
from typing import Final

from mtasts_fast.counters import Cells
from mtasts_fast.fastpath import StampSource, _Expiring, _Timed

__all__ = ["FastPathC"]

MAX_PAYLOAD: Final[int]
MAX_LENGTH_DIGITS: Final[int]
HIT_LIMIT: Final[int]

class FastPathC:
    unserved: bytes
    offset: int
    def __init__(
        self,
        cells: Cells,
        override_counts: MutableMapping[str, int],
        *,
        grace: float,
        clock: Callable[[], float] = ...,
        limit: int = ...,
    ) -> None: ...
    def __len__(self) -> int: ...
    @property
    def stamps(self) -> StampSource | None: ...
    def set_stamps(self, stamps: StampSource | None) -> None: ...
    def clear(self) -> None: ...
    def put(
        self,
        payload: bytes,
        reply: bytes,
        cell: int,
        stamp: int | None = None,
        expires_at: float = 0.0,
        checked_at: float = 0.0,
        dane_expires_at: float = ...,
        kind: str | None = None,
    ) -> None: ...
    def stamp(self) -> int | None: ...
    def record(
        self,
        payload: bytes,
        reply: bytes,
        cell: int,
        stamp: int | None,
        entry: _Timed,
        state: _Expiring | None,
        kind: str | None,
    ) -> None: ...
    def reply_for(self, payload: bytes) -> bytes | None: ...
    def serve(self, data: bytes) -> bytes | None: ...
