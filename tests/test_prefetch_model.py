"""The prefetcher against the object's bytes, with generated reads (hypothesis): bursts of reads
as the kernel sends them (runs that continue the last read, in any order, seeks, reads back,
reads far ahead), over bodies that arrive in pieces of any size, wait for their socket and break
off, with memory budgets small and large and other files taking memory meanwhile.

What must hold whatever the reads: every read gets exactly the object's bytes; no read waits for
ever; when the file is closed every stream ends, every body it opened is closed and the budget
holds nothing; the budget never holds more than its limit, or one request larger than all of it
alone (`MemoryBudget.acquire`); a body is never read after it was closed.  (The request counts
for given patterns are the hand-picked tests' job: tests/test_prefetch_stream.py.)"""

import os
import random
import socket

import pytest
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from fsdriver.backend.aio import AsyncBackend
from fsdriver.backend.base import RangeReader
from fsdriver.backend.memory import MemoryBackend
from fsdriver.errors import Unavailable
from fsdriver.memory import MemoryBudget
from fsdriver.prefetch import Prefetcher
from fsdriver.stats import Stats

KiB, MiB = 1 << 10, 1 << 20
OBJECT = os.urandom(14 * MiB + 4321)  # every example reads a prefix of it


class UnevenBodies(MemoryBackend):
    """Streamed bodies read in a worker thread (``polled`` False) or on the event loop as S3's
    are: a poll gives any part of what was asked for, or nothing yet (the task then waits for the
    body's socket, which is always ready: no real wait).  The bodies numbered in ``breaking`` (in
    the order they were opened) break off once (a connection reset), after they delivered bytes."""

    def __init__(self, polled: bool, breaking: set, seed: int):
        super().__init__()
        self.polled, self.breaking, self.rnd = polled, breaking, random.Random(seed)
        self.bodies: list["UnevenBody"] = []
        self.misuse: list[str] = []  # what the stream did with a body that it must not

    def open_range(self, key, start, end=None, **cond):
        body = UnevenBody(super().open_range(key, start, end, **cond), self, len(self.bodies) in self.breaking)
        self.bodies.append(body)
        return body

    def close_sockets(self) -> None:
        for body in self.bodies:
            body.sockets[0].close()
            body.sockets[1].close()


class UnevenBody(RangeReader):
    def __init__(self, inner, owner: UnevenBodies, breaks: bool):
        self.inner, self.owner, self.breaks = inner, owner, breaks
        self.pollable, self.closed, self.delivered = owner.polled, False, 0
        self.sockets = socket.socketpair()
        self.sockets[1].send(b"x")  # never read: the socket stays readable

    def _maybe_break(self) -> None:
        if self.closed:
            self.owner.misuse.append("a body read after it was closed")
        if self.breaks and self.delivered and self.owner.rnd.random() < 0.4:
            self.breaks = False
            raise Unavailable("connection reset (test)")

    def read(self, n: int) -> bytes:  # (in a worker thread: never short but at the end)
        self._maybe_break()
        data = self.inner.read(n)
        self.delivered += len(data)
        return data

    def poll_into(self, view, need=None):
        self._maybe_break()
        rnd = self.owner.rnd
        if rnd.random() < 0.2:
            return None  # nothing arrived yet
        n = len(view) if rnd.random() < 0.5 else rnd.randint(1, len(view))
        data = self.inner.read(n)
        view[: len(data)] = data
        self.delivered += len(data)
        return len(data)

    def wait_fd(self) -> int:
        return self.sockets[0].fileno()

    def close(self) -> None:
        self.closed = True
        self.inner.close()


# A burst: where it starts (relative to the end of the last read), how many reads, their size,
# the order they are sent in, and whether another file takes memory meanwhile: by `acquire`, or
# by reads of its own stream (a second prefetcher on the same budget, read on from burst to burst).
WHERE = st.sampled_from(["next", "next", "next", "seek", "back", "ahead"])
bursts = st.lists(
    st.tuples(WHERE, st.integers(0, 8 * MiB), st.integers(1, 8), st.sampled_from([4 * KiB, 128 * KiB, MiB, MiB, 3000]),
              st.integers(0, 2**32 - 1), st.sampled_from([None, "acquire", "another file"])),
    min_size=1, max_size=14)


def burst_start(where: str, distance: int, last_end: int, size: int) -> int:
    if where == "next":
        return last_end
    if where == "seek":
        return distance % max(size, 1)
    if where == "back":
        return max(last_end - distance, 0)
    return last_end + distance  # ahead (past the end of the object too)


