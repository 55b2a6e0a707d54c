"""Key/value records through the mount: when a writing handle commits, and what others see then.

Each writing handle of a record has content of its own (`openfiles.OpenFiles.writable_staged`) that
replaces the record when it is committed — checked as strict JSON (`fsdriver.strictjson`) within
the memory budget, and conditional on the version read for ``r+`` handles.  This module decides
*when* that happens and makes what this mount changed visible at once:

- FLUSH (every close() of a descriptor) commits only what was *written* since the last commit.
  bash's ``echo x > r.json`` opens with O_TRUNC, dup2()s and closes the first descriptor before
  anything is written: that FLUSH must not store an empty record over the old value.  Nor does
  the close of a copy of the descriptor while its opener still holds it (a child's exit in
  ``{ echo '['; seq -s, 3; echo ']'; } > r.json``, `OpenFiles.flush`, as for files): the record
  is half-built then; the opener's close commits it.
- Content that was only emptied (``: > r.json``, ``truncate -s 0``, a new record never written)
  is committed at RELEASE, when the last descriptor is gone.  An ``ftruncate`` to another length
  counts as a write: committed, or refused, at the next close (``truncate -s 3 r.json`` fails).
  Content that was refused (not JSON, too large, a lost conditional write) is never committed
  afterwards, not even as "".
- The kernel sends RELEASE without waiting for it: close() has already returned.  Until that
  commit is done, lookup, getattr, open and readdir of the record wait for it, so the next command
  sees the new value.  The mark is set before the release handler's first await, and pyfuse3 starts
  handlers in the order the kernel sent the requests, so a later request cannot overtake it.  The
  FLUSH before it drops the kernel's cached attributes, so that a stat asks (and waits) too.
- After a commit, and after a refusal, the kernel's cached attributes of the record are dropped
  before the request returns: the size it holds may be the writer's or the previous version's.
- A write that would make a record larger than `MAX_RECORD_BYTES` fails with EFBIG at once; that
  handle's content is then never stored (close() says EFBIG too).
"""

import contextlib
import errno
import logging
import os
from typing import Optional

import trio

from . import kvexpiry, kvnames, strictjson
from .errno_boundary import FSError
from .handles import WriteHandle
from .inodes import Node
from .memory import MemoryBudget
from .staging import StagedFile
from .strictjson import MAX_RECORD_BYTES, too_large

_CHUNK = 1 << 20  # bytes read at a time to price a check before reserving memory for it


class RecordRefused(FSError):
    """Content that cannot be a record; ``reason`` says why without naming the operation."""

    def __init__(self, errno_: int, reason: str, level: int):
        super().__init__(errno_, f"not saved: {reason}; the previous value is unchanged", level)
        self.reason = reason


async def record_content(staged: StagedFile, budget: Optional[MemoryBudget] = None) -> bytes:
    """A record's bytes, checked: an empty file stores "", anything else must be strict JSON
    (EINVAL) of at most `MAX_RECORD_BYTES` (EFBIG).

    The check reserves what it needs — the bytes and the parser's memory (`strictjson.ParseCost`,
    priced from the staged file in small chunks first) — from ``budget``, so concurrent commits wait
    for memory instead of growing the daemon past its limit.
    """
    if staged.size > MAX_RECORD_BYTES:
        raise RecordRefused(errno.EFBIG, f"the record is {too_large(staged.size)}", logging.WARNING)
    if staged.size == 0:
        return b'""'
    need = staged.size + await staged.scan(_parse_cost)
    if budget is not None and need > budget.limit // 2:
        # Checking it would hold most of the daemon's memory (every reader would wait for it): a
        # record of this shape and size is refused like one over the size limit.
        raise RecordRefused(errno.EFBIG, f"checking this record needs {need} bytes of memory, more than "
                            f"half the mount's --memory-limit ({budget.limit})", logging.WARNING)
    if budget is not None:
        await budget.acquire(need)
    try:
        data = await staged.contents()
        await trio.to_thread.run_sync(strictjson.check, data)  # CPU-bound: off the trio thread
    except strictjson.InvalidJSON as e:  # the writer's mistake, not the daemon's: a warning
        raise RecordRefused(errno.EINVAL, f"not valid JSON: {e}", logging.WARNING) from None
    finally:
        if budget is not None:
            budget.release(need)
    return data


