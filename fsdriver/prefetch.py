"""Reading a remote object through an open file: exact ranged GETs, or one streamed GET.

- A read that does not continue the previous one fetches exactly the bytes asked for (one ranged
  GET), so random readers download about one byte per byte read.
- A read at offset 0, or the second read in a row that continues the one before it (one adjacent
  read alone is not a stream: random readers hit neighbours by chance), starts a `Stream`: ONE
  GET from that offset to the end of the object (a plain GET of the whole object from offset 0),
  whose body goes into a bounded buffer that the following reads consume.  Its first chunk,
  read with the request, is just above the kernel's readahead (1 MiB + 128 KiB), so a small file
  (up to that size) comes whole with its one request.  On S3 the rest of the body is read on
  the event loop by the reads themselves, each up to the end of the piece (1 MiB) it needs: the
  socket's receive buffer is the read-ahead.  Elsewhere a pump reads it ahead, one worker
  thread call per chunk, chunks doubling up to ``part_size``, each no larger than the stream's
  depth (below).  Its reach (how far beyond what it received a read is still its own) starts at
  that first window and grows to twice as far as the reads served have got, up to
  ``max_window``; the pump reads by itself only as deep as one piece (1 MiB) beyond the
  kernel's read-ahead ahead of the reads, at least 2 MiB (`MIN_DEPTH`; and no deeper than its
  reach): reads further ahead pull the stream there, in chunks of the depth.  On S3, as on a
  server that copies the whole object for every GET (moto), a sequential reader costs one
  request however large the object; a body that breaks off is resumed from where it stopped.
- The kernel's read-ahead sends a sequential reader's reads concurrently, out of order and up
  to the read-ahead (``--readahead``, or what an admin wrote to sysfs since) ahead of each other.
  The stream keeps every piece no read has taken yet until reads have gone more than
  ``max_window`` past it, and its reach follows how far the reads served have got: a reader
  that goes on sequentially is one GET for any kernel read-ahead up to ``max_window``.  Reads are
  served one at a time, in the order they arrive; reads woken together arrive in any order (trio
  runs a round of woken tasks in either order), so the furthest read of a burst may come first,
  beyond the reach or before the read that starts the stream: a read that would be random first
  lets the reads at lower offsets that wait (once those that arrived with it joined the queue) go
  first, once.  A random reader alone never waits for anyone.
- A read beyond the stream's reach or behind it (below what it still holds) is a random read: an
  exact ranged GET.  The stream goes on past it (for the reads between, or ahead) if it is
  behind by at most ``max_window`` (the kernel reading again pages it dropped from its page
  cache, or a short seek back), or beyond the reach by at most twice the kernel's read-ahead of
  the mount as the kernel has it now (`fsdriver.kernelra`), bounded by ``max_window`` past the
  reads served (the kernel's reads arrive that far ahead before the reads between, once seen
  18 MiB ahead at a 16 MiB read-ahead); each such read is logged at DEBUG ("the stream goes on").
  Otherwise (a seek) it cancels the stream (its body is closed, its buffer released).  Sequential
  reads from a seek start a new stream at their second read in a row, which replaces the old
  one, unless they are behind it by no more than it holds: they catch up with it by exact GETs
  (the kernel reading again a run of pages it dropped; a new stream would download what the old
  one holds again).  An S3 stream, whose reads read its body, holds next to nothing beyond the
  furthest read: such reads replace it from their second (what its socket had received is
  dropped with it).  A random reader downloads what it reads, whatever the kernel's read-ahead.
- Every request is pinned to the etag the file was opened at (If-Match), so a reader never mixes
  two versions of an object: a change underneath gives ESTALE when the next request is made (a
  body already streaming keeps serving the version it started with).
- Memory: read-ahead takes only free memory from the global budget (`try_acquire`); bytes a read
  waits for are taken with `acquire`.  `reclaim` (the budget asks it under pressure, and a read
  gives memory back at its end while anyone waits) drops what no read in progress needs: with no
  read in progress everything, which ends the stream (the next sequential read starts another
  from there); during a read, the pieces below it no read took yet (the stream goes on: a far
  read-ahead read waiting for the pump never waits for memory held for the reads queued behind
  it) and what lies beyond it (which ends the stream), including the chunk the pump is reading
  (its memory comes back when it lands: an idle file's chunk in flight is never kept from a read
  that waits).
"""

