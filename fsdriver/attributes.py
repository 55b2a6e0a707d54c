"""Keeping POSIX attributes in the backend: chmod, chown, utimens, and directory times.

A file's attributes (`fsdriver.posixattrs.Meta`) travel with its content: an upload stores them in
the object's user metadata (`Uploader.meta_for`), so a file written and chmod-ed before close costs
no request of its own.  A change to a file whose content is in the backend already replaces the
object's metadata (`Backend.set_meta`): on S3 a copy of the object onto itself, conditional on the
version this mount knows (``If-Match``).  When another node changed the object meanwhile, the
object's current metadata is read again and only the fields this change sets are applied to it, so
neither change is lost.  The change is durable when the call returns.

A directory's attributes live in the metadata of its marker object ``<dir>/``.  Its mtime and
ctime move with every entry created, removed or renamed in it; storing that at each such call
would double the cost of a create on S3, so they are written in the background, one write per
directory for all the changes of about a second (`touch_dir`), and at unmount (`flush`).  An
explicit change (chmod, chown, utimens of the directory) is written at once.
"""

import errno
import logging
import time
from contextlib import asynccontextmanager
from typing import Callable, Optional

import trio

from . import posixattrs
from .backend import CommonPrefix
from .errors import BackendError, NotFound, PreconditionFailed
from .errno_boundary import FSError
from .inodes import Node
from .posixattrs import Meta

log = logging.getLogger("stashfs.fs")

DIR_TIMES_DELAY = 1.0  # seconds a directory's time changes are gathered before one write
CONFLICT_RETRIES = 5


