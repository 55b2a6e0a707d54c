"""The memory the parts of a multipart upload are read into, reused (`fsdriver.multipart`, and
`S3Backend.put_file` for a large file uploaded whole).

Every part is read from a local file into memory, uploaded, and dropped.  Read into a new
``bytes`` each time, a part's 8 MiB is memory just mapped: one page fault per 4 KiB page, 2,048 per
part.  On these VMs a fault costs a few microseconds: reading a part into new memory took 9 ms,
into memory used before 0.8 ms, more than hashing the part for its signature.  `PartBuffers`
hands out part-sized buffers and takes back those of parts that were uploaded, for the next part;
when no part is in flight any more, it lets them all go, so that no memory is held between
uploads.  The mount counts every buffer in its memory budget from its mapping until it is let go
(`fsdriver.multipart`): one kept for the next part is memory the daemon holds, given back when
someone waits for memory (`trim`).  `S3Backend` shares one `PartBuffers` among all the files it
uploads whole, at most one buffer per thread of its pool and no more than the mount's cap (a
``limit``: `take` waits), which the mount holds in its budget while such an upload runs
(`Backend.upload_memory`, `Uploader._put_file`).  A new buffer is
mapped with ``MAP_POPULATE``: the kernel fills all its pages in one call (3.5 ms per part
instead of 9).

A buffer whose upload did not end is never reused (`drop`): a worker thread abandoned at shutdown
may still be reading it.  Thread-safe.
"""

import mmap
import os
import threading

_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)


class PartBuffers:
    """Buffers of ``size`` bytes, reused while parts are in flight.

    Taking one is `reuse` (a buffer given back, or None) or else `new`; `give` and `drop` return
    how many bytes of buffers they unmapped (or let go of), for a caller that counts them in a
    memory budget: a buffer is counted from `new` until then, in use or kept for the next part."""

    def __init__(self, size: int, limit: "int | None" = None):
        self.size = size
        self.limit = limit  # buffers out at once, at most (None: any number): `take` waits
        self.out = 0  # buffers taken and not given back or dropped
        self.made = 0  # buffers mapped so far
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)

    def reuse(self) -> "mmap.mmap | None":
        """A buffer given back, if any."""
        with self._lock:
            if not self._free:
                return None
            self.out += 1
            return self._free.pop()

    def new(self) -> mmap.mmap:
        buf = mmap.mmap(-1, self.size, flags=_FLAGS)
        with self._lock:
            self.out += 1
            self.made += 1
        return buf

    def take(self) -> mmap.mmap:
        """`reuse`, else `new`; with a ``limit``, first waits (blocking the calling thread) until
        fewer than that many are out."""
        if self.limit is not None:
            with self._returned:
                self._returned.wait_for(lambda: self.out < self.limit)
                self.out += 1  # (counted now: another thread must not pass the limit meanwhile)
                if self._free:
                    return self._free.pop()
            try:
                buf = mmap.mmap(-1, self.size, flags=_FLAGS)
            except BaseException:
                with self._returned:
                    self.out -= 1
                    self._returned.notify()
                raise
            with self._lock:
                self.made += 1
            return buf
        buf = self.reuse()
        return buf if buf is not None else self.new()

    def give(self, buf: mmap.mmap) -> int:
        """``buf``'s upload ended: nothing reads it any more; it serves the next part.  The bytes
        let go of (all buffers kept, once none is in use)."""
        with self._lock:
            self.out -= 1
            self._free.append(buf)
            free = self._settle()
            self._returned.notify()
        _unmap(free)
        return len(free) * self.size

    def drop(self, buf: mmap.mmap) -> int:
        """``buf``'s upload did not end (cancelled): never reused, unmapped once nothing refers to
        it.  The bytes let go of: ``buf``'s and, once none is in use, those of the buffers kept."""
        with self._lock:
            self.out -= 1
            free = self._settle()
            self._returned.notify()
        _unmap(free)
        return (len(free) + 1) * self.size

    def trim(self) -> int:
        """Let go of the buffers kept for the next part (memory someone else waits for); the
        bytes let go of."""
        with self._lock:
            free, self._free = self._free, []
        _unmap(free)
        return len(free) * self.size

    @property
    def held(self) -> int:
        """Bytes of buffers kept for the next part (not in use)."""
        return len(self._free) * self.size

    def _settle(self) -> list:
        if self.out:
            return []
        free, self._free = self._free, []
        return free


def release(view: "memoryview | None") -> None:
    """Let go of a view of a buffer before the buffer is given back, so that the buffer can be
    unmapped then (an mmap with a view alive cannot close: it would stay mapped a while after the
    budget counted it free).  A view someone else still holds an export of stays: that buffer is
    unmapped when the export goes."""
    if view is not None:
        try:
            view.release()
        except BufferError:
            pass


def _unmap(buffers: list) -> None:
    for buf in buffers:
        try:
            buf.close()
        except BufferError:  # a view of it is still referenced somewhere: unmapped when that goes
            pass


def read_into(fd: int, start: int, view: memoryview) -> int:
    """Read file ``fd`` from ``start`` into ``view`` (less only at the file's end); the bytes read."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], start + done)
        if n == 0:
            break
        done += n
    return done