import logging
from typing import Callable

from .backend.aio import AsyncBackend
from .backend.base import PART_SIZE
from .memory import MemoryBudget
from .mountconfig import DEFAULTS
from .stats import Stats
from .stream import PIECE, Stream

import trio

log = logging.getLogger("stashfs.prefetch")


class _Releasing:
    """Releases a `trio.Lock` taken before the block, at its end."""

    def __init__(self, lock: trio.Lock):
        self.lock = lock

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc) -> None:
        self.lock.release()


KERNEL_READAHEAD = 128 * 1024
INITIAL_WINDOW = (1 << 20) + KERNEL_READAHEAD
# How far a stream's pump reads ahead of the reads by itself: one piece beyond the kernel's
# read-ahead (how far ahead of each other its reads arrive), at least this (`Stream`'s depth).
MIN_DEPTH = 2 * PIECE


class Prefetcher:
    def __init__(
        self,
        backend: AsyncBackend,
        budget: MemoryBudget,
        nursery: trio.Nursery,
        key: Callable[[], str],
        size: int,
        etag: str | None,
        stats: Stats,
        max_window: int = DEFAULTS.max_prefetch,
        part_size: int = PART_SIZE,
        kernel_readahead: Callable[[], int] = lambda: 0,
    ):
        self.backend, self.budget, self.nursery, self.stats = backend, budget, nursery, stats
        self.key, self.size, self.etag = key, size, etag
        self.kernel_readahead = kernel_readahead  # the mount's setting now (fsdriver.kernelra)
        self.max_window = max(max_window, INITIAL_WINDOW)
        self.part_size = max(part_size, INITIAL_WINDOW)
        self.window = INITIAL_WINDOW  # how far the stream reads ahead of the reader now
        self.stream: Stream | None = None
        self.last_end = 0  # end of the previous read: a read starting here is sequential
        self._lock = trio.Lock()
        self._active_end = 0  # end of the read in progress (what reclaim must keep)
        self._active_off = 0  # its start (below it, what no read took yet may go under pressure)
        self._adjacent = False  # the last random read continued the one before it
        self._queued: list[int] = []  # offsets of the reads not finished (all but one wait their turn)
        budget.add_reclaimer(self.reclaim)

    def close(self) -> None:
        self.budget.remove_reclaimer(self.reclaim)
        self._end_stream()

    def follow(self, old: str, new: str, key: str) -> None:
        """This mount copied the version this reader is pinned to (a chmod onto itself, a rename)
        and the copy has a new etag (S3 gives a copied multipart object one): the same bytes, so
        the reader, and its stream's requests from now on, are pinned to the copy."""
        if self.etag == old:
            self.etag = new
            if self.stream is not None and self.stream.etag == old:
                self.stream.etag, self.stream.key = new, key

    async def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        self._queued.append(off)
        try:
            return await self._read(off, end)
        finally:
            self._queued.remove(off)

    async def _read(self, off: int, end: int) -> bytes:
        gave_way = False
        while True:
            # Taken without a schedule point when free (`async with` yields even then: a task
            # switch per read); the FUSE loop yields between requests anyway.
            try:
                self._lock.acquire_nowait()
            except trio.WouldBlock:
                await self._lock.acquire()
            with _Releasing(self._lock):
                if self.stream is not None and self.stream.covers(off):
                    pass  # inside the stream (or within its reach)
                elif off == self.last_end and (off == 0 or self._adjacent) and not self._catching_up(off):
                    self._start_stream(off)  # a second read in a row that continues the last
                elif not gave_way and await self._reads_before(off):
                    gave_way = True  # served after them, it may be the stream's
                    continue
                else:  # a seek: exact bytes (the stream goes on if it may still be needed)
                    return await self._random(off, end, keep_stream=self._kept_for(off))
                stream = self.stream
                self._active_off, self._active_end = off, end
                try:
                    data = await stream.read(off, end)
                except BaseException:
                    self._end_stream()
                    raise
                finally:
                    self._active_off = self._active_end = 0
                self.window = stream.ahead
                self.last_end = off + len(data)
                self._adjacent = True  # a stream reclaimed meanwhile continues with its next read
                self.stats.prefetch_hit_bytes += len(data)
                if stream.cancelled:  # reclaimed during the read: it kept only what the read needed
                    self._end_stream()
                break
        if self.budget.waiting:
            self.reclaim()  # someone waits for memory: an idle file must not sit on its buffer
        return data

    def _kept_for(self, off: int) -> bool:
        """Whether the stream goes on past an exact read at ``off``: a read behind it by at most
        ``max_window`` (a page the kernel dropped from its page cache and reads again, or a short
        seek back), or one beyond its reach by at most twice the kernel's read-ahead past the
        reads served, bounded by ``max_window`` (the kernel's reads arrive that far ahead of those
        served before the reads between, which are still the stream's).  A second read in a row
        from there starts a stream of its own, which replaces it (unless `_catching_up`)."""
        stream = self.stream
        if stream is None or stream.cancelled:
            return False
        if off < stream.base:
            return stream.base - off <= self.max_window
        return off - stream.read_end <= min(2 * self.kernel_readahead(), self.max_window)

    def _catching_up(self, off: int) -> bool:
        """Whether reads in a row behind the stream go on with exact GETs up to it instead of
        starting a stream that replaces it: while the gap to it is no more than what it holds
        (the kernel reading again a run of pages it dropped, or a short seek back; a new stream
        would download what it holds again)."""
        stream = self.stream
        return (stream is not None and not stream.cancelled and off < stream.base
                and stream.base - off <= min(stream.pos - stream.base, self.max_window))

    async def _reads_before(self, off: int) -> bool:
        """Whether reads at lower offsets wait for their turn, once the reads that arrived with
        this one (woken in the same scheduling round, in any order) have joined the queue."""
        await trio.lowlevel.checkpoint()
        return any(o < off for o in self._queued)

    async def _random(self, off: int, end: int, keep_stream: bool = False) -> bytes:
        """Exactly the bytes asked for, with one ranged GET; ends a stream elsewhere unless told
        to keep it."""
        if self.stream is not None and not self.stream.cancelled:  # each a request of its own
            log.debug("%s: a read at %d %s the stream [%d, %d): an exact ranged GET, the stream %s",
                      self.stream.key, off, "behind" if off < self.stream.base else "beyond the reach of",
                      self.stream.base, self.stream.pos, "goes on" if keep_stream else "ends")
        self._adjacent = off == self.last_end
        if not keep_stream:
            self._end_stream()
            self.window = INITIAL_WINDOW
        self.last_end = end
        self.stats.random_reads += 1
        await self.budget.acquire(end - off)
        try:
            cond = {"if_match": self.etag} if self.etag else {}
            return await self.backend.get_range(self.key(), off, end, **cond)
        finally:
            self.budget.release(end - off)

    def _start_stream(self, off: int) -> None:
        self._end_stream()
        self.window = INITIAL_WINDOW
        self.stream = Stream(
            self.backend, self.budget, self.stats, self.key(), self.etag, off, self.size,
            first=INITIAL_WINDOW, max_chunk=self.part_size, ahead=INITIAL_WINDOW, max_ahead=self.max_window,
            depth=max(MIN_DEPTH, self.kernel_readahead() + PIECE),
        )
        self.stream.begin(self.nursery)

    def _end_stream(self) -> None:
        if self.stream is not None:
            self.stream.release_all()
            self.stream = None

    def reclaim(self) -> int:
        """Drop what no read in progress needs; returns the bytes dropped.

        With no read in progress that is the whole buffer (the next read starts a new stream);
        during a read, what lies beyond what it asked for.
        """
        if self.stream is None:
            return 0
        busy = self._lock.locked()
        freed = self.stream.reclaim(self._active_end if busy else 0, self._active_off if busy else 0)
        if self.stream.cancelled and not self._lock.locked():
            self.stream = None
        return freed