def _parse_cost(fd: int, size: int) -> int:
    cost = strictjson.ParseCost()
    for off in range(0, size, _CHUNK):
        cost.feed(os.pread(fd, min(_CHUNK, size - off), off))
    return cost.total


async def _no_invalidation(ino: int) -> None:
    pass


class Records:
    """The commit rules of record handles, and the marks of commits in flight (see above)."""

    def __init__(self, fs):
        self.fs = fs  # the core.Filesystem
        self._committing: dict[Node, tuple[int, trio.Event]] = {}  # node -> (commits, done)
        # Drops the kernel's cached attributes of an inode and returns once it has (set by the
        # FUSE adapter; attributes only, so it takes no page lock and is safe inside any request).
        self.invalidate_attrs = _no_invalidation

    # -- commits in flight ---------------------------------------------------------------------

    async def settled(self, node: Node) -> None:
        """Return once no release commit of ``node`` is in flight."""
        entry = self._committing.get(node)
        if entry is not None:
            await entry[1].wait()

    async def settled_at(self, path: tuple) -> None:
        node = self.fs.inodes.at(path)
        if node is not None:
            await self.settled(node)

    async def settled_in(self, store: Node) -> None:
        """Return once no release commit of a record of ``store`` is in flight (for readdir)."""
        for node, (_, done) in list(self._committing.items()):
            if node.path[:-1] == store.path:
                await done.wait()

    @contextlib.contextmanager
    def marked(self, node: Node):
        """A release's work on ``node`` (a commit, a time kept) that lookups, getattr, open and
        readdir wait for; entered before the release handler's first await."""
        self._begin(node)
        try:
            yield
        finally:
            self._end(node)

    def _begin(self, node: Node) -> None:
        count, done = self._committing.get(node, (0, None))
        self._committing[node] = (count + 1, done or trio.Event())

    def _end(self, node: Node) -> None:
        count, done = self._committing[node]
        if count > 1:
            self._committing[node] = (count - 1, done)
        else:
            del self._committing[node]
            done.set()

    # -- a writing handle's life ---------------------------------------------------------------

    def check_size(self, handle: WriteHandle, end: int, what: str) -> None:
        """EFBIG for a write or truncate that would take the record past the limit; the handle's
        content is then never stored."""
        if end <= MAX_RECORD_BYTES:
            return
        handle.staged.mark_broken(OSError(errno.EFBIG, "record too large"))  # freed at release, never stored
        handle.refused = FSError(errno.EFBIG, f"not saved: an earlier {what} was refused (EFBIG); "
                                 "the previous value is unchanged", logging.DEBUG)
        raise FSError(errno.EFBIG, f"{what} refused: the record would be {too_large(end)}; "
                      "it keeps its previous value", logging.WARNING)

    @staticmethod
    def more_content(handle: WriteHandle) -> None:
        """A write or truncate after a close() whose content was refused as not JSON: that refusal
        was of what the handle held then (``{ echo -n '{"a":'; echo '1}'; } > r.json`` closes after
        the first half), so what it holds next is checked afresh at the next close."""
        rejected = handle.staged.rejected
        if rejected is not None and rejected.errno == errno.EINVAL and handle.refused is None:
            handle.staged.accept_again()

    async def flush(self, handle: WriteHandle) -> None:
        """close() of one descriptor: commit what was written since the last commit."""
        if handle.refused is not None:
            await self._refused(handle.node)  # a new record refused (EFBIG) is not there: nor its name
            raise handle.refused
        if handle.written or handle.staged in self.fs.uploader.pending:
            await self._commit(handle)
        elif handle.truncated:
            # Committed at release, which close() does not wait for.  A stat is answered from the
            # kernel's cache without asking us: drop it, so the next stat asks (and waits).
            await self.invalidate_attrs(handle.node.ino)

    async def fsync(self, handle: WriteHandle) -> None:
        """fsync(): commit whatever the handle holds that is not committed yet."""
        if handle.refused is not None:
            raise handle.refused
        await self._commit(handle)

    async def release(self, handle: WriteHandle) -> None:
        """The last descriptor is gone: commit content that was only truncated (or written after the
        last flush).  Nothing before the mark below may await (see the module docstring)."""
        staged = handle.staged
        if (handle.refused is not None or staged.rejected is not None or staged.broken is not None
                or not (handle.written or handle.truncated)
                or staged.pending or staged in self.fs.uploader.pending):  # the retry loop owns those
            return
        node = handle.node
        self._begin(node)
        try:
            await self._commit(handle)
        finally:
            self._end(node)

    async def _commit(self, handle: WriteHandle) -> None:
        node, staged = handle.node, handle.staged
        try:
            await self.fs.files.upload(node, staged)
        except FSError:
            if staged.rejected is not None or staged.broken is not None:
                await self._refused(node)
            elif staged in self.fs.uploader.pending:
                # A pending upload (close() said EIO): this mount shows it, from the cache dir,
                # until the retry loop settles it, and unlink/rename hold its lock like a file's.
                self.fs.files.adopt_pending_record(node, staged)
            raise
        handle.written = handle.truncated = False
        await self.invalidate_attrs(node.ino)

    async def _refused(self, node: Node) -> None:
        """The kernel may hold the refused content's size: drop it; and a new record that was
        refused does not exist, so its name must not stay cached either."""
        await self.invalidate_attrs(node.ino)
        parent = self.fs.inodes.at(node.path[:-1])
        if node.etag is None and parent is not None:
            self.fs.invalidate_entry(parent.ino, node.path[-1])

    # -- a scratch file renamed to a record ------------------------------------------------------

    async def content_for_rename(self, staged: StagedFile, new_path: tuple) -> bytes:
        """The checked content of a scratch file becoming the record ``new_path``.

        Refused content is EBADMSG ("Bad message"), not EINVAL: for rename(2) EINVAL means "into a
        subdirectory of itself", and mv says exactly that."""
        try:
            return await record_content(staged, self.fs.budget)
        except RecordRefused as e:
            code = errno.EBADMSG if e.errno == errno.EINVAL else e.errno
            raise FSError(code, f"not saved as /{'/'.join(new_path)}: {e.reason}; the record and the "
                          "scratch file are unchanged", e.level) from None

    # -- records and scratch files renamed ---------------------------------------------------------

    async def rename_in_store(self, node: Node, new_path: tuple) -> None:
        """Renames in a store; they turn scratch files into records and back (temp-file-then-rename).

        The caller holds the lock of ``node.staged`` if there is one.
        """
        old_name, new_name = node.path[-1], new_path[-1]
        old_store = "/".join(node.path[:-1]) + "/"
        to_record = not kvnames.is_scratch(new_name)
        if node.is_scratch and to_record:
            staged = node.staged
            await staged.ensure_locked(0, staged.size)
            data = await self.content_for_rename(staged, new_path)  # refused: left as it was
            info = await self.fs.backend.put_bytes("/".join(new_path), data)
            node.size, node.mtime, node.etag, node.attr_time = info.size, info.mtime, info.etag, self.fs.clock()
            if staged.size == 0:  # an empty file became the record "": read it as such
                await staged.replace_contents(data)
            staged.mark_stored()  # kept for handles still open; dropped at release
            node.mtime_wanted = None  # a time set on the scratch file (rsync): a record keeps its own
            await self.invalidate_attrs(node.ino)  # the kernel has the scratch file's size
        elif node.is_record and not to_record:
            staged = self.fs.files.new_staged(node, truncate=False)
            await staged.complete()  # the content becomes local before the record goes
            await self.fs.backend.delete(node.key)
            await self.drop_expiry_markers(old_store, old_name)
            staged.mark_dirty(conditions={})
            node.etag = None
            node.staged = staged
        elif node.is_record:
            await self.fs.backend.rename(node.key, "/".join(new_path))
            await self.drop_expiry_markers(old_store, old_name)

    async def drop_expiry_markers(self, store_prefix: str, name: str) -> None:
        """The record ``name`` of a store is gone or moved: its TTL markers go too."""
        await self.fs.backend.run(kvexpiry.drop_markers, self.fs.sync_backend, store_prefix, name)
