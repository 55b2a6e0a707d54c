"""Open files: handles, their staged content, and its way into the backend.

An open file is a small state machine (`fsdriver.handles.Handle`): a *reading* handle reads the
object (pinned to the version it opened: the backing file on disk, a `Prefetcher` on S3) or, while
the file has local content, that content; a *writing* handle writes a `StagedFile` in the cache
dir.  Files share one staged file per node, so every descriptor sees the others' writes; each
writing handle of a key/value record has its own (`fsdriver.records` decides when it commits).
close()/fsync() make the content durable through the `Uploader`; what it reports back
(`uploaded`, `settled`) is the newest thing this mount knows of the file.  Staged content is freed
once no handle has it and it is uploaded, refused, or the file is gone — never while a pending
upload still needs it.
"""

import errno
import logging
import os
import shutil
import time
import contextlib
from contextlib import asynccontextmanager
from typing import Optional

import trio

from . import closes, posixattrs
from .backend import ObjectInfo
from .backend.disk import etag_of
from .errno_boundary import FSError
from .errors import BackendError, NotFound, PreconditionFailed
from .handles import Handle, LocalReader, ReadHandle, RecordReader, WriteHandle
from .inodes import Node
from .prefetch import Prefetcher
from .staging import StagedFile

log = logging.getLogger("stashfs.openfiles")

# A record read through the mount is held whole by its handle up to this size (one GET at the open,
# one version); a larger one is read like a file, pinned to the version the open knew.
RECORD_IN_MEMORY = 256 << 10


