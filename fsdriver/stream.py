"""One streamed GET of an object, read ahead into a bounded buffer that sequential reads consume.

A `Stream` covers ``[start, end)`` of one version of an object (If-Match on its etag).  A
background task, the *pump*, makes one request (`AsyncBackend.open_range`: a plain GET from
offset 0, else an open range) and reads its first chunk, ``first`` bytes, with it (the request
and a small object's whole content in one thread hop).  Then:

- A body that can be polled on the event loop (`RangeReader.pollable`: S3) is read by the reads
  themselves (`_pull`), on their own task: a read that needs bytes not received yet reads the
  body up to the end of the piece it needs (the kernel's 1 MiB reads: that read's own piece),
  and nothing beyond; the socket's receive buffer holds what has arrived meanwhile (TCP keeps
  the body coming up to that buffer's size).  No task switch to a pump per read, no read-ahead
  buffer: the pump only waits for the stream's end to close the body.
- Any other body is read ahead by the pump in chunks, one worker thread call per chunk, each
  twice the last, up to ``max_chunk`` (and the depth, below).

A chunk is read into buffers allocated on the trio thread, cut at multiples of `PIECE` of the
object's offsets (pieces); a read is served from them: a read that is one whole piece is that
piece itself, a bytearray (the kernel's aligned 1 MiB reads: no copy), otherwise a copy of what
it asks for (bytes).

Flow control (the pump of a body read in a thread): it reads ahead while it is less than its
*depth* beyond the furthest end of a read served, with memory it takes only if free
(`MemoryBudget.try_acquire`); it waits otherwise.  A reader waiting for bytes makes it fetch
them with `MemoryBudget.acquire` (which may reclaim), the whole next chunk if memory is free,
else just what the read needs.  ``ahead`` grows
to twice how far reads have got (the furthest end served, from ``start``), up to ``max_ahead``:
it is how far beyond what was received a read is still the stream's (`covers`).  The depth is
``ahead``, capped at ``depth`` when given, and no chunk is larger than it: the caller sets it just
beyond how far ahead of each other reads arrive (the kernel's read-ahead), so a piece is read
shortly before the read that takes it, while it is still in the CPU's cache, and the heap reuses
the same few pieces (a 64 MiB depth made every sequential read fault in and miss the cache on
64 MiB of pieces; the socket's receive buffer already absorbs the body's bursts).  The pump goes
on once half of the depth is free (a thread hop per chunk), so it stays between half the depth
and the depth ahead.  A read beyond the depth (within the reach) is no different from any read
that waits: it pulls the pump there.  A polled body's read beyond what arrived (within the
reach) reads the bytes up to it itself, in chunks no larger than the pump's (each taken from the
budget as the pump's are), and they are kept for the reads that come for them.  When memory is
short, a read that waits for it (pump or pull) takes the rest of one piece at a time: a whole
chunk might never fit beside what others hold for good (an open record's content).

Reads may come out of order and far ahead of each other: the kernel's async read-ahead sends its
reads (up to its read-ahead, which the stream does not need to know) concurrently.  So a piece is
kept until reads were served all of its bytes, and released then (at the end of the read that
completed it: the whole piece it returned is referred to by nothing else), or once the reads'
furthest end is more than ``max_ahead`` past it (bytes nobody asked for, e.g. in the page cache
already).  Pieces are released from the front of the buffer only (it stays contiguous): a piece
served while one before it was not waits for that one; a read below the buffer is not the
stream's.

`cancel` ends it: the buffer is released at once, the pump stops after the chunk it is reading
(its memory is held until it lands; a read reading a polled body stops likewise), and the body
is closed (the connection is dropped).  A read cancelled amid a polled body (its task, not the
stream) cancels the stream: the bytes it had taken are lost, and the body cannot go on from there.
`reclaim` gives memory back under pressure: with no read in progress everything, else what lies
below the read (pieces no read took yet: the stream goes on, their reads become exact ranged
GETs) and beyond it; dropping beyond cancels the stream, since a streamed body cannot skip a gap.
A body that breaks off is resumed with a new request from where it stopped (only when pinned to
an etag; at most `RESUMES` new requests in a row that delivered no byte), by the pump or by the
read that found it broken; a new request that fails ends the stream.  An error
of the request or of the body is kept and raised by the next read that needs more bytes; a body
that ends before ``end`` (no version pin, the object shrank) gives short reads.
"""

