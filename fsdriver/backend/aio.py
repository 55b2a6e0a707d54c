"""Use a blocking backend from trio without blocking the event loop, with bounded waits.

Each call runs as one blocking backend call in a worker thread (`trio.to_thread.run_sync`),
gated by one `CapacityLimiter` sized to the backend's connection pool, so the number of requests
in flight is bounded.  One exception: the body of a streamed GET whose reader can be polled (S3's
`BodyReader.poll_into`) is read on the event loop, which waits for its socket in between; its
request was made in a thread (holding a slot of the limiter), and it is bounded as a read-only
call is.  A thread cannot be cancelled, so how long a caller waits is bounded in two
ways (``timeout``, the daemon's ``--backend-timeout``, 30 s by default):

- a *read-only* call (`READ_ONLY`: head, ranged get, list, lookup...) is abandoned at the bound:
  the caller gets `Unavailable` (EIO) and the thread ends on its own later, holding its limiter
  slot until then (so abandoned threads still count against the limit);
- a call that *changes* the backend (put, delete, copy, rename, anything not in `READ_ONLY`) is
  never abandoned while the mount runs: an abandoned put that succeeds late could overtake a newer
  write, or upload a staged file a writer is changing again.  Its own requests are bounded instead
  (the S3 client's timeouts and attempts are derived from the same bound, `s3.request_settings`),
  so its thread ends within about the bound by itself;
- at shutdown (`abandon_all`) the daemon stops waiting for changes too: their outcome is unknown,
  and what they upload stays journaled as pending for the next mount.
"""

import contextvars
import functools
import os
import threading
from typing import Callable, TypeVar

import trio

from ..errors import NoAnswer, Unavailable
from .base import Backend, ListEntry, ObjectInfo, RangeReader

# Calls without side effects: safe to abandon at the bound (by the name of the function called).
# (open_range/read_range: a streamed GET and the reads of its body.)
READ_ONLY = frozenset({"head", "get_range", "list", "lookup", "store_expiries", "get", "check",
                       "open_range", "read_range"})

# The deadline (trio time) of the request being served, if any: a lookup or a read makes several
# backend calls in a row, and its caller must get EIO within the bound, not within one per call.
_request_deadline: contextvars.ContextVar = contextvars.ContextVar("stashfs_request_deadline", default=None)


class request_deadline:
    """Within this block (one FUSE request), read-only calls share one deadline ``seconds`` away.
    (A class, not a generator: it wraps every FUSE request.)"""

    __slots__ = ("seconds", "token")

    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def __enter__(self) -> None:
        self.token = _request_deadline.set(None if self.seconds is None else trio.current_time() + self.seconds)

    def __exit__(self, *exc) -> None:
        _request_deadline.reset(self.token)


def without_request_deadline() -> request_deadline:
    """Within this block, calls have their own bound only, not the request's deadline: a request
    doing the work of something that outlives it (a read reading a stream's body, as the stream's
    own task would)."""
    return request_deadline(None)


def extend_request_deadline(seconds: float) -> None:
    """The request waited ``seconds`` for something other than the backend (a rename of what it
    names, `fsdriver.treelock`): its backend calls get that time back."""
    deadline = _request_deadline.get()
    if deadline is not None and seconds > 0:
        _request_deadline.set(deadline + seconds)


def no_request_deadline() -> None:
    """Background work (a task of its own) is not bound by the request that started it."""
    _request_deadline.set(None)

T = TypeVar("T")


_PROC_FDS = os.path.isdir("/proc/self/fd")


