"""Type stubs for the compiled twin of :mod:`mtasts_fast.netstring`."""

from typing import Final

__all__ = ["MAX_LENGTH_DIGITS", "MAX_PAYLOAD", "NetstringParserC", "encodeC"]

MAX_PAYLOAD: Final[int]
MAX_LENGTH_DIGITS: Final[int]

class NetstringParserC:
    def __init__(self, limit: int = ...) -> None: ...
    def feed(self, data: bytes) -> list[bytes]: ...
    @property
    def pending(self) -> bool: ...

def encodeC(payload: bytes) -> bytes: ...
