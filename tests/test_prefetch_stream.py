"""Sequential reads as one streamed GET, without the kernel: the prefetcher over the in-memory
backend (S3's semantics), whose call counters count requests (``open_range`` is one GET), with
bodies read in a thread (read ahead by the stream's pump) and with bodies read on the event loop
as S3's are (read by the reads themselves): every test with both, unless marked `one_kind`."""

import os
import socket
import threading

import pytest
import trio
import trio.testing

from fsdriver.backend import aio
from fsdriver.backend.aio import AsyncBackend
from fsdriver.backend.memory import MemoryBackend
from fsdriver.errors import PreconditionFailed, Unavailable
from fsdriver.memory import MemoryBudget
from fsdriver.prefetch import INITIAL_WINDOW, Prefetcher
from fsdriver.stats import Stats
from fsdriver import stream as stream_module

MiB = 1 << 20


# Every test runs with both kinds of streamed body: read in a worker thread, where a pump reads
# it ahead ("thread"), and read on the event loop as S3's is, where the reads read it themselves
# (`Stream._pull`; "polled"), unless it makes its bodies itself or checks one kind's own
# behaviour (`one_kind`): it then runs once.
def one_kind(test):
    test.one_kind = True
    return test


def pytest_generate_tests(metafunc):
    if "bodies" in metafunc.fixturenames and not getattr(metafunc.function, "one_kind", False):
        metafunc.parametrize("bodies", ["thread", "polled"], indirect=True)


@pytest.fixture(autouse=True)
def bodies(request, monkeypatch):
    """Memory bodies as the parameter says (`polled`: as S3's are; none: as the test makes them)."""
    kind = getattr(request, "param", None)
    if kind == "polled":
        open_range = MemoryBackend.open_range
        monkeypatch.setattr(MemoryBackend, "open_range", lambda self, *a, **kw: polled(open_range(self, *a, **kw)))
    return kind


def run(fn):
    async def main():
        async with trio.open_nursery() as nursery:
            result = await fn(nursery)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


def prefetcher(be, nursery, key="obj", budget=None, **kw):
    info = be.head(key)
    return Prefetcher(AsyncBackend(be), budget or MemoryBudget(512 * MiB), nursery, lambda: key,
                      info.size, info.etag, Stats(), **kw)


def counted(be, nursery, key="obj", **kw):
    """A prefetcher whose backend counts the bytes it downloads: (prefetcher, budget, stats)."""
    budget, stats, info = MemoryBudget(512 * MiB), Stats(), be.head(key)
    return (Prefetcher(AsyncBackend(be, stats=stats), budget, nursery, lambda: key, info.size,
                       info.etag, stats, **kw), budget, stats)


async def read_all(p, start, end, step):
    out = bytearray()
    for off in range(start, end, step):
        out += await p.read(off, step)
    return bytes(out)


def requests(be):
    return be.calls["open_range"] + be.calls["get_range"]


@pytest.mark.parametrize("step", [MiB, 128 * 1024])
def test_a_sequential_read_is_one_get(step):
    be = MemoryBackend()
    data = os.urandom(40 * MiB + 123)
    be.put_bytes("obj", data)

    async def body(nursery):
        budget = MemoryBudget(512 * MiB)
        p = prefetcher(be, nursery, budget=budget, max_window=16 * MiB)
        assert await read_all(p, 0, len(data), step) == data
        assert await p.read(len(data), step) == b""
        assert be.calls["open_range"] == 1 and be.calls["get_range"] == 0
        assert budget.peak <= 16 * MiB + 8 * MiB + step  # read-ahead window + a chunk in flight
        stream = p.stream
        p.close()
        await stream.quiet()
        assert budget.used == 0

    run(body)


@pytest.mark.parametrize("size", [100, MiB, INITIAL_WINDOW])
def test_a_small_file_is_one_get(size):
    be = MemoryBackend()
    data = os.urandom(size)
    be.put_bytes("obj", data)

    async def body(nursery):
        p = prefetcher(be, nursery)
        assert await read_all(p, 0, size, 128 * 1024) == data  # the kernel's reads may be small
        assert requests(be) == 1
        p.close()

    run(body)


def test_whole_piece_reads_are_not_copied(monkeypatch):
    """The kernel's aligned 1 MiB reads get the piece the body was read into."""
    import fsdriver.stream

    be = MemoryBackend()
    data = os.urandom(8 * MiB)
    be.put_bytes("obj", data)
    pieces, new_buffer = [], fsdriver.stream.allocator.new_buffer
    monkeypatch.setattr(fsdriver.stream.allocator, "new_buffer",
                        lambda n: pieces.append(new_buffer(n)) or pieces[-1])

    async def body(nursery):
        p = prefetcher(be, nursery)
        got = [await p.read(off, MiB) for off in range(0, 4 * MiB, MiB)]
        assert got == [data[off : off + MiB] for off in range(0, 4 * MiB, MiB)]
        # (the read across the first chunk's end, at 1 MiB, is joined from two pieces)
        assert any(piece is got[3] for piece in pieces)
        p.close()

    run(body)


