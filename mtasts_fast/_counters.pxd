# cython: language_level=3
# The layout of CounterArray, for the modules that cimport it: the compiled
# request path (_fastpath.pyx) adds one to a cell through _ints directly.
from libc.stdint cimport uint64_t


cdef class CounterArray:
    cdef Py_buffer _view
    cdef bint _held
    cdef uint64_t *_ints
    cdef double *_floats
    cdef Py_ssize_t _size
    cdef inline Py_ssize_t _index(self, Py_ssize_t i) except -1