import ctypes
from collections import deque

import trio

from . import allocator
from .backend.aio import AsyncBackend, without_request_deadline
from .backend.base import RangeReader
from .errors import Unavailable
from .memory import MemoryBudget
from .stats import Stats
from .supervise import spawn

# Bodies are read in pieces cut at multiples of this offset: the kernel's FUSE reads (up to 1 MiB,
# aligned) are then each one whole piece, answered without a copy.  A piece is below the mmap
# threshold (fsdriver.allocator): heap memory that is reused, not a fresh mapping whose pages
# fault in again for every piece (a quarter of the daemon's CPU time per GiB read).
PIECE = 1 << 20

# Freed pieces stay in the heap for the next ones; when a stream ends with nothing held any more
# (the budget is idle) after at least this much was freed, the heap's free pages go back to the
# kernel, so the daemon's RSS returns to its size at rest when its files are closed.
TRIM_AFTER = 16 << 20
_freed_since_trim = 0


def _give_back(budget: MemoryBudget, n: int) -> None:
    global _freed_since_trim
    budget.release(n)
    _freed_since_trim += n


def _trim_if_idle(budget: MemoryBudget) -> None:
    """At the end of a stream: trim the heap if nothing is held any more and enough was freed.
    Not while a stream goes on: its reads may take and free all of their memory at each read
    (a polled body), and every trim would make the next pieces fault in again."""
    global _freed_since_trim
    if budget.used == 0 and _freed_since_trim >= TRIM_AFTER:
        _freed_since_trim = 0
        _trim_heap()


