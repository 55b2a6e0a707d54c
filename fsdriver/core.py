"""The filesystem core: the stashfs tree over a backend, without the kernel.

`Filesystem` implements every operation on inodes and handles with plain Python types; the pyfuse3
adapter (`fuse_ops`) only converts arguments and results.  Tests drive this class directly.

The tree::

    /                       pipeline/, user/, kv/ and the hidden control file
    /pipeline/<id>/...      backend keys pipeline/<id>/...
    /user/<name>/...        backend keys user/<name>/...
    /kv/                    key/value stores (served by fsdriver.kv; empty until then)

Depth 0 and 1 are fixed; depth 2 holds namespaces (created by mkdir with a valid name); files and
directories live at depth 3 and below.  See docs/semantics.md for what each operation does.
"""

import errno
import logging
import os
import stat
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import trio

from . import kv, kvnames, layout, owners
from .access import Caller, Owner, Policy
from .backend import Backend, CommonPrefix, ObjectInfo
from .backend.aio import AsyncBackend
from .backend.disk import etag_of
from .errors import BackendError, InvalidName, NameTooLong, NotFound, PreconditionFailed
from .fserrors import FSError
from .handles import Handle, LocalReader
from .inodes import CONTROL_INO, CONTROL_NAME, ROOT_INO, InodeTable, Listing, Node
from .memory import MemoryBudget
from .prefetch import Prefetcher
from .staging import Cache, StagedFile
from .stats import Stats
from .supervise import spawn
from .records import Records
from .uploads import Uploader

log = logging.getLogger("stashfs.fs")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


@dataclass
class Attr:
    ino: int
    is_dir: bool
    size: int
    mtime: float
    mode: int
    uid: int
    gid: int


@dataclass
class Options:
    metadata_ttl: float = 1.0  # kernel entry/attr timeout and our own listing/HEAD cache
    memory_limit: int = 512 << 20
    max_prefetch: int = 64 << 20
    part_size: int = 8 << 20
    read_only: bool = False
    uid: int = os.getuid()
    gid: int = os.getgid()
    max_requests: int = 32  # backend calls in flight
    org_gid: Optional[int] = None  # the organisation group: shares pipelines and stores
    backend_timeout: Optional[float] = None  # seconds a caller waits for a backend call (fsdriver.backend.aio)


OWNER_TTL = 30.0  # seconds a pipeline's owner record is reused before it is read again
OWNER_RETRY = 5.0  # seconds until an owner record that could not be read is tried again


