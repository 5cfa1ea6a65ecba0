# cython: language_level=3
"""Compiled twin of :mod:`mtasts_fast.fastpath`; the rules are documented there.

One call per chunk of bytes: the netstrings are framed in place, each
payload is looked up in a dict of hits (one bytes object per request, the
dict key), the stamp is read from the LMDB meta pages and the wall clock
from ``clock_gettime`` at most once per call, the lookup is counted straight
into the worker's shared counters, and one reply (or one joined bytes
object for a pipelined chunk) is returned. No Python frame is entered.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

from mtasts_fast._counters cimport CounterArray

import time as _time

from mtasts_fast.memo import make_room

__all__ = ["FastPathC"]


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_REALTIME

cdef enum:
    _MAX_DIGITS = 20  # netstring.MAX_LENGTH_DIGITS
    _MAX_PAYLOAD = 10_000  # netstring.MAX_PAYLOAD
    _COLON = 0x3A
    _TERMINATOR = 0x2C  # ","

# Kept equal to the constants in netstring.py and fastpath.py (a test checks it).
MAX_PAYLOAD = _MAX_PAYLOAD
MAX_LENGTH_DIGITS = _MAX_DIGITS
HIT_LIMIT = 16_384
BACKOFF_LIMIT = 15
cdef int _BACKOFF_LIMIT = 15
cdef int _BACKOFF_STEPS = 4  # 1, 3, 7, 15 skipped

cdef object _wall_clock = _time.time
cdef double _INFINITY = float("inf")


cdef inline double _now_wall() noexcept:
    """time.time(), computed as CPython computes it (_PyTime_AsSecondsDouble)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    cdef int64_t ns = <int64_t>ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    if ns % 1_000_000_000 == 0:
        return <double>(ns // 1_000_000_000)
    return <double>ns / 1e9


@cython.final
cdef class _Hit:
    cdef bytes reply
    cdef Py_ssize_t cell
    cdef bint stamped
    cdef uint64_t stamp
    cdef double expires_at
    cdef double checked_at
    cdef double dane_expires_at
    cdef object kind
    cdef Py_ssize_t served   # requests served since recorded
    cdef int wasted          # recordings replaced unused, in a row
    cdef int skip            # recordings still to skip


@cython.final
cdef class FastPathC:
    """Replies the responder vouches for, served straight from the bytes received (compiled)."""

    cdef dict _hits
    cdef object _stamps          # the StampSource, or None
    cdef object _stamp_buffer    # its buffer (an mmap), read in place
    cdef Py_ssize_t _first       # the two words of it, the larger is the stamp
    cdef Py_ssize_t _second
    cdef object _clock
    cdef bint _wall              # _clock is time.time: read it in C
    cdef double _grace
    cdef CounterArray _cells     # the compiled counters, written in place ...
    cdef object _count           # ... or any other counters' inc
    cdef object _kinds
    cdef Py_ssize_t _limit
    cdef readonly bytes unserved
    cdef readonly Py_ssize_t offset

    def __init__(
        self, cells, override_counts, *, grace, clock=_wall_clock, limit=HIT_LIMIT
    ):
        if isinstance(cells, CounterArray):
            self._cells = <CounterArray>cells
            self._count = None
        else:
            self._cells = None
            self._count = cells.inc
        self._kinds = override_counts
        self._grace = float(grace)
        self._clock = clock
        self._wall = clock is _wall_clock
        self._limit = limit
        self._hits = {}
        self._stamps = None
        self._stamp_buffer = None
        self.unserved = b""
        self.offset = 0

    def __len__(self):
        return len(self._hits)

    @property
    def stamps(self):
        return self._stamps

    def set_stamps(self, stamps):
        location = None if stamps is None else stamps.location()
        self._stamps = stamps
        if location is None:
            # Without a buffer to read, stamped hits never hold.
            self._stamp_buffer = None
            self._first = self._second = 0
        else:
            self._stamp_buffer, self._first, self._second = location
        self._hits.clear()

    def clear(self):
        self._hits.clear()

    def put(
        self,
        bytes payload not None,
        bytes reply not None,
        Py_ssize_t cell,
        stamp=None,
        double expires_at=0.0,
        double checked_at=0.0,
        double dane_expires_at=float("inf"),
        kind=None,
    ):
        cdef _Hit hit = _Hit.__new__(_Hit)
        hit.reply = reply
        hit.cell = cell
        hit.stamped = stamp is not None
        hit.stamp = stamp if stamp is not None else 0
        hit.expires_at = expires_at
        hit.checked_at = checked_at
        hit.dane_expires_at = dane_expires_at
        hit.kind = kind
        if payload not in self._hits:
            make_room(self._hits, self._limit)
        self._hits[payload] = hit

    def stamp(self):
        cdef uint64_t value
        if self._read_stamp(&value):
            return value
        return None

    def record(self, bytes payload not None, bytes reply not None, Py_ssize_t cell, stamp,
               entry, state, kind):
        cdef uint64_t now_stamp
        if stamp is None:
            return
        cdef PyObject *found = PyDict_GetItem(self._hits, payload)
        cdef _Hit hit = None
        cdef int wasted = 0
        if found is not NULL:
            # The same payload answered again after a commit: updated in place,
            # unless its hits keep going unused (fastpath.py, "Recording under
            # frequent commits"): then the stamp is not even read.
            hit = <_Hit>found
            if hit.stamped and not hit.served:
                if hit.skip:
                    hit.skip -= 1
                    return
                wasted = min(hit.wasted + 1, _BACKOFF_STEPS)
        if not self._read_stamp(&now_stamp) or now_stamp != <uint64_t>stamp:
            return
        cdef double dane_expires_at = _INFINITY if state is None else state.expires_at
        cdef double expires_at = entry.expires_at
        cdef double checked_at = entry.checked_at
        if hit is None:
            make_room(self._hits, self._limit)
            hit = _Hit.__new__(_Hit)
            self._hits[payload] = hit
        hit.reply = reply
        hit.cell = cell
        hit.stamped = True
        hit.stamp = now_stamp
        hit.expires_at = expires_at
        hit.checked_at = checked_at
        hit.dane_expires_at = dane_expires_at
        hit.kind = kind
        hit.served = 0
        hit.wasted = wasted
        hit.skip = min((1 << wasted) - 1, _BACKOFF_LIMIT) if wasted else 0

    def reply_for(self, bytes payload not None):
        hit = self._hits.get(payload)
        return None if hit is None else (<_Hit>hit).reply

    cdef int _read_stamp(self, uint64_t *out) except -1:
        """The current stamp into ``out``: 1, or 0 when there is none to read."""
        cdef Py_buffer view
        cdef const uint64_t *words
        if self._stamp_buffer is None:
            return 0
        try:
            PyObject_GetBuffer(self._stamp_buffer, &view, PyBUF_SIMPLE)
        except (ValueError, BufferError):
            return 0  # the cache was closed: its map with it
        try:
            if (self._second + 1) * 8 > view.len or (self._first + 1) * 8 > view.len:
                return 0
            words = <const uint64_t *>view.buf
            out[0] = words[self._first] if words[self._first] > words[self._second] else words[self._second]
        finally:
            PyBuffer_Release(&view)
        return 1

    cdef inline bint _count_hit(self, _Hit hit) except -1:
        """Count ``hit``'s lookup; 0 (nothing counted) if its cell is out of range."""
        cdef CounterArray cells = self._cells
        if cells is not None:
            if hit.cell < 0 or hit.cell >= cells._size:
                return 0
            cells._ints[hit.cell] += 1
        else:
            try:
                self._count(hit.cell)
            except IndexError:
                return 0
        if hit.kind is not None:
            kinds = self._kinds
            kinds[hit.kind] = kinds.get(hit.kind, 0) + 1
        return 1

    def serve(self, bytes data not None):
        """The replies to every netstring of ``data``, or None (fastpath.py "Framing")."""
        cdef const unsigned char *buf = <const unsigned char *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t start, length, digits
        cdef unsigned char octet
        cdef PyObject *found
        cdef _Hit hit
        cdef bytes payload
        cdef object first = None
        cdef list replies = None
        cdef int stamp_state = -1  # -1 not read yet, 0 none, 1 read
        cdef uint64_t stamp = 0
        cdef bint now_read = False
        cdef double now = 0.0
        while pos < end:
            start = pos
            length = 0
            digits = 0
            while pos < end:
                octet = buf[pos]
                if octet < 0x30 or octet > 0x39:
                    break
                length = length * 10 + (octet - 0x30)
                digits += 1
                pos += 1
                if digits > _MAX_DIGITS or length > _MAX_PAYLOAD:
                    break
            if (
                digits == 0
                or digits > _MAX_DIGITS
                or length > _MAX_PAYLOAD
                or pos >= end
                or buf[pos] != _COLON
                or end - pos - 1 <= length
                or buf[pos + 1 + length] != _TERMINATOR
            ):
                pos = start
                break
            pos += 1
            payload = PyBytes_FromStringAndSize(<const char *>buf + pos, length)
            found = PyDict_GetItem(self._hits, payload)
            if found is NULL:
                pos = start
                break
            hit = <_Hit>found
            if hit.stamped:
                if stamp_state < 0:
                    stamp_state = self._read_stamp(&stamp)
                if stamp_state == 0 or hit.stamp != stamp:
                    pos = start
                    break
                if not now_read:
                    now = _now_wall() if self._wall else <double>self._clock()
                    now_read = True
                if not (
                    now < hit.expires_at
                    and not now - hit.checked_at > self._grace
                    and now < hit.dane_expires_at
                ):
                    pos = start
                    break
            if not self._count_hit(hit):
                pos = start
                break
            hit.served += 1
            if first is None:
                first = hit.reply
            elif replies is None:
                replies = [first, hit.reply]
            else:
                replies.append(hit.reply)
            pos += length + 1
        if pos == end:
            if replies is not None:
                return _join(replies)
            return first if first is not None else b""
        if replies is not None:
            self.unserved = _join(replies)
        else:
            self.unserved = first if first is not None else b""
        self.offset = pos
        return None


cdef bytes _join(list parts):
    cdef Py_ssize_t size = 0
    cdef bytes part
    for part in parts:
        size += PyBytes_GET_SIZE(part)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char *into = PyBytes_AS_STRING(out)
    for part in parts:
        memcpy(into, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))
        into += PyBytes_GET_SIZE(part)
    return out
