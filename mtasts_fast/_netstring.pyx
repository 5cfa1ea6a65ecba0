# cython: language_level=3
"""Compiled twin of :mod:`mtasts_fast.netstring`; the rules are documented there.

Allocation-light on the hot path: while no partial netstring is buffered, each
payload is sliced straight out of the chunk (one bytes object per payload, no
internal buffer). Only an incomplete payload is kept, in a bytes object of its
final size that is filled in place and handed out once its ``,`` arrives.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from operator import index as _index

from mtasts_fast.errors import BadLength, BadTerminator, TooLong

__all__ = ["MAX_PAYLOAD", "MAX_LENGTH_DIGITS", "NetstringParserC", "encodeC"]

cdef enum:
    _MAX_DIGITS = 20
    _COLON = 0x3A
    _TERMINATOR = 0x2C  # ","

# Kept equal to the constants in netstring.py (a test checks it).
MAX_PAYLOAD = 10_000
MAX_LENGTH_DIGITS = _MAX_DIGITS

cdef enum _State:
    _LENGTH   # reading the decimal length
    _PAYLOAD  # reading the payload bytes
    _COMMA    # payload complete, expecting ","
    _DEAD     # an error was raised; nothing more is parsed

cdef str _DEAD_MESSAGE = "netstring parser stopped after an earlier error"
cdef str _NO_TERMINATOR = "netstring not terminated by ','"
cdef Py_ssize_t _MAX_LIMIT = 2**31 - 1  # keeps the length arithmetic in range


@cython.final
cdef class NetstringParserC:
    """Incremental netstring decoder (compiled)."""

    cdef Py_ssize_t _limit
    cdef Py_ssize_t _length   # declared length, accumulated digit by digit
    cdef Py_ssize_t _filled   # payload bytes already copied into _payload
    cdef int _digits          # digits of the length seen so far
    cdef _State _state
    cdef bytes _payload       # incomplete payload being filled in, or None
    cdef object _error        # error class once dead, else None

    def __init__(self, limit=MAX_PAYLOAD):
        limit = _index(limit)
        if not 0 <= limit <= _MAX_LIMIT:
            raise ValueError(f"limit must be between 0 and {_MAX_LIMIT}, not {limit}")
        self._limit = limit
        self._state = _LENGTH
        self._length = 0
        self._filled = 0
        self._digits = 0
        self._payload = None
        self._error = None

    @property
    def pending(self):
        """True while part of a netstring has been received (False once dead)."""
        if self._state == _LENGTH:
            return self._digits > 0
        return self._state != _DEAD

    cdef object _fail(self, cls, str message, list out):
        self._state = _DEAD
        self._error = cls
        self._payload = None
        return cls(message, out)

    cdef inline void _reset(self) noexcept:
        self._state = _LENGTH
        self._length = 0
        self._filled = 0
        self._digits = 0

    def feed(self, bytes data not None):
        """Consume ``data``; return the payloads completed by it, in order."""
        if self._error is not None:
            raise self._error(_DEAD_MESSAGE, [])
        cdef char *buf = PyBytes_AS_STRING(data)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take
        cdef unsigned char octet
        cdef list out = []
        while pos < end:
            if self._state == _LENGTH:
                octet = <unsigned char>buf[pos]
                pos += 1
                if 0x30 <= octet <= 0x39:
                    # _length <= _limit < 2**31 here, so this cannot overflow.
                    self._length = self._length * 10 + (octet - 0x30)
                    self._digits += 1
                    if self._length > self._limit:
                        raise self._fail(
                            TooLong, f"netstring length exceeds the limit of {self._limit}", out
                        )
                    if self._digits > _MAX_DIGITS:
                        raise self._fail(
                            TooLong, f"netstring length has over {_MAX_DIGITS} digits", out
                        )
                elif octet == _COLON and self._digits:
                    self._state = _PAYLOAD
                elif octet == _COLON:
                    raise self._fail(BadLength, "netstring length has no digits", out)
                else:
                    raise self._fail(
                        BadLength, f"byte {octet:#04x} in netstring length is not a digit", out
                    )
            elif self._state == _PAYLOAD:
                if self._payload is None:
                    if end - pos > self._length:
                        # Fast path: the whole payload and its terminator are here.
                        if buf[pos + self._length] != _TERMINATOR:
                            raise self._fail(BadTerminator, _NO_TERMINATOR, out)
                        out.append(PyBytes_FromStringAndSize(buf + pos, self._length))
                        pos += self._length + 1
                        self._reset()
                        continue
                    # Incomplete (so _length >= 1): allocate the payload at its
                    # final size; nobody else sees it until it is complete.
                    self._payload = PyBytes_FromStringAndSize(NULL, self._length)
                    self._filled = 0
                take = min(end - pos, self._length - self._filled)
                memcpy(PyBytes_AS_STRING(self._payload) + self._filled, buf + pos, take)
                self._filled += take
                pos += take
                if self._filled == self._length:
                    self._state = _COMMA
            else:  # _COMMA
                if buf[pos] != _TERMINATOR:
                    raise self._fail(BadTerminator, _NO_TERMINATOR, out)
                pos += 1
                out.append(self._payload)
                self._payload = None
                self._reset()
        return out


@cython.cdivision(True)
def encodeC(bytes payload not None):
    """Frame ``payload`` as a netstring: ``b"<decimal len>:" + payload + b","``."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t digits = 1
    cdef Py_ssize_t rest = size
    while rest >= 10:
        rest //= 10
        digits += 1
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, digits + size + 2)
    cdef char *out = PyBytes_AS_STRING(frame)
    cdef Py_ssize_t i = digits
    rest = size
    while i > 0:
        i -= 1
        out[i] = <char>(0x30 + rest % 10)
        rest //= 10
    out[digits] = _COLON
    memcpy(out + digits + 1, PyBytes_AS_STRING(payload), size)
    out[digits + 1 + size] = _TERMINATOR
    return frame
