"""The shared-memory counter cells: both twins, one suite (counters.py, _counters.pyx)."""

from __future__ import annotations

import mmap
import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtasts_fast import _compat, counters
from mtasts_fast.counters import CounterArrayPy
from tests.twins import compiled, twin_fixture


def _c_class() -> type:
    return compiled("_counters", counters.CounterArrayC)


array_class = twin_fixture("_counters", lambda: CounterArrayPy, lambda: counters.CounterArrayC)


def test_public_name_follows_the_switch() -> None:
    if _compat.NO_EXTENSIONS:
        assert counters.CounterArray is CounterArrayPy
        assert counters.CounterArrayC is None
    else:
        assert counters.CounterArray is _c_class()


def test_integers_and_floats(array_class: type) -> None:
    buffer = bytearray(8 * 4)
    cells = array_class(buffer)
    assert len(cells) == 4
    cells.inc(0)
    cells.inc(0)
    cells.add(1, 40)
    cells.add(1, 2)
    cells.set(2, 7)
    cells.set_float(3, 1.5)
    cells.add_float(3, 0.25)
    assert [cells.get(i) for i in range(3)] == [2, 42, 7]
    assert cells.get_float(3) == 1.75
    assert cells.get(-4) == 2
    # Native-endian 64-bit cells: what another process reading the buffer sees.
    assert memoryview(buffer).cast("Q")[:3].tolist() == [2, 42, 7]
    assert memoryview(buffer).cast("d")[3] == 1.75


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.inc(4), id="inc-past-end"),
        pytest.param(lambda c: c.get(-5), id="get-before-start"),
        pytest.param(lambda c: c.set(9, 1), id="set-past-end"),
        pytest.param(lambda c: c.add_float(4, 1.0), id="add-float-past-end"),
        pytest.param(lambda c: c.get_float(100), id="get-float-past-end"),
    ],
)
def test_out_of_range_is_an_index_error(array_class: type, call: object) -> None:
    cells = array_class(bytearray(32))
    with pytest.raises(IndexError):
        call(cells)  # type: ignore[operator]


def test_counters_only_go_up(array_class: type) -> None:
    cells = array_class(bytearray(8))
    with pytest.raises(ValueError, match="only go up"):
        cells.add(0, -1)
    assert cells.get(0) == 0


@pytest.mark.parametrize(
    "buffer",
    [
        pytest.param(bytearray(12), id="not-a-multiple-of-8"),
        pytest.param(b"\0" * 16, id="read-only"),
    ],
)
def test_unusable_buffers_are_refused(array_class: type, buffer: object) -> None:
    with pytest.raises((ValueError, BufferError, TypeError)):
        array_class(buffer)


def test_release_lets_the_mmap_close(array_class: type) -> None:
    region = mmap.mmap(-1, mmap.PAGESIZE)
    cells = array_class(region)
    cells.inc(1)
    with pytest.raises(BufferError):
        region.close()  # a view of it is held
    cells.release()
    assert len(cells) == 0
    with pytest.raises(IndexError):
        cells.inc(1)
    region.close()


def test_a_forked_child_counts_into_memory_the_parent_reads_after_kill_9(
    array_class: type,
) -> None:
    """The property the metrics rely on: nothing counted is lost with the writer."""
    region = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous and MAP_SHARED
    cells = array_class(region)
    read_r, read_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            for _ in range(1000):
                cells.inc(3)
            cells.set_float(4, 2.5)
            os.write(read_w, b"x")
            signal.pause()
        finally:
            os._exit(1)
    os.close(read_w)
    assert os.read(read_r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read_r)
    assert cells.get(3) == 1000
    assert cells.get_float(4) == 2.5
    cells.release()
    region.close()


operations = st.lists(
    st.tuples(
        st.sampled_from(["inc", "add", "set", "add_float", "set_float"]),
        st.integers(-8, 7),
        st.integers(0, 2**32),
        st.floats(-1e6, 1e6, allow_nan=False),
    ),
    max_size=60,
)


@given(operations)
def test_twins_agree(ops: list[tuple[str, int, int, float]]) -> None:
    cls = counters.CounterArrayC
    if cls is None:
        if _compat.REQUIRE_EXTENSIONS:
            pytest.fail("mtasts_fast._counters is not built but MTASTS_REQUIRE_EXTENSIONS is set")
        return  # nothing to compare with: the py suite above covers the twin
    py_buf, c_buf = bytearray(64), bytearray(64)
    py, c = CounterArrayPy(py_buf), cls(c_buf)
    for name, index, number, real in ops:
        arg: object = real if name.endswith("float") else number
        for cells in (py, c):
            if name == "inc":
                cells.inc(index)
            else:
                getattr(cells, name)(index, arg)
        # Cells are either ints or floats per use; compare the bytes.
        assert py_buf == c_buf, (name, index, arg)