def _memory_file(content: bytes) -> int | None:
    """A memfd holding ``content`` (its descriptor; None where that cannot be made)."""
    if not _PROC_FDS or not hasattr(os, "memfd_create"):
        return None
    try:
        fd = os.memfd_create("stashfs-put", os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        view, off = memoryview(content), 0
        while off < len(view):
            off += os.write(fd, view[off:])
    except OSError:
        os.close(fd)
        return None
    return fd


class BeforeFailed(Exception):
    """What `AsyncBackend.put_file` ran before its put failed (``error``): nothing was put."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class AsyncBackend:
    def __init__(self, backend: Backend, max_concurrency: int = 16, stats=None, timeout: float | None = None):
        self.sync = backend
        self.limiter = trio.CapacityLimiter(max_concurrency)
        self.stats = stats  # a fsdriver.stats.Stats, or None
        self.timeout = timeout  # seconds a read-only call may take (None: unbounded)
        self.in_flight = 0  # threads running a backend call, abandoned ones included
        self._count_lock = threading.Lock()
        self._shields: set[trio.CancelScope] = set()  # changes in flight, shielded from cancellation
        self._closing = False
        # Set when a read-only call was abandoned at the bound, cleared by the next answer: while
        # the backend does not answer, later reads wait a short probe bound, not the whole bound
        # again, so a caller whose syscall needs several requests (a stat walking a path) still
        # gets EIO within about one bound.
        self.unresponsive = False

    @property
    def _probe(self) -> float:
        return min(self.timeout, max(1.0, self.timeout / 10))

    def abandon_all(self) -> None:
        """Shutting down: stop waiting for changes in flight once their callers are cancelled."""
        self._closing = True
        for scope in self._shields:
            scope.shield = False

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        name = getattr(fn, "__name__", "call")
        if self.stats is not None:
            self.stats.backend[name] += 1
        call = functools.partial(self._counted, functools.partial(fn, *args, **kwargs))
        if name in READ_ONLY:
            bound = None if self.timeout is None else (self._probe if self.unresponsive else self.timeout)
            own = trio.current_time() + bound if bound is not None else float("inf")
            with trio.move_on_at(min(own, _request_deadline.get() or float("inf"))):
                return await trio.to_thread.run_sync(call, limiter=self.limiter, abandon_on_cancel=True)
            if trio.current_time() >= own:  # this call's own bound, not a request that waited long
                self.unresponsive = True
            raise Unavailable(f"the backend did not answer within {self.timeout:g}s ({name})")
        with trio.CancelScope(shield=not self._closing) as scope:
            self._shields.add(scope)
            try:
                return await trio.to_thread.run_sync(call, limiter=self.limiter, abandon_on_cancel=True)
            finally:
                self._shields.discard(scope)

    def _counted(self, call: Callable[[], T]) -> T:
        with self._count_lock:
            self.in_flight += 1
        try:
            result = call()
        except NoAnswer:
            # The client's own timeouts (`request_settings`: about half the bound) ended it: the
            # backend does not answer, as when the bound ends a call.
            if self.timeout is not None:
                self.unresponsive = True
            raise
        except Unavailable:  # unreachable, or an error answer: not a sign either way
            raise
        except BaseException:  # an answer, if a refusal (a 404 says the backend is there)
            self.unresponsive = False
            raise
        finally:
            with self._count_lock:
                self.in_flight -= 1
        self.unresponsive = False  # it answered (an abandoned call answering late counts too)
        return result

    async def head(self, key: str) -> ObjectInfo:
        return await self.run(self.sync.head, key)

    async def get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        data, info = await self.run(self.sync.get_object, key)
        if self.stats is not None:
            self.stats.bytes_down += len(data)
        return data, info

    async def get_range(self, key: str, start: int, end: int | None = None, **cond) -> bytes:
        data = await self.run(self.sync.get_range, key, start, end, **cond)
        if self.stats is not None:
            self.stats.bytes_down += len(data)
        return data

    async def open_range(self, key: str, start: int, end: int | None = None, *,
                         into: "list[bytearray]" = (), **cond) -> tuple[RangeReader, int]:
        """`Backend.open_range` and the first bytes of its reader read into the buffers ``into``
        (`RangeReader.read_into`), in one worker thread: one hop, and a small object comes whole
        with its request.  Returns the reader and the bytes read.  A failing read closes it."""
        def open_range():
            reader = self.sync.open_range(key, start, end, **cond)
            try:
                return reader, reader.read_into(list(into))
            except BaseException:
                reader.close()
                raise

        reader, n = await self.run(open_range)
        if self.stats is not None:
            self.stats.bytes_down += n
        return reader, n

    async def read_range(self, reader: RangeReader, into: "list[bytearray]") -> int:
        """Fill ``into`` with the next bytes of a reader from `open_range` (one worker thread
        call for all the buffers, or on this thread if the reader can be polled); returns the
        bytes read (fewer only at the end)."""
        def read_range():
            return reader.read_into(into)

        if reader.pollable:
            n = await self._poll_range(reader, into)
        else:
            n = await self.run(read_range)
        if self.stats is not None:
            self.stats.bytes_down += n
        return n

    async def _poll_range(self, reader: RangeReader, into: "list[bytearray]") -> int:
        """`read_range` without a thread: the reader's ``poll_into`` takes what has arrived and
        the task waits for its socket in between (`fsdriver.backend.s3_body`), bounded as a
        read-only call in a thread is (Unavailable at the bound)."""
        if self.stats is not None:
            self.stats.backend["read_range"] += 1
        bound = self._probe if self.unresponsive else self.timeout
        own = trio.current_time() + bound if bound is not None else float("inf")
        done, total = 0, sum(map(len, into))
        deadline = None  # (a cancel scope only around a wait: bytes that arrived take none)
        for i, buf in enumerate(into):
            if i:
                await trio.lowlevel.checkpoint()  # (bytes that keep arriving never hold the loop)
            got = 0
            with memoryview(buf) as view:  # (released: a short last piece is trimmed)
                while got < len(buf):
                    try:
                        k = reader.poll_into(view[got:], total - done - got)
                    except NoAnswer:
                        if self.timeout is not None:
                            self.unresponsive = True
                        raise
                    if k is None:
                        if deadline is None:
                            deadline = min(own, _request_deadline.get() or float("inf"))
                        wait = trio.lowlevel.wait_writable if reader.wants_write else trio.lowlevel.wait_readable
                        with trio.move_on_at(deadline) as scope:
                            await wait(reader.wait_fd())
                        if scope.cancelled_caught:
                            if trio.current_time() >= own:
                                self.unresponsive = True
                            raise Unavailable(f"the backend did not answer within {self.timeout:g}s (read_range)")
                    elif k == 0:
                        break  # the end of the body
                    else:
                        got += k
            done += got
            if got < len(buf):
                break
        self.unresponsive = False
        return done

    # put_bytes/put_file pass ``if_match``, ``if_none_match`` and ``meta`` through ``cond``.
    async def put_bytes(self, key: str, data: bytes, **cond) -> ObjectInfo:
        return await self.run(self.sync.put_bytes, key, data, **cond)

    async def put_file(self, key: str, path, *, content: bytes | None = None,
                       before: Callable[[], None] | None = None, **cond) -> ObjectInfo:
        """Put the file at ``path``, in one worker thread.  ``content``: the file's whole content,
        held in memory: put from an anonymous memory file (memfd) instead, so that no file needs
        to be made for it (where memfds or /proc are missing, the file at ``path`` is put).
        ``before``: called first when the file at ``path`` is put (to write it); its OSError is
        raised as `BeforeFailed`, and nothing is put."""
        if content is None and before is None:
            info = await self.run(self.sync.put_file, key, path, **cond)
        else:
            def put_file():
                if content is not None:
                    fd = _memory_file(content)
                    if fd is not None:
                        try:
                            return self.sync.put_file(key, f"/proc/self/fd/{fd}", **cond)
                        finally:
                            os.close(fd)
                if before is not None:
                    try:
                        before()
                    except OSError as e:
                        raise BeforeFailed(e) from e
                return self.sync.put_file(key, path, **cond)

            info = await self.run(put_file)
        if self.stats is not None:
            self.stats.bytes_up += info.size
        return info

    # Multipart uploads (fsdriver.multipart): changes, never abandoned.
    async def create_multipart(self, key: str, *, meta=None, checksum: bool = False) -> str:
        return await self.run(self.sync.create_multipart, key, meta=meta, checksum=checksum)

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        etag = await self.run(self.sync.upload_part, key, upload_id, number, data)
        if self.stats is not None:
            self.stats.bytes_up += len(data)
        return etag

    async def complete_multipart(self, key: str, upload_id: str, parts, size: int, **cond) -> ObjectInfo:
        return await self.run(self.sync.complete_multipart, key, upload_id, parts, size, **cond)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self.run(self.sync.abort_multipart, key, upload_id)

    async def set_meta(self, key: str, meta, *, if_match: str | None = None, if_meta=None) -> ObjectInfo:
        """A change: never abandoned (see the module docstring)."""
        return await self.run(self.sync.set_meta, key, meta, if_match=if_match, if_meta=if_meta)

    async def link(self, src: str, dst: str) -> ObjectInfo:
        """A change: never abandoned."""
        return await self.run(self.sync.link, src, dst)

    @property
    def lists_meta(self) -> bool:
        return self.sync.lists_meta

    @property
    def hard_links(self) -> bool:
        return self.sync.hard_links

    async def list(self, prefix: str = "", delimiter: str | None = None) -> list[ListEntry]:
        """The whole listing, collected in one worker thread (pages fetched there)."""
        def collect():
            return list(self.sync.list(prefix, delimiter))

        collect.__name__ = "list"
        return await self.run(collect)

    async def delete(self, key: str, **kw) -> None:
        await self.run(self.sync.delete, key, **kw)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.run(self.sync.delete_prefix, prefix)

    async def rename(self, src: str, dst: str, **kw) -> dict[str, ObjectInfo]:
        return await self.run(self.sync.rename, src, dst, **kw)

    async def first(self, prefix: str):
        """The first entry under ``prefix`` or None: is there anything below it?"""
        def first():
            return next(iter(self.sync.list(prefix, max_keys=1)), None)

        first.__name__ = "list"
        return await self.run(first)
