"""Renames: moving a file or a directory tree to a new name, in this mount and in the backend.

The core checks the names, the permissions and the target (`Filesystem.rename`); `move` does the
rest with every staged file involved locked, in inode order: the files that move have their local
content uploaded first and keep their staged file locked until the inode table says where they live
now, so a close() racing the rename can neither upload to the old key after the copy nor be deleted
with it; the replaced target's staged file is locked too, so a retry of its pending upload cannot
land after the copy and put the replaced content back.  On S3 a directory rename copies object by
object (not atomic); a copy may give an object a new etag (multipart), which the moved nodes take.
Meanwhile no directory index write of a directory that moves runs (`DirIndex.held`): one landing
on an old marker between its copy and its delete would be lost with it; nor does a round storing
directory times (`Attributes.held`; disk): at the old path, it failed.  A directory with rows or
times not written yet is in the table even when the kernel forgot it (`Node.attrs_pending`), so it
is among those that move and its changes are written at its new path.
Renames inside a store turn scratch files into records and back (`Records.rename_in_store`).
"""

import time
from contextlib import AsyncExitStack

from . import posixattrs
from .inodes import Node


class Renames:
    def __init__(self, fs):
        self.fs = fs  # the core.Filesystem

    async def move(self, node: Node, target, old_parent: Node, new_parent: Node, new_path: tuple) -> None:
        """Move ``node`` (replacing ``target``, an empty directory or a file, if not None) to
        ``new_path``; the caller checked that this is allowed."""
        # Every file that moves has its local content uploaded first, and keeps its staged file
        # locked until the table says where it lives now: a close() racing the rename can neither
        # upload to the old key after the copy nor be deleted with the old key.
        moving = [node] + (self.fs.inodes.below(node) if node.is_dir else [])
        # The target's staged file is locked too: a retry of its pending upload in flight would
        # land after the copy and put the replaced content back.  Descriptors open on the target
        # keep its content (filled in under that lock, before the copy replaces it).
        if target is not None:
            self.fs.files.keep_for_descriptors(target)
        replaced = [target] if target is not None and target.staged is not None else []
        try:
            await self._move(node, target, old_parent, new_parent, new_path, moving, replaced)
        except BaseException:
            if target is not None:
                self.fs.files.unkeep(target)
            for n in moving:  # a pending upload refused on the way is not shown any more
                self.fs.files.drop_staged(n)
            raise

    async def _move(self, node: Node, target, old_parent: Node, new_parent: Node, new_path: tuple,
                    moving: list, replaced: list) -> None:
        old_name, new_name = node.path[-1], new_path[-1]
        moved = None  # new key -> ObjectInfo of what the backend's copies made
        async with AsyncExitStack() as locks:
            for n in sorted((n for n in moving + replaced if n.staged is not None), key=lambda n: n.ino):
                await locks.enter_async_context(n.staged.lock)
            if replaced:
                await self.fs.files.fill_for_descriptors(target, target.staged)
            if node.in_store:
                if node.is_record and node.staged is not None and (node.staged.dirty or node.staged.pending):
                    await self.fs.uploader.upload_locked(node, node.staged)  # a pending commit lands first
                await self.fs.uploader.supersede("/".join(new_path))  # no older leftover lands after it
                await self.fs.records.rename_in_store(node, new_path)
            else:
                for n in moving:
                    if n.staged is not None and (n.staged.dirty or n.staged.pending):
                        # (a failed close's content: only over the version it replaced)
                        await self.fs.uploader.upload_locked(n, n.staged, retry=n.staged.replaces_known)
                await self.fs.uploader.supersede("/".join(new_path))  # no older leftover lands after the copy
                if node.is_dir:
                    # No index write lands on a marker between its copy and its delete: until the
                    # table says where the directories live now (the end of this block).
                    await locks.enter_async_context(self.fs.dirindex.held(moving))
                    await locks.enter_async_context(self.fs.attributes.held())
                    moved = await self.fs.backend.rename(node.prefix, "/".join(new_path) + "/")
                elif node.meta is not None and self.fs.has_posix(node):
                    node.meta = node.meta.touched()  # a rename changes the file's ctime: kept with it
                    moved = await self.fs.backend.rename(node.key, "/".join(new_path),
                                                         meta=posixattrs.to_headers(node.meta))
                else:
                    moved = await self.fs.backend.rename(node.key, "/".join(new_path))
            if target is not None:
                self.fs.inodes.remove(target)
                if target.staged is not None:  # replaced: its pending upload must never land now
                    self.fs.uploader.pending.pop(target.staged, None)
                    self.fs.cache.unjournal(target.staged)
                self.fs.files.drop_staged(target)
            self.fs.inodes.move(node, new_path)
            for n in moving:  # what was listed or looked up under the new names before is older
                self.fs.inodes.changed(n)
                if n.is_dir:
                    n.listing = None  # its entries carry the objects' etags before the copy
                info = (moved or {}).get(n.key)
                if info is not None:  # a copy may give the object a new etag (S3 multipart)
                    self.fs.files.copied(n, n.etag, info)
                    if n.staged is not None and info.copied_from not in (None, n.etag):
                        # Another node's version was copied: the local content stays built on the
                        # version it knew (what it has not fetched yet is ESTALE, never a mix).
                        continue
                    n.size, n.mtime, n.etag, n.attr_time = info.size, info.mtime, info.etag, self.fs.clock()
        if node.is_dir and node.meta is not None and self.fs.has_posix(node):
            now = time.time()
            self.fs.attributes.store_later(node, lambda m: m.touched(now))  # its ctime, as of now
        self.fs.names.listed(old_parent, old_name, None)
        self.fs.names.listed(new_parent, new_name, (node.is_dir, self.fs.names.known_info(node)))
        new_parent.listing = None if node.is_dir else new_parent.listing
        await self.fs.names.keep_parent(old_parent)
