"""Incremental netstring framing for the socketmap protocol.

A netstring is ``<decimal length>:<payload>,`` (Postfix's ``dict_sockmap.c``
speaks nothing else). :class:`NetstringParserPy` turns an arbitrarily chunked
byte stream into complete payloads; :func:`encode_py` frames a reply.

Rules, shared by the compiled twin in ``_netstring.pyx``:

- Leading zeros are allowed (``00:,`` is ``b""``, ``01:X,`` is ``b"X"``), as in
  postfix-mta-sts-resolver, but a length field of more than
  :data:`MAX_LENGTH_DIGITS` digits is :class:`~mtasts_fast.errors.TooLong`, so a
  peer cannot keep us parsing zeros for ever.
- Only ASCII digits may precede the ``:``; anything else, or a ``:`` with no
  digit before it, is :class:`~mtasts_fast.errors.BadLength`.
- The declared length is checked against ``limit`` while the digits arrive:
  ``9999`` with a limit of 1024 raises :class:`~mtasts_fast.errors.TooLong`
  before any colon is seen.
- Exactly one ``,`` must follow the payload, else
  :class:`~mtasts_fast.errors.BadTerminator`.
- An error carries in ``exc.payloads`` the payloads completed earlier in the
  same ``feed()`` call, so the server can answer them before it closes the
  connection. After an error the parser is dead: every later ``feed()`` raises
  the same error class again, with no payloads.

The names at the bottom are rebound to the compiled twin unless
``MTASTS_NO_EXTENSIONS`` is set.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from mtasts_fast import _compat
from mtasts_fast.errors import BadLength, BadTerminator, NetstringError, TooLong

if TYPE_CHECKING:
    from mtasts_fast._netstring import NetstringParserC as _NetstringParserC

__all__ = [
    "MAX_LENGTH_DIGITS",
    "MAX_PAYLOAD",
    "NetstringParser",
    "NetstringParserC",
    "NetstringParserPy",
    "encode",
    "encode_c",
    "encode_py",
]

MAX_PAYLOAD: Final[int] = 10_000  # Postfix never sends more (dict_sockmap.c)
MAX_LENGTH_DIGITS: Final[int] = 20  # generous room for leading zeros
_MAX_LIMIT: Final[int] = 2**31 - 1  # keeps the compiled twin's length arithmetic in range

_LENGTH: Final = 0  # reading the decimal length
_PAYLOAD: Final = 1  # reading the payload bytes
_COMMA: Final = 2  # payload complete, expecting ","
_DEAD: Final = 3  # an error was raised; nothing more is parsed

_DEAD_MESSAGE: Final = "netstring parser stopped after an earlier error"


def _check_limit(limit: int) -> int:
    limit = operator.index(limit)
    if not 0 <= limit <= _MAX_LIMIT:
        raise ValueError(f"limit must be between 0 and {_MAX_LIMIT}, not {limit}")
    return limit


class NetstringParserPy:
    """Incremental netstring decoder (pure Python).

    Feed it whatever the transport delivers; it returns the payloads that became
    complete, in order, and keeps any incomplete tail for the next call.
    """

    __slots__ = ("_buf", "_digits", "_error", "_length", "_limit", "_state")

    def __init__(self, limit: int = MAX_PAYLOAD) -> None:
        self._limit = _check_limit(limit)
        self._state = _LENGTH
        self._length = 0
        self._digits = 0
        self._buf = bytearray()
        self._error: type[NetstringError] | None = None

    @property
    def pending(self) -> bool:
        """True while part of a netstring has been received (False once dead)."""
        if self._state == _LENGTH:
            return self._digits > 0
        return self._state != _DEAD

    def _fail(
        self, cls: type[NetstringError], message: str, payloads: list[bytes]
    ) -> NetstringError:
        self._state = _DEAD
        self._error = cls
        self._buf = bytearray()
        return cls(message, payloads)

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the payloads completed by it, in order."""
        if self._error is not None:
            raise self._error(_DEAD_MESSAGE, [])
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _LENGTH:
                octet = data[pos]
                pos += 1
                if 0x30 <= octet <= 0x39:
                    self._length = self._length * 10 + (octet - 0x30)
                    self._digits += 1
                    if self._length > self._limit:
                        raise self._fail(
                            TooLong, f"netstring length exceeds the limit of {self._limit}", out
                        )
                    if self._digits > MAX_LENGTH_DIGITS:
                        raise self._fail(
                            TooLong, f"netstring length has over {MAX_LENGTH_DIGITS} digits", out
                        )
                elif octet == 0x3A and self._digits:  # ":"
                    self._state = _PAYLOAD
                elif octet == 0x3A:
                    raise self._fail(BadLength, "netstring length has no digits", out)
                else:
                    raise self._fail(
                        BadLength, f"byte {octet:#04x} in netstring length is not a digit", out
                    )
            elif state == _PAYLOAD:
                length = self._length
                if not self._buf and end - pos > length:
                    # Fast path: the whole payload and its terminator are here.
                    if data[pos + length] != 0x2C:  # ","
                        raise self._fail(BadTerminator, "netstring not terminated by ','", out)
                    out.append(bytes(data[pos : pos + length]))
                    pos += length + 1
                    self._reset()
                    continue
                take = min(end - pos, length - len(self._buf))
                self._buf += data[pos : pos + take]
                pos += take
                if len(self._buf) == length:
                    self._state = _COMMA
            else:  # _COMMA
                if data[pos] != 0x2C:  # ","
                    raise self._fail(BadTerminator, "netstring not terminated by ','", out)
                pos += 1
                out.append(bytes(self._buf))
                self._buf.clear()
                self._reset()
        return out

    def _reset(self) -> None:
        self._state = _LENGTH
        self._length = 0
        self._digits = 0


def encode_py(payload: bytes) -> bytes:
    """Frame ``payload`` as a netstring: ``b"<decimal len>:" + payload + b","``."""
    return b"%d:%b," % (len(payload), payload)


NetstringParserC: type[_NetstringParserC] | None = None
encode_c: Callable[[bytes], bytes] | None = None
NetstringParser: type[NetstringParserPy] | type[_NetstringParserC] = NetstringParserPy
encode: Callable[[bytes], bytes] = encode_py

if not _compat.NO_EXTENSIONS:
    try:
        from mtasts_fast import _netstring
    except ImportError:
        if _compat.REQUIRE_EXTENSIONS:
            raise
    else:
        NetstringParserC = NetstringParser = _netstring.NetstringParserC
        encode_c = encode = _netstring.encodeC
