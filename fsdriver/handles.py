"""Open files: a handle reads or writes, and what a reading handle reads from.

An open file is a small state machine: a `WriteHandle` writes a staged file; a `ReadHandle` reads
the file's staged (local) content while it has some, otherwise the object — from the backing file
itself on the disk backend (`LocalReader`), through a `Prefetcher` on remote backends.  Both
readers are pinned to the version the file was opened at.
"""

import errno
import os

import trio

from . import allocator
from .inodes import Node

_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+ (pread that fails rather than wait for I/O)


class LocalReader:
    """Disk backend: pread from the backing file, opened once (the inode pins the version).

    A read that the backing file's page cache holds is served on the trio thread
    (``preadv(RWF_NOWAIT)`` fails with EAGAIN rather than wait for the disk); only what it does not
    hold goes to a worker thread, so a sequential read the kernel reads ahead costs no thread hop.
    While reads follow one another (each starts where the last ended) the backing file is advised
    ``POSIX_FADV_SEQUENTIAL`` (a larger kernel read-ahead on it); a read elsewhere sets it back to
    normal, so random readers do not pull in more than they read.  Reads return a bytes-like
    object (``bytes`` or ``bytearray``) owned by the caller.
    """

    SEQUENTIAL_AFTER = 2  # reads in a row, each where the last ended, before advising sequential

    def __init__(self, fd: int, limiter: trio.CapacityLimiter):
        self.fd, self.limiter = fd, limiter
        self.nowait = _RWF_NOWAIT is not None  # off after the filesystem refuses the flag
        self.next_off = 0  # where the last read ended
        self.in_a_row = 0  # reads in a row that started where the last one ended
        self.sequential = False  # the backing file is advised POSIX_FADV_SEQUENTIAL

    @classmethod
    async def open(cls, path, limiter: trio.CapacityLimiter) -> tuple["LocalReader", os.stat_result]:
        """Open the backing file as it is now; returns the reader and the file's stat."""

        def do_open():
            fd = os.open(path, os.O_RDONLY)
            return fd, os.fstat(fd)

        fd, st = await trio.to_thread.run_sync(do_open, limiter=limiter)
        return cls(fd, limiter), st

    async def read(self, off: int, size: int):
        self._advise(off)
        self.next_off = off + size
        got = self._read_cached(off, size)
        if got is not None and (len(got) == size or os.fstat(self.fd).st_size <= off + len(got)):
            return got  # all of it, or all there is (the end of the file)
        done = 0 if got is None else len(got)
        # Not (all) in the page cache: the rest from a worker thread.
        rest = await trio.to_thread.run_sync(os.pread, self.fd, size - done, off + done, limiter=self.limiter)
        if not done:
            return rest
        got += rest
        return got

    def _read_cached(self, off: int, size: int) -> bytearray | None:
        """What the page cache holds from ``off`` on: possibly less than ``size``, empty at the end
        of the file; None when it holds nothing there or the flag is refused."""
        if not self.nowait or size <= 0:
            return None
        buf = allocator.new_buffer(size)  # uninitialised: trimmed to what the read wrote
        try:
            n = os.preadv(self.fd, [buf], off, _RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            self.nowait = False  # this filesystem cannot read without blocking: always a thread
            return None
        if n < size:
            del buf[n:]
        return buf

    def _advise(self, off: int) -> None:
        """Sequential read-ahead on the backing file while reads follow one another."""
        if off == self.next_off:
            self.in_a_row += 1
        else:
            self.in_a_row = 0
        want = self.in_a_row >= self.SEQUENTIAL_AFTER
        if want != self.sequential:
            self.sequential = want
            try:
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL if want else os.POSIX_FADV_NORMAL)
            except OSError:
                pass  # advice only

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


class RecordReader:
    """A key/value record read through the mount: its whole content, one version, read at the open
    (`OpenFiles._load_record`) and served from memory, so a commit made while it is read can
    never mix versions nor make a read of this handle fail.  Charged to the memory budget until
    the handle closes; when the budget has not that much free, the record is read like a file."""

    def __init__(self, data: bytes, budget=None):
        self._data = data
        self._budget, self._held = budget, 0

    def charge(self) -> bool:
        """Charge the budget for the content if it can hold it now (`MemoryBudget.try_hold`; never
        waits: a reader keeps it until its handle closes, so a process opening many records would
        wait for memory only it can free)."""
        if self._budget is not None and self._data:
            if not self._budget.try_hold(len(self._data)):
                return False
            self._held = len(self._data)
        return True

    async def read(self, off: int, size: int) -> bytes:
        return self._data[off:off + size]

    def close(self) -> None:
        self._data = b""
        if self._budget is not None and self._held:
            self._budget.drop_hold(self._held)
            self._held = 0


class ReadHandle(Handle):
    def __init__(self, node: Node, reader=None):
        super().__init__(node)
        self.reader = reader  # LocalReader | Prefetcher | RecordReader; made at the first read without local content
        self.served = False  # some read of it returned bytes
        self.cache_dropped = True  # its open dropped the kernel's page cache of the file
        self.repin_lock = trio.Lock()  # `OpenFiles._repin`

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