@pytest.mark.parametrize("kernel_ra", [0, 4 * MiB])
def test_a_seek_mid_stream_reads_exactly_and_a_new_stream_follows(kernel_ra):
    """(A seek beyond twice the kernel's read-ahead too: the stream's reach never goes further.)"""
    be = MemoryBackend()
    data = os.urandom(64 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        budget = MemoryBudget(512 * MiB)
        p = prefetcher(be, nursery, budget=budget, kernel_readahead=lambda: kernel_ra)
        assert await read_all(p, 0, 3 * MiB, MiB) == data[: 3 * MiB]
        stream = p.stream
        assert await p.read(60 * MiB + 5, 4096) == data[60 * MiB + 5 : 60 * MiB + 4101]  # a seek
        assert stream.cancelled and p.stream is None and p.window == INITIAL_WINDOW
        assert be.calls["open_range"] == 1 and be.calls["get_range"] == 1  # exactly the bytes asked
        await stream.quiet()
        # Reading on from there: one adjacent read is exact too (random readers hit neighbours
        # by chance); the second in a row streams again.
        assert await read_all(p, 60 * MiB + 4101, 64 * MiB, MiB) == data[60 * MiB + 4101 :]
        assert be.calls["open_range"] == 2 and be.calls["get_range"] == 2
        # Back to a spot the stream had read: a seek too, exact bytes.
        assert await p.read(2 * MiB, 10) == data[2 * MiB : 2 * MiB + 10]
        assert be.calls["get_range"] == 3
        last = p.stream
        p.close()
        if last is not None:
            await last.quiet()
        assert budget.used == 0

    run(body)


@pytest.mark.parametrize("step", [MiB, 128 * 1024])
def test_reads_within_the_streams_reach_wait_for_it(step):
    """A read a little ahead of the last one (the kernel's read-ahead may skip) is the stream's."""
    be = MemoryBackend()
    data = os.urandom(16 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        p = prefetcher(be, nursery)
        assert await p.read(0, step) == data[:step]
        assert await p.read(step, step) == data[step : 2 * step]
        assert await p.read(3 * step, step) == data[3 * step : 4 * step]
        assert await p.read(2 * step, step) == data[2 * step : 3 * step]  # behind, still held
        assert requests(be) == 1
        p.close()

    run(body)


def test_a_changed_object_never_mixes_versions():
    """The streamed body serves the version it started with; any new request is pinned to the
    etag the file was opened at and fails once the object changed (ESTALE at the mount)."""
    be = MemoryBackend()
    old, new = os.urandom(32 * MiB), os.urandom(32 * MiB)
    be.put_bytes("obj", old)

    async def body(nursery):
        p = prefetcher(be, nursery)
        assert await read_all(p, 0, 2 * MiB, MiB) == old[: 2 * MiB]
        be.put_bytes("obj", new)
        assert await read_all(p, 2 * MiB, 6 * MiB, MiB) == old[2 * MiB : 6 * MiB]  # same body
        with pytest.raises(PreconditionFailed):
            await p.read(30 * MiB, 4096)  # a seek: a new request
        with pytest.raises(PreconditionFailed):
            await read_all(p, 0, 2 * MiB, MiB)  # a new stream from the start
        p.close()

    run(body)


def polled(reader):
    """A memory body read as S3's is, on the event loop (`RangeReader.pollable`): every byte has
    arrived already, so a poll never waits."""
    def poll_into(view, need=None):
        data = reader.read(len(view))
        view[:len(data)] = data
        return len(data)

    reader.pollable, reader.poll_into = True, poll_into
    return reader


class BreakingBodies(MemoryBackend):
    """The first ``breaks`` streamed bodies break after their first read (a connection reset);
    read on the event loop if ``pollable``."""

    breaks = 1

    def __init__(self, pollable: bool = False):
        super().__init__()
        self.pollable = pollable

    def open_range(self, key, start, end=None, **cond):
        reader = super().open_range(key, start, end, **cond)
        if self.breaks > 0:
            self.breaks -= 1
            read, reads = reader.read, []

            def breaking(n):
                reads.append(n)
                if len(reads) > 1:
                    raise Unavailable("connection reset (test)")
                return read(n)

            reader.read = breaking
        return polled(reader) if self.pollable else reader


@one_kind
@pytest.mark.parametrize("when", ["open", "body", "polled body"])
def test_a_failed_stream_raises_and_the_next_read_starts_again(when):
    be = MemoryBackend()
    if when != "open":
        be = BreakingBodies(pollable=when == "polled body")  # (it breaks after its first read)
    data = os.urandom(32 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        p = prefetcher(be, nursery)
        if when == "open":
            be.fail("open_range", Unavailable("down"))
            with pytest.raises(Unavailable):
                await p.read(0, MiB)
        else:  # the body breaks off, and the request that would resume it fails (a polled
            # body: resumed by the reads, `Stream._pull`)
            assert await p.read(0, MiB) == data[:MiB]
            be.fail("open_range", Unavailable("down"))
            with pytest.raises(Unavailable):
                for off in range(MiB, len(data), MiB):
                    assert await p.read(off, MiB) == data[off : off + MiB]
            assert off < len(data) - MiB and be.calls["open_range"] == 2
        assert p.stream is None
        assert await read_all(p, 0, len(data), MiB) == data  # new requests
        p.close()

    run(body)


@one_kind
@pytest.mark.parametrize("polled", [False, True], ids=["thread", "polled"])
@pytest.mark.parametrize("breaks", [1, 4])
def test_a_body_that_breaks_off_is_resumed_where_it_stopped(polled, breaks):
    """Also when every new request breaks off too after its first bytes: each delivered bytes,
    so the stream goes on (`RESUMES` bounds only new requests in a row that delivered none)."""
    be = BreakingBodies(polled)
    be.breaks = breaks
    data = os.urandom(16 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        p = prefetcher(be, nursery)
        assert await read_all(p, 0, len(data), MiB) == data
        assert be.calls["open_range"] == breaks + 1 and be.calls["get_range"] == 0
        p.close()

    run(body)


# (the pump's read-ahead: a polled body's stream holds nothing beyond its reads)
@one_kind
def test_an_idle_stream_gives_its_memory_to_a_reader_and_then_goes_on():
    be = MemoryBackend()
    data = os.urandom(24 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        # The idle stream holds 2 MiB (its depth): less than a read is left for the other.
        budget = MemoryBudget(2 * MiB + MiB // 2)
        idle = prefetcher(be, nursery, budget=budget)
        assert await read_all(idle, 0, 2 * MiB, MiB) == data[: 2 * MiB]
        await idle.stream.quiet()
        busy = prefetcher(be, nursery, budget=budget)
        with trio.fail_after(20):
            assert await read_all(busy, 0, len(data), MiB) == data
        assert budget.peak <= budget.limit
        assert idle.stream is None  # reclaimed: its buffer went to the reader that needed memory
        # Reading on starts another request from where the idle file was.
        opened = be.calls["open_range"]
        assert await read_all(idle, 2 * MiB, len(data), MiB) == data[2 * MiB :]
        assert be.calls["open_range"] == opened + 1
        idle.close()
        busy.close()

    run(body)


def kernel_readahead_order(n: int, window: int = 16) -> list[int]:
    """Offsets (MiB) of 1 MiB reads in an order the kernel's async read-ahead sends them with a
    ``window`` MiB read-ahead: concurrently, out of order and far ahead of the reader.  The start is
    the order logged through a mount with ``--readahead 16M``; then blocks of ``window`` reads
    arrive shuffled (each one up to ``window`` ahead of the lowest read not served yet)."""
    import random

    order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 11, 12, 13]
    rng = random.Random(1)
    for lo in range(18, n, window):
        block = list(range(lo, min(lo + window, n)))
        rng.shuffle(block)
        order += block
    assert sorted(order) == list(range(n))
    return order


@pytest.mark.parametrize("max_window", [16 * MiB, 64 * MiB])
def test_reads_out_of_order_far_ahead_are_one_get(max_window):
    """The kernel's read-ahead (``--readahead 16M``) sends 1 MiB reads out of order and up to its
    read-ahead ahead of each other: the stream serves them all, with one GET."""
    be = MemoryBackend()
    data = os.urandom(64 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        budget = MemoryBudget(512 * MiB)
        p = prefetcher(be, nursery, budget=budget, max_window=max_window)
        for n in kernel_readahead_order(64):
            got = await p.read(n * MiB, MiB)
            assert got == data[n * MiB : (n + 1) * MiB], n
        assert be.calls["open_range"] == 1 and be.calls["get_range"] == 0
        assert p.stats.random_reads == 0
        assert budget.peak <= 2 * max_window + 8 * MiB  # unserved pieces + read-ahead + a chunk
        stream = p.stream
        p.close()
        await stream.quiet()
        assert budget.used == 0

    run(body)


def test_a_random_reader_makes_exact_gets_and_keeps_no_buffer():
    be = MemoryBackend()
    data = os.urandom(64 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        p, budget, stats = counted(be, nursery)
        offsets = [37 * MiB + 5, 3 * MiB, 50 * MiB, 20 * MiB + 4096, 9 * MiB, 63 * MiB, 30 * MiB]
        for i, off in enumerate(offsets, 1):
            assert await p.read(off, 128 * 1024) == data[off : off + 128 * 1024]
            assert be.calls["get_range"] == i and be.calls["open_range"] == 0
            assert p.stream is None and budget.used == 0
        assert stats.bytes_down == len(offsets) * 128 * 1024  # amplification 1.00
        p.close()
        assert budget.used == 0

    run(body)


async def burst(p, offsets, data):
    """1 MiB reads started together, as the kernel's read-ahead sends them: woken in one round of
    trio's scheduler, they reach the prefetcher in the order given or in the reverse order."""

    async def one(n):
        assert await p.read(n * MiB, MiB) == data[n * MiB : (n + 1) * MiB], n

    async with trio.open_nursery() as nursery:
        for n in offsets:
            nursery.start_soon(one, n)


def test_a_burst_of_reads_whose_furthest_comes_first_is_one_get():
    """The furthest read of a burst may be the first to arrive, beyond the stream's reach (or
    before the read at 0 that starts it): it lets the reads below it go first."""
    be = MemoryBackend()
    data = os.urandom(32 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        budget = MemoryBudget(512 * MiB)
        p = prefetcher(be, nursery, budget=budget)
        await burst(p, [1, 0, 2], data)  # (1 or 2 first: neither starts a stream)
        await burst(p, [12, *range(3, 11), 11], data)  # (12 or 11 first: beyond the reach)
        await burst(p, range(13, 32), data)
        assert be.calls["open_range"] == 1 and be.calls["get_range"] == 0
        assert p.stats.random_reads == 0
        stream = p.stream
        p.close()
        await stream.quiet()
        assert budget.used == 0

    run(body)


def recording_streams(p) -> list:
    """Every stream `p` starts from now on, in order (one may be dropped before the test ends)."""
    streams, start = [], p._start_stream

    def recorded(off):
        start(off)
        streams.append(p.stream)

    p._start_stream = recorded
    return streams


async def the_first_4_mib(be, data: bytes, nursery) -> tuple:
    """A prefetcher of ``obj`` on an 8 MiB budget, once it served the first 4 MiB in 1 MiB reads:
    (the prefetcher, the budget, every stream it started)."""
    budget = MemoryBudget(8 * MiB)
    p = prefetcher(be, nursery, budget=budget, max_window=16 * MiB)
    streams = recording_streams(p)
    for n in range(4):
        assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB]
    return p, budget, streams


async def far_read_then_the_reads_below(p) -> dict:
    """A read at 12 MiB first, then, once it holds the file's reads, those of 4 to 11 MiB (the
    kernel's read-ahead, out of order): MiB -> the bytes each read got."""
    got = {}

    async def one(n):
        got[n] = await p.read(n * MiB, MiB)

    with trio.fail_after(60):  # a bound for the failure only: it is served at once
        async with trio.open_nursery() as readers:
            readers.start_soon(one, 12)
            await trio.testing.wait_all_tasks_blocked()  # it holds the file's reads
            for n in range(4, 12):
                readers.start_soon(one, n)
    return got


@one_kind
def test_a_far_read_waiting_for_the_pump_with_the_budget_full_is_served():
    """A read far ahead (the kernel's read-ahead) waits for the pump while the budget is full of
    the pieces below it, whose reads queue behind it: `reclaim` drops those pieces (their reads
    become exact ranged GETs) instead of every read waiting for ever."""
    be = MemoryBackend()
    data = os.urandom(32 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        p, budget, streams = await the_first_4_mib(be, data, nursery)
        await p.stream.quiet()  # read ahead as far as the budget lets it
        assert p.stream.covers(12 * MiB) and p.stream.pos < 13 * MiB
        assert await far_read_then_the_reads_below(p) == {n: data[n * MiB:(n + 1) * MiB] for n in range(4, 13)}
        p.close()
        for stream in streams:  # a chunk in flight holds its memory until it lands
            await stream.quiet()
        assert budget.used == 0

    run(body)


@one_kind
def test_a_far_read_of_a_polled_body_is_served_when_the_budget_fills_on_its_way():
    """The same with a body the reads read themselves: the far read reads the bytes up to it in
    chunks of the depth, each taken from the budget, and keeps them for the reads below it that
    follow; once the budget is full, its wait for memory reclaims the pieces below it that no read
    took (their reads become exact ranged GETs) instead of waiting for ever.  (Here the body
    never makes the far read wait, so it is served before the reads below it start.)"""
    be = PolledBodies(True)
    data = os.urandom(32 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        p, budget, streams = await the_first_4_mib(be, data, nursery)
        stream = p.stream
        assert stream.covers(12 * MiB) and stream.pos == 4 * MiB  # nothing read ahead
        assert await far_read_then_the_reads_below(p) == {n: data[n * MiB:(n + 1) * MiB] for n in range(4, 13)}
        # the pieces below it were given up: read again (exact GETs, or a stream of their own once
        # two of them in a row find the stream's start too far ahead: it holds next to nothing)
        assert be.calls["get_range"] + be.calls["open_range"] > 1 and budget.peak <= 8 * MiB, dict(be.calls)
        p.close()  # the last stream may be gone already: a wait for memory reclaimed it
        for s in streams:
            await s.quiet()
        assert stream.finished and budget.used == 0

    run(body)


def test_a_far_read_is_served_while_an_open_record_holds_memory_no_reclaim_frees():
    """A read far ahead within the stream's reach needs every byte up to it, more than the budget
    has free while a quarter of it is held for good (an open record's content: `try_hold`).  The
    bytes are then fetched a piece at a time (the pieces below the read may be reclaimed), not
    waited for in one request that could never fit."""
    be = MemoryBackend()
    data = os.urandom(40 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        budget = MemoryBudget(16 * MiB)
        assert budget.try_hold(4 * MiB)
        p = prefetcher(be, nursery, budget=budget, kernel_readahead=lambda: 16 * MiB)
        for n in range(8):
            assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB]
        assert p.stream.covers(22 * MiB) and p.stream.pos < 22 * MiB
        with trio.fail_after(60):  # a bound for the failure only: it is served at once
            assert await p.read(22 * MiB, MiB) == data[22 * MiB:23 * MiB]
        assert budget.peak <= 16 * MiB
        p.close()
        await trio.testing.wait_all_tasks_blocked()
        budget.drop_hold(4 * MiB)
        assert budget.used == 0

    run(body)


def test_a_piece_read_twice_in_part_is_kept_until_every_byte_was_read():
    """A piece is released once every byte of it was served, not once as many bytes as it holds
    were (a repeated read counts once): the rest of it is still the stream's, one GET in all."""
    be = MemoryBackend()
    data = os.urandom(8 * MiB)
    be.put_bytes("obj", data)
    part = 600 * 1024

    async def body(nursery):
        budget = MemoryBudget(512 * MiB)
        p = prefetcher(be, nursery, budget=budget)
        assert await p.read(0, part) == data[:part]
        assert await p.read(0, part) == data[:part]  # again (the page cache dropped it, say)
        assert await read_all(p, part, len(data), MiB) == data[part:]
        assert be.calls["open_range"] == 1 and be.calls["get_range"] == 0
        stream = p.stream
        p.close()
        await stream.quiet()
        assert budget.used == 0

    run(body)


def test_quiet_waits_for_the_read_ahead_a_read_let_go():
    """`Stream.quiet` right after a read that made room for more read-ahead returns once the pump
    has read that far and waits again, not with the idle state from before the read (the pump then
    took more budget after the caller was told it was quiet: a flaky count in test_core)."""
    be = MemoryBackend()
    data = os.urandom(48 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        budget = MemoryBudget(512 * MiB)
        p = prefetcher(be, nursery, budget=budget, max_window=16 * MiB)
        assert await read_all(p, 0, 2 * MiB, MiB) == data[: 2 * MiB]
        stream = p.stream
        await stream.quiet()
        for off in range(2 * MiB, 12 * MiB, MiB):  # each read lets the window reach further
            assert await p.read(off, MiB) == data[off : off + MiB]
            await stream.quiet()
            used, pos = budget.used, stream.pos
            await trio.testing.wait_all_tasks_blocked()
            assert (budget.used, stream.pos) == (used, pos)  # nothing more was coming
        assert be.calls["open_range"] == 1
        p.close()

    run(body)


@pytest.mark.parametrize("kernel_ra", [16 * MiB, 0])
def test_a_read_alone_far_ahead_within_twice_the_kernels_read_ahead_keeps_the_stream(kernel_ra):
    """The kernel's read-ahead may send a read up to twice its setting ahead of the reads served
    before the reads between arrive (an 18 MiB jump seen at 16M), with nothing below it queued
    yet: an exact GET of its own that leaves the stream going for the reads between.  Without a
    known setting (0) such a read is a seek: it ends the stream."""
    be = MemoryBackend()
    data = os.urandom(40 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        p = prefetcher(be, nursery, kernel_readahead=lambda: kernel_ra)
        for n in (0, 1):
            assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB]
        assert await p.read(30 * MiB, MiB) == data[30 * MiB:31 * MiB]  # alone, 28 MiB ahead
        for n in [*range(2, 30), *range(31, 40)]:
            assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB], n
        if kernel_ra:
            assert (be.calls["open_range"], be.calls["get_range"], p.stats.random_reads) == (1, 1, 1)
        else:  # the exact GET ends the stream; 2 and 3 are exact too (the second read in a row
            # that continues the one before starts a stream: 4)
            assert (be.calls["open_range"], be.calls["get_range"], p.stats.random_reads) == (2, 3, 3)
        stream = p.stream
        p.close()
        await stream.quiet()

    run(body)


def test_a_random_reader_downloads_what_it_reads_whatever_the_kernels_read_ahead():
    """A stream started by a read at 0, then random reads within twice a large kernel read-ahead:
    exact GETs, never a stream that reads up to them (and, grown by them, further still)."""
    be = MemoryBackend()
    data = os.urandom(200 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        p, budget, stats = counted(be, nursery, kernel_readahead=lambda: 16 * MiB)
        offsets = [0, 30 * MiB, 3 * MiB + 5, 31 * MiB, 20 * MiB, 60 * MiB, 150 * MiB]
        for off in offsets:
            assert await p.read(off, 16384) == data[off:off + 16384]
            if p.stream is not None:
                await p.stream.quiet()
        # the first read's stream brought its first window; nothing else beyond what was read
        assert stats.bytes_down <= len(offsets) * 16384 + INITIAL_WINDOW
        p.close()
        assert budget.used == 0

    run(body)


class HeldBodies(MemoryBackend):
    """The second read of every streamed body waits until ``go`` is set (a slow network)."""

    def __init__(self):
        super().__init__()
        self.go = threading.Event()

    def open_range(self, key, start, end=None, **cond):
        reader = super().open_range(key, start, end, **cond)
        read, reads = reader.read, []

        def held(n):
            reads.append(n)
            if len(reads) > 1:
                assert self.go.wait(60)
            return read(n)

        reader.read = held
        return reader


# (the pump's chunk: a polled body is read only by reads)
@one_kind
def test_the_chunk_in_flight_of_an_idle_file_is_given_to_a_read_waiting_for_memory():
    """A file read to the end of what its stream received, its pump reading the next chunk: the
    memory of that chunk in flight is all another file's read needs.  Reclaimed, the stream is
    dropped, so the chunk's memory is given back when it lands (else it would be kept as buffer
    that the idle file may never read, and the read wait for ever)."""
    be = HeldBodies()
    a, b = os.urandom(16 * MiB), os.urandom(4 * MiB)
    be.put_bytes("a", a)
    be.put_bytes("b", b)

    async def body(nursery):
        budget = MemoryBudget(2 * MiB + MiB // 2)
        pa = prefetcher(be, nursery, "a", budget=budget)
        assert await pa.read(0, MiB) == a[:MiB]
        assert await pa.read(MiB, INITIAL_WINDOW - MiB) == a[MiB:INITIAL_WINDOW]  # all it received
        await trio.testing.wait_all_tasks_blocked()  # the pump's next chunk is in flight, held
        stream = pa.stream
        assert not stream.chunks and stream.in_flight == budget.used > budget.limit - MiB
        pb = prefetcher(be, nursery, "b", budget=budget)
        got = []

        async def read_b():
            got.append(await pb.read(2 * MiB + 5, MiB))

        with trio.fail_after(60):  # a bound for the failure only
            async with trio.open_nursery() as readers:
                readers.start_soon(read_b)
                await trio.testing.wait_all_tasks_blocked()
                assert budget.waiting == 1 and not got  # it waits for memory
                be.go.set()  # the chunk lands
        assert got == [b[2 * MiB + 5:3 * MiB + 5]]
        assert stream.cancelled and budget.used == 0
        pa.close()
        pb.close()

    run(body)


# (what the pump read ahead: a polled body's stream holds next to nothing, and is replaced)
@one_kind
def test_a_run_of_reads_behind_the_stream_catches_up_with_it_while_the_gap_is_what_it_holds():
    """The kernel reading again a run of pages it dropped (or a short seek back, then reads on):
    exact GETs up to the stream, which goes on; it holds more than the gap, so a new stream
    replacing it would download that again.  From further back, a new stream replaces it."""
    be = MemoryBackend()
    data = os.urandom(100 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        # (an 8 MiB kernel read-ahead: the stream reads up to 9 MiB ahead of the reads by itself,
        # and goes on once it is less than half of that ahead: it holds at least 4.5 MiB)
        p, budget, stats = counted(be, nursery, max_window=16 * MiB, kernel_readahead=lambda: 8 * MiB)
        for n in range(40):
            assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB]
        stream = p.stream
        await stream.quiet()
        assert stream.base == 40 * MiB and stream.pos - stream.base >= 4 * MiB
        for n in (36, 37, 38, 39, *range(40, 100)):  # 4 MiB again, then on
            assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB], n
        assert p.stream is stream and be.calls["open_range"] == 1 and be.calls["get_range"] == 4
        assert stats.bytes_down == len(data) + 4 * MiB
        # From further back than what it holds (it holds nothing now: read to the end): replaced.
        for n in (10, 11, 12, 13):
            assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB], n
        assert p.stream is not stream and stream.cancelled and be.calls["open_range"] == 2
        last = p.stream
        p.close()
        await last.quiet()
        assert budget.used == 0

    run(body)


class PolledBodies(MemoryBackend):
    """Streamed bodies that are read as S3's are, on the event loop (`RangeReader.pollable`):
    every byte has arrived already, so a poll never waits.  Records the size of every read."""

    def __init__(self, pollable: bool):
        super().__init__()
        self.pollable, self.sizes = pollable, []

    def open_range(self, key, start, end=None, **cond):
        reader = super().open_range(key, start, end, **cond)
        backend, read = self, reader.read

        def recorded(n):
            backend.sizes.append(n)
            return read(n)

        reader.read = recorded
        return polled(reader) if self.pollable else reader


@one_kind
@pytest.mark.parametrize("readahead, depth", [(0, 2 * MiB), (MiB, 2 * MiB), (16 * MiB, 17 * MiB)])
def test_the_stream_reads_ahead_by_itself_one_piece_beyond_the_kernels_read_ahead(readahead, depth):
    """A body read in a worker thread: its depth is one piece (1 MiB) beyond the kernel's
    read-ahead, at least 2 MiB, however far its reach has grown (up to 64 MiB here); it is read
    on once half the depth is free (a thread hop per chunk).  A read beyond the depth but within
    the reach (the kernel's reads arrive out of order) is still the stream's: it pulls the pump
    there, in chunks no larger than the depth."""
    be = PolledBodies(False)
    data = os.urandom(60 * MiB)
    be.put_bytes("obj", data)
    least = depth // 2

    async def body(nursery):
        p, budget, stats = counted(be, nursery, kernel_readahead=lambda: readahead)
        furthest = 0
        for n in range(30):
            assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB]
            await p.stream.quiet()
            ahead = p.stream.pos - p.stream.read_end
            assert ahead <= depth and budget.used <= depth, n
            if 2 * n * MiB >= depth + 2 * MiB:  # (once the reach, twice the reads, is past the depth)
                assert ahead >= least, n
            furthest = max(furthest, ahead)
        assert furthest == depth and p.stream.ahead == 60 * MiB  # (the reach went on growing)
        assert max(be.sizes) <= depth
        far = 30 * MiB + depth + 3 * MiB  # beyond the depth, within the reach
        assert await p.read(far, MiB) == data[far:far + MiB]
        assert max(be.sizes) <= depth
        for n in (n for n in range(30, 60) if n * MiB != far):  # the reads between, then on
            assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB], n
        assert be.calls["open_range"] == 1 and be.calls["get_range"] == 0
        assert stats.bytes_down == len(data)
        p.close()

    run(body)


@one_kind
@pytest.mark.parametrize("readahead, depth", [(0, 2 * MiB), (MiB, 2 * MiB), (16 * MiB, 17 * MiB)])
def test_a_polled_body_is_read_by_the_reads_themselves(readahead, depth):
    """A body read on the event loop (S3's), once its request and first chunk are in, is read by
    the reads, on their own task: no pump woken per read and nothing fetched beyond the piece a
    read needs (the socket's receive buffer holds what has arrived).  A read beyond what arrived
    but within the reach (the kernel's reads arrive out of order) reads the bytes up to it into
    the buffer, kept for the reads that come for them, in chunks no larger than the depth (nor
    than the pump's largest, the part size)."""
    be = PolledBodies(True)
    data = os.urandom(60 * MiB)
    be.put_bytes("obj", data)

    async def body(nursery):
        p, budget, stats = counted(be, nursery, kernel_readahead=lambda: readahead)
        for n in range(30):
            assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB]
            await p.stream.quiet()
            # the first chunk (the request's) went a little further; nothing since
            assert p.stream.pos == max((n + 1) * MiB, INITIAL_WINDOW), n
            assert budget.used == p.stream.pos - (n + 1) * MiB, n
        assert p.stream.ahead == 60 * MiB  # (the reach went on growing)
        assert max(be.sizes[1:]) <= MiB  # (after the request's first chunk) a piece per poll at most
        polls = stats.backend["read_range"]
        far = 30 * MiB + depth + 3 * MiB  # beyond the depth, within the reach
        assert await p.read(far, MiB) == data[far:far + MiB]
        assert p.stream.pos == far + MiB and budget.used == far + MiB - 30 * MiB  # kept for the reads between
        chunk = min(depth, p.part_size)  # (the pump's largest chunk)
        assert stats.backend["read_range"] - polls == -(-(far + MiB - 30 * MiB) // chunk)  # chunks of the depth
        for n in (n for n in range(30, 60) if n * MiB != far):  # the reads between, then on
            assert await p.read(n * MiB, MiB) == data[n * MiB:(n + 1) * MiB], n
        assert be.calls["open_range"] == 1 and be.calls["get_range"] == 0
        assert stats.bytes_down == len(data) and budget.used == 0
        stream = p.stream
        p.close()
        await stream.quiet()
        assert stream.finished and stream._body is None  # closed by the pump

    run(body)


class GatedBodies(MemoryBackend):
    """Polled bodies whose bytes after the request's first chunk have not arrived until `let_go`:
    a poll finds none and the read waits for its socket.  Records every body and whether it was
    closed, and the request deadline each poll ran under.  ``breaks``: that many bodies break
    (a connection reset) at their first poll; ``hold_resume`` (a threading.Event): a request after
    the first waits in its thread until it is set (``resuming`` is set meanwhile)."""

    def __init__(self, breaks: int = 0, hold_resume: "threading.Event | None" = None):
        super().__init__()
        self.quiet_end, self.other_end = socket.socketpair()
        self.arrived, self.breaks, self.hold_resume = False, breaks, hold_resume
        self.resuming = threading.Event()
        self.bodies, self.deadlines = [], []

    def open_range(self, key, start, end=None, **cond):
        if self.bodies and self.hold_resume is not None:
            self.resuming.set()
            assert self.hold_resume.wait(60)
        reader = super().open_range(key, start, end, **cond)
        reader.closed, close = False, reader.close
        breaking = self.breaks > 0
        self.breaks -= 1

        def closing():
            reader.closed = True
            close()

        def poll_into(view, need=None):
            self.deadlines.append(aio._request_deadline.get())
            if breaking:
                raise Unavailable("connection reset (test)")
            if not self.arrived:
                return None
            data = reader.read(len(view))
            view[:len(data)] = data
            return len(data)

        reader.close, reader.pollable, reader.poll_into = closing, True, poll_into
        reader.wait_fd, reader.wants_write = self.quiet_end.fileno, False
        self.bodies.append(reader)
        return reader

    @classmethod
    def holding(cls, size: int, **kw) -> "tuple[GatedBodies, bytes]":
        """A backend of such bodies holding ``obj``, ``size`` random bytes; and the bytes."""
        be, data = cls(**kw), os.urandom(size)
        be.put_bytes("obj", data)
        return be, data

    def let_go(self):
        self.arrived = True
        self.other_end.send(b"x")

    def close_sockets(self):
        self.quiet_end.close()
        self.other_end.close()


def gated(fn, be):
    try:
        run(fn)
    finally:
        be.close_sockets()


@one_kind
def test_a_read_cancelled_amid_a_polled_body_ends_the_stream():
    """The bytes a cancelled read had taken from the body are lost with it: the stream must not go
    on from where the body stands (the next bytes would be the wrong ones), so it ends, and the
    next read is served from a new request."""
    be, data = GatedBodies.holding(8 * MiB)

    async def body(nursery):
        p, budget, _ = counted(be, nursery)
        assert await p.read(0, MiB) == data[:MiB]  # the request's first chunk
        stream = p.stream
        scope = trio.CancelScope()

        async def reading():  # (the stream itself: the prefetcher would end it on any failure)
            with scope:
                await stream.read(MiB, 2 * MiB)

        nursery.start_soon(reading)
        await trio.testing.wait_all_tasks_blocked()
        assert stream._pulling  # (waiting for the socket)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert stream.cancelled and not stream._pulling
        assert stream.finished and stream._body is None and be.bodies[0].closed and budget.used == 0
        be.let_go()
        assert await p.read(MiB, MiB) == data[MiB:2 * MiB]  # from a new request: the right bytes
        assert be.calls["open_range"] + be.calls["get_range"] == 2
        p.close()

    gated(body, be)


def second_read_failing(nursery, p) -> trio.Event:
    """A read of the second MiB, started in ``nursery``, that must fail with Unavailable (its
    stream is cancelled meanwhile); the event is set once it did."""
    done = trio.Event()

    async def reading():
        with pytest.raises(Unavailable):
            await p.read(MiB, MiB)
        done.set()

    nursery.start_soon(reading)
    return done


@one_kind
def test_a_stream_cancelled_while_a_read_reads_its_body_closes_it_once_the_read_is_done():
    """The pump must not close the body under a read that waits for its socket, and must close it
    (and end) once that read is done, though the read neither failed nor reached the end."""
    be, data = GatedBodies.holding(8 * MiB)

    async def body(nursery):
        p, budget, _ = counted(be, nursery)
        assert await p.read(0, MiB) == data[:MiB]
        stream = p.stream
        done = second_read_failing(nursery, p)  # its bytes arrive, but the stream was cancelled
        await trio.testing.wait_all_tasks_blocked()
        assert stream._pulling
        stream.cancel()  # (what `reclaim` does under pressure, or the end of the file's last handle)
        await trio.testing.wait_all_tasks_blocked()
        assert not be.bodies[0].closed and not stream.finished  # the read still waits on it
        be.let_go()
        await done.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert stream.finished and stream._body is None and be.bodies[0].closed and budget.used == 0

    gated(body, be)


@one_kind
def test_a_stream_cancelled_and_then_its_pulling_reads_task_cancelled_closes_the_body():
    """The stream is cancelled while a read waits for its body's socket (the pump, woken, finds
    the read still reading and waits for it); then the read's own task is cancelled: the pump
    must be woken again, end, and close the body."""
    be, data = GatedBodies.holding(8 * MiB)

    async def body(nursery):
        p, budget, _ = counted(be, nursery)
        assert await p.read(0, MiB) == data[:MiB]
        stream, scope = p.stream, trio.CancelScope()

        async def reading():
            with scope:
                await p.read(MiB, MiB)

        nursery.start_soon(reading)
        await trio.testing.wait_all_tasks_blocked()
        assert stream._pulling
        stream.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert not stream.finished  # the pump waits for the read
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert stream.finished and stream._body is None and be.bodies[0].closed and budget.used == 0

    gated(body, be)


@one_kind
def test_a_stream_cancelled_while_a_read_makes_a_new_request_closes_the_new_body():
    """A read finds the body broken and makes a new request (a thread); the stream is cancelled
    meanwhile.  The pump waits for that read, then closes the body the request opened."""
    hold = threading.Event()
    be, data = GatedBodies.holding(8 * MiB, breaks=1, hold_resume=hold)

    async def body(nursery):
        p, budget, _ = counted(be, nursery)
        assert await p.read(0, MiB) == data[:MiB]
        stream = p.stream
        done = second_read_failing(nursery, p)
        with trio.fail_after(60):
            await trio.to_thread.run_sync(be.resuming.wait)
        stream.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert not stream.finished  # the pump waits for the read's request
        hold.set()
        with trio.fail_after(60):
            await done.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert len(be.bodies) == 2 and be.bodies[0].closed and be.bodies[1].closed
        assert stream.finished and stream._body is None and budget.used == 0

    gated(body, be)


@one_kind
def test_a_read_reads_the_body_without_its_requests_deadline():
    """The body is the stream's: a read reading it is bound as the pump would be (each call by the
    backend's bound), not by its own request's deadline, which for reads queued behind one
    another (the kernel's read-ahead) may be nearly spent.  A read whose deadline passes while
    the body is slow keeps waiting for it; the stream goes on."""
    be, data = GatedBodies.holding(8 * MiB)
    clock = trio.testing.MockClock()

    async def main():
        async with trio.open_nursery() as nursery:
            p = Prefetcher(AsyncBackend(be, timeout=100.0), MemoryBudget(512 * MiB), nursery, lambda: "obj",
                           len(data), be.head("obj").etag, Stats())
            assert await p.read(0, MiB) == data[:MiB]
            stream = p.stream
            result = []

            async def reading():
                with aio.request_deadline(1.0):
                    result.append(await p.read(MiB, MiB))

            nursery.start_soon(reading)
            await trio.testing.wait_all_tasks_blocked()
            assert stream._pulling and be.deadlines and set(be.deadlines) == {None}
            clock.jump(10)  # the read's request deadline is long past; the backend's bound is not
            await trio.testing.wait_all_tasks_blocked()
            assert stream._pulling and stream.error is None and not stream.cancelled
            be.let_go()
            await trio.testing.wait_all_tasks_blocked()
            assert result == [data[MiB:2 * MiB]] and be.calls["open_range"] == 1
            p.close()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main, clock=clock)
    finally:
        be.close_sockets()


@one_kind
def test_the_heap_is_trimmed_when_a_stream_ends_not_while_its_reads_go_on(monkeypatch):
    """A polled body's reads take and give back all their memory at each read: a trim each time
    the budget is idle would make every next piece fault in again."""
    trims = []
    monkeypatch.setattr(stream_module, "_trim_heap", lambda: trims.append("trim"))
    monkeypatch.setattr(stream_module, "_freed_since_trim", 0)
    be = PolledBodies(True)
    data = os.urandom(3 * stream_module.TRIM_AFTER)
    be.put_bytes("obj", data)

    async def body(nursery):
        p, budget, _ = counted(be, nursery)
        for off in range(0, len(data), MiB):
            assert trims == [], off  # 16 MiB and more were freed, the budget idle after each read
            assert await p.read(off, MiB) == data[off:off + MiB]
            assert budget.used == 0 or off == 0
        stream = p.stream
        await stream.quiet()
        assert stream.finished and trims == ["trim"]  # the body was read to its end: the stream ended
        p.close()
        assert trims == ["trim"] and budget.used == 0

    run(body)
