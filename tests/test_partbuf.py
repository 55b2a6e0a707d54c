"""The buffers parts are read into (fsdriver/backend/partbuf.py), without a backend: a buffer
given back serves the next part while any part is in flight, none is kept once none is, a buffer
whose upload did not end is never handed out again, and a part is read whole."""

import ctypes
import mmap
import os
import threading

import pytest

from fsdriver.backend import partbuf
from fsdriver.backend.partbuf import PartBuffers, read_into

SIZE = 1 << 20


def test_a_buffer_given_back_serves_the_next_part_while_another_is_in_flight():
    bufs = PartBuffers(SIZE)
    held = bufs.take()  # a part in flight all along
    first = bufs.take()
    first[:5] = b"first"
    bufs.give(first)
    assert bufs.held == SIZE
    again = bufs.take()
    assert again is first and bufs.made == 2  # reused: not mapped anew
    assert bufs.give(again) == 0  # kept for the next part
    assert bufs.give(held) == 2 * SIZE  # the last one in use: both let go of
    assert bufs.out == 0 and bufs.held == 0  # none kept once no part is in flight
    assert first.closed and held.closed  # and their memory unmapped


def test_a_buffer_whose_upload_did_not_end_is_never_handed_out_again():
    bufs = PartBuffers(SIZE)
    other = bufs.take()
    lost = bufs.take()
    assert bufs.drop(lost) == SIZE  # e.g. a worker thread abandoned at shutdown may still read it
    assert bufs.held == 0 and not lost.closed  # left to whoever still refers to it
    fresh = bufs.take()
    assert fresh is not lost and bufs.made == 3
    bufs.give(fresh)
    bufs.give(other)
    assert bufs.out == 0 and bufs.held == 0


def test_a_buffer_still_viewed_is_let_go_without_error():
    bufs = PartBuffers(SIZE)
    buf = bufs.take()
    view = memoryview(buf)[:10]  # e.g. a view a traceback still refers to
    assert bufs.give(buf) == SIZE  # the last one out: let go of; the unmap waits for the view
    assert bufs.held == 0 and not buf.closed
    view.release()


def test_buffers_kept_for_the_next_part_are_let_go_on_demand():
    bufs = PartBuffers(SIZE)
    busy, kept = bufs.take(), bufs.take()
    assert bufs.give(kept) == 0 and bufs.held == SIZE
    assert bufs.trim() == SIZE and bufs.held == 0 and kept.closed  # memory someone waits for
    assert bufs.give(busy) == SIZE and bufs.out == 0


def test_buffers_are_shared_by_threads_without_losing_count():
    bufs = PartBuffers(4096)

    def worker():
        for _ in range(200):
            b = bufs.take()
            b[:1] = b"x"
            bufs.give(b)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert bufs.out == 0 and bufs.held == 0


def test_read_into_goes_on_after_a_short_read(tmp_path, monkeypatch):
    """preadv may return less than asked (a signal, a network filesystem): the rest is read."""
    data = os.urandom(SIZE)
    (tmp_path / "f").write_bytes(data)
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: real(fd, [bufs[0][:1000]], off))
    view = memoryview(bytearray(SIZE))
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert read_into(fd, 0, view) == SIZE and bytes(view) == data
    finally:
        os.close(fd)


@pytest.mark.parametrize("length", [SIZE, 3 * SIZE // 2])
def test_read_into_fills_the_view_and_stops_at_the_end_of_the_file(tmp_path, length):
    data = os.urandom(length)
    (tmp_path / "f").write_bytes(data)
    bufs = PartBuffers(SIZE)
    buf = bufs.take()
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        view = memoryview(buf)
        assert read_into(fd, 0, view) == SIZE and bytes(view) == data[:SIZE]
        rest = length - SIZE
        assert read_into(fd, SIZE, view) == rest and bytes(view[:rest]) == data[SIZE:]
    finally:
        os.close(fd)
        del view
        bufs.give(buf)


def test_release_lets_a_buffer_be_unmapped_and_tolerates_a_view_held_elsewhere():
    buf = mmap.mmap(-1, 4096)
    view = memoryview(buf)[:10]
    partbuf.release(view)
    buf.close()  # no view left: unmapped
    assert buf.closed
    other = mmap.mmap(-1, 4096)
    view = memoryview(other)
    held = (ctypes.c_char * 4096).from_buffer(view)  # an export of the view, held elsewhere
    partbuf.release(view)  # no error: that buffer is unmapped once the export goes
    with pytest.raises(BufferError):
        other.close()
    del held
    view.release()
    other.close()
    assert other.closed


def test_a_limit_makes_take_wait_until_a_buffer_comes_back():
    pool = PartBuffers(4096, limit=2)
    a, b = pool.take(), pool.take()
    got = []
    t = threading.Thread(target=lambda: got.append(pool.take()))
    t.start()
    t.join(0.2)  # (a take that did not wait would have a third buffer by now; a slow thread can only hide that)
    assert got == [] and pool.out == 2
    pool.give(a)
    t.join(10)
    assert got == [a] and pool.out == 2  # the one given back, reused
    pool.give(b)
    pool.give(got[0])
    assert pool.out == 0 and pool.made == 2
