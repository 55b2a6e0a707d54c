"""One global memory budget for prefetched data and transfer buffers.

Speculative work (prefetch beyond what a reader asked for) only takes memory that is free
(`try_acquire`).  Work a request is waiting for takes it with `acquire`, which asks the registered
reclaimers (prefetchers) to drop everything no read in progress needs, and otherwise waits until
memory is released: I/O slows down instead of the daemon growing.  Prefetchers also give their
memory back at the end of a read while anyone is waiting, so idle open files never hold memory
others need.  A single request larger than the whole budget is let through alone.

A read that waits for memory may hold some already that it cannot give back before it gets more
(the first pieces of what it reads: ``holding``).  When everything in use is held so, by the
waiters or for good (`try_hold`), nothing will ever be released: the request is then let through
beyond the limit instead of every waiter waiting for ever.  Readers ask for at most the rest of
one piece (1 MiB) when they wait, so the excess is at most a piece per read waiting.
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
        self.waiting = 0  # tasks blocked in acquire: idle holders should give memory back
        self.held = 0  # of ``used``: taken by `try_hold` (kept until a handle closes, not reclaimable)
        self.stuck = 0  # of ``used``: held by the tasks waiting in `acquire` (their ``holding``)
        self.overdrawn = 0  # requests let through beyond the limit (nothing would be released)

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

    def could_hold(self, n: int) -> bool:
        """Whether `try_hold` of ``n`` bytes would succeed now."""
        return self.held + n <= self.limit // 4 and self.used + n <= self.limit

    def try_hold(self, n: int) -> bool:
        """Take ``n`` bytes for as long as a handle stays open (a record read whole at its open), if
        free now and if such holdings stay within a quarter of the limit: what they hold is given
        back only when their owners close, so the rest is kept for work in progress, which waits
        for memory (and would wait for ever on holdings the waiter's own process owns): reads,
        small files kept in memory (a quarter) and a record's check at close (up to half)."""
        if not self.could_hold(n):
            return False
        self._take(n)
        self.held += n
        return True

    def drop_hold(self, n: int) -> None:
        self.held -= n
        self.release(n)

    async def acquire(self, n: int, holding: int = 0) -> None:
        """Take ``n`` bytes, waiting until they fit.  ``holding``: bytes of ``used`` that the
        caller holds and cannot give back before this is granted."""
        while self.used + n > self.limit and self.used > 0:
            for reclaim in list(self._reclaimers):
                reclaim()
                if self.used == 0 or self.used + n <= self.limit:  # (larger than the whole: alone)
                    break
            else:
                if self.used <= self.held + self.stuck + holding:  # nothing will be released
                    self.overdrawn += 1
                    break
                self.waiting += 1
                self.stuck += holding
                try:
                    await self._freed.wait()
                finally:
                    self.waiting -= 1
                    self.stuck -= holding
        self._take(n)

    def release(self, n: int) -> None:
        self.used -= n
        assert self.used >= 0, "memory budget released more than it acquired"
        if self.waiting:
            self._freed.set()  # wake every waiter; each re-checks
            self._freed = trio.Event()
