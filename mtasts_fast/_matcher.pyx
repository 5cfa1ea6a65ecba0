# cython: language_level=3
"""Compiled twin of :mod:`mtasts_fast.matcher`; the rules are documented there.

ASCII strings (every real host name) are checked in place on the string's own
1-byte buffer, with no allocation. Anything else takes a slow path that repeats
the pure-Python code step by step, so that Unicode case mapping (``str.lower``)
gives exactly the same answers as the twin.
"""

from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_GET_LENGTH

__all__ = ["is_valid_hostname", "is_valid_mx_pattern", "mx_matches", "match_any"]

cdef enum:
    _MAX_NAME = 253  # RFC 1035 §2.3.4, without the trailing dot
    _MAX_LABEL = 63
    _DOT = 0x2E
    _HYPHEN = 0x2D
    _STAR = 0x2A

ctypedef const unsigned char *_text


cdef inline _text _ascii(str s, Py_ssize_t *size):
    """The 1-byte buffer of ``s`` if it is ASCII, else NULL."""
    # isascii() also makes sure the string is "ready" (PEP 393) on Python 3.11.
    if not s.isascii():
        return NULL
    size[0] = PyUnicode_GET_LENGTH(s)
    return <_text>PyUnicode_1BYTE_DATA(s)


cdef inline unsigned char _lower(unsigned char c) noexcept:
    return c + 0x20 if 0x41 <= c <= 0x5A else c


cdef bint _valid_hostname(_text name, Py_ssize_t size) noexcept:
    cdef Py_ssize_t i
    cdef Py_ssize_t start = 0
    cdef unsigned char c
    cdef bint all_digits = True
    if size and name[size - 1] == _DOT:
        size -= 1
    if size == 0 or size > _MAX_NAME:
        return False
    for i in range(size + 1):
        if i == size or name[i] == _DOT:
            if i == start or i - start > _MAX_LABEL:
                return False
            if name[start] == _HYPHEN or name[i - 1] == _HYPHEN:
                return False
            if i == size:
                # An all-digit last label would make IPv4 literals host names.
                return not all_digits
            start = i + 1
            all_digits = True
        else:
            c = name[i]
            if 0x30 <= c <= 0x39:
                continue
            if not (0x61 <= c <= 0x7A or 0x41 <= c <= 0x5A or c == _HYPHEN):
                return False  # RFC 1123 §2.1: letters, digits and hyphens only
            all_digits = False
    return False


cdef bint _ascii_matches(_text host, Py_ssize_t hsize, _text pattern, Py_ssize_t psize) noexcept:
    cdef Py_ssize_t dot = 0
    cdef Py_ssize_t i
    if hsize and host[hsize - 1] == _DOT:
        hsize -= 1
    if psize and pattern[psize - 1] == _DOT:
        psize -= 1
    if hsize == 0 or psize == 0:
        return False
    if psize >= 2 and pattern[0] == _STAR and pattern[1] == _DOT:
        # RFC 8461 §4.1: "*" stands for exactly one whole, non-empty label.
        if psize == 2:
            return False
        while dot < hsize and host[dot] != _DOT:
            dot += 1
        if dot == 0 or dot == hsize:
            return False
        host += dot + 1
        hsize -= dot + 1
        pattern += 2
        psize -= 2
    if hsize != psize:
        return False
    for i in range(hsize):
        if _lower(host[i]) != _lower(pattern[i]):
            return False
    return True


cdef bint _unicode_matches(str host, str pattern):
    # Same steps as mx_matches_py, for strings that are not plain ASCII.
    # (No negative indices: setup.py compiles with wraparound=False.)
    host = host.lower()
    pattern = pattern.lower()
    if host.endswith("."):
        host = host[: len(host) - 1]
    if pattern.endswith("."):
        pattern = pattern[: len(pattern) - 1]
    if not host or not pattern:
        return False
    if pattern.startswith("*."):
        dot = host.find(".")
        return len(pattern) > 2 and dot > 0 and host[dot + 1 :] == pattern[2:]
    return host == pattern


cdef inline bint _matches(str host, _text hdata, Py_ssize_t hsize, str pattern) except -1:
    cdef Py_ssize_t psize = 0
    cdef _text pdata = _ascii(pattern, &psize)
    if hdata != NULL and pdata != NULL:
        return _ascii_matches(hdata, hsize, pdata, psize)
    return _unicode_matches(host, pattern)


def is_valid_hostname(str name not None):
    """True if ``name`` is a syntactically valid DNS host name in A-label form."""
    cdef Py_ssize_t size = 0
    cdef _text data = _ascii(name, &size)
    return data != NULL and _valid_hostname(data, size)


def is_valid_mx_pattern(str pattern not None):
    """True if ``pattern`` is a host name or ``*.`` followed by one (RFC 8461 §3.2)."""
    cdef Py_ssize_t size = 0
    cdef _text data = _ascii(pattern, &size)
    if data == NULL:
        return False
    if size >= 2 and data[0] == _STAR and data[1] == _DOT:
        return _valid_hostname(data + 2, size - 2)
    return _valid_hostname(data, size)


def mx_matches(str host not None, str pattern not None):
    """True if MX host ``host`` matches policy ``pattern`` (RFC 8461 §4.1)."""
    cdef Py_ssize_t hsize = 0
    cdef _text hdata = _ascii(host, &hsize)
    return _matches(host, hdata, hsize, pattern)


def match_any(str host not None, patterns):
    """True if ``host`` matches at least one of ``patterns``."""
    cdef Py_ssize_t hsize = 0
    cdef _text hdata = _ascii(host, &hsize)
    for pattern in patterns:
        if _matches(host, hdata, hsize, pattern):
            return True
    return False
