"""Reading a remote object through an open file: ranged GETs and a sequential prefetcher.

- A read that does not continue the previous one fetches exactly the bytes asked for (one ranged
  GET), so random readers download about one byte per byte read.
- Two reads in a row that each continue the previous one (or a read at offset 0) start a prefetch
  window just above the kernel's readahead (1 MiB + 128 KiB); one adjacent read alone is not a
  stream (random readers hit neighbours by chance).  Each consumed part doubles the window, up to
  ``max_window``; the window is fetched as parallel ranged GETs of up to ``part_size``.  A seek
  drops what was fetched ahead and resets the window.
- Every part is pinned to the etag the file was opened at (If-Match), so a reader never mixes two
  versions of an object: a change underneath gives ESTALE.
- Memory: a part the reader is waiting for is taken from the global budget with `acquire`
  (waits); parts fetched ahead use `try_acquire` and are dropped first under pressure (`reclaim`).
"""

from collections import deque
from typing import Callable

import trio

from .backend.aio import AsyncBackend
from .backend.base import PART_SIZE
from .memory import MemoryBudget
from .mountconfig import DEFAULTS
from .stats import Stats
from .supervise import spawn

KERNEL_READAHEAD = 128 * 1024
INITIAL_WINDOW = (1 << 20) + KERNEL_READAHEAD


class _Part:
    __slots__ = ("start", "end", "data", "error", "done", "dropped")

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()
        self.dropped = False


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
    ):
        self.backend, self.budget, self.nursery, self.stats = backend, budget, nursery, stats
        self.key, self.size, self.etag = key, size, etag
        self.max_window = max(max_window, INITIAL_WINDOW)
        self.part_size = part_size
        self.window = INITIAL_WINDOW
        self.parts: deque[_Part] = deque()
        self.next_fetch = 0  # where the next prefetched part starts
        self.last_end = 0  # end of the previous read: a read starting here is sequential
        self._lock = trio.Lock()
        self._active_end = 0  # end of the read in progress (what reclaim must keep)
        self._adjacent = False  # the last direct read continued the one before it
        budget.add_reclaimer(self.reclaim)

    def close(self) -> None:
        self.budget.remove_reclaimer(self.reclaim)
        while self.parts:
            self._drop(self.parts.pop())

    async def _get(self, start: int, end: int) -> bytes:
        cond = {"if_match": self.etag} if self.etag else {}
        return await self.backend.get_range(self.key(), start, end, **cond)

    async def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        async with self._lock:
            if self.parts and self.parts[0].start <= off < self.parts[-1].end:
                pass  # inside the prefetched stream
            elif off == self.last_end and (off == 0 or self._adjacent):
                self._reset(off)  # a second read in a row that continues the last: a stream
            else:
                self._adjacent = off == self.last_end
                self._reset(off)
                self.window = INITIAL_WINDOW
                self.last_end = end
                self.stats.random_reads += 1
                await self.budget.acquire(end - off)
                try:
                    return await self._get(off, end)
                finally:
                    self.budget.release(end - off)
            while self.parts and self.parts[0].end <= off:
                self._drop(self.parts.popleft())
                self.window = min(self.window * 2, self.max_window)
            self._active_end = end
            if not self.parts:
                self.next_fetch = off  # everything was reclaimed: continue from here
            await self._schedule(off, end)
            # Only the parts this read needs: a read-ahead part reclaimed meanwhile is not kept alive.
            needed = [part for part in self.parts if part.start < end]
            out = []
            for part in needed:
                await part.done.wait()
                if part.error is not None:
                    self._reset(off)
                    raise part.error
                view = memoryview(part.data)
                out.append(view[max(off, part.start) - part.start : min(end, part.end) - part.start])
            self.last_end = end
            data = b"".join(out)  # the reply's one copy (slicing the views copies nothing)
            self.stats.prefetch_hit_bytes += len(data)
        if self.budget.waiting:
            self.reclaim()  # someone waits for memory: an idle file must not sit on its parts
        return data

    async def _schedule(self, off: int, needed_end: int) -> None:
        """Fetch parts up to the window ahead of ``off``; parts below ``needed_end`` are required."""
        target = min(max(off + self.window, needed_end), self.size)
        while self.next_fetch < target:
            start = self.next_fetch
            end = min(start + min(self.part_size, self.window), self.size)
            if start < needed_end:
                self._active_end = needed_end
                await self.budget.acquire(end - start)
                if self.next_fetch != start:  # a reclaim moved the stream meanwhile: plan again
                    self.budget.release(end - start)
                    continue
            elif not self.budget.try_acquire(end - start):
                break  # no free memory to read ahead: fetch on demand later
            part = _Part(start, end)
            self.parts.append(part)
            self.next_fetch = end
            # _fetch hands its own failures to the reader; the supervisor is the safety net.
            spawn(self.nursery, self.stats, "prefetch", self._fetch, part)

    async def _fetch(self, part: _Part) -> None:
        try:
            part.data = await self._get(part.start, part.end)
        except Exception as e:  # handed to the reader that waits for this part
            part.error = e
        finally:
            part.done.set()
            if part.dropped:
                self.budget.release(part.end - part.start)

    def _drop(self, part: _Part) -> None:
        if part.dropped:
            return
        part.dropped = True
        if part.done.is_set():
            self.budget.release(part.end - part.start)

    def _reset(self, off: int) -> None:
        while self.parts:
            self._drop(self.parts.pop())
        self.next_fetch = off

    def reclaim(self) -> int:
        """Drop every part no read in progress needs; returns the bytes dropped.

        With no read in progress that is all of them (the next read fetches what it needs again);
        during a read, the parts beyond what it asked for.
        """
        keep_below = self._active_end if self._lock.locked() else 0
        freed = 0
        while self.parts and self.parts[-1].start >= keep_below:
            part = self.parts.pop()
            freed += part.end - part.start
            self._drop(part)
            self.next_fetch = part.start
        if not self.parts:
            self.next_fetch = self.last_end
        return freed