class OpenFiles:
    def __init__(self, fs):
        self.fs = fs  # the core.Filesystem: its backend, cache, budget, uploader, records, names
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1

    def new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def new_staged(self, node: Node, truncate: bool) -> StagedFile:
        """Local content for writing ``node``: empty, or built lazily on its current version."""
        if truncate:
            return StagedFile(self.fs.cache, dirty=True)
        etag = node.etag
        # A record's read-modify-write commits only if the record is still the version read (for
        # a record not stored yet, another descriptor creating it here: only if it still is not).
        conditions = None
        if node.is_record:
            conditions = {"if_match": etag} if etag is not None else {"if_none_match": True}
        return StagedFile(self.fs.cache, node.size, node.size, self._fetcher(node, etag if node.is_record else None),
                          conditions=conditions)

    def _fetcher(self, node: Node, pinned: Optional[str]):
        """What fills in a staged file's parts of the version it is built on: ``pinned``, or (None)
        the node's etag.  From the key the file has now: renamed here meanwhile (a log rotated
        under a writer that had not written yet), the content is at its new key.  A rename's copy
        may give the object a new etag (S3 multipart): the rename records it on the node, whose
        etag stays the version the staged file is built on otherwise (a node with local content
        takes no newer answer, unless it is only a copy: `rebase`).  A record's handle keeps the
        version it read: its node is not staged."""

        async def fetch(lo: int, hi: int) -> bytes:
            try:
                return await self.fs.backend.get_range(node.key, lo, hi, if_match=pinned or node.etag)
            except NotFound as e:  # deleted by another node: the version it is built on is gone
                raise PreconditionFailed(f"{node.key}: deleted since it was opened") from e

        return fetch

    def unchanged_here(self, node: Node, locked: bool = False) -> bool:
        """Whether the file's local content holds nothing this mount changed: descriptors opened
        it for writing but wrote nothing (or all of it is stored), and no upload or fetch is busy
        (``locked``: the caller holds its lock)."""
        staged = node.staged
        return (staged is not None and not node.is_record and not node.unlinked and not staged.dirty
                and not staged.pending
                and staged not in self.fs.uploader.pending and staged.stream is None and staged.broken is None
                and staged.rejected is None and not staged.for_readers and (locked or not staged.lock.locked()))

    async def rebase(self, node: Node, info: ObjectInfo, when: float, seq: int) -> None:
        """Another node replaced a file that descriptors here hold open for writing without having
        changed it (`unchanged_here`; sqlite holds its database ``O_RDWR``, a daemon its log): the
        local content is only a copy of the old version, so it is emptied, to be filled in from
        the new one (``info``, as a HEAD that started at ``seq`` gave it at ``when``) as it is read,
        for every descriptor — as on ext4, where they share the inode another process rewrote.
        New opens no longer see the old version for as long as a descriptor stays open.  Nothing
        happens if it changed here meanwhile (a write, an upload, a rename)."""
        staged = node.staged
        if not self.unchanged_here(node):
            return
        async with staged.lock:
            if (node.staged is not staged or not self.unchanged_here(node, locked=True)
                    or not self.fs.inodes.observed(node, seq)):
                return
            await staged.rebase_locked(info.size, self._fetcher(node, None))
            self.fs.names.set_info(node, info, when, seq, copy_only=True)
            # The content is this version's now, whatever this mount changed meanwhile (a chmod).
            node.size, node.etag, node.attr_time = info.size, info.etag, when

    async def writable_staged(self, node: Node, truncate: bool) -> StagedFile:
        """The staged file a new writing handle uses.

        Files share one per node, so every descriptor sees the others' writes.  Each writing handle
        of a record gets its own, so its commit is conditional on the version *it* read.
        """
        if node.is_record:
            return self.new_staged(node, truncate)
        if node.staged is None:
            node.staged = self.new_staged(node, truncate)
        elif truncate:
            await node.staged.truncate(0)
        return node.staged

    async def open(self, node: Node, writable: bool, truncate: bool, append: bool) -> tuple[int, bool, bool]:
        """A handle of ``node`` (checked and refreshed by the core); returns (fh, keep_cache, direct_io)."""
        if writable:
            handle = WriteHandle(node, await self.writable_staged(node, truncate), append, truncate)
            if truncate:
                node.mtime = time.time()
                if node.meta is not None:
                    node.meta = node.meta.touched(node.mtime, data=True)
        else:
            handle = ReadHandle(node, await self.reader(node) if node.staged is None else None)
        keep_cache = node.staged is None and node.etag is not None and node.cache_etag == node.etag
        handle.cache_dropped = not keep_cache
        node.cache_etag = node.etag if node.staged is None else None
        self.fs.stats.page_cache_kept += keep_cache
        # A record handle's content is its own until it commits (and may be refused): it must not
        # pass through the page cache that every other open of the record reads.  Readers bypass it
        # too: a writer's O_TRUNC open sets the kernel's size of the record to 0 until its commit,
        # and a read through the page cache stops at that size (an empty record in between).
        direct_io = node.is_record
        return self.register(handle), keep_cache, direct_io

    async def create(self, node: Node, append: bool, exclusive: bool, create_only: bool = False) -> int:
        """A writing handle of ``node``, created or truncated (the core checked the name).

        ``create_only``: a file this mount believes new, opened without O_TRUNC: its first upload
        is conditional (If-None-Match), so a file another node created meanwhile (after the listing
        this mount answered from) is never replaced by it; that close() gets EEXIST instead.  A
        record's content is its handle's own, so a record created with O_EXCL or without O_TRUNC
        commits only if the record is still absent (then only over its own last commit)."""
        staged = await self.writable_staged(node, truncate=True)
        if node.is_record and (exclusive or create_only):
            staged.mark_dirty({"if_none_match": True})
        elif create_only and not node.is_record and node.open_count == 0:
            staged.create_only_upload()
        return self.register(WriteHandle(node, staged, append, truncated=True))

    async def reader(self, node: Node):
        """A reader pinned to the version of the object that exists now."""
        path = self.fs.sync_backend.local_path(node.key)
        if path is not None:  # objects are local files: read the file itself
            reader, st = await LocalReader.open(path, self.fs.cache.io_limiter)
            if node.staged is None and etag_of(st) != node.etag:  # changed within the TTL: show it
                node.size, node.mtime, node.etag = st.st_size, st.st_mtime, etag_of(st)
                node.attr_time = self.fs.clock()
            return reader
        if node.is_record and node.size <= RECORD_IN_MEMORY and self.fs.budget.could_hold(node.size):
            reader = await self._load_record(node)
            if reader is not None:
                return reader
        return Prefetcher(
            self.fs.backend, self.fs.budget, self.fs.nursery, lambda: node.key, node.size, node.etag,
            self.fs.stats, self.fs.options.max_prefetch, self.fs.options.part_size,
            kernel_readahead=self.fs.kernel_readahead,
        )

    async def _load_record(self, node: Node) -> Optional[RecordReader]:
        """A record's whole content and attributes from one GET, at the open: one version, whichever
        was committed last, not the one this mount knew (a reader pinned to that would get ESTALE
        from a commit made since, before it read a byte).  The node takes its attributes, so the
        open answers with them (`Filesystem.open` drops the kernel's older ones): stat and content
        agree.  Held in memory (charged to the budget) until the handle closes; None when the
        budget has not that much free (the caller reads it like a file, from this version)."""
        when, seq = self.fs.names.clock(), self.fs.inodes.seq
        data, info = await self.fs.backend.get_object(node.key)
        self.fs.names.set_info(node, info, when, seq)
        reader = RecordReader(data, self.fs.budget)
        if not reader.charge():
            # The budget is held (by other open records, say): read it like a larger record,
            # pinned to this version, rather than wait for memory that the opener itself may hold.
            return None
        return reader

    def register(self, handle: Handle) -> int:
        fh = self.new_fh()
        self.handles[fh] = handle
        handle.node.open_count += 1
        return fh

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.handles[fh]
        staged = handle.staged or handle.node.staged
        if staged is not None:
            try:
                return await staged.read(off, size)
            except PreconditionFailed:
                if not await self._follow_current(handle.node, staged):
                    raise
                return await staged.read(off, size)
        if handle.reader is None:  # the file was being written when this handle opened it
            handle.reader = await self.reader(handle.node)
        reader = handle.reader
        try:
            data = await reader.read(off, size)
        except PreconditionFailed:
            if not await self._repin(handle, reader):
                raise
            data = await handle.reader.read(off, size)  # replaced yet again meanwhile: ESTALE
        if data:
            handle.served = True
        return data

    async def _repin(self, handle: ReadHandle, failed) -> bool:
        """A reader that has served nothing yet found the version it was pinned to replaced (by
        another node, within the TTL this mount trusted what it knew): pin it to the current
        version instead, as an open a moment later would have.  Not once it served bytes (they
        would mix), nor when the open kept the kernel's page cache (it may hold the old version's
        pages, served without asking; a record's handles never use it).  A record read like a
        file (over 256 KiB) does the same.  False: the ESTALE stands."""
        node = handle.node
        if handle.served or node.staged is not None or not (handle.cache_dropped or node.is_record):
            return False
        async with handle.repin_lock:
            if node.staged is not None:  # a writer opened it meanwhile: its content is built on the old
                return False
            if handle.reader is failed:  # else another read of this handle did it meanwhile
                handle.reader = None
                failed.close()
                node.attr_time = 0
                before = node.size
                await self.fs.names.refresh(node)  # the current version; ENOENT if it is gone
                # Older handles may still add the old version's pages: the next open drops them all.
                node.cache_etag = None
                if node.size > before:
                    # The kernel holds the old size and would stop reading there.  Not for a
                    # shorter version: the short answer to this read tells the kernel where the
                    # file ends, unless its attributes were dropped during the read (then it
                    # keeps the old size, the rest of the pages read as zeros).
                    await self.fs.records.invalidate_attrs(node.ino)
                handle.reader = await self.reader(node)
        return handle.reader is not None

    async def write(self, fh: int, off: int, data: bytes) -> int:
        handle = self.handles[fh]
        if not handle.writable:
            raise FSError(errno.EBADF, f"{handle.node.display}: not open for writing")
        staged = handle.staged
        if handle.append:
            off = staged.size
        if handle.node.is_record:
            self.fs.records.check_size(handle, off + len(data), "write")  # EFBIG now, not at close
            self.fs.records.more_content(handle)
        await self.fs.budget.acquire(len(data))
        try:
            try:
                n = await staged.write(off, data)
            except PreconditionFailed:
                if not await self._follow_current(handle.node, staged):
                    raise
                off = staged.size if handle.append else off
                n = await staged.write(off, data)
        finally:
            self.fs.budget.release(len(data))
        self.fs.uploader.wrote(handle.node, staged, self.fs.nursery, off, off + n)  # parts it filled go up now
        handle.written = True
        node = handle.node
        node.mtime = time.time()
        if node.meta is not None:
            node.meta = node.meta.touched(node.mtime, data=True)
            kept = posixattrs.mode_after_write(node.meta.mode, node.meta.gid, handle.caller)
            if kept != node.meta.mode:  # a write by another user: no setuid/setgid any more
                node.meta = node.meta.with_(mode=kept)
        return n

    async def flush(self, fh: int) -> None:
        """close(): a file written through this handle is durable in the backend on return —
        unless the close comes from a copy of the descriptor while its opener still holds the
        file (`fsdriver.closes`): the opener's close uploads it then."""
        handle = self.handles[fh]
        if not handle.writable or await self._opener_still_writing(handle):
            return
        if handle.node.is_record:
            # only what was written: see fsdriver.records; a child's close inside
            # `{ echo '['; seq -s, 3; echo ']'; } > r.json` commits nothing (half a record)
            await self.fs.records.flush(handle)
            if handle.node.mtime_wanted is not None and not (handle.written or handle.truncated) \
                    and not self._opener_holds_another(handle):
                # `touch -d`: its own last close stores the time, so it is there when close()
                # returns (not a child's close of an inherited copy: that opener still holds one)
                await self._keep_wanted_mtime(handle.node, closing=handle)
        else:
            await self.upload(handle.node, handle.staged, awaited=True)

    def _opener_holds(self, handle: Handle, descriptors: int) -> Optional[bool]:
        """Whether the process that opened ``handle`` still holds at least ``descriptors`` of its
        file open for writing (`fsdriver.closes`); None when it cannot be told.  procfs answers
        from memory (readlink of /proc/<pid>/fd/N never calls into a filesystem): tens of
        microseconds, not worth a thread hop on every close."""
        caller, mountpoint = handle.caller, self.fs.mountpoint
        if caller is None or caller.pid <= 0 or mountpoint is None:
            return None
        path = os.path.join(mountpoint, *handle.node.path)
        return closes.opener_holds(caller.pid, path, descriptors, deleted=handle.node.unlinked)

    def _opener_holds_another(self, handle: Handle) -> bool:
        """Whether the opener still holds a descriptor of the file open for writing (this close is
        then a copy's, or that process writes on); True when it cannot be told."""
        return self._opener_holds(handle, 1) is not False

    async def _opener_still_writing(self, handle: Handle) -> bool:
        """Whether this close() comes from a copy of the descriptor (a child that inherited it)
        while the process that opened the file still holds it (`fsdriver.closes`)."""
        if handle.staged is None or not handle.staged.dirty:
            return False
        node = handle.node
        # Every writing handle of the file (this one included, whoever opened them): the opener
        # must hold at least that many descriptors of it open for writing for this close to be a
        # copy's.  Counting only the opener's own handles would take a descriptor of another
        # handle (a thread's, or one it inherited, `exec >>log 2>&1`) for a copy of this one; and
        # descriptors open for reading do not count (`exec 4<r.json; /bin/echo x > r.json`).
        handles = sum(1 for h in self.handles.values() if h.node is node and h.writable)
        held = self._opener_holds(handle, handles) is True
        if held:
            self.fs.stats.inherited_closes += 1
        return held

    async def fsync(self, fh: int) -> None:
        handle = self.handles[fh]
        if handle.writable and handle.node.is_record:
            await self.fs.records.fsync(handle)
            return
        await self.upload(handle.node, handle.staged or handle.node.staged, awaited=True)

    async def upload(self, node: Node, staged: Optional[StagedFile], awaited: bool = False,
                     retry: bool = False) -> None:
        """Upload a file's staged content; ``awaited``: a caller waits for it (close, fsync,
        truncate), so a small file is journaled only if the upload fails (`Uploader.journal_first`);
        ``retry``: see `Uploader.upload_locked`."""
        shown = node.meta
        await self.fs.uploader.upload(node, staged, awaited=awaited, retry=retry)
        if node.meta is not shown and awaited:  # the stored times, shown from now on (`uploaded`)
            await self.fs.records.invalidate_attrs(node.ino)  # also by a stat right after close()
        if node.mtime_wanted is not None and not (staged and staged.dirty):
            mtime, node.mtime_wanted = node.mtime_wanted, None
            await self.keep_mtime(node, mtime)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        handle.close()
        node = handle.node
        # A time kept at the end (below) is marked like a record's commit at release, before the
        # first await (`Records.marked`): the next stat or open of the record waits for it.
        timed = node.mtime_wanted is not None and node.is_record and handle.writable
        with self.fs.records.marked(node) if timed else contextlib.nullcontext():
            await self._release(handle, node)

    async def _release(self, handle: Handle, node: Node) -> None:
        try:
            staged = handle.staged
            if handle.writable and node.is_record:
                await self.fs.records.release(handle)  # first, before any await: see fsdriver.records
            elif handle.writable and staged.dirty and not staged.pending and staged not in self.fs.uploader.pending:
                await self.upload(node, staged)  # written after the last flush (mmap): upload now
        finally:
            node.open_count -= 1
            if handle.staged is not None and handle.staged is not node.staged:
                self.discard(handle.staged)  # a record handle's own content
            self.drop_staged(node)
            self.fs.inodes.release_unreferenced(node)
        if handle.writable and node.is_record and (handle.refused is not None or handle.staged.rejected is not None
                                                   or handle.staged.broken is not None):
            node.mtime_wanted = None  # set with content that was refused: it goes with it
        await self._keep_wanted_mtime(node)

    def copied(self, node: Node, old: Optional[str], info: ObjectInfo) -> None:
        """This mount copied ``node``'s object, version ``old``, to ``info`` (its metadata replaced,
        or renamed): the content is the same, so its readers pinned to ``old`` follow the copy
        (`Prefetcher.follow`) instead of failing with ESTALE when its etag differs."""
        if old is None or old == info.etag or info.copied_from != old:
            return  # the same etag, or not known to be a copy of ``old`` (another node's version)
        for handle in self.handles.values():
            reader = getattr(handle, "reader", None)
            if handle.node is node and isinstance(reader, Prefetcher):
                reader.follow(old, info.etag, node.key)

    def uploaded(self, node: Node, info: ObjectInfo, sent: Optional[dict] = None) -> None:
        """An upload of ``node`` landed as ``info``: that is now the newest thing this mount knows,
        for the node and for its parent's cached listing (which later lookups and readdirs reuse).
        ``sent``: the metadata the upload carried.  Stored otherwise only by a streamed file,
        which keeps the times its upload started with when its last write came within the skew
        allowed (`fsdriver.multipart`): unless the node changed since, this mount shows those
        from now on, as every other mount does, not the exact ones until it happens to ask again
        (an mtime moving back a second later)."""
        self.fs.inodes.changed(node)
        node.size, node.mtime, node.etag, node.attr_time = info.size, info.mtime, info.etag, self.fs.clock()
        node.meta_known, node.nlink = True, info.nlink  # the upload stored the attributes this mount holds
        if info.meta is not None and sent is not None and info.meta != sent and self.fs.upload_meta(node) == sent:
            node.meta = posixattrs.from_headers(info.meta, info.mtime, node.is_dir) or node.meta
        if info.nlink > 1:  # hard links (disk): the other names share the new content
            for other in self.fs.inodes.by_ino.values():
                if other is not node and other.nlink > 1 and not other.is_dir:
                    other.attr_time = 0
        parent = self.fs.inodes.at(node.path[:-1])
        if parent is not None and not node.unlinked:
            self.fs.names.listed(parent, node.path[-1], (False, info))

    def adopt_pending_record(self, node: Node, staged: StagedFile) -> None:
        """A record handle's commit became a pending upload: it is now the content this mount
        shows for the record (read-your-writes, also through an outage), owned like a file's."""
        old = node.staged
        node.staged = staged
        if old is not None and old is not staged and not any(h.staged is old for h in self.handles.values()):
            self.discard(old)  # an older pending commit of the same record: the newer one wins

    def settled(self, node: Node, staged: StagedFile) -> None:
        """The retry loop finished with a pending upload: free it unless a handle still has it."""
        if staged is node.staged:
            self.drop_staged(node)
            self.fs.inodes.release_unreferenced(node)
        elif not any(h.staged is staged for h in self.handles.values()):
            self.discard(staged)

    def discard(self, staged: StagedFile) -> None:
        """Forget staged content, unless it is a pending upload the retry loop still owns."""
        if staged.broken is None and staged.rejected is None and (staged.dirty or staged.pending):
            return
        staged.remove()
        self.fs.uploader.pending.pop(staged, None)

    def drop_staged(self, node: Node) -> None:
        """Forget a file's shared local content once nobody has it open and it is uploaded."""
        staged = node.staged
        if staged is None or node.open_count > 0 or (node.is_scratch and not node.unlinked):
            return
        if not node.unlinked and staged.broken is None and staged.rejected is None and (staged.dirty or staged.pending):
            return  # a pending upload: the retry loop owns it now
        if staged.lock.locked():
            return  # an upload (from the retry loop) is using it; dropped at the next chance
        staged.remove()
        node.staged = None
        self.fs.uploader.pending.pop(staged, None)

    async def truncate(self, node: Node, size: int, fh: Optional[int]) -> None:
        """truncate/ftruncate: through a writing handle, uploaded at its close; on a path (no
        close() to wait for), made durable now."""
        handle = self.handles.get(fh) if fh is not None else None
        if handle is not None and handle.writable:
            if node.is_record:
                self.fs.records.check_size(handle, size, "truncate")
                self.fs.records.more_content(handle)
                # Emptied: committed at release, unless written (then at close), as after O_TRUNC.
                # Cut to a length: content of the handle's own, committed (or refused) at close.
                if size == 0:
                    handle.truncated = True
                else:
                    handle.written = True
            try:
                await handle.staged.truncate(size)  # uploaded at close
            except PreconditionFailed:
                if not await self._follow_current(node, handle.staged):
                    raise
                await handle.staged.truncate(size)
        else:
            # truncate(2) on a path has no close() to wait for: make it durable now (on the
            # current version: `Filesystem.setattr` read it).
            if node.is_record:
                node.attr_time = 0
            await self.fs.names.refresh(node)
            staged = await self.writable_staged(node, truncate=(size == 0))
            try:
                await staged.truncate(size)
                await self.upload(node, staged, awaited=True)
            finally:
                if staged is not node.staged:
                    self.discard(staged)
                self.drop_staged(node)

    async def _follow_current(self, node: Node, staged: StagedFile) -> bool:
        """A read, write or truncate needed bytes of the version its staged file is built on, and that
        version is gone (replaced by another node within the TTL this mount trusted what it
        knew).  If the staged file holds nothing of it yet — nothing written, nothing fetched —
        it follows the current version (`rebase`), as an open a moment later would have, and the
        caller tries once more; else (or when the file is gone) the ESTALE stands."""
        if node.staged is not staged or staged.present or not self.unchanged_here(node):
            return False
        if any(h.node is node and getattr(h, "served", False) for h in self.handles.values()):
            return False  # a reader already served bytes of the old version: never a mix (`_repin`)
        before, size = node.etag, node.size
        node.attr_time = 0
        try:
            await self.fs.names.refresh(node)
        except FSError:  # deleted meanwhile
            return False
        if node.size > size:  # the kernel holds the old size and would stop reading there (`_repin`)
            await self.fs.records.invalidate_attrs(node.ino)
        return node.etag != before and node.staged is staged and not staged.present

    async def set_mtime(self, node: Node, mtime: float) -> None:
        """utimens of a file: kept where the backend can set it (`Backend.set_mtime`: the disk
        backend's file mtime), applied once its content is uploaded when it is being written;
        S3 objects keep their upload time."""
        node.mtime = mtime
        if not self.fs.sync_backend.keeps_mtime:
            return  # shown until the attributes are read again
        if self._being_written(node):
            node.mtime_wanted = mtime  # applied once the content is uploaded
        else:
            await self.keep_mtime(node, mtime)

    def _being_written(self, node: Node) -> bool:
        """Whether content of ``node`` may still be uploaded: a time set meanwhile waits for it (on
        disk it changes the etag, which a record's open ``r+`` handle commits against).  A record's
        ``staged`` is a pending upload's, or the stored copy of a scratch file renamed to it (kept
        for open handles): only content not stored yet counts."""
        staged = node.staged
        if node.is_record and staged is not None and not (staged.dirty or staged.pending):
            staged = None
        return staged is not None or any(h.node is node and h.writable for h in self.handles.values())

    async def _keep_wanted_mtime(self, node: Node, closing: Optional[Handle] = None) -> None:
        """Apply a time set while ``node`` was open for writing once no upload will follow: at the
        close of the last writing handle (``closing``) by its opener's own last descriptor of it
        (``touch -d`` of a record opens it for writing, sets the times through the descriptor,
        futimens, and closes it without a write), else at the release of the last one.  A close
        from a copy of a descriptor (a child's exit) is not one: the caller tells."""
        if node.mtime_wanted is None or node.unlinked:
            return
        staged = node.staged
        if (staged is not None and (staged.dirty or staged.pending or not node.is_record)) or any(
                h.node is node and h.writable and h is not closing for h in self.handles.values()):
            return
        mtime, node.mtime_wanted = node.mtime_wanted, None
        try:
            await self.keep_mtime(node, mtime)
        except NotFound:  # removed meanwhile (by another node): nothing to set it on
            log.info("%s: the time set on it was not kept: it was removed meanwhile", node.display)
        except BaseException:
            if node.mtime_wanted is None:
                node.mtime_wanted = mtime  # tried again at the next close or release
            raise

    async def keep_mtime(self, node: Node, mtime: float) -> None:
        info = await self.fs.backend.run(self.fs.sync_backend.set_mtime, node.key, mtime)
        self.uploaded(node, info)  # the object changed (its etag too, on disk): what we know now

    def keep_for_descriptors(self, node: Node) -> Optional[StagedFile]:
        """Before ``node``'s object goes (an unlink, a rename over it): the staged file that must
        hold its whole content, so that descriptors still open on it read and write it as on
        ext4 (`fill_for_descriptors`, under its lock); None when none needs it.  A descriptor that
        reads the backing file itself (disk) or holds a whole record needs nothing; a reader of
        the object (S3) gets the node's local content from now on."""
        if node.is_dir or node.is_record or node.open_count == 0:
            return node.staged
        if node.staged is None and any(
                h.node is node and not h.writable and not isinstance(h.reader, (LocalReader, RecordReader))
                for h in self.handles.values()):
            node.staged = self.new_staged(node, truncate=False)
            node.staged.for_readers = True
        return node.staged

    def unkeep(self, node: Node) -> None:
        """The removal `keep_for_descriptors` prepared for failed: a staged file it made only for
        readers goes again (else later opens would read that copy, not the object)."""
        staged = node.staged
        if (staged is not None and staged.for_readers and not staged.dirty and not staged.pending
                and not staged.lock.locked() and not staged.reading
                and not any(h.staged is staged for h in self.handles.values())):
            node.staged = None
            staged.remove()

    async def fill_for_descriptors(self, node: Node, staged: Optional[StagedFile]) -> None:
        """(``staged.lock`` held) Fetch what the staged file of a node about to lose its object
        does not hold yet, while descriptors are open on it.  When that cannot be done the
        removal goes ahead, logged: those descriptors then get errors where ext4 would serve."""
        if staged is None or staged.fetch is None or node.open_count == 0 or node.is_record:
            return
        try:
            free = (await trio.to_thread.run_sync(shutil.disk_usage, self.fs.cache.root)).free
            if staged.origin_size > free // 2:
                raise OSError(errno.ENOSPC, f"{staged.origin_size} bytes would fill the cache disk")
            await staged.complete_locked()
        except (BackendError, OSError) as e:
            log.warning("%s: removed while open: descriptors still open on it cannot read what "
                        "they have not read yet (its content could not be kept: %s)", node.display, e)

    async def delete(self, node: Node) -> None:
        """unlink: the file's object goes, and with it any upload of it, pending or to come.
        Descriptors still open on it keep its content (`keep_for_descriptors`)."""
        staged = self.keep_for_descriptors(node)
        try:
            await self._delete(node, staged)
        except BaseException:
            self.unkeep(node)
            raise

    async def _delete(self, node: Node, staged: Optional[StagedFile]) -> None:
        async with staged.lock if staged is not None else _nothing():
            await self.fill_for_descriptors(node, staged)
            # Under the lock no upload of this file is half done: it either landed (etag set, and
            # deleted now) or will see the node unlinked and not start.  An upload that failed
            # (pending) may have landed all the same (its answer lost): delete in that case too.
            # Marked unlinked only once the delete succeeded: a failed unlink (EIO) keeps the file
            # and its pending upload as they were.
            await self.fs.uploader.supersede(node.key)
            if node.etag is not None or staged is None or staged.pending or staged in self.fs.uploader.pending:
                await self.fs.backend.delete(node.key)
            node.unlinked = True
            if staged is not None:
                self.fs.uploader.pending.pop(staged, None)  # never retried after the delete
                self.fs.cache.unjournal(staged)


@asynccontextmanager
async def _nothing():
    yield
