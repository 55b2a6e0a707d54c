"""Open files: what a file handle reads from.

An open file is a small state machine: a handle of a file with staged (local) content reads and
writes the staged file; otherwise it reads the object — from the backing file itself on the disk
backend, through a `Prefetcher` on remote backends.  Both readers are pinned to the version the file
was opened at.
"""

import errno
import os
from dataclasses import dataclass, field
from typing import Optional

import trio

from .fserrors import FSError
from .inodes import Node


class LocalReader:
    """Disk backend: pread from the backing file, opened once (the inode pins the version)."""

    def __init__(self, fd: int, limiter: trio.CapacityLimiter):
        self.fd, self.limiter = fd, limiter

    @classmethod
    async def open(cls, path, etag: Optional[str], limiter: trio.CapacityLimiter, etag_of) -> "LocalReader":
        def do_open():
            fd = os.open(path, os.O_RDONLY)
            if etag is not None and etag_of(os.fstat(fd)) != etag:
                os.close(fd)
                raise FSError(errno.ESTALE, f"{path} changed since it was looked up")
            return fd

        return cls(await trio.to_thread.run_sync(do_open, limiter=limiter), limiter)

    async def read(self, off: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(os.pread, self.fd, size, off, limiter=self.limiter)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(eq=False)
class Handle:
    node: Node
    writable: bool
    append: bool
    reader: object = None  # LocalReader | Prefetcher, for handles of files without staged data
    wrote: bool = field(default=False)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
