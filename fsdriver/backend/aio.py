"""Use a blocking backend from trio without blocking the event loop.

Each call runs as one blocking backend call in a worker thread (`trio.to_thread.run_sync`),
gated by one `CapacityLimiter` sized to the backend's connection pool, so the number of requests
in flight is bounded.  Threads cannot be cancelled: a call with side effects (put, delete) that was
started always runs to completion even if the caller is cancelled (``abandon_on_cancel=False``),
so the backend never ends in a state nobody knows about.
"""

import functools
from typing import Callable, TypeVar

import trio

from .base import Backend, ListEntry, ObjectInfo

T = TypeVar("T")


class AsyncBackend:
    def __init__(self, backend: Backend, max_concurrency: int = 16, stats=None):
        self.sync = backend
        self.limiter = trio.CapacityLimiter(max_concurrency)
        self.stats = stats  # a fsdriver.stats.Stats, or None

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        if self.stats is not None:
            self.stats.backend[getattr(fn, "__name__", "call")] += 1
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.limiter
        )

    async def head(self, key: str) -> ObjectInfo:
        return await self.run(self.sync.head, key)

    async def get_range(self, key: str, start: int, end: int | None = None, **cond) -> bytes:
        data = await self.run(self.sync.get_range, key, start, end, **cond)
        if self.stats is not None:
            self.stats.bytes_down += len(data)
        return data

    async def put_bytes(self, key: str, data: bytes, **cond) -> ObjectInfo:
        return await self.run(self.sync.put_bytes, key, data, **cond)

    async def put_file(self, key: str, path, **cond) -> ObjectInfo:
        info = await self.run(self.sync.put_file, key, path, **cond)
        if self.stats is not None:
            self.stats.bytes_up += info.size
        return info

    async def list(self, prefix: str = "", delimiter: str | None = None) -> list[ListEntry]:
        """The whole listing, collected in one worker thread (pages fetched there)."""
        def collect():
            return list(self.sync.list(prefix, delimiter))

        collect.__name__ = "list"
        return await self.run(collect)

    async def delete(self, key: str) -> None:
        await self.run(self.sync.delete, key)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.run(self.sync.delete_prefix, prefix)

    async def copy(self, src: str, dst: str) -> ObjectInfo:
        return await self.run(self.sync.copy, src, dst)

    async def rename(self, src: str, dst: str) -> None:
        await self.run(self.sync.rename, src, dst)

    async def first(self, prefix: str):
        """The first entry under ``prefix`` or None: is there anything below it?"""
        def first():
            return next(iter(self.sync.list(prefix, max_keys=1)), None)

        first.__name__ = "list"
        return await self.run(first)
