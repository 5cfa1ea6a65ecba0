# cython: language_level=3
"""Compiled twin of :mod:`mtasts_fast.counters`; the rules are documented there.

The buffer is held (``PyObject_GetBuffer``) for the array's life, and each
method is one bounds check and one load or store: ``inc`` costs about as
much as incrementing an item of a Python list, a third of a ``memoryview``.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint64_t, uintptr_t

__all__ = ["CounterArray"]

cdef enum:
    _CELL = 8


cdef class CounterArray:
    """64-bit cells over a writable buffer whose size is a multiple of 8 bytes."""

    # The fields are declared in _counters.pxd, for _fastpath.pyx.

    def __cinit__(self, object buffer):
        self._held = False
        self._size = 0
        PyObject_GetBuffer(buffer, &self._view, PyBUF_WRITABLE)
        self._held = True
        if self._view.len % _CELL:
            self.release()
            raise ValueError("the buffer size must be a multiple of 8 bytes")
        if <uintptr_t>self._view.buf % _CELL:
            self.release()
            raise ValueError("the buffer must be 8-byte aligned")
        self._ints = <uint64_t *>self._view.buf
        self._floats = <double *>self._view.buf
        self._size = self._view.len // _CELL

    def __dealloc__(self):
        if self._held:
            PyBuffer_Release(&self._view)

    cdef inline Py_ssize_t _index(self, Py_ssize_t i) except -1:
        if i < 0:
            i += self._size
        if i < 0 or i >= self._size:
            raise IndexError("cell index out of range")
        return i

    def __len__(self):
        return self._size

    def inc(self, Py_ssize_t i):
        self._ints[self._index(i)] += 1

    def add(self, Py_ssize_t i, object n):
        if n < 0:
            raise ValueError("counters only go up")
        self._ints[self._index(i)] += <uint64_t>n

    def set(self, Py_ssize_t i, uint64_t value):
        self._ints[self._index(i)] = value

    def get(self, Py_ssize_t i):
        return self._ints[self._index(i)]

    def add_float(self, Py_ssize_t i, double x):
        self._floats[self._index(i)] += x

    def set_float(self, Py_ssize_t i, double x):
        self._floats[self._index(i)] = x

    def get_float(self, Py_ssize_t i):
        return self._floats[self._index(i)]

    def release(self):
        self._size = 0
        self._ints = NULL
        self._floats = NULL
        if self._held:
            self._held = False
            PyBuffer_Release(&self._view)
