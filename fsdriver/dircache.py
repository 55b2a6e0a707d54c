"""What each name in the tree is: directory listings, lookups and file attributes, cached.

A directory's listing is kept for the metadata TTL (longer for one that took long to list) and
answers lookups; a name looked up and not found is remembered for the TTL too (`Node.absent`).
Every answer from the backend carries the mount's change counter read when its request *started*
(`InodeTable.seq`), and is applied to a file only if this mount changed nothing of it since then:
a listing or HEAD taken before our own write never overwrites what the write told us
(read-your-writes, docs/semantics.md).  Changes this mount makes are written into the cached
listings at once (`listed`).  A directory that holds local content (a file being written, a
pending upload) stays reachable when the backend cannot be asked.
"""

import errno
import logging
import time
from typing import Optional

from . import dirindex, kvexpiry, kvnames, layout, posixattrs
from .backend import CommonPrefix, ObjectInfo
from .backend.aio import AsyncBackend
from .errors import BackendError, InvalidName, NameTooLong, NotFound, PreconditionFailed
from .errno_boundary import FSError
from .inodes import InodeTable, Listing, Node
from .stats import Stats
from .supervise import spawn

log = logging.getLogger("stashfs.fs")

# A directory with fewer entries than this (one ListObjectsV2 page) is listed again instead of
# looked up one name at a time (`Names._resolve_remote`).
RELIST_MAX = 1000
RELIST_RECENT = 10  # ... and in which this mount changed entries within that many TTLs