class Filesystem:
    def __init__(self, backend: Backend, cache: Cache, options: Options = Options(), stats: Optional[Stats] = None,
                 clock=time.monotonic):
        self.options = options
        # Monotonic seconds for every freshness decision (TTLs); tests inject a clock they move.
        self.clock = clock
        self.stats = stats or Stats()
        self.sync_backend = backend
        self.backend = AsyncBackend(backend, options.max_requests, self.stats, options.backend_timeout)
        self.is_local = backend.local_path("probe") is not None
        self.cache = cache
        self.inodes = InodeTable()
        self.budget = MemoryBudget(options.memory_limit)
        self.uploader = Uploader(self.backend, cache, self.stats, clock)
        self.uploader.on_settled = self._settled
        self.uploader.on_uploaded = self._uploaded
        self.uploader.budget = self.budget  # checking a record reserves its memory
        self.records = Records(self)  # when record handles commit (fsdriver.records)
        self.policy = Policy(options.uid, options.gid, options.org_gid, options.read_only)
        self.mount_caller = Caller(options.uid, options.gid)
        self.pipeline_owners: dict[str, tuple[Owner, float]] = {}  # id -> (owner, when read)
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, tuple[Node, Optional[list]]] = {}
        self._next_fh = 1
        self.nursery: Optional[trio.Nursery] = None  # owner of background work (prefetch, retries)
        # Tells the kernel to drop a cached name (set by the FUSE adapter; a no-op without kernel).
        self.invalidate_entry = lambda parent_ino, name: None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Own the background work: prefetch parts and upload retries live in this nursery."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            spawn(nursery, self.stats, "upload-retry", self.uploader.retry_forever,
                  what="upload retry loop", retries=None)
            task_status.started()
            await trio.sleep_forever()

    # -- attributes --------------------------------------------------------------------------

    def attr(self, node: Node) -> Attr:
        if node.ino == CONTROL_INO:
            return Attr(CONTROL_INO, False, 0, self.stats.started, stat.S_IFREG | 0o600, self.options.uid, self.options.gid)
        if node.depth == 0:
            owner = self.policy.root()
        elif node.depth == 1:
            owner = self.policy.tree(node.path[0])
        else:
            owner = self._known_owner(node.path[:2])
        mode = self.policy.dir_mode(owner) if node.is_dir else self.policy.file_mode(owner)
        size = node.staged.size if node.staged is not None else node.size
        return Attr(node.ino, node.is_dir, size, node.mtime or self.stats.started, mode, owner.uid, owner.gid)

    # -- ownership and access (fsdriver.access) ---------------------------------------------

    def _known_owner(self, ns: tuple) -> Owner:
        """The owner of a namespace without backend work (a pipeline's as last read)."""
        tree, name = ns
        if tree == "user":
            return self.policy.user(name)
        if tree == "kv":
            return self.policy.store()
        hit = self.pipeline_owners.get(name)
        return hit[0] if hit is not None else self.policy.pipeline(None)

    async def _owner(self, ns: tuple) -> Owner:
        """The owner of a namespace; a pipeline's record is read again after OWNER_TTL."""
        tree, name = ns
        if tree == "user" and not self.policy.users.known(name):
            # The user database may be remote (LDAP, SSSD): never ask it on the trio thread.
            await trio.to_thread.run_sync(self.policy.users.by_name, name)
        if tree != "pipeline":
            return self._known_owner(ns)
        hit = self.pipeline_owners.get(name)
        if hit is None or self.clock() - hit[1] > OWNER_TTL:
            when = self.clock()
            try:
                record = await self.backend.run(owners.get, self.sync_backend, name)
            except BackendError as e:
                if hit is None:
                    raise
                # An outage must not break files already in use: keep the owner known, retry soon.
                log.warning("/pipeline/%s: cannot read its owner record (%s); using the one read before", name, e)
                self.pipeline_owners[name] = (hit[0], when - OWNER_TTL + OWNER_RETRY)
                return hit[0]
            hit = (self.policy.pipeline(record.owner if record else None), when)
            self.pipeline_owners[name] = hit
        return hit[0]

    async def _load_owners(self, tree: Node, names) -> None:
        """Learn the owners of many namespaces at once (``ls -l /pipeline``, ``ls -l /user``)."""
        if tree.path not in (("pipeline",), ("user",)):
            return

        async def load(name):
            try:
                await self._owner((tree.path[0], name))
            except BackendError as e:  # that entry shows as unowned; using it reads the record again
                log.info("/pipeline/%s: cannot read its owner record (%s)", name, e)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(load, name)

    @staticmethod
    def _checked(path: tuple) -> bool:
        """Whether using ``path`` needs `_enter`: anything in a namespace, and /kv itself."""
        return len(path) >= 2 or path == ("kv",)

    async def _enter(self, caller: Optional[Caller], path: tuple) -> None:
        """EACCES unless ``caller`` may use the namespace ``path`` is in (or /kv, for ``("kv",)``)."""
        caller = caller or self.mount_caller
        owner = self.policy.store() if path[0] == "kv" else await self._owner(path[:2])
        if not self.policy.may_use(caller, owner):
            raise FSError(errno.EACCES, f"/{'/'.join(path[:2])}: {self._whose(path[:2], owner)}; "
                          f"denied to uid {caller.uid}", logging.INFO)

    def _whose(self, ns: tuple, owner: Owner) -> str:
        if ns[0] == "user":
            return f"private to user {ns[1]}"
        if ns[0] == "kv":
            return f"key/value stores are shared with group {owner.gid} only"
        shared = f" and group {owner.gid}" if owner.mode & 0o070 else ""
        return f"pipeline owned by {owner.name or f'uid {owner.uid}'}{shared}"

    async def _create_namespace(self, caller: Optional[Caller], tree: str, name: str, exists: bool) -> None:
        """May ``caller`` create /tree/name?  Creating a pipeline records its owner (claims it);
        one that exists keeps its owner, or stays without one (only `mountctl pipeline chown`
        gives it one), and the mkdir fails with EEXIST."""
        caller = caller or self.mount_caller
        if tree == "user":
            if caller.uid != 0 and await trio.to_thread.run_sync(self.policy.users.name_of, caller.uid) != name:
                raise FSError(errno.EACCES, f"/user/{name}: only user {name} (or root) may create it; "
                              f"denied to uid {caller.uid}", logging.INFO)
        elif tree == "kv":
            await self._enter(caller, ("kv", name))
        elif not exists:
            who = await trio.to_thread.run_sync(self.policy.users.name_of, caller.uid)
            if who is None:
                raise FSError(errno.EACCES, f"/pipeline/{name}: uid {caller.uid} has no user name on this node, "
                              "so it cannot own a pipeline", logging.INFO)
            record = await self.backend.run(owners.claim, self.sync_backend, name, who, caller.uid)
            self.pipeline_owners[name] = (self.policy.pipeline(record.owner), self.clock())
            await self._enter(caller, ("pipeline", name))

    def _fresh(self, t: float) -> bool:
        return self.clock() - t < self.options.metadata_ttl

    def _set_info(self, node: Node, info: ObjectInfo, when: float, seq: int) -> None:
        """Take attributes the backend gave at ``when`` to a request that started at change number
        ``seq``, unless this mount has local content or changed the object after that request began
        (a listing or HEAD taken before our own write must never overwrite what the write told us)."""
        if node.staged is None and self.inodes.observed(node, seq):
            node.size, node.mtime, node.etag, node.attr_time = info.size, info.mtime, info.etag, when

    async def _refresh(self, node: Node) -> None:
        """Re-read a file's attributes from the backend when they are older than the TTL."""
        if node.is_dir or node.staged is not None or self._fresh(node.attr_time):
            return
        when, seq = self.clock(), self.inodes.seq
        try:
            info = await self.backend.head(node.key)
        except NotFound:
            raise FSError(errno.ENOENT, f"{node.display}: removed from the backend") from None
        self._set_info(node, info, when, seq)

    async def getattr(self, ino: int, caller: Optional[Caller] = None) -> Attr:
        node = self._node(ino)
        if ino == CONTROL_INO:
            return self.attr(node)  # no object behind it
        if node.depth >= 3:
            await self._enter(caller, node.path)
        elif node.depth == 2:
            await self._owner(node.path)
        if node.is_record:
            await self.records.settled(node)  # a commit at release (after close returned) counts
        if node.unlinked and node.open_count == 0:
            raise FSError(errno.ENOENT, f"{node.display} was removed")  # the kernel's dentry is older
        if node.open_count == 0:
            # An open file's readers are pinned to the version they opened; its attributes are
            # revalidated at the next open (close-to-open), not once a second during reads.
            await self._refresh(node)
        return self.attr(node)

    def _node(self, ino: int) -> Node:
        if ino == CONTROL_INO:
            return self.control_node
        node = self.inodes.get(ino)
        if node is None:
            raise FSError(errno.ENOENT, f"inode {ino} is not known (forgotten)")
        return node

    @property
    def control_node(self) -> Node:
        return Node(CONTROL_INO, (CONTROL_NAME,), False)

    # -- names and lookups ------------------------------------------------------------------

    def _child_path(self, parent: Node, name: str, creating: bool = False) -> tuple:
        """Validate ``name`` as a child of ``parent``; refuse places where nothing can be created."""
        if not parent.is_dir:
            raise FSError(errno.ENOTDIR, f"{parent.display} is not a directory")
        if creating:
            if self.options.read_only:
                raise FSError(errno.EROFS, "mounted read-only")
            if parent.depth == 0:
                raise FSError(errno.EPERM, f"/{name}: only pipeline/, user/ and kv/ exist at the top", logging.INFO)
        if parent.depth == 1:
            what = {"pipeline": "pipeline id", "user": "user name", "kv": "store name"}[parent.path[0]]
            layout.check_name(name, what)
        else:
            layout.check_segment(name)
            if self._is_store(parent) and not kvnames.is_scratch(name):
                kvnames.key_of(name)  # InvalidName for a .json name that is not a canonical encoding
        return parent.path + (name,)

    @staticmethod
    def _is_store(node: Node) -> bool:
        return node.depth == 2 and node.path[0] == "kv"

    def _listing_fresh(self, node: Node) -> bool:
        listing = node.listing
        return listing is not None and self.clock() - listing.time < max(self.options.metadata_ttl, listing.valid)

    async def _listing(self, node: Node) -> dict:
        """``name -> (is_dir, info or None)`` for a directory, from the cache when fresh."""
        if node.listing is not None and self._fresh(node.listing.time):
            return node.listing.entries
        started, seq = self.clock(), self.inodes.seq
        if node.listings_in_flight == 0:
            node.edits = {}
        node.listings_in_flight += 1
        try:
            entries = await self._list_dir(node)
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
                self._gone(node, name)  # removed elsewhere: the kernel may still have it cached
        done = self.clock()
        node.listing = Listing(entries, done, valid=5 * (done - started), seq=seq)
        node.absent.clear()
        return entries

    async def _list_dir(self, node: Node) -> dict:
        """``name -> (is_dir, info or None)`` of a directory, from the backend."""
        entries: dict = {}
        if node.depth == 0:
            entries = {t: (True, None) for t in layout.TREES}
        elif node.depth == 1:
            for e in await self.backend.list(node.prefix, "/"):
                name = e.key[len(node.prefix):].rstrip("/")
                if isinstance(e, CommonPrefix) and layout.NAME_RE.match(name):
                    entries[name] = (True, None)
        elif self._is_store(node):
            entries = await self._store_listing(node)
        else:
            node.has_marker = False
            for e in await self.backend.list(node.prefix, "/"):
                if e.key == node.prefix:
                    node.has_marker = True
                    continue
                is_dir = isinstance(e, CommonPrefix)
                name = e.key[len(node.prefix):].rstrip("/") if is_dir else e.key[len(node.prefix):]
                try:
                    layout.check_segment(name)
                except InvalidName:
                    log.debug("%s: skipping key %r, not a valid file name", node.display, e.key)
                    continue
                if is_dir or name not in entries:  # a directory shadows a file of the same name
                    entries[name] = (is_dir, None if is_dir else e)
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
        expiries = await self.backend.run(kv.store_expiries, self.sync_backend, node.prefix)
        now = time.time()
        for name, markers in expiries.items():
            entry = entries.get(name)
            if entry is not None and kv.is_expired(entry[1].etag, markers, now):
                del entries[name]
                self._expire(node, name, markers)
        return entries

    def _expire(self, store: Node, name: str, markers: list) -> None:
        """An expired record reads as missing at once and is removed in the background."""
        self._gone(store, name)
        # Best effort: a record that could not be removed still reads as missing (its markers say
        # so), so after a few retries the delete is dropped with a log line.
        spawn(self.nursery, self.stats, "expire", self.backend.run, kv.expire_record, self.sync_backend,
              store.prefix, name, markers, what=f"expiry of {store.prefix + name!r}", retries=3)

    def _gone(self, parent: Node, name: str) -> None:
        """The backend no longer has ``parent/name``: forget it here and in the kernel's caches."""
        node = self.inodes.at(parent.path + (name,))
        if node is not None and node.staged is None:
            self.inodes.remove(node)
        self.invalidate_entry(parent.ino, name)

    async def _resolve_record(self, parent: Node, name: str) -> Optional[Node]:
        path = parent.path + (name,)
        if kvnames.is_scratch(name):
            return None  # scratch files exist only in this daemon (found in the table above)
        when, seq = self.clock(), self.inodes.seq
        try:
            info = await self.backend.head("/".join(path))
        except NotFound:
            return None
        markers = (await self.backend.run(kv.store_expiries, self.sync_backend, parent.prefix, name)).get(name)
        if markers and kv.is_expired(info.etag, markers, time.time()):
            self._expire(parent, name, markers)
            return None
        node = self.inodes.node_for(path, False)
        self._set_info(node, info, when, seq)
        return node

    async def _resolve(self, parent: Node, name: str) -> Optional[Node]:
        """The node for ``parent/name`` if it exists (in this mount or in the backend), else None."""
        path = parent.path + (name,)
        known = self.inodes.at(path)
        if known is not None and (known.staged is not None or known.depth <= 1):
            return known
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
        """`_resolve` for a name that only a listing, a HEAD or a LIST can answer."""
        if self._listing_fresh(parent):
            entry = parent.listing.entries.get(name)
            if entry is None and self._is_store(parent):
                return await self._resolve_record(parent, name)  # a record written just now counts
            if entry is None:
                return None
            is_dir, info = entry
            known = self.inodes.at(path)
            if is_dir or info is not None or (known is not None and not known.is_dir and (
                    known.staged is not None or known.etag is not None)):
                node = self.inodes.node_for(path, is_dir)
                if info is not None:
                    self._set_info(node, info, parent.listing.time, parent.listing.seq)
                return node
            # A file this mount listed without its attributes (created or renamed here) and whose
            # node is gone: ask the backend rather than invent an empty file.
        if self._is_store(parent):
            return await self._resolve_record(parent, name)
        when, seq = self.clock(), self.inodes.seq
        key = "/".join(path)
        if parent.depth == 1:
            found_dir = await self.backend.first(key + "/") is not None
            return self.inodes.node_for(path, True) if found_dir else None
        info, found_dir = await self.backend.run(self.sync_backend.lookup, key)
        if not found_dir and info is None:
            if len(parent.absent) > 10000:
                parent.absent.clear()
            parent.absent[name] = self.clock()
        if found_dir:
            return self.inodes.node_for(path, True)
        if info is not None:
            node = self.inodes.node_for(path, False)
            self._set_info(node, info, when, seq)
            return node
        return None

    async def _resolve_remote_file(self, parent: Node, name: str) -> Optional[Node]:
        """The file ``parent/name`` as the backend has it now (None if it has none)."""
        path = parent.path + (name,)
        when, seq = self.clock(), self.inodes.seq
        try:
            info = await self.backend.head("/".join(path))
        except NotFound:
            return None
        node = self.inodes.node_for(path, False)
        self._set_info(node, info, when, seq)
        return node

    async def lookup(self, parent_ino: int, name: str, caller: Optional[Caller] = None) -> Attr:
        parent = self._node(parent_ino)
        if parent_ino == ROOT_INO and name == CONTROL_NAME:
            return self.attr(self.control_node)
        if self._checked(parent.path):
            await self._enter(caller, parent.path)
        try:
            self._child_path(parent, name)
        except NameTooLong:
            raise
        except InvalidName as e:
            raise FSError(errno.ENOENT, str(e)) from None
        if self._is_store(parent):
            await self.records.settled_at(parent.path + (name,))
        node = await self._resolve(parent, name)
        if node is None:
            raise FSError(errno.ENOENT, f"{parent.display}/{name}: no such file or directory")
        if node.depth == 2:
            await self._owner(node.path)
        node.lookups += 1
        return self.attr(node)

    def forget(self, items) -> None:
        for ino, n in items:
            self.inodes.forget(ino, n)

    # -- directories -------------------------------------------------------------------------

    async def opendir(self, ino: int, caller: Optional[Caller] = None) -> int:
        node = self._node(ino)
        if not node.is_dir:
            raise FSError(errno.ENOTDIR, f"{node.display} is not a directory")
        if self._checked(node.path):
            await self._enter(caller, node.path)
        fh = self._new_fh()
        self.dir_handles[fh] = (node, None)
        return fh

    async def readdir(self, fh: int) -> list:
        """The handle's snapshot of ``(name, Attr)`` pairs, listed once at the first call."""
        node, snapshot = self.dir_handles[fh]
        if snapshot is not None:
            return snapshot
        if self._is_store(node):
            await self.records.settled_in(node)
        listing = await self._listing(node)
        when, seq = node.listing.time, node.listing.seq
        await self._load_owners(node, listing)
        entries = {}
        for name, (is_dir, info) in listing.items():
            known = self.inodes.at(node.path + (name,))
            if not is_dir and info is None and (known is None or known.is_dir or (
                    known.staged is None and known.etag is None)):
                # Listed by this mount without attributes (created or renamed here) and forgotten
                # since: ask the backend rather than show an empty file (rare: uploads record them).
                child = await self._resolve_remote_file(node, name)
                if child is not None:
                    entries[name] = child
                continue
            child = self.inodes.node_for(node.path + (name,), is_dir)
            if info is not None:
                self._set_info(child, info, when, seq)
            entries[name] = child
        for child in self.inodes.children(node):  # files created here and not uploaded yet
            if child.staged is not None and not child.unlinked:
                entries.setdefault(child.path[-1], child)
        snapshot = [(name, entries[name]) for name in sorted(entries)]
        for _, child in snapshot:
            child.pins += 1  # kept until releasedir, so no entry names a dropped inode
        self.dir_handles[fh] = (node, snapshot)
        return snapshot

    def releasedir(self, fh: int) -> None:
        _, snapshot = self.dir_handles.pop(fh, (None, None))
        for _, child in snapshot or ():
            child.pins -= 1
            self.inodes.release_unreferenced(child)

    async def mkdir(self, parent_ino: int, name: str, caller: Optional[Caller] = None) -> Attr:
        parent = self._node(parent_ino)
        if self._is_store(parent):
            raise FSError(errno.EPERM, f"{parent.display}/{name}: a store holds records (<key>.json files), not directories", logging.INFO)
        path = self._child_path(parent, name, creating=True)
        if parent.depth >= 2:
            await self._enter(caller, parent.path)
        exists = await self._resolve(parent, name) is not None
        if parent.depth == 1:
            await self._create_namespace(caller, parent.path[0], name, exists)
        if exists:
            raise FSError(errno.EEXIST, f"{parent.display}/{name} exists")
        prefix = "/".join(path) + "/"
        try:
            await self.backend.put_bytes(prefix, b"", if_none_match=True)
        except PreconditionFailed:
            raise FSError(errno.EEXIST, f"{parent.display}/{name} was created meanwhile") from None
        node = self.inodes.node_for(path, True)
        node.has_marker, node.mtime = True, time.time()
        node.listing = Listing({}, self.clock())
        self._listed(parent, name, (True, None))
        node.lookups += 1
        return self.attr(node)

    async def _to_remove(self, parent_ino: int, name: str, caller: Optional[Caller], what: str) -> tuple:
        """``(parent, node)`` for unlink and rmdir: the name checked, the caller allowed, found."""
        parent = self._node(parent_ino)
        self._child_path(parent, name, creating=True)
        if parent.depth >= 2:
            await self._enter(caller, parent.path)
        node = await self._resolve(parent, name)
        if node is None:
            raise FSError(errno.ENOENT, f"{parent.display}/{name}: no such {what}")
        return parent, node

    async def rmdir(self, parent_ino: int, name: str, caller: Optional[Caller] = None) -> None:
        parent, node = await self._to_remove(parent_ino, name, caller, "directory")
        if not node.is_dir:
            raise FSError(errno.ENOTDIR, f"{node.display} is not a directory")
        if node.depth == 2:
            await self._may_remove_namespace(caller, node)
        await self._check_empty(node)
        if self._is_store(node):
            await self.backend.delete_prefix(node.prefix + kvnames.EXPIRES)
        await self.backend.delete(node.prefix)
        if node.depth == 2 and node.path[0] == "pipeline":  # an empty pipeline is gone for good
            await self.backend.run(owners.remove, self.sync_backend, name)
            self.pipeline_owners.pop(name, None)
        self.inodes.remove(node)
        self._listed(parent, name, None)
        await self._keep_parent(parent)

    async def _may_remove_namespace(self, caller: Optional[Caller], node: Node) -> None:
        """Stores: whoever may use /kv (EACCES).  User trees and pipelines: the sticky-bit rule of
        /user and /pipeline, with the kernel's errno for it (EPERM)."""
        caller = caller or self.mount_caller
        owner = await self._owner(node.path)
        if node.path[0] == "kv":
            if not self.policy.may_use(caller, owner):
                raise FSError(errno.EACCES, f"{node.display}: {self._whose(node.path, owner)}; "
                              f"denied to uid {caller.uid}", logging.INFO)
        elif not self.policy.may_remove(caller, owner):
            raise FSError(errno.EPERM, f"{node.display}: only its owner (uid {owner.uid}), the mount owner or root "
                          f"may remove it; denied to uid {caller.uid}", logging.INFO)

    async def _check_empty(self, node: Node) -> None:
        if any(c.staged is not None and not c.unlinked for c in self.inodes.children(node)):
            raise FSError(errno.ENOTEMPTY, f"{node.display} is not empty")
        ignore = {node.prefix, node.prefix + kvnames.EXPIRES} if self._is_store(node) else {node.prefix}
        for e in await self.backend.run(lambda: list(self.sync_backend.list(node.prefix, "/", max_keys=3))):
            if e.key not in ignore:
                raise FSError(errno.ENOTEMPTY, f"{node.display} is not empty")

    async def _keep_parent(self, parent: Node) -> None:
        """On S3 a directory whose last entry went away would vanish: give it a marker."""
        if self.is_local or parent.depth < 2 or parent.has_marker:
            return
        await self.backend.put_bytes(parent.prefix, b"")
        parent.has_marker = True

    def _listed(self, parent: Node, name: str, entry) -> None:
        """Keep a directory's cached listing in step with a change made through this mount."""
        if parent.edits is not None:
            parent.edits[name] = entry
        if parent.listing is not None:
            if entry is None:
                parent.listing.entries.pop(name, None)
            else:
                parent.listing.entries[name] = entry

    # -- files -------------------------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _new_staged(self, node: Node, truncate: bool) -> StagedFile:
        """Local content for writing ``node``: empty, or built lazily on its current version."""
        if truncate:
            staged = StagedFile(self.cache)
            staged.dirty = True
            return staged
        key, etag = node.key, node.etag

        async def fetch(lo: int, hi: int) -> bytes:
            return await self.backend.get_range(key, lo, hi, if_match=etag)

        staged = StagedFile(self.cache, node.size, node.size, fetch)
        if node.is_record:
            staged.conditions = {"if_match": etag}  # read-modify-write: commit only if unchanged
        return staged

    async def _writable_staged(self, node: Node, truncate: bool) -> StagedFile:
        """The staged file a new writing handle uses.

        Files share one per node, so every descriptor sees the others' writes.  Each writing handle
        of a record gets its own, so its commit is conditional on the version *it* read.
        """
        if node.is_record:
            return self._new_staged(node, truncate)
        if node.staged is None:
            node.staged = self._new_staged(node, truncate)
        elif truncate:
            await node.staged.truncate(0)
        return node.staged

    async def open(self, ino: int, flags: int, caller: Optional[Caller] = None) -> tuple[int, bool, bool]:
        """Open a file; returns (fh, keep_cache, direct_io)."""
        node = self._node(ino)
        if node.is_dir:
            raise FSError(errno.EISDIR, f"{node.display} is a directory")
        if ino == CONTROL_INO:
            raise FSError(errno.EPERM, "the control file answers xattrs only")
        await self._enter(caller, node.path)
        if node.is_record:
            await self.records.settled(node)  # a commit at release (after close returned) counts
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        truncate = bool(flags & os.O_TRUNC) and writable
        if writable and self.options.read_only:
            raise FSError(errno.EROFS, "mounted read-only")
        if writable and node.is_record:
            node.attr_time = 0  # a record's write is conditional on the version read: get it fresh
        if node.is_record or not (writable and node.etag is None and node.staged is None):
            await self._refresh(node)  # close-to-open: see another node's change once the TTL passed
        # else: a file created here whose content never reached the backend (its write failed):
        # the kernel still knows the name, and writing it creates it (not ENOENT from a HEAD).
        handle = Handle(node, writable, bool(flags & os.O_APPEND))
        if writable:
            handle.staged = await self._writable_staged(node, truncate)
            handle.truncated = truncate
            if truncate:
                node.mtime = time.time()
        elif node.staged is None:
            handle.reader = await self._reader(node)
        keep_cache = node.staged is None and node.etag is not None and node.cache_etag == node.etag
        node.cache_etag = node.etag if node.staged is None else None
        self.stats.page_cache_kept += keep_cache
        # A record handle's content is its own until it commits (and may be refused): it must not
        # pass through the page cache that every other open of the record reads.
        direct_io = node.is_record and writable
        return self._register(handle), keep_cache, direct_io

    async def _reader(self, node: Node):
        """A reader pinned to the version of the object that exists now."""
        if self.is_local:
            reader, st = await LocalReader.open(self.sync_backend.local_path(node.key), self.cache.io_limiter)
            if node.staged is None and etag_of(st) != node.etag:  # changed within the TTL: show it
                node.size, node.mtime, node.etag = st.st_size, st.st_mtime, etag_of(st)
                node.attr_time = self.clock()
            return reader
        return Prefetcher(
            self.backend, self.budget, self.nursery, lambda: node.key, node.size, node.etag,
            self.stats, self.options.max_prefetch, self.options.part_size,
        )

    def _register(self, handle: Handle) -> int:
        fh = self._new_fh()
        self.handles[fh] = handle
        handle.node.open_count += 1
        return fh

    async def create(self, parent_ino: int, name: str, flags: int, caller: Optional[Caller] = None) -> tuple[int, Attr, bool]:
        await self._records_settled(parent_ino, name)
        parent = self._node(parent_ino)
        path = self._child_path(parent, name, creating=True)
        if parent.depth < 2:
            raise FSError(errno.EPERM, f"{parent.display}/{name}: files live inside a namespace (mkdir one first)", logging.INFO)
        await self._enter(caller, parent.path)
        looked = parent.absent.pop(name, None)
        if looked is not None and self._fresh(looked) and self.inodes.at(path) is None:
            existing = None  # the kernel's lookup just found nothing: do not ask again
        else:
            existing = await self._resolve(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise FSError(errno.EEXIST, f"{existing.display} exists")
            if existing.is_dir:
                raise FSError(errno.EISDIR, f"{existing.display} is a directory")
        node = self.inodes.node_for(path, False)
        staged = await self._writable_staged(node, truncate=True)
        if node.is_record and flags & os.O_EXCL:
            staged.conditions = {"if_none_match": True}
        node.mtime = time.time()
        if existing is None:
            node.size, node.etag = 0, None
        if not node.is_record:  # a new record appears when it is closed
            self._listed(parent, name, (False, None))
        node.lookups += 1
        handle = Handle(node, True, bool(flags & os.O_APPEND))
        handle.staged, handle.truncated = staged, True
        return self._register(handle), self.attr(node), node.is_record

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.handles[fh]
        staged = handle.staged or handle.node.staged
        if staged is not None:
            return await staged.read(off, size)
        if handle.reader is None:  # the file was being written when this handle opened it
            handle.reader = await self._reader(handle.node)
        return await handle.reader.read(off, size)

    async def write(self, fh: int, off: int, data: bytes) -> int:
        handle = self.handles[fh]
        if not handle.writable:
            raise FSError(errno.EBADF, f"{handle.node.display}: not open for writing")
        staged = handle.staged
        if handle.append:
            off = staged.size
        if handle.node.is_record:
            self.records.check_size(handle, off + len(data), "write")  # EFBIG now, not at close
            self.records.more_content(handle)
        await self.budget.acquire(len(data))
        try:
            n = await staged.write(off, data)
        finally:
            self.budget.release(len(data))
        handle.written = True
        handle.node.mtime = time.time()
        return n

    async def flush(self, fh: int) -> None:
        """close(): a file written through this handle is durable in the backend on return."""
        handle = self.handles[fh]
        if handle.writable and handle.node.is_record:
            await self.records.flush(handle)  # only what was written: see fsdriver.records
        elif handle.writable:
            await self._upload(handle.node, handle.staged)

    async def fsync(self, fh: int) -> None:
        handle = self.handles[fh]
        if handle.writable and handle.node.is_record:
            await self.records.fsync(handle)
            return
        await self._upload(handle.node, handle.staged or handle.node.staged)

    async def _upload(self, node: Node, staged: Optional[StagedFile]) -> None:
        await self.uploader.upload(node, staged)
        if node.mtime_wanted is not None and self.is_local and not (staged and staged.dirty):
            path = self.sync_backend.local_path(node.key)
            await trio.to_thread.run_sync(os.utime, path, (node.mtime_wanted, node.mtime_wanted))
            node.mtime, node.mtime_wanted, node.attr_time = node.mtime_wanted, None, 0

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        handle.close()
        node = handle.node
        try:
            staged = handle.staged
            if handle.writable and node.is_record:
                await self.records.release(handle)  # first, before any await: see fsdriver.records
            elif handle.writable and staged.dirty and not staged.pending and staged not in self.uploader.pending:
                await self._upload(node, staged)  # written after the last flush (mmap): upload now
        finally:
            node.open_count -= 1
            if handle.staged is not None and handle.staged is not node.staged:
                self._discard(handle.staged)  # a record handle's own content
            self._drop_staged(node)
            self.inodes.release_unreferenced(node)

    def _uploaded(self, node: Node, info: ObjectInfo) -> None:
        """An upload of ``node`` landed as ``info``: that is now the newest thing this mount knows,
        for the node and for its parent's cached listing (which later lookups and readdirs reuse)."""
        self.inodes.changed(node)
        node.size, node.mtime, node.etag, node.attr_time = info.size, info.mtime, info.etag, self.clock()
        parent = self.inodes.at(node.path[:-1])
        if parent is not None and not node.unlinked:
            self._listed(parent, node.path[-1], (False, info))

    def adopt_pending_record(self, node: Node, staged: StagedFile) -> None:
        """A record handle's commit became a pending upload: it is now the content this mount
        shows for the record (read-your-writes, also through an outage), owned like a file's."""
        old = node.staged
        node.staged = staged
        if old is not None and old is not staged and not any(h.staged is old for h in self.handles.values()):
            self._discard(old)  # an older pending commit of the same record: the newer one wins

    def _settled(self, node: Node, staged: StagedFile) -> None:
        """The retry loop finished with a pending upload: free it unless a handle still has it."""
        if staged is node.staged:
            self._drop_staged(node)
            self.inodes.release_unreferenced(node)
        elif not any(h.staged is staged for h in self.handles.values()):
            self._discard(staged)

    def _discard(self, staged: StagedFile) -> None:
        """Forget staged content, unless it is a pending upload the retry loop still owns."""
        if staged.broken is None and staged.rejected is None and (staged.dirty or staged.pending):
            return
        staged.remove()
        self.uploader.pending.pop(staged, None)

    def _drop_staged(self, node: Node) -> None:
        """Forget a file's shared local content once nobody has it open and it is uploaded."""
        staged = node.staged
        if staged is None or node.open_count > 0 or (node.is_scratch and not node.unlinked):
            return
        if not node.unlinked and staged.broken is None and staged.rejected is None and (staged.dirty or staged.pending):
            return  # a pending upload: the retry loop owns it now
        if staged._lock.locked():
            return  # an upload (from the retry loop) is using it; dropped at the next chance
        staged.remove()
        node.staged = None
        self.uploader.pending.pop(staged, None)

    async def setattr(self, ino: int, *, size=None, mtime=None, mode=None, uid=None, gid=None, fh=None,
                      caller: Optional[Caller] = None) -> Attr:
        node = self._node(ino)
        if ino == CONTROL_INO:
            raise FSError(errno.EPERM, "the control file cannot be changed")
        if node.is_record:
            await self.records.settled(node)
        if node.depth >= 3:
            await self._enter(caller, node.path)
        elif node.depth == 2:
            await self._owner(node.path)
        now = self.attr(node)
        if mode is not None and stat.S_IMODE(mode) != stat.S_IMODE(now.mode) or (
                uid is not None and uid != now.uid) or (gid is not None and gid != now.gid):
            raise FSError(errno.EPERM, f"{node.display}: modes and owners follow the namespace and cannot be "
                          "changed (see docs/permissions.md)", logging.INFO)
        if size is not None:
            if node.is_dir:
                raise FSError(errno.EISDIR, f"{node.display} is a directory")
            if self.options.read_only:
                raise FSError(errno.EROFS, "mounted read-only")
            handle = self.handles.get(fh) if fh is not None else None
            if handle is not None and handle.writable:
                if node.is_record:
                    self.records.check_size(handle, size, "truncate")
                    self.records.more_content(handle)
                    handle.truncated = True  # committed at release, unless written (then at close)
                await handle.staged.truncate(size)  # uploaded at close
            else:
                # truncate(2) on a path has no close() to wait for: make it durable now.
                if node.is_record:
                    node.attr_time = 0
                await self._refresh(node)
                staged = await self._writable_staged(node, truncate=(size == 0))
                await staged.truncate(size)
                try:
                    await self._upload(node, staged)
                finally:
                    if staged is not node.staged:
                        self._discard(staged)
                    self._drop_staged(node)
            node.mtime = time.time()
        if mtime is not None and not node.is_dir:
            node.mtime = mtime
            if self.is_local:
                if node.staged is None and not any(h.node is node and h.writable for h in self.handles.values()):
                    path = self.sync_backend.local_path(node.key)
                    await trio.to_thread.run_sync(os.utime, path, (mtime, mtime))
                    node.attr_time = 0  # the etag includes the mtime: read it again
                else:
                    node.mtime_wanted = mtime  # applied once the content is uploaded
        return self.attr(node)

    async def unlink(self, parent_ino: int, name: str, caller: Optional[Caller] = None) -> None:
        await self._records_settled(parent_ino, name)
        parent, node = await self._to_remove(parent_ino, name, caller, "file")
        if node.is_dir:
            raise FSError(errno.EISDIR, f"{node.display} is a directory")
        staged = node.staged
        async with staged._lock if staged is not None else _nothing():
            # Under the lock no upload of this file is half done: it either landed (etag set, and
            # deleted now) or will see the node unlinked and not start.  An upload that failed
            # (pending) may have landed all the same (its answer lost): delete in that case too.
            # Marked unlinked only once the delete succeeded: a failed unlink (EIO) keeps the file
            # and its pending upload as they were.
            await self.uploader.supersede(node.key)
            if node.etag is not None or staged is None or staged.pending or staged in self.uploader.pending:
                await self.backend.delete(node.key)
            node.unlinked = True
            if staged is not None:
                self.uploader.pending.pop(staged, None)  # never retried after the delete
                self.cache.unjournal(staged)
        if node.is_record:
            await self.backend.run(self._drop_expiry_markers, parent.prefix, name)
        self.inodes.remove(node)
        self._drop_staged(node)
        self._listed(parent, name, None)
        await self._keep_parent(parent)

    async def _records_settled(self, parent_ino: int, name: str) -> None:
        """A record's commit at release (close() returned before it) comes before what follows."""
        parent = self.inodes.get(parent_ino)
        if parent is not None and self._is_store(parent):
            await self.records.settled_at(parent.path + (name,))

    def _drop_expiry_markers(self, store_prefix: str, name: str) -> None:
        for markers in kv.store_expiries(self.sync_backend, store_prefix, name).values():
            for _, _, marker in markers:
                self.sync_backend.delete(marker)

    async def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int, new_name: str, flags: int,
                     caller: Optional[Caller] = None) -> None:
        if flags & RENAME_EXCHANGE:
            raise FSError(errno.EINVAL, "RENAME_EXCHANGE is not supported", logging.INFO)
        await self._records_settled(old_parent_ino, old_name)
        await self._records_settled(new_parent_ino, new_name)
        old_parent, new_parent = self._node(old_parent_ino), self._node(new_parent_ino)
        self._child_path(old_parent, old_name, creating=True)
        new_path = self._child_path(new_parent, new_name, creating=True)
        if old_parent.depth < 2 or new_parent.depth < 2:
            raise FSError(errno.EPERM, f"{old_parent.display}/{old_name}: namespaces cannot be renamed", logging.INFO)
        if (old_parent.path[0] == "kv") != (new_parent.path[0] == "kv"):
            raise FSError(errno.EXDEV, "records and files live in different trees: copy instead", logging.INFO)
        await self._enter(caller, old_parent.path)
        await self._enter(caller, new_parent.path)
        node = await self._resolve(old_parent, old_name)
        if node is None:
            raise FSError(errno.ENOENT, f"{old_parent.display}/{old_name}: no such file or directory")
        if new_path[: node.depth] == node.path and node.is_dir and new_path != node.path:
            raise FSError(errno.EINVAL, f"cannot move {node.display} into itself")
        target = await self._resolve(new_parent, new_name)
        if target is node:
            return
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FSError(errno.EEXIST, f"{target.display} exists")
            if target.is_dir and not node.is_dir:
                raise FSError(errno.EISDIR, f"{target.display} is a directory")
            if node.is_dir and not target.is_dir:
                raise FSError(errno.ENOTDIR, f"{target.display} is not a directory")
            if target.is_dir:
                await self._check_empty(target)
                await self.backend.delete(target.prefix)
        # Every file that moves has its local content uploaded first, and keeps its staged file
        # locked until the table says where it lives now: a close() racing the rename can neither
        # upload to the old key after the copy nor be deleted with the old key.
        moving = [node] + (self.inodes.below(node) if node.is_dir else [])
        moved = None  # new key -> ObjectInfo of what the backend's copies made
        # The target's staged file is locked too: a retry of its pending upload in flight would
        # land after the copy and put the replaced content back.
        replaced = [target] if target is not None and target.staged is not None else []
        async with AsyncExitStack() as locks:
            for n in sorted((n for n in moving + replaced if n.staged is not None), key=lambda n: n.ino):
                await locks.enter_async_context(n.staged._lock)
            if node.in_store:
                if node.is_record and node.staged is not None and (node.staged.dirty or node.staged.pending):
                    await self.uploader.upload_locked(node, node.staged)  # a pending commit lands first
                await self.uploader.supersede("/".join(new_path))  # no older leftover lands after it
                await self._rename_in_store(node, new_parent, new_path)
            else:
                for n in moving:
                    if n.staged is not None and (n.staged.dirty or n.staged.pending):
                        await self.uploader.upload_locked(n, n.staged)
                await self.uploader.supersede("/".join(new_path))  # no older leftover lands after the copy
                if node.is_dir:
                    moved = await self.backend.rename(node.prefix, "/".join(new_path) + "/")
                else:
                    moved = await self.backend.rename(node.key, "/".join(new_path))
            if target is not None:
                self.inodes.remove(target)
                if target.staged is not None:  # replaced: its pending upload must never land now
                    self.uploader.pending.pop(target.staged, None)
                    self.cache.unjournal(target.staged)
                self._drop_staged(target)
            self.inodes.move(node, new_path)
            for n in moving:  # what was listed or looked up under the new names before is older
                self.inodes.changed(n)
                if n.is_dir:
                    n.listing = None  # its entries carry the objects' etags before the copy
                info = (moved or {}).get(n.key)
                if info is not None:  # a copy may give the object a new etag (S3 multipart)
                    n.size, n.mtime, n.etag, n.attr_time = info.size, info.mtime, info.etag, self.clock()
        self._listed(old_parent, old_name, None)
        self._listed(new_parent, new_name, (node.is_dir, self._known_info(node)))
        new_parent.listing = None if node.is_dir else new_parent.listing
        await self._keep_parent(old_parent)

    @staticmethod
    def _known_info(node: Node) -> Optional[ObjectInfo]:
        """What this mount knows of a file's object, for a cached listing (None: nothing, or a dir)."""
        if node.is_dir or node.etag is None:
            return None
        return ObjectInfo(node.key, node.size, node.mtime, node.etag)

    async def _rename_in_store(self, node: Node, new_parent: Node, new_path: tuple) -> None:
        """Renames in a store; they turn scratch files into records and back (temp-file-then-rename).

        The caller holds the lock of ``node.staged`` if there is one.
        """
        old_name, new_name = node.path[-1], new_path[-1]
        old_store = "/".join(node.path[:-1]) + "/"
        to_record = not kvnames.is_scratch(new_name)
        if node.is_scratch and to_record:
            staged = node.staged
            await staged._ensure_locked(0, staged.size)
            data = await self.records.content_for_rename(staged, new_path)  # refused: left as it was
            info = await self.backend.put_bytes("/".join(new_path), data)
            node.size, node.mtime, node.etag, node.attr_time = info.size, info.mtime, info.etag, self.clock()
            if staged.size == 0:  # an empty file became the record "": read it as such
                await staged._io(os.pwrite, staged.fd, data, 0)
            staged.dirty, staged.size = False, len(data)  # kept for handles still open; dropped at release
            await self.records.invalidate_attrs(node.ino)  # the kernel has the scratch file's size
        elif node.is_record and not to_record:
            staged = self._new_staged(node, truncate=False)
            await staged.complete()  # the content becomes local before the record goes
            await self.backend.delete(node.key)
            await self.backend.run(self._drop_expiry_markers, old_store, old_name)
            staged.conditions, staged.dirty, node.etag = {}, True, None
            node.staged = staged
        elif node.is_record:
            await self.backend.rename(node.key, "/".join(new_path))
            await self.backend.run(self._drop_expiry_markers, old_store, old_name)

    async def xattrs(self, ino: int, caller: Optional[Caller] = None) -> dict:
        """What a file exposes as read-only xattrs: its etag and last-modified time."""
        node = self._node(ino)
        if node.is_dir or ino == CONTROL_INO:
            return {}
        await self._enter(caller, node.path)
        await self._refresh(node)
        if node.etag is None:  # not in the backend yet (being written, or a scratch file)
            return {}
        when = datetime.fromtimestamp(node.mtime, timezone.utc).isoformat().replace("+00:00", "Z")
        return {"user.stashfs.etag": node.etag, "user.stashfs.mtime": when}

    async def statfs(self) -> dict:
        if self.is_local:
            st = await trio.to_thread.run_sync(os.statvfs, self.sync_backend.local_path(""))
            return {"bsize": st.f_bsize, "frsize": st.f_frsize, "blocks": st.f_blocks, "bfree": st.f_bfree,
                    "bavail": st.f_bavail, "files": st.f_files, "ffree": st.f_ffree, "namemax": 255}
        big = 1 << 40  # object stores have no fixed size: report a large, constant capacity
        return {"bsize": 4096, "frsize": 4096, "blocks": big, "bfree": big, "bavail": big,
                "files": big, "ffree": big, "namemax": 255}

    # -- control -----------------------------------------------------------------------------

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "backend": self.sync_backend.url,
            "cache_dir": str(self.cache.root),
            **self.stats.as_dict(),
            "open_files": len(self.handles),
            "pending_uploads": self.uploader.describe_pending(),
            "memory": {"limit": self.budget.limit, "in_use": self.budget.used, "peak": self.budget.peak},
        }


@asynccontextmanager
async def _nothing():
    yield
