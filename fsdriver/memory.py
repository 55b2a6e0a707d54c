"""One global memory budget for prefetched data and transfer buffers.

Speculative work (prefetch beyond what a reader asked for) only takes memory that is free
(`try_acquire`).  Work a request is waiting for takes it with `acquire`, which first asks the
registered reclaimers (prefetchers) to drop data nobody asked for yet and otherwise waits: I/O
slows down instead of the daemon growing.  A single request larger than the whole budget is let
through alone, so nothing can wait forever.
"""

from typing import Callable

import trio


class MemoryBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._freed = trio.Event()
        self._reclaimers: set[Callable[[], int]] = set()

    def add_reclaimer(self, fn: Callable[[], int]) -> None:
        self._reclaimers.add(fn)

    def remove_reclaimer(self, fn: Callable[[], int]) -> None:
        self._reclaimers.discard(fn)

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def try_acquire(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self._take(n)
        return True

    async def acquire(self, n: int) -> None:
        if self.used + n > self.limit:
            for reclaim in list(self._reclaimers):
                reclaim()
                if self.used + n <= self.limit:
                    break
        while self.used + n > self.limit and self.used > 0:
            await self._freed.wait()
        self._take(n)

    def release(self, n: int) -> None:
        self.used -= n
        assert self.used >= 0, "memory budget released more than it acquired"
        self._freed.set()  # wake every waiter; each re-checks
        self._freed = trio.Event()
