"""Open files: a handle reads or writes, and what a reading handle reads from.

An open file is a small state machine: a `WriteHandle` writes a staged file; a `ReadHandle` reads
the file's staged (local) content while it has some, otherwise the object — from the backing file
itself on the disk backend (`LocalReader`), through a `Prefetcher` on remote backends.  Both
readers are pinned to the version the file was opened at.
"""

import os

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


class Handle:
    """An open file: reading or writing, decided at open and kept until release.

    A `ReadHandle` reads the file's local content while it has some (a descriptor of the same file
    is writing it), else the object as it was when the handle first needed it (``reader``, pinned
    to that version).  A `WriteHandle` writes a staged file: the node's shared one, or for a
    key/value record a content of its own that `fsdriver.records` commits.  ``close`` ends either.
    """

    writable = False
    staged = None  # the StagedFile a writing handle writes
    caller = None  # who opened it (access.Caller; None: the mount owner)

    def __init__(self, node: Node):
        self.node = node

    def close(self) -> None:
        pass


class ReadHandle(Handle):
    def __init__(self, node: Node, reader=None):
        super().__init__(node)
        self.reader = reader  # LocalReader | Prefetcher; made at the first read without local content

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


class WriteHandle(Handle):
    writable = True

    def __init__(self, node: Node, staged, append: bool, truncated: bool):
        super().__init__(node)
        self.staged = staged
        self.append = append  # every write goes to the end of the content (O_APPEND)
        # Record handles (fsdriver.records): what happened since the last commit, and a refusal
        # (an FSError) after which the handle's content is never stored.
        self.written = False
        self.truncated = truncated
        self.refused = None
