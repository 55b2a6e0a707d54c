"""The filesystem core: one short method per FUSE operation, over the stashfs tree, without the kernel.

`Filesystem` takes and returns plain Python values (`coretypes`); the pyfuse3 adapter (`fuse_ops`)
only converts arguments and results, and tests drive this class directly.  Each operation checks
names and permissions and hands the work to the module that owns the concern:

    namespaces   who owns each namespace and who may use it (EACCES/EPERM)
    dircache     what each name is: listings, lookups, attribute freshness (read-your-writes)
    openfiles    handles, staged content, uploads at close/fsync, truncate, unlink of a file
    records      when a key/value record handle commits, and renames in a store
    renames      moving files and trees, with the staged files involved locked
    uploads      getting staged content into the backend, pending uploads and retries

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
from datetime import datetime, timezone
from typing import Optional

import trio

from . import kvnames, owners
from .access import Caller, Policy
from .backend import Backend
from .backend.aio import AsyncBackend
from .coretypes import Attr, Options
from .dircache import Names
from .errors import InvalidName, NameTooLong, PreconditionFailed
from .errno_boundary import FSError
from .control import CONTROL_NAME
from .inodes import CONTROL_INO, ROOT_INO, InodeTable, Listing, Node
from .memory import MemoryBudget
from .namespaces import Namespaces
from .openfiles import OpenFiles
from .records import Records
from .renames import Renames
from .staging import Cache
from .stats import Stats
from .supervise import spawn
from .uploads import Uploader

log = logging.getLogger("stashfs.fs")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Filesystem:
    def __init__(self, backend: Backend, cache: Cache, options: Options = Options(), stats: Optional[Stats] = None,
                 clock=time.monotonic):
        self.options = options
        # Monotonic seconds for every freshness decision (TTLs); tests inject a clock they move.
        self.clock = clock
        self.stats = stats or Stats()
        self.sync_backend = backend
        self.backend = AsyncBackend(backend, options.max_requests, self.stats, options.backend_timeout)
        self.cache = cache
        self.inodes = InodeTable()
        self.names = Names(self, self.inodes, self.backend, self.stats, options.metadata_ttl, clock)
        self.budget = MemoryBudget(options.memory_limit)
        self.uploader = Uploader(self.backend, cache, self.stats, clock)
        self.files = OpenFiles(self)  # handles and staged content (fsdriver.openfiles)
        self.renames = Renames(self)
        self.uploader.on_settled = self.files.settled
        self.uploader.on_uploaded = self.files.uploaded
        self.uploader.budget = self.budget  # checking a record reserves its memory
        self.records = Records(self)  # when record handles commit (fsdriver.records)
        self.policy = Policy(options.uid, options.gid, options.org_gid, options.read_only)
        self.namespaces = Namespaces(self.policy, self.backend, Caller(options.uid, options.gid), clock)
        self.dir_handles: dict[int, tuple[Node, Optional[list]]] = {}
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
        owner = self.namespaces.owner_of(node)
        mode = self.policy.dir_mode(owner) if node.is_dir else self.policy.file_mode(owner)
        size = node.staged.size if node.staged is not None else node.size
        return Attr(node.ino, node.is_dir, size, node.mtime or self.stats.started, mode, owner.uid, owner.gid)

    async def getattr(self, ino: int, caller: Optional[Caller] = None) -> Attr:
        node = self._node(ino)
        if ino == CONTROL_INO:
            return self.attr(node)  # no object behind it
        if node.depth >= 3:
            await self.namespaces.enter(caller, node.path)
        elif node.depth == 2:
            await self.namespaces.owner(node.path)
        if node.is_record:
            await self.records.settled(node)  # a commit at release (after close returned) counts
        if node.unlinked and node.open_count == 0:
            raise FSError(errno.ENOENT, f"{node.display} was removed")  # the kernel's dentry is older
        if node.open_count == 0:
            # An open file's readers are pinned to the version they opened; its attributes are
            # revalidated at the next open (close-to-open), not once a second during reads.
            await self.names.refresh(node)
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

    async def lookup(self, parent_ino: int, name: str, caller: Optional[Caller] = None) -> Attr:
        parent = self._node(parent_ino)
        if parent_ino == ROOT_INO and name == CONTROL_NAME:
            return self.attr(self.control_node)
        if self.namespaces.checked(parent.path):
            await self.namespaces.enter(caller, parent.path)
        try:
            self.names.child_path(parent, name)
        except NameTooLong:
            raise
        except InvalidName as e:
            raise FSError(errno.ENOENT, str(e)) from None
        if parent.is_store:
            await self.records.settled_at(parent.path + (name,))
        node = await self.names.resolve(parent, name)
        if node is None:
            raise FSError(errno.ENOENT, f"{parent.display}/{name}: no such file or directory")
        if node.depth == 2:
            await self.namespaces.owner(node.path)
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
        if self.namespaces.checked(node.path):
            await self.namespaces.enter(caller, node.path)
        fh = self.files.new_fh()
        self.dir_handles[fh] = (node, None)
        return fh

    async def readdir(self, fh: int) -> list:
        """The handle's snapshot of ``(name, Attr)`` pairs, listed once at the first call."""
        node, snapshot = self.dir_handles[fh]
        if snapshot is not None:
            return snapshot
        if node.is_store:
            await self.records.settled_in(node)
        entries = await self.names.entries(node)
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
        if parent.is_store:
            raise FSError(errno.EPERM, f"{parent.display}/{name}: a store holds records (<key>.json files), not directories", logging.INFO)
        path = self.names.child_path(parent, name, creating=True)
        if parent.depth >= 2:
            await self.namespaces.enter(caller, parent.path)
        exists = await self.names.resolve(parent, name) is not None
        if parent.depth == 1:
            await self.namespaces.create(caller, parent.path[0], name, exists)
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
        self.names.listed(parent, name, (True, None))
        node.lookups += 1
        return self.attr(node)

    async def _to_remove(self, parent_ino: int, name: str, caller: Optional[Caller], what: str) -> tuple:
        """``(parent, node)`` for unlink and rmdir: the name checked, the caller allowed, found."""
        parent = self._node(parent_ino)
        self.names.child_path(parent, name, creating=True)
        if parent.depth >= 2:
            await self.namespaces.enter(caller, parent.path)
        node = await self.names.resolve(parent, name)
        if node is None:
            raise FSError(errno.ENOENT, f"{parent.display}/{name}: no such {what}")
        return parent, node

    async def rmdir(self, parent_ino: int, name: str, caller: Optional[Caller] = None) -> None:
        parent, node = await self._to_remove(parent_ino, name, caller, "directory")
        if not node.is_dir:
            raise FSError(errno.ENOTDIR, f"{node.display} is not a directory")
        if node.depth == 2:
            await self.namespaces.may_remove(caller, node)
        await self.names.check_empty(node)
        if node.is_store:
            await self.backend.delete_prefix(node.prefix + kvnames.EXPIRES)
        await self.backend.delete(node.prefix)
        if node.depth == 2 and node.path[0] == "pipeline":  # an empty pipeline is gone for good
            await self.backend.run(owners.remove, self.sync_backend, name)
            self.namespaces.forget_pipeline(name)
        self.inodes.remove(node)
        self.names.listed(parent, name, None)
        await self.names.keep_parent(parent)

    # -- files -------------------------------------------------------------------------------

    async def open(self, ino: int, flags: int, caller: Optional[Caller] = None) -> tuple[int, bool, bool]:
        """Open a file; returns (fh, keep_cache, direct_io)."""
        node = self._node(ino)
        if node.is_dir:
            raise FSError(errno.EISDIR, f"{node.display} is a directory")
        if ino == CONTROL_INO:
            raise FSError(errno.EPERM, "the control file answers xattrs only")
        await self.namespaces.enter(caller, node.path)
        if node.is_record:
            await self.records.settled(node)  # a commit at release (after close returned) counts
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        truncate = bool(flags & os.O_TRUNC) and writable
        if writable and self.options.read_only:
            raise FSError(errno.EROFS, "mounted read-only")
        if writable and node.is_record:
            node.attr_time = 0  # a record's write is conditional on the version read: get it fresh
        if node.is_record or not (writable and node.etag is None and node.staged is None):
            await self.names.refresh(node)  # close-to-open: see another node's change once the TTL passed
        # else: a file created here whose content never reached the backend (its write failed):
        # the kernel still knows the name, and writing it creates it (not ENOENT from a HEAD).
        return await self.files.open(node, writable, truncate, bool(flags & os.O_APPEND))

    async def create(self, parent_ino: int, name: str, flags: int, caller: Optional[Caller] = None) -> tuple[int, Attr, bool]:
        await self._records_settled(parent_ino, name)
        parent = self._node(parent_ino)
        path = self.names.child_path(parent, name, creating=True)
        if parent.depth < 2:
            raise FSError(errno.EPERM, f"{parent.display}/{name}: files live inside a namespace (mkdir one first)", logging.INFO)
        await self.namespaces.enter(caller, parent.path)
        looked = parent.absent.pop(name, None)
        if looked is not None and self.names.fresh(looked) and self.inodes.at(path) is None:
            existing = None  # the kernel's lookup just found nothing: do not ask again
        else:
            existing = await self.names.resolve(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise FSError(errno.EEXIST, f"{existing.display} exists")
            if existing.is_dir:
                raise FSError(errno.EISDIR, f"{existing.display} is a directory")
        node = self.inodes.node_for(path, False)
        fh = await self.files.create(node, bool(flags & os.O_APPEND), bool(flags & os.O_EXCL))
        node.mtime = time.time()
        if existing is None:
            node.size, node.etag = 0, None
        if not node.is_record:  # a new record appears when it is closed
            self.names.listed(parent, name, (False, None))
        node.lookups += 1
        return fh, self.attr(node), node.is_record

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.files.read(fh, off, size)

    async def write(self, fh: int, off: int, data: bytes) -> int:
        return await self.files.write(fh, off, data)

    async def flush(self, fh: int) -> None:
        """close(): a file written through this handle is durable in the backend on return."""
        await self.files.flush(fh)

    async def fsync(self, fh: int) -> None:
        await self.files.fsync(fh)

    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    async def setattr(self, ino: int, *, size=None, mtime=None, mode=None, uid=None, gid=None, fh=None,
                      caller: Optional[Caller] = None) -> Attr:
        node = self._node(ino)
        if ino == CONTROL_INO:
            raise FSError(errno.EPERM, "the control file cannot be changed")
        if node.is_record:
            await self.records.settled(node)
        if node.depth >= 3:
            await self.namespaces.enter(caller, node.path)
        elif node.depth == 2:
            await self.namespaces.owner(node.path)
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
            await self.files.truncate(node, size, fh)
            node.mtime = time.time()
        if mtime is not None and not node.is_dir:
            await self.files.set_mtime(node, mtime)
        return self.attr(node)

    async def unlink(self, parent_ino: int, name: str, caller: Optional[Caller] = None) -> None:
        await self._records_settled(parent_ino, name)
        parent, node = await self._to_remove(parent_ino, name, caller, "file")
        if node.is_dir:
            raise FSError(errno.EISDIR, f"{node.display} is a directory")
        await self.files.delete(node)
        if node.is_record:
            await self.records.drop_expiry_markers(parent.prefix, name)
        self.inodes.remove(node)
        self.files.drop_staged(node)
        self.names.listed(parent, name, None)
        await self.names.keep_parent(parent)

    async def _records_settled(self, parent_ino: int, name: str) -> None:
        """A record's commit at release (close() returned before it) comes before what follows."""
        parent = self.inodes.get(parent_ino)
        if parent is not None and parent.is_store:
            await self.records.settled_at(parent.path + (name,))

    async def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int, new_name: str, flags: int,
                     caller: Optional[Caller] = None) -> None:
        if flags & RENAME_EXCHANGE:
            raise FSError(errno.EINVAL, "RENAME_EXCHANGE is not supported", logging.INFO)
        await self._records_settled(old_parent_ino, old_name)
        await self._records_settled(new_parent_ino, new_name)
        old_parent, new_parent = self._node(old_parent_ino), self._node(new_parent_ino)
        self.names.child_path(old_parent, old_name, creating=True)
        new_path = self.names.child_path(new_parent, new_name, creating=True)
        if old_parent.depth < 2 or new_parent.depth < 2:
            raise FSError(errno.EPERM, f"{old_parent.display}/{old_name}: namespaces cannot be renamed", logging.INFO)
        if (old_parent.path[0] == "kv") != (new_parent.path[0] == "kv"):
            raise FSError(errno.EXDEV, "records and files live in different trees: copy instead", logging.INFO)
        await self.namespaces.enter(caller, old_parent.path)
        await self.namespaces.enter(caller, new_parent.path)
        node = await self.names.resolve(old_parent, old_name)
        if node is None:
            raise FSError(errno.ENOENT, f"{old_parent.display}/{old_name}: no such file or directory")
        if new_path[: node.depth] == node.path and node.is_dir and new_path != node.path:
            raise FSError(errno.EINVAL, f"cannot move {node.display} into itself")
        target = await self.names.resolve(new_parent, new_name)
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
                await self.names.check_empty(target)
                await self.backend.delete(target.prefix)
        await self.renames.move(node, target, old_parent, new_parent, new_path)

    async def xattrs(self, ino: int, caller: Optional[Caller] = None) -> dict:
        """What a file exposes as read-only xattrs: its etag and last-modified time."""
        node = self._node(ino)
        if node.is_dir or ino == CONTROL_INO:
            return {}
        await self.namespaces.enter(caller, node.path)
        await self.names.refresh(node)
        if node.etag is None:  # not in the backend yet (being written, or a scratch file)
            return {}
        when = datetime.fromtimestamp(node.mtime, timezone.utc).isoformat().replace("+00:00", "Z")
        return {"user.stashfs.etag": node.etag, "user.stashfs.mtime": when}

    async def statfs(self) -> dict:
        capacity = await trio.to_thread.run_sync(self.sync_backend.capacity)
        if capacity is not None:
            return capacity | {"namemax": 255}
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
            "open_files": len(self.files.handles),
            "pending_uploads": self.uploader.describe_pending(),
            "memory": {"limit": self.budget.limit, "in_use": self.budget.used, "peak": self.budget.peak},
        }