class Names:
    def __init__(self, fs, inodes: InodeTable, backend: AsyncBackend, stats: Stats, ttl: float, clock):
        self.fs = fs  # the core.Filesystem: its nursery and the kernel invalidation it is given
        self.inodes, self.backend, self.stats = inodes, backend, stats
        self.ttl = ttl  # the metadata TTL
        self.clock = clock

    def child_path(self, parent: Node, name: str, creating: bool = False) -> tuple:
        """Validate ``name`` as a child of ``parent``; refuse places where nothing can be created."""
        if not parent.is_dir:
            raise FSError(errno.ENOTDIR, f"{parent.display} is not a directory")
        if creating:
            if self.fs.options.read_only:
                raise FSError(errno.EROFS, "mounted read-only")
            if parent.depth == 0:
                raise FSError(errno.EPERM, f"/{name}: only pipeline/, user/ and kv/ exist at the top", logging.INFO)
        if parent.depth == 1:
            what = {"pipeline": "pipeline id", "user": "user name", "kv": "store name"}[parent.path[0]]
            layout.check_name(name, what)
        else:
            layout.check_segment(name)
            if parent.is_store and not kvnames.is_scratch(name):
                kvnames.key_of(name)  # InvalidName for a .json name that is not a canonical encoding
        path = parent.path + (name,)
        limit = self.backend.sync.max_key_bytes
        if limit is not None and len("/".join(path).encode()) + 1 > limit:  # +1: a directory's marker
            raise NameTooLong(f"/{'/'.join(path)}: longer than the backend's keys may be ({limit} bytes)")
        return path

    def fresh(self, t: float) -> bool:
        return self.clock() - t < self.ttl

    def set_info(self, node: Node, info: ObjectInfo, when: float, seq: int, copy_only: bool = False) -> None:
        """Take attributes the backend gave at ``when`` to a request that started at change number
        ``seq``, unless this mount has local content or changed the object after that request began
        (a listing or HEAD taken before our own write must never overwrite what the write told us).
        ``copy_only``: the local content is a copy of this version (`refresh`)."""
        if (node.staged is None or copy_only) and self.inodes.observed(node, seq):
            if isinstance(info, ObjectInfo) and not node.is_dir:
                if info.etag != node.etag:
                    node.target = None  # a symbolic link's target is read again
                node.size, node.mtime, node.etag, node.attr_time = info.size, info.mtime, info.etag, when
                node.nlink = info.nlink
            # this answer carries the object's attributes (a directory's times changed here and not
            # stored yet are newer)
            if info.meta is not None and not (node.is_dir and self.fs.attributes.pending(node)):
                meta = posixattrs.from_headers(info.meta, getattr(info, "mtime", node.mtime), node.is_dir,
                                               *self.fs.default_owner(node))
                if node.is_dir:
                    node.attr_time = max(node.attr_time, when)  # (read with the listing: fresh until the TTL)
                if node.is_dir and meta is not None and node.meta is not None and node.meta_known \
                        and meta.ctime < node.meta.ctime:
                    # A directory has no etag to order versions by: attributes changed here later
                    # than these (its times, a chmod: every change sets the ctime) stay.  A parent's
                    # index row is written after the change and may be read before it was.
                    return
                node.meta = meta
                node.meta_known = True

    async def need_meta(self, node: Node) -> None:
        """Make sure a file or directory's own attributes are known: read them (one HEAD) when it
        was only seen in a listing that carries none (S3 without a directory index)."""
        if node.meta_known or node.staged is not None or not self.fs.has_posix(node):
            return
        await self._read_meta(node)

    async def _read_meta(self, node: Node, lookup: bool = False) -> bool:
        """Read a file or directory's own attributes (one HEAD of the object or of the marker);
        whether it was there.  A directory without a marker (implied by the keys below it, or
        removed elsewhere) keeps what it showed; one the backend cannot be asked about now too
        (it stays usable through an outage: it may hold pending uploads), for a TTL, unless this
        is a ``lookup`` (the error is the caller's: `resolve` answers from local content)."""
        when, seq = self.clock(), self.inodes.seq
        try:
            info = await self.backend.head(node.prefix if node.is_dir else node.key)
        except NotFound:
            if node.is_dir:
                node.has_marker = False  # (asked again by a LIST, as any name)
                if self.inodes.observed(node, seq):
                    node.meta_known, node.attr_time = True, when
                return False
            raise FSError(errno.ENOENT, f"{node.display}: removed from the backend") from None
        except BackendError as e:
            if not node.is_dir or lookup:
                raise
            log.info("%s: its attributes cannot be read now (%s)", node.display, e)
            node.attr_time = max(node.attr_time, when)
            return True
        if node.is_dir:
            node.has_marker = True
            if self.inodes.observed(node, seq):
                node.attr_time = when
        self.set_info(node, info, when, seq)
        return True

    async def refresh(self, node: Node) -> None:
        """Re-read a file's or a directory's attributes from the backend when they are older than
        the TTL.  A directory's come from its marker (one HEAD; disk: its own metadata), unless this
        mount changed them and has not stored that yet (those are newer) or the directory is in use:
        another node's chmod, chown or touch of a directory, or its rmdir and mkdir again, show after
        the TTL as a file's do (they showed only once the parent was listed again)."""
        if node.is_dir:
            # (a directory in use, `Node.exists_until`, is not asked about again while it is: `ls -l`
            # of a huge one looks every directory above each entry up again)
            if not (self.fresh(node.attr_time) or self.clock() < node.exists_until or node.has_marker is False
                    or not self.fs.has_posix(node) or self.fs.attributes.pending(node)
                    or self.backend.unresponsive):
                await self._read_meta(node)
            return
        if self.fresh(node.attr_time):
            return
        if node.staged is not None and not self.fs.files.unchanged_here(node):
            return  # this mount's own content, not stored yet: shown as it is (read-your-writes)
        when, seq = self.clock(), self.inodes.seq
        try:
            info = await self.backend.head(node.key)
        except NotFound:
            raise FSError(errno.ENOENT, f"{node.display}: removed from the backend") from None
        if node.staged is None:
            self.set_info(node, info, when, seq)
        elif info.etag == node.etag:  # held open for writing here, unchanged: a copy of this version
            self.set_info(node, info, when, seq, copy_only=True)
        else:  # ... of a version replaced elsewhere
            await self.fs.files.rebase(node, info, when, seq)

    def listing_fresh(self, node: Node) -> bool:
        listing = node.listing
        return listing is not None and self.clock() - listing.time < max(self.ttl, listing.valid)

    async def listing(self, node: Node) -> dict:
        """``name -> (is_dir, info or None)`` for a directory, from the cache when fresh."""
        if node.listing is not None and self.fresh(node.listing.time):
            return node.listing.entries
        started, seq = self.clock(), self.inodes.seq
        if node.listings_in_flight == 0:
            node.edits = {}
        node.listings_in_flight += 1
        try:
            entries = await self._list_dir(node, seq)
        finally:
            node.listings_in_flight -= 1
        edits = node.edits or {}
        if node.listings_in_flight == 0:
            node.edits = None
        for name, entry in edits.items():  # what this mount did meanwhile is newer than the listing
            if entry is None:
                entries.pop(name, None)
            else:
                entries[name] = entry
        if node.listing is not None:
            for name in node.listing.entries.keys() - entries.keys() - edits.keys():
                self.gone(node, name)  # removed elsewhere: the kernel may still have it cached
        done = self.clock()
        node.listing = Listing(entries, done, valid=5 * (done - started), seq=seq)
        node.absent.clear()
        if entries or node.has_marker:
            self._proven(node, done + max(self.ttl, node.listing.valid))
        return entries

    def _proven(self, node: Node, until: float) -> None:
        """``node`` and the directories above it exist (a listing found something in it): their
        names are answered without a request until ``until`` (`resolve`)."""
        for depth in range(node.depth, 1, -1):
            d = node if depth == node.depth else self.inodes.at(node.path[:depth])
            if d is None or not d.is_dir:
                break
            d.exists_until = max(d.exists_until, until)

    async def _list_dir(self, node: Node, seq: int) -> dict:
        """``name -> (is_dir, info or None)`` of a directory, from the backend."""
        entries: dict = {}
        if node.depth == 0:
            entries = {t: (True, None) for t in layout.TREES}
        elif node.depth == 1:
            for e in await self.backend.list(node.prefix, "/"):
                name = e.key[len(node.prefix):].rstrip("/")
                if isinstance(e, CommonPrefix) and layout.NAME_RE.match(name):
                    entries[name] = (True, None)
        elif node.is_store:
            entries = await self._store_listing(node)
        else:
            node.has_marker = False
            marker = None
            for e in await self.backend.list(node.prefix, "/"):
                if e.key == node.prefix:
                    node.has_marker, marker = True, e
                    continue
                is_dir = isinstance(e, CommonPrefix)
                name = e.key[len(node.prefix):].rstrip("/") if is_dir else e.key[len(node.prefix):]
                try:
                    layout.check_segment(name)
                except InvalidName:
                    log.debug("%s: skipping key %r, not a valid file name", node.display, e.key)
                    continue
                if is_dir or name not in entries:  # a directory shadows a file of the same name
                    # a directory's entry carries its attributes where the listing has them (disk)
                    entries[name] = (is_dir, e if not is_dir or e.meta is not None else None)
            await self.fs.dirindex.annotate(node, entries, marker, seq)  # S3: attributes from the index
        return entries

    async def _store_listing(self, node: Node) -> dict:
        """The live records of a store: ``<key>.json`` objects, without expired ones."""
        entries = {}
        node.has_marker = False
        for e in await self.backend.list(node.prefix, "/"):
            if e.key == node.prefix:
                node.has_marker = True
            elif isinstance(e, ObjectInfo):
                name = e.key[len(node.prefix):]
                try:
                    kvnames.key_of(name)
                except InvalidName:
                    continue  # not a record: a stray object under the store's prefix
                entries[name] = (False, e)
        expiries = await self.backend.run(kvexpiry.store_expiries, self.backend.sync, node.prefix)
        now = time.time()
        for name, markers in expiries.items():
            entry = entries.get(name)
            if entry is not None and kvexpiry.is_expired(entry[1].etag, markers, now):
                del entries[name]
                self._expire(node, name, markers)
        return entries

    def _expire(self, store: Node, name: str, markers: list) -> None:
        """An expired record reads as missing at once and is removed in the background."""
        self.gone(store, name)
        # Best effort: a record that could not be removed still reads as missing (its markers say
        # so), so after a few retries the delete is dropped with a log line.
        spawn(self.fs.nursery, self.stats, "expire", self.backend.run, kvexpiry.expire_record, self.backend.sync,
              store.prefix, name, markers, what=f"expiry of {store.prefix + name!r}", retries=3)

    def gone(self, parent: Node, name: str) -> None:
        """The backend no longer has ``parent/name``: forget it here and in the kernel's caches."""
        node = self.inodes.at(parent.path + (name,))
        if node is not None and node.staged is None:
            self.inodes.remove(node)
        self.fs.invalidate_entry(parent.ino, name)

    async def _resolve_record(self, parent: Node, name: str) -> Optional[Node]:
        path = parent.path + (name,)
        if kvnames.is_scratch(name):
            return None  # scratch files exist only in this daemon (found in the table above)
        when, seq = self.clock(), self.inodes.seq
        # The markers first, then the record: an expiry removes the record before its markers, so
        # a record seen after its markers were read is judged by them (markers, then a delete
        # in between, read as "gone"; the other order read a just-expired record as live).
        markers = (await self.backend.run(kvexpiry.store_expiries, self.backend.sync, parent.prefix, name)).get(name)
        try:
            info = await self.backend.head("/".join(path))
        except NotFound:
            return None
        if markers and kvexpiry.is_expired(info.etag, markers, time.time()):
            # Removed now, not in the background: a record created next under this name (`>>`,
            # `touch`, O_EXCL) commits only if the name is free (If-None-Match).
            try:
                await self.backend.run(kvexpiry.expire_record, self.backend.sync, parent.prefix, name, markers)
            except BackendError as e:
                log.info("%s: removing the expired record failed (%s); retried in the background",
                         "/".join(path), e)
                self._expire(parent, name, markers)
            else:
                self.gone(parent, name)
            return None
        node = self.inodes.node_for(path, False)
        self.set_info(node, info, when, seq)
        return node

    async def resolve(self, parent: Node, name: str) -> Optional[Node]:
        """The node for ``parent/name`` if it exists (in this mount or in the backend), else None."""
        path = parent.path + (name,)
        known = self.inodes.at(path)
        if known is not None and (known.staged is not None or known.depth <= 1):
            return known
        if known is not None and known.is_dir and self.clock() < known.exists_until:
            return known  # its listing (or one below it) is in use: no LIST of it again meanwhile
        if parent.depth == 0:
            return self.inodes.node_for(path, True) if name in layout.TREES else None
        try:
            return await self._resolve_remote(parent, name, path)
        except BackendError as e:
            # Local content (a pending upload) is served whatever the backend's state: the
            # directories above it stay reachable through an outage.
            if self._holds_local_content(path):
                log.info("/%s: the backend cannot be asked (%s); shown from the local content below it",
                         "/".join(path), e)
                return known if known is not None and known.is_dir else self.inodes.node_for(path, True)
            raise

    def _holds_local_content(self, path: tuple) -> bool:
        """Whether a file below ``path`` has local content (being written, or a pending upload)."""
        n = len(path)
        return any(len(p) > n and p[:n] == path and c.staged is not None and not c.unlinked
                   for p, c in self.inodes.by_path.items())

    async def _resolve_remote(self, parent: Node, name: str, path: tuple) -> Optional[Node]:
        """`resolve` for a name that only a listing, a HEAD or a LIST can answer.

        A directory this mount is filling (it created, removed or renamed an entry in it within
        `RELIST_RECENT` TTLs) and that was small enough for one LIST page when last listed is
        listed again rather than asked about one name: one request as well, and the names looked
        up next (the next files created) are answered from it for a TTL."""
        if (not self.listing_fresh(parent) and parent.listing is not None and parent.depth >= 2
                and not parent.is_store and len(parent.listing.entries) < RELIST_MAX
                and self.clock() - parent.changed_entries < RELIST_RECENT * self.ttl):
            await self.listing(parent)
        if self.listing_fresh(parent):
            entry = parent.listing.entries.get(name)
            if entry is None and parent.is_store:
                return await self._resolve_record(parent, name)  # a record written just now counts
            if entry is None:
                return None
            is_dir, info = entry
            known = self.inodes.at(path)
            if is_dir or info is not None or (known is not None and not known.is_dir and (
                    known.staged is not None or known.etag is not None)):
                node = self.inodes.node_for(path, is_dir)
                if info is not None:
                    self.set_info(node, info, parent.listing.time, parent.listing.seq)
                return node
            # A file this mount listed without its attributes (created or renamed here) and whose
            # node is gone: ask the backend rather than invent an empty file.
        if parent.is_store:
            return await self._resolve_record(parent, name)
        when, seq = self.clock(), self.inodes.seq
        key = "/".join(path)
        if parent.depth == 1:
            found_dir = await self.backend.first(key + "/") is not None
            return self.inodes.node_for(path, True) if found_dir else None
        known = self.inodes.at(path)
        if known is not None and not known.is_dir:
            # A file this mount knows: one HEAD says whether it is still there, with its attributes.
            # A LIST carries none (S3), and an attribute-only change elsewhere (chmod, touch: a
            # copy onto itself) keeps the etag, so a LIST would show it stale for ever.
            node = await self.resolve_remote_file(parent, name)
            if node is not None:
                return node
            when, seq = self.clock(), self.inodes.seq  # gone as a file: a directory, or nothing
        if known is not None and known.is_dir and known.has_marker is not False and self.fs.has_posix(known):
            # A directory this mount knows (with a marker, or not known to have none): one HEAD of
            # the marker proves it and carries its own attributes (another node's chmod shows: a
            # LIST carries none), for the one request the LIST would have cost.  Without a marker
            # (implied by the keys below it, or removed): the LIST, this time and the next ones.
            if await self._read_meta(known, lookup=True):
                return known
            when, seq = self.clock(), self.inodes.seq
        info, found_dir = await self.backend.run(self.backend.sync.lookup, key)
        if not found_dir and info is None:
            if len(parent.absent) > 10000:
                parent.absent.clear()
            parent.absent[name] = self.clock()
        if found_dir:
            return self.inodes.node_for(path, True)
        if info is not None:
            node = self.inodes.node_for(path, False)
            self.set_info(node, info, when, seq)
            return node
        return None

    async def resolve_remote_file(self, parent: Node, name: str) -> Optional[Node]:
        """The file ``parent/name`` as the backend has it now (None if it has none)."""
        path = parent.path + (name,)
        when, seq = self.clock(), self.inodes.seq
        try:
            info = await self.backend.head("/".join(path))
        except NotFound:
            return None
        node = self.inodes.node_for(path, False)
        self.set_info(node, info, when, seq)
        return node

    def listed(self, parent: Node, name: str, entry) -> None:
        """Keep a directory's cached listing (and its index, `fsdriver.dirindex`) in step with a
        change made through this mount."""
        parent.changed_entries = self.clock()
        row = self._row(parent, name, entry)
        if entry is None or row is not None:
            self.fs.dirindex.note(parent, name, row)
        if parent.edits is not None:
            parent.edits[name] = entry
        if parent.listing is not None:
            if entry is None:
                parent.listing.entries.pop(name, None)
            else:
                parent.listing.entries[name] = entry

    def _row(self, parent: Node, name: str, entry) -> Optional[dict]:
        """The directory index row of a listing entry (None: no row, the entry is gone)."""
        if entry is None:
            return None
        is_dir, info = entry
        if info is not None and info.meta is not None:
            return {"e": None, "t": time.time(), "m": info.meta} if is_dir else dirindex.row_of(info)
        child = self.inodes.at(parent.path + (name,))
        if is_dir and child is not None and child.meta is not None:
            return {"e": None, "t": time.time(), "m": posixattrs.to_headers(child.meta)}
        return None

    @staticmethod
    def known_info(node: Node) -> Optional[ObjectInfo]:
        """What this mount knows of a file's object, for a cached listing (None: nothing, or a dir)."""
        if node.is_dir or node.etag is None:
            return None
        meta = posixattrs.to_headers(node.meta) if node.meta is not None else ({} if node.meta_known else None)
        return ObjectInfo(node.key, node.size, node.mtime, node.etag, meta=meta, nlink=node.nlink)

    async def check_empty(self, node: Node) -> None:
        """ENOTEMPTY unless the directory holds nothing here or in the backend (a store's expiry
        markers do not count)."""
        if any(c.staged is not None and not c.unlinked for c in self.inodes.children(node)):
            raise FSError(errno.ENOTEMPTY, f"{node.display} is not empty")
        ignore = {node.prefix, node.prefix + kvnames.EXPIRES} if node.is_store else {node.prefix}
        def first_entries():
            return list(self.backend.sync.list(node.prefix, "/", max_keys=3))

        first_entries.__name__ = "list"  # read-only: abandoned at --backend-timeout (backend.aio)
        entries = [e for e in await self.backend.run(first_entries) if e.key not in ignore]
        if entries and node.is_store:
            # records whose TTL ran out read as missing (and are removed as they are met): they do
            # not keep a store from being removed either
            entries = await self.backend.run(self._live_record, node.prefix, ignore)
        if entries:
            raise FSError(errno.ENOTEMPTY, f"{node.display} is not empty")

    def _live_record(self, prefix: str, ignore: set) -> list:
        """A store's first entry that is not an expired record (removing those it meets: one LIST
        of the store's expiry markers, one of the store), or []."""
        sync = self.backend.sync
        expiries, now = kvexpiry.store_expiries(sync, prefix), time.time()
        for e in sync.list(prefix, "/"):
            if e.key in ignore:
                continue
            name = e.key[len(prefix):]
            markers = expiries.get(name)
            if isinstance(e, ObjectInfo) and markers and kvexpiry.is_expired(e.etag, markers, now):
                kvexpiry.expire_record(sync, prefix, name, markers)
                continue
            return [e]
        return []

    async def keep_parent(self, parent: Node) -> None:
        """On S3 a directory whose last entry went away would vanish: give it a marker."""
        if self.backend.sync.keeps_empty_dirs or parent.depth < 2 or parent.has_marker:
            return
        meta = posixattrs.to_headers(parent.meta) if parent.meta is not None and self.fs.has_posix(parent) else None
        try:  # never over a marker made meanwhile: it may hold the directory's attributes and index
            await self.backend.put_bytes(parent.prefix, b"", meta=meta, if_none_match=True)
        except PreconditionFailed:
            pass
        parent.has_marker = True

    async def entries(self, node: Node) -> dict:
        """``name -> Node`` of a directory's children, for readdir: its listing (cached or new),
        the owners of the namespaces it lists, and the files created here not uploaded yet."""
        listing = await self.listing(node)
        when, seq = node.listing.time, node.listing.seq
        await self.fs.namespaces.load_owners(node, listing)
        entries = {}
        for name, (is_dir, info) in listing.items():
            known = self.inodes.at(node.path + (name,))
            if not is_dir and info is None and (known is None or known.is_dir or (
                    known.staged is None and known.etag is None)):
                # Listed by this mount without attributes (created or renamed here) and forgotten
                # since: ask the backend rather than show an empty file (rare: uploads record them).
                child = await self.resolve_remote_file(node, name)
                if child is not None:
                    entries[name] = child
                continue
            child = self.inodes.node_for(node.path + (name,), is_dir)
            if info is not None:
                self.set_info(child, info, when, seq)
            entries[name] = child
        for child in self.inodes.children(node):  # files created here and not uploaded yet
            if child.staged is not None and not child.unlinked:
                entries.setdefault(child.path[-1], child)
        return entries
