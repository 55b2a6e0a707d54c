"""Open files: what a file handle reads from.

An open file is a small state machine: a handle of a file with staged (local) content reads and
writes the staged file; otherwise it reads the object — from the backing file itself on the disk
backend, through a `Prefetcher` on remote backends.  Both readers are pinned to the version the file
was opened at.
"""

import os
from dataclasses import dataclass

import trio

from .inodes import Node


class LocalReader:
    """Disk backend: pread from the backing file, opened once (the inode pins the version)."""

    def __init__(self, fd: int, limiter: trio.CapacityLimiter):
        self.fd, self.limiter = fd, limiter

    @classmethod
    async def open(cls, path, limiter: trio.CapacityLimiter) -> tuple["LocalReader", os.stat_result]:
        """Open the backing file as it is now; returns the reader and the file's stat."""

        def do_open():
            fd = os.open(path, os.O_RDONLY)
            return fd, os.fstat(fd)

        fd, st = await trio.to_thread.run_sync(do_open, limiter=limiter)
        return cls(fd, limiter), st

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
    staged: object = None  # the StagedFile a writing handle writes (see core._writable_staged)
    # Record handles (fsdriver.records): what happened since the last commit, and a refusal
    # (an FSError) after which the handle's content is never stored.
    written: bool = False
    truncated: bool = False
    refused: object = None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