def _trim_heap() -> None:
    """glibc's malloc_trim(0): return the free pages of every arena to the kernel (a no-op
    elsewhere).  Quick: it walks the free chunks, which here are few and large."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
            _malloc_trim.argtypes, _malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None



# A body that breaks off (Unavailable) is resumed by a new request from where it stopped, pinned to
# the same etag, at most this many times in a row without a byte delivered in between (botocore
# retries requests, not bodies; a body that breaks after each few megabytes still makes progress).
RESUMES = 2


class Stream:
    def __init__(
        self,
        backend: AsyncBackend,
        budget: MemoryBudget,
        stats: Stats,
        key: str,
        etag: str | None,
        start: int,
        end: int,
        *,
        first: int,
        max_chunk: int,
        ahead: int,
        max_ahead: int,
        depth: int | None = None,
    ):
        self.backend, self.budget, self.stats = backend, budget, stats
        self.key, self.etag, self.end = key, etag, end
        self.start = start  # where the stream began (its request's range)
        self.chunks: deque[tuple[int, bytearray]] = deque()  # (offset, piece), contiguous, ascending
        self.pos = start  # end of the bytes received so far
        self.held = 0  # budget bytes held by self.chunks
        self.in_flight = 0  # budget bytes taken for the chunk the pump is reading (from self.pos)
        self.read_end = start  # the furthest end of a read served: read-ahead is counted from here
        # piece offset -> the ranges of it reads were served, merged (a read may repeat or overlap
        # another: a piece is done only once every byte of it was served)
        self.served: dict[int, list[tuple[int, int]]] = {}
        self.wanted = start  # a read in progress waits for the bytes up to here
        self._wanted_from = start  # ... from here (what of the buffer it holds while it waits)
        self.chunk = max(first, 1)
        self.max_chunk = max(max_chunk, first, 1)
        self.ahead, self.max_ahead = ahead, max(max_ahead, ahead)
        self.depth = depth  # how far the pump reads ahead by itself at most (None: ``ahead``)
        self._polled = False  # its body is read on the event loop (`RangeReader.pollable`)
        self.error: BaseException | None = None
        self.cancelled = False
        self.finished = False  # the pump ended (all received, an error, or cancelled)
        self._arrived = trio.Event()  # wakes the reader: bytes, an error or the end arrived
        self._wake = trio.Event()  # wakes the pump: a read wants bytes, memory freed, cancelled
        self._quiet = trio.Event()  # set while the pump waits without a request in flight
        # A polled body, once its request and first chunk are in: the reads read it themselves
        # (`_pull`); the pump only waits for the stream's end to close it.
        self._body: RangeReader | None = None
        self._pulling = False  # a read is reading the body
        self._resumed = 0  # new requests made since the body last delivered bytes

    # -- the reader's side (trio thread; reads of one stream are serialised by their caller) ------

    @property
    def base(self) -> int:
        """The lowest offset the stream can still serve."""
        return self.chunks[0][0] if self.chunks else self.pos

    def covers(self, off: int) -> bool:
        """Whether a read at ``off`` is this stream's: in its buffer, or at most ``ahead`` bytes
        beyond what it received (it gets there by itself; ``ahead`` is at least twice as far as
        reads have got, so it follows how far ahead of each other they arrive).  A failed stream
        covers its position: the read raises the error."""
        return not self.cancelled and self.base <= off <= self.pos + self.ahead

    async def read(self, off: int, end: int) -> bytes:
        """Bytes ``[off, end)`` (``end`` at most ``self.end``; fewer if the body ended early)."""
        if end > self.pos:
            self.wanted, self._wanted_from = end, off
            while end > self.pos and self.error is None and not self.finished and not self.cancelled:
                if self._body is not None:
                    await self._pull(off, end)
                    if self.pos >= self.end:
                        break  # the body ended (early: short reads)
                    continue
                self._poke()
                self._arrived = trio.Event()
                await self._arrived.wait()
            if end > self.pos and self.error is not None:
                raise self.error
            if self.cancelled and (not self.chunks or self.chunks[0][0] > off):
                raise Unavailable(f"{self.key}: the read-ahead was cancelled during the read", self.key)
        end = min(end, self.pos)
        self.read_end = max(self.read_end, end)
        self.ahead = min(max(self.ahead, 2 * (self.read_end - self.start)), self.max_ahead)
        if self._body is None:
            self._poke()  # the pump may read ahead again
        out = []
        for cstart, data in self.chunks:
            cend = cstart + len(data)
            if cend <= off:
                continue
            if cstart >= end:
                break
            lo, hi = max(off, cstart) - cstart, min(end, cend) - cstart
            self._mark_served(cstart, lo, hi)
            out.append(data if lo == 0 and hi == len(data) else memoryview(data)[lo:hi])
        if len(out) == 1:
            data = out[0] if isinstance(out[0], bytearray) else bytes(out[0])
        else:
            data = b"".join(out)
        self._consume()  # (a whole piece returned is released: nothing else refers to it)
        return data

    def _holding(self, off: int) -> int:
        """The bytes of the buffer a read from ``off`` needs (it holds them while it waits)."""
        return sum(len(data) for cstart, data in self.chunks if cstart + len(data) > off)

    async def _pull(self, off: int, end: int) -> None:
        """Read the next bytes of a polled body on this task: through the piece that holds
        ``end - 1``, in a chunk no larger than the pump's (the depth and ``max_chunk``, cut where
        a piece ends; the rest of one piece when memory is short).
        The bytes go into the buffer as the pump's would; the budget, the bound, the new request
        after a break and the error kept for the reads are the pump's."""
        step = max(min(self.ahead if self.depth is None else min(self.ahead, self.depth), self.max_chunk), PIECE)
        stop = min(self.end, -(-end // PIECE) * PIECE, (self.pos + step) // PIECE * PIECE)
        n = stop - self.pos
        if not self.budget.try_acquire(n):
            # Memory is short: the rest of the next piece alone, waited for (it may reclaim: the
            # pieces below the read, or this stream, which cancels it).  Never more at once: what
            # others hold for good (an open record's `try_hold`) may leave less free than the
            # whole step for ever, and a read far ahead gets there piece by piece.
            n = min(n, (self.pos // PIECE + 1) * PIECE - self.pos)
            await self.budget.acquire(n, holding=self._holding(off))
        if self.cancelled or self._body is None:
            _give_back(self.budget, n)
            return
        self._pulling = True
        self.in_flight = credit = n
        settled = False  # the body is where ``self.pos`` says, or the stream failed
        try:
            # The stream's work, bound as the pump's is (each call by the backend's bound), not by
            # this read's request deadline: reads queued behind one another (the kernel's
            # read-ahead) would find theirs spent, and a stall would end the stream, not resume it.
            with without_request_deadline():
                buffers = self._buffers(n)
                try:
                    got = await self.backend.read_range(self._body, buffers)
                except Unavailable:  # the body broke off (a reset, the bound): ask again from here
                    if self.cancelled or not self.etag or self._resumed >= RESUMES:
                        raise  # (without a version pin, a new request could mix versions)
                    self._resumed += 1
                    body, self._body = self._body, None
                    body.close()
                    buffers = self._buffers(n)  # never those the abandoned read may still fill
                    self._body, got = await self.backend.open_range(
                        self.key, self.pos, None, into=buffers, if_match=self.etag)
                if got:  # (the new request's first bytes too: a body that breaks after
                    self._resumed = 0  # delivering goes on; the limit is per failure streak)
            credit = self._deliver(buffers, got, n)
            settled = True
        except Exception as e:  # kept for the reads that need these bytes
            self.error = e
            settled = True
        finally:
            if credit:
                _give_back(self.budget, credit)
            self.in_flight = 0
            self._pulling = False
            if not settled:  # cancelled amid the body: the bytes it took are lost, so it ends
                self.cancel()
            if self.cancelled or self.error is not None or self.pos >= self.end:
                self._poke()  # the stream is over: the pump closes the body (also when it was
                # cancelled before: the pump, woken then, found this read pulling and waits)

    def _mark_served(self, cstart: int, lo: int, hi: int) -> None:
        if cstart not in self.served:  # (the usual case: one read per piece)
            self.served[cstart] = [(lo, hi)]
            return
        merged: list[tuple[int, int]] = []
        for a, b in sorted(self.served.get(cstart, []) + [(lo, hi)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.served[cstart] = merged

    def _consume(self) -> None:
        """Release the pieces at the front of the buffer that reads were served whole, or that
        reads went past by more than ``max_ahead`` (skipped: never read, or read elsewhere)."""
        past = self.read_end - self.max_ahead
        while self.chunks:
            cstart, data = self.chunks[0]
            if self.served.get(cstart) != [(0, len(data))] and cstart + len(data) > past:
                break
            self.chunks.popleft()
            self.served.pop(cstart, None)
            self._release(len(data))

    def _release(self, n: int) -> None:
        self.held -= n
        _give_back(self.budget, n)

    def cancel(self) -> None:
        """End the stream: release the buffer now; the pump stops and closes the body."""
        if self.cancelled:
            return
        self.cancelled = True
        while self.chunks:
            self._release(len(self.chunks.pop()[1]))
        self.served.clear()
        self._poke()
        self._arrived.set()
        _trim_if_idle(self.budget)

    def reclaim(self, keep_below: int, drop_before: int = 0) -> int:
        """Drop the chunks that end at or below ``drop_before`` (bytes below the read in progress
        that no read took yet: reads of them become exact ranged GETs) and those that start at or
        above ``keep_below`` (0: all), and the chunk in flight if it starts there too (its memory
        comes back when it lands); returns the bytes dropped now.  Dropping from the front leaves
        the stream going; dropping beyond cancels it (what is below stays for the read in
        progress).  Without the first, a read far ahead that waits for the pump while the budget
        is full of the pieces below it, whose reads wait behind it, would wait for ever."""
        freed = 0
        while self.chunks and self.chunks[0][0] + len(self.chunks[0][1]) <= drop_before:
            cstart, data = self.chunks.popleft()
            self.served.pop(cstart, None)
            self._release(len(data))
            freed += len(data)
        cancelled = 0
        while self.chunks and self.chunks[-1][0] >= keep_below:
            n = len(self.chunks.pop()[1])
            self._release(n)
            cancelled += n
        freed += cancelled
        # A chunk in flight beyond it is dropped too: it is given back when it lands (else it
        # would land as buffer no read may ever take, and the waiter wait for ever).
        if cancelled or (self.in_flight and self.pos >= keep_below):
            kept = list(self.chunks)
            self.chunks.clear()  # cancel() must not release what the read in progress keeps
            self.cancel()
            self.chunks.extend(kept)
        return freed

    def release_all(self) -> None:
        """After the last read of a cancelled stream: give back what it kept for that read."""
        self.cancel()
        while self.chunks:
            self._release(len(self.chunks.pop()[1]))
        _trim_if_idle(self.budget)

    async def quiet(self) -> None:
        """Wait until the pump has no request in flight (for tests: nothing more is fetched
        until a read or a cancel wakes it).  A read reading a polled body (`_pull`) is not the
        pump: its request ends with the read."""
        while not self.finished and not self._quiet.is_set():
            await self._quiet.wait()

    # -- the pump ----------------------------------------------------------------------------

    def begin(self, nursery: trio.Nursery) -> None:
        spawn(nursery, self.stats, "prefetch", self._pump)

    async def _pump(self) -> None:
        reader: RangeReader | None = None
        credit = 0  # budget taken for the chunk being read
        try:
            credit = await self._credit()
            if credit:
                cond = {"if_match": self.etag} if self.etag else {}
                # A whole object from its start: a plain GET (no Range header).
                end = None if self.start == 0 or self.etag else self.end
                buffers = self._buffers(credit)
                reader, n = await self.backend.open_range(self.key, self.start, end, into=buffers, **cond)
                self._polled = reader.pollable
                if self._polled:  # the reads read the rest themselves (`_pull`)
                    self._body, reader = reader, None
                credit = self._deliver(buffers, n, credit)
                await self._lend()
            while reader is not None and credit == 0 and self.pos < self.end and not self.cancelled:
                credit = await self._credit()
                if credit and not self.cancelled:
                    buffers = self._buffers(credit)
                    try:
                        n = await self.backend.read_range(reader, buffers)
                    except Unavailable:  # the body broke off (a reset, a timeout): ask again
                        if not self.etag or self._resumed >= RESUMES:
                            raise  # (without a version pin, a new request could mix versions)
                        self._resumed += 1
                        reader.close()  # (a read abandoned at the bound still runs: it closes it)
                        reader = None
                        buffers = self._buffers(credit)  # never those that read may still fill
                        reader, n = await self.backend.open_range(
                            self.key, self.pos, None, into=buffers, if_match=self.etag)
                        self._polled = reader.pollable
                    if n:  # (as in `_pull`: the limit is per failure streak, not per stream)
                        self._resumed = 0
                    credit = self._deliver(buffers, n, credit)
        except Exception as e:  # handed to the reader that needs the bytes
            self.error = e
        finally:
            if credit:
                _give_back(self.budget, credit)
            self.in_flight = 0
            self.finished = True
            self._quiet.set()
            self._arrived.set()
            if reader is not None:
                reader.close()  # drops the connection unless the body was read to its end
            if self._body is not None:
                self._body.close()
                self._body = None
            _trim_if_idle(self.budget)

    async def _lend(self) -> None:
        """While the reads read the body (`_pull`): wait until no read is reading it any more (it
        may be waiting for its socket, or making a new request) and the stream is over (read to
        its end, failed or cancelled); the pump then closes it.  A read that ends a stream wakes
        the pump (`_poke`); others do not."""
        while self._pulling or (self._body is not None and not (
                self.cancelled or self.pos >= self.end or self.error is not None)):
            self._wake = trio.Event()
            self._quiet.set()
            await self._wake.wait()

    def _buffers(self, n: int) -> list[bytearray]:
        """Buffers for the next ``n`` bytes, cut at multiples of `PIECE` of the object's offsets,
        allocated here on the trio thread (see `RangeReader.read_into`)."""
        out, pos, end = [], self.pos, self.pos + n
        while pos < end:
            cut = min(end, (pos // PIECE + 1) * PIECE)
            out.append(allocator.new_buffer(cut - pos))
            pos = cut
        return out

    def _deliver(self, buffers: list[bytearray], n: int, credit: int) -> int:
        """Keep the first ``n`` bytes the body gave in ``buffers`` for ``credit`` bytes of budget;
        returns the credit still held (all of it if the stream was cancelled meanwhile)."""
        self.in_flight = 0
        if self.cancelled:
            return credit
        left = n
        for buf in buffers:
            if left <= 0:
                break
            if len(buf) > left:
                del buf[left:]
            self.chunks.append((self.pos, buf))
            self.pos += len(buf)
            left -= len(buf)
        self.held += n
        if n < credit:  # the body ended early
            _give_back(self.budget, credit - n)
            self.end = self.pos
        self._arrived.set()
        return 0

    def _poke(self) -> None:
        """Wake the pump.  It is not quiet until it has looked at what woke it (a test waiting in
        `quiet` right after a read must not see the pump's earlier idle state and go on while the
        pump is about to read further ahead)."""
        self._busy()
        self._wake.set()

    def _busy(self) -> None:
        if self._quiet.is_set():  # waiters of quiet() hold the unset one: never replace that
            self._quiet = trio.Event()

    async def _credit(self) -> int:
        """Memory for the next chunk (0: the stream ended or was cancelled): the whole chunk if
        free, within the read-ahead window unless a read waits; if a read waits and memory is not
        free, what that read needs, waiting for it."""
        while True:
            if self.cancelled or self.pos >= self.end:
                return 0
            depth = self.ahead if self.depth is None else min(self.ahead, self.depth)
            size = min(self.chunk, depth, self.end - self.pos)
            waiting = self.wanted > self.pos
            room = self.read_end + depth - self.pos  # what the read-ahead window has free
            # Read ahead in whole chunks (or half the depth), not a thread hop per read consumed;
            # a body read on the loop costs no hop: it goes on as soon as a piece is free.
            useful = waiting or room >= min(size, PIECE if self._polled else depth // 2)
            if not waiting:
                size = min(size, room)
            cut = (self.pos + size) // PIECE * PIECE
            if self.pos < cut < self.pos + size < self.end and self.pos > self.start:
                size = cut - self.pos  # chunks end where pieces do: reads get whole pieces
            if size > 0 and useful and self.budget.try_acquire(size):
                self.chunk = min(self.chunk * 2, self.max_chunk)
                self._busy()
                self.in_flight = size
                return size
            if waiting:  # memory is short: what the read needs, at most the rest of a piece
                need = min(self.wanted - self.pos, size, (self.pos // PIECE + 1) * PIECE - self.pos)
                self._busy()
                await self.budget.acquire(need, holding=self._holding(self._wanted_from))
                self.in_flight = need
                return need
            self._wake = trio.Event()
            self._quiet.set()
            await self._wake.wait()