class Attributes:
    def __init__(self, fs):
        self.fs = fs  # the core.Filesystem
        self._dirty_dirs: dict[int, Node] = {}
        self._wake = trio.Event()
        self._flushing = trio.Lock()

    # -- what a node shows ---------------------------------------------------------------------

    def current(self, node: Node) -> Meta:
        """The node's attributes, the defaults made explicit where the object carries none."""
        if node.meta is not None:
            return node.meta
        a = self.fs.attr(node)
        return Meta(a.mode, a.uid, a.gid, a.mtime, a.ctime or a.mtime, a.atime or a.mtime, a.rdev)

    # -- explicit changes ------------------------------------------------------------------------

    async def change(self, node: Node, edit: Callable[[Meta], Meta]) -> None:
        """Apply ``edit`` to the node's attributes and make that durable (see the module doc).
        The node shows the change only once it is stored (or will be, with the upload to come)."""
        new = edit(self.current(node))
        if node.is_dir:
            await self._store_dir(node, edit, new)
            return
        staged = node.staged
        if staged is not None:
            async with staged.lock:
                if staged.dirty or staged.pending or node.etag is None:
                    self._show(node, new)  # the upload to come (at close, or its retry) carries them
                    if staged.pending and staged.journaled:  # kept across a restart too
                        staged.meta = self.fs.upload_meta(node)
                        replaces = staged.replaces if staged.replaces_known else node.etag
                        await trio.to_thread.run_sync(self.fs.cache.journal, staged, node.key, replaces,
                                                      limiter=self.fs.cache.io_limiter)
                    return
                await self._store_file(node, edit, new)
        elif node.etag is not None:
            await self._store_file(node, edit, new)
        else:
            self._show(node, new)

    def _show(self, node: Node, meta: Meta) -> None:
        node.meta, node.meta_known = meta, True
        self.fs.inodes.changed(node)
        node.attr_time = self.fs.clock()

    async def _store_file(self, node: Node, edit: Callable[[Meta], Meta], new: Meta) -> None:
        """Replace the object's metadata, conditional on the version and the metadata this mount
        knows (a metadata change elsewhere keeps the etag); after a conflict, ``edit`` is applied
        to the object's metadata as it is now."""
        backend = self.fs.backend
        seen = posixattrs.to_headers(node.meta) if node.meta is not None else ({} if node.meta_known else None)
        for attempt in range(CONFLICT_RETRIES):
            try:
                info = await backend.set_meta(node.key, posixattrs.to_headers(new), if_match=node.etag, if_meta=seen)
            except PreconditionFailed:
                # Another node changed the object: take its version and apply only our change.
                try:
                    info = await backend.head(node.key)
                except NotFound:
                    raise FSError(errno.ENOENT, f"{node.display}: removed from the backend meanwhile") from None
                node.size, node.etag, node.mtime = info.size, info.etag, info.mtime
                seen = info.meta or {}
                fresh = posixattrs.from_headers(info.meta, info.mtime, False, *self.fs.default_owner(node))
                node.meta = fresh
                new = edit(fresh if fresh is not None else self.current(node))
                continue
            except NotFound:
                raise FSError(errno.ENOENT, f"{node.display}: removed from the backend meanwhile") from None
            self._show(node, new)
            self.fs.files.copied(node, node.etag, info)
            self.fs.files.uploaded(node, info)
            return
        raise FSError(errno.EAGAIN, f"{node.display}: changed by other writers {CONFLICT_RETRIES} times "
                      "while its attributes were being set; not changed", logging.WARNING)

    async def _store_dir(self, node: Node, edit: Callable[[Meta], Meta], new: Meta) -> None:
        """A directory's attributes go into its marker's metadata (on S3 with its index,
        `fsdriver.dirindex`, applied to the marker's metadata as it is), then into its parent's
        listing and index (on S3 written at once: other nodes list the parent)."""
        waiting = self._dirty_dirs.pop(node.ino, None)  # its times changed before: stored with this
        if self.fs.dirindex.enabled:
            await self.fs.dirindex.store_dir(node, edit)  # shows what it stored
        else:
            # After a background round in flight: it stores the attributes as they were before this
            # change, and must not land after it (a chmod lost at the next mount otherwise).
            try:
                async with self._flushing:
                    await self.fs.backend.set_meta(node.prefix, posixattrs.to_headers(new))
            except BaseException:
                if waiting is not None:  # those times are still to be stored, by the next round
                    self._dirty_dirs[node.ino] = waiting
                    self._wake.set()
                raise
            node.has_marker = True
            self._show(node, new)
        self.fs.inodes.changed(node)  # a listing that read the attributes before this is older
        self._relist(node, posixattrs.to_headers(node.meta))
        parent = self.fs.inodes.at(node.path[:-1])
        if parent is not None and self.fs.dirindex.enabled:
            await self.fs.dirindex.write_now(parent)
        self.stored(node)

    def _relist(self, node: Node, headers: dict) -> None:
        """The parent's cached listing (and index) show the directory's new attributes."""
        parent = self.fs.inodes.at(node.path[:-1])
        if parent is not None and not node.unlinked:
            self.fs.names.listed(parent, node.path[-1], (True, CommonPrefix(node.prefix, meta=headers)))

    # -- directory times -------------------------------------------------------------------------

    def pending(self, node: Node) -> bool:
        """Whether ``node``'s directory times changed here and are not stored yet."""
        return node.ino in self._dirty_dirs or self.fs.dirindex.pending(node)

    def touch_dir(self, node: Optional[Node], now: Optional[float] = None) -> None:
        """An entry of ``node`` was created, removed or renamed: its mtime and ctime move now and
        are stored within about DIR_TIMES_DELAY seconds."""
        if node is None or not node.is_dir:
            return
        now = time.time() if now is None else now
        if node.depth < 3:
            node.mtime = now  # namespaces and trees: shown, not stored (they have no attributes)
            return
        self.store_later(node, lambda m: m.touched(now, data=True))

    def store_later(self, node: Node, edit: Callable[[Meta], Meta]) -> None:
        """Change the directory's attributes (its times) now and store that within about a
        second: on S3 applied to the marker's metadata as it is then (another node's chmod stays)."""
        node.meta = edit(self.current(node))
        node.meta_known = True
        self.fs.inodes.changed(node)  # a listing or HEAD in flight is older than this
        if self.fs.options.read_only:
            return
        node.attrs_pending = True  # the node (and what it holds) lives until they are stored
        if self.fs.dirindex.enabled:  # written with the directory's index
            self.fs.dirindex.note_dir(node, edit)
            self._relist(node, posixattrs.to_headers(node.meta))
            return
        self._dirty_dirs[node.ino] = node
        self._wake.set()

    async def run(self) -> None:
        """Background task: store the directory times gathered since the last round."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(DIR_TIMES_DELAY)  # gather: one write per directory per round
            await self.flush()

    @asynccontextmanager
    async def held(self):
        """No directory times are stored meanwhile; a round in flight is waited for.  A directory
        rename holds them (disk: its times go into the directory's own metadata, at its path): a
        round storing them at the old path after the move failed ("directory times not stored"),
        and only the rename's own change of the directory's ctime stored them again."""
        async with self._flushing:
            yield

    async def flush(self) -> None:
        """Store every directory time change not stored yet (also at unmount, after the round in
        flight)."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        while self._dirty_dirs:
            _, node = self._dirty_dirs.popitem()
            try:
                if not node.unlinked and node.meta is not None:
                    await self.fs.backend.set_meta(node.prefix, posixattrs.to_headers(node.meta))
                    self.fs.inodes.changed(node)  # a listing that read them before this is older
                    self._relist(node, posixattrs.to_headers(node.meta))
            except (BackendError, FSError, OSError) as e:
                # Only the times of a directory: logged, not retried (the next change stores them).
                log.warning("%s: directory times not stored: %s", node.display, e)
            finally:
                self.stored(node)

    def stored(self, node: Node) -> None:
        """A directory's pending attributes were stored (or given up): the node may go.  What it
        shows is what the backend holds now (fresh for the TTL: `Names.refresh`)."""
        if node.attrs_pending and not self.pending(node):
            node.attrs_pending = False
            node.attr_time = max(node.attr_time, self.fs.clock())
            self.fs.inodes.release_unreferenced(node)