async def pressure(budget: MemoryBudget, n: int) -> None:
    """Another file's read: memory taken as work a request waits for takes it, then given back."""
    await budget.acquire(n)
    await trio.lowlevel.checkpoint()
    budget.release(n)


async def read_on(other: Prefetcher, at: list) -> None:
    """The other file's next 4 MiB, read sequentially (from its start again at its end)."""
    for _ in range(4):
        if at[0] >= len(OBJECT):
            at[0] = 0
        assert await other.read(at[0], MiB) == OBJECT[at[0]:at[0] + MiB], at[0]
        at[0] += MiB


async def play(be: UnevenBodies, size: int, budget: MemoryBudget, plan: list, **kw) -> list:
    """Runs ``plan`` through a prefetcher of the object's first ``size`` bytes (and of the whole
    object as "another file"); returns the streams they started (all ended and quiet)."""
    largest = [0]
    acquire = budget.acquire

    async def recorded(n, **opts):
        largest[0] = max(largest[0], n)
        await acquire(n, **opts)

    budget.acquire = recorded
    streams = []

    def prefetcher(key: str, nursery) -> Prefetcher:
        info = be.head(key)
        p = Prefetcher(AsyncBackend(be), budget, nursery, lambda: key, info.size, info.etag, Stats(), **kw)
        start = p._start_stream

        def start_recorded(off):
            start(off)
            streams.append(p.stream)

        p._start_stream = start_recorded
        return p

    with trio.fail_after(60):  # a bound for the failure only: no read waits
        async with trio.open_nursery() as nursery:
            p, other, other_at = prefetcher("obj", nursery), prefetcher("other", nursery), [0]
            last_end = 0
            for where, distance, count, step, order_seed, squeeze in plan:
                first = burst_start(where, distance, last_end, size)
                rest = [(first + i * step, step) for i in range(1, count)]
                random.Random(order_seed).shuffle(rest)
                reads = [(first, step), *rest]  # the first is sent first, the rest in any order
                got = {}

                async def one(off, n):
                    got[off] = await p.read(off, n)

                async with trio.open_nursery() as readers:
                    for off, n in reads:
                        readers.start_soon(one, off, n)
                    if squeeze == "acquire":
                        readers.start_soon(pressure, budget, budget.limit // 2)
                    elif squeeze == "another file":
                        readers.start_soon(read_on, other, other_at)
                for off, n in reads:
                    assert got[off] == OBJECT[off:min(off + n, size)], (where, off, n)
                last_end = first + count * step
            p.close()
            other.close()
            for s in streams:
                await s.quiet()
            nursery.cancel_scope.cancel()
    assert all(s.finished for s in streams)
    # (a request is let through beyond the limit only when all in use is held by waiters or for
    # good: `overdrawn`; each such request of a read is at most the rest of a piece)
    assert budget.peak <= max(budget.limit, largest[0]) + budget.overdrawn * MiB, (budget.peak, largest[0])
    return streams


@pytest.mark.parametrize("polled", [False, True], ids=["thread", "polled"])
@settings(max_examples=int(os.environ.get("STASHFS_MODEL_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(size=st.one_of(st.integers(0, 3 * MiB), st.integers(3 * MiB, len(OBJECT))),
       limit=st.sampled_from([2 * MiB, 4 * MiB, 9 * MiB, 64 * MiB]),
       max_window=st.sampled_from([4 * MiB, 16 * MiB]),
       readahead=st.sampled_from([0, 128 * KiB, MiB, 4 * MiB, 16 * MiB]),
       held=st.booleans(),
       breaking=st.sets(st.integers(0, 5), max_size=3),
       seed=st.integers(0, 2**32 - 1),
       plan=bursts)
def test_every_read_gets_the_objects_bytes_and_everything_is_given_back(
        polled, size, limit, max_window, readahead, held, breaking, seed, plan):
    """(``held``: an open record holds a quarter of the budget throughout: `MemoryBudget.try_hold`,
    memory no reclaim can free.)"""
    be = UnevenBodies(polled, breaking, seed)
    be.put_bytes("obj", OBJECT[:size])
    be.put_bytes("other", OBJECT)
    budget = MemoryBudget(limit)
    if held:
        assert budget.try_hold(limit // 4)
    try:
        trio.run(lambda: play(be, size, budget, plan, max_window=max_window, part_size=8 * MiB,
                              kernel_readahead=lambda: readahead))
    finally:
        be.close_sockets()
    if held:
        budget.drop_hold(limit // 4)
    assert budget.used == 0 and budget.waiting == 0
    assert not be.misuse, be.misuse
    assert all(body.closed for body in be.bodies), [(i, b.delivered) for i, b in enumerate(be.bodies) if not b.closed]
