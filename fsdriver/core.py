"""The filesystem core: one short method per FUSE operation, over the stashfs tree, without the kernel.

`Filesystem` takes and returns plain Python values (`coretypes`); the pyfuse3 adapter (`fuse_ops`)
only converts arguments and results, and tests drive this class directly.  Each operation checks
names and permissions and hands the work to the module that owns the concern:

    namespaces   who owns each namespace and who may use it (EACCES/EPERM)
    dircache     what each name is: listings, lookups, attribute freshness (read-your-writes)
    openfiles    handles, staged content, uploads at close/fsync, truncate, unlink of a file
    records      when a key/value record handle commits, and renames in a store
    renames      moving files and trees, with the staged files involved locked
    treelock     a rename against the operations naming paths below what it moves
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
import functools
import logging
import os
import stat
import time
from datetime import datetime, timezone
from typing import Optional

import trio

from . import kvnames, owners, posixattrs
from .access import Caller, Policy
from .attributes import Attributes
from .dirindex import DirIndex
from .backend import Backend
from .backend.aio import AsyncBackend, extend_request_deadline
from .coretypes import Attr, Options
from .dircache import Names
from .errors import InvalidName, NameTooLong, PreconditionFailed
from .errno_boundary import FSError
from .control import CONTROL_NAME
from .kernelra import KernelReadahead
from .inodes import CONTROL_INO, ROOT_INO, InodeTable, Listing, Node
from .memory import MemoryBudget
from .namespaces import Namespaces
from .openfiles import OpenFiles
from .posixattrs import R_OK, W_OK, X_OK, Meta
from .records import Records
from .renames import Renames
from .staging import Cache
from .stats import Stats
from .supervise import spawn
from .treelock import TreeLock
from .uploads import Uploader

log = logging.getLogger("stashfs.fs")


def _naming(paths):
    """The operation names the paths ``paths(fs, *args)`` gives: it waits while a rename moves
    them, and a rename waits for it (`fsdriver.treelock`).  The time it waited does not count
    against the request's backend deadline."""
    def wrap(op):
        @functools.wraps(op)
        async def naming(self, *args, **kwargs):
            async with self.tree.using(lambda: paths(self, *args, **kwargs)) as waited:
                extend_request_deadline(waited)
                return await op(self, *args, **kwargs)
        return naming
    return wrap


def _own(fs, ino, *args, **kwargs):
    node = fs.inodes.get(ino)
    return [node.path] if node is not None else []  # (unknown: the operation answers ENOENT)


def _child(fs, parent_ino, name, *args, **kwargs):
    parent = fs.inodes.get(parent_ino)
    return [parent.path + (name,)] if parent is not None else []


def _listed(fs, fh):
    handle = fs.dir_handles.get(fh)
    return [handle[0].path] if handle is not None and handle[1] is None else []  # (once listed: a snapshot)


def _linked(fs, ino, new_parent_ino, new_name, *args, **kwargs):
    return _own(fs, ino) + _child(fs, new_parent_ino, new_name)


def _renamed(fs, old_parent_ino, old_name, new_parent_ino, new_name, *args, **kwargs):
    """What a rename moves: none for one refused at once (a namespace, between trees), which
    must not hold anything back meanwhile."""
    old_parent, new_parent = fs.inodes.get(old_parent_ino), fs.inodes.get(new_parent_ino)
    if old_parent is None or new_parent is None or old_parent.depth < 2 or new_parent.depth < 2 \
            or (old_parent.path[0] == "kv") != (new_parent.path[0] == "kv"):
        return []
    return [old_parent.path + (old_name,), new_parent.path + (new_name,)]


def _moving(op):
    """A rename: what it moves (source and target, each with what is below it) is named by no
    other operation meanwhile (`fsdriver.treelock`).  Uploads in flight below the source are
    waited for first, holding nothing: the rename waits for them anyway (`fsdriver.renames`), and
    would hold the operations below it back meanwhile."""
    @functools.wraps(op)
    async def moving(self, *args, **kwargs):
        await self._uploads_settled(_renamed(self, *args, **kwargs)[:1])
        async with self.tree.moving(lambda: _renamed(self, *args, **kwargs)) as waited:
            extend_request_deadline(waited)
            return await op(self, *args, **kwargs)
    return moving

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
        self.tree = TreeLock()  # renames against operations naming what they move
        self.names = Names(self, self.inodes, self.backend, self.stats, options.metadata_ttl, clock)
        self.budget = MemoryBudget(options.memory_limit)
        cache.budget = self.budget  # small new files stay in memory until their upload (fsdriver.staging)
        self.uploader = Uploader(self.backend, cache, self.stats, clock)
        self.files = OpenFiles(self)  # handles and staged content (fsdriver.openfiles)
        self.renames = Renames(self)
        self.uploader.on_settled = self.files.settled
        self.uploader.on_uploaded = self.files.uploaded
        self.uploader.budget = self.budget  # checking a record reserves its memory
        # files uploaded whole read their parts into buffers held in the budget: half of it at most
        backend.cap_upload_memory(self.budget.limit // 2)
        self.records = Records(self)  # when record handles commit (fsdriver.records)
        self.attributes = Attributes(self)  # chmod/chown/utimens and directory times, stored
        self.dirindex = DirIndex(self)  # S3: the attributes of each directory's entries, for listings
        self.uploader.meta_for = self.upload_meta
        self.policy = Policy(options.uid, options.gid, options.org_gid, options.read_only)
        self.namespaces = Namespaces(self.policy, self.backend, Caller(options.uid, options.gid), clock)
        self.dir_handles: dict[int, tuple[Node, Optional[list]]] = {}
        self.nursery: Optional[trio.Nursery] = None  # owner of background work (prefetch, retries)
        # Tells the kernel to drop a cached name (set by the FUSE adapter; a no-op without kernel).
        self.invalidate_entry = lambda parent_ino, name: None
        # Where the kernel shows this tree (set by the FUSE adapter): which close() comes from an
        # inherited descriptor is told by the paths in /proc/<pid>/fd (fsdriver.closes).
        self.mountpoint: Optional[str] = None
        # How far ahead of each other the kernel's read-ahead sends a reader's reads (set up by the
        # daemon once mounted: fsdriver.kernelra); a stream's reach is at least twice that.
        self.kernel_readahead = KernelReadahead(clock)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Own the background work: prefetch parts and upload retries live in this nursery."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            spawn(nursery, self.stats, "upload-retry", self.uploader.retry_forever,
                  what="upload retry loop", retries=None)
            spawn(nursery, self.stats, "dir-times", self.attributes.run,
                  what="storing directory times", retries=None)
            spawn(nursery, self.stats, "dir-index", self.dirindex.run,
                  what="writing directory indexes", retries=None)
            task_status.started()
            await trio.sleep_forever()

    # -- attributes --------------------------------------------------------------------------

    def attr(self, node: Node) -> Attr:
        if node.ino == CONTROL_INO:
            return Attr(CONTROL_INO, False, 0, self.stats.started, stat.S_IFREG | 0o600, self.options.uid, self.options.gid)
        size = node.staged.size if node.staged is not None else node.size
        # a directory shows 2 whatever its subdirectories (counting them would cost a listing);
        # 0 once removed (fstat of a descriptor still open on it)
        nlink = (0 if node.unlinked else 2) if node.is_dir else node.nlink
        meta = node.meta if self.has_posix(node) else None
        if meta is not None:
            mode = meta.mode & ~0o222 if self.options.read_only else meta.mode
            return Attr(node.ino, node.is_dir, size, meta.mtime, mode, meta.uid, meta.gid,
                        ctime=meta.ctime, atime=meta.atime, nlink=nlink, rdev=meta.rdev,
                        mtime_ns=meta.mtime_ns, atime_ns=meta.atime_ns)
        owner = self.namespaces.owner_of(node)
        mode = self.policy.dir_mode(owner) if node.is_dir else self.policy.file_mode(owner)
        uid, gid = owner.uid, owner.gid
        if self.has_posix(node):  # an object without attributes of its own: the mount's defaults
            given = self.options.dir_mode if node.is_dir else self.options.file_mode
            if given is not None:
                mode = stat.S_IFMT(mode) | (given & ~0o222 if self.options.read_only else given)
            uid, gid = self.default_owner(node)
        return Attr(node.ino, node.is_dir, size, node.mtime or self.stats.started, mode, uid, gid, nlink=nlink)

    def default_owner(self, node: Node) -> tuple[int, int]:
        """The owner shown for an object that names none: ``--uid``/``--gid``, else its namespace's."""
        owner = self.namespaces.owner_of(node)
        uid = owner.uid if self.options.default_uid is None else self.options.default_uid
        gid = owner.gid if self.options.default_gid is None else self.options.default_gid
        return uid, gid

    @staticmethod
    def has_posix(node: Node) -> bool:
        """Files and directories inside /pipeline/<id> and /user/<name> carry their own attributes;
        namespaces, trees and key/value records show their namespace's (docs/permissions.md)."""
        return node.depth >= 3 and node.path[0] != "kv"

    def upload_meta(self, node: Node) -> Optional[dict]:
        """The user metadata an upload of ``node`` stores with its content (None: none)."""
        if node.meta is None or not self.has_posix(node):
            return None
        return posixattrs.to_headers(node.meta)

    def _caller(self, caller: Optional[Caller]) -> Caller:
        return caller or self.namespaces.mount_caller

    def _check(self, caller: Optional[Caller], node: Node, want: int) -> None:
        """The POSIX permission check on a file or directory's own mode (inside a namespace; the
        namespace itself is checked by `Namespaces.enter`)."""
        if self.has_posix(node):
            a = self.attr(node)
            posixattrs.check_access(self._caller(caller), a.mode, a.uid, a.gid, want, node.display)

    def _check_remove(self, caller: Optional[Caller], parent: Node, node: Node) -> None:
        """Removing or replacing ``node`` in ``parent``: write and search on it, the sticky rule."""
        self._check(caller, parent, W_OK | X_OK)
        if self.has_posix(parent):
            p = self.attr(parent)
            posixattrs.check_sticky(self._caller(caller), p.mode, p.uid, self.attr(node).uid, node.display)

    def _new_meta(self, caller: Optional[Caller], parent: Node, mode: int, rdev: int = 0) -> Meta:
        """A new inode belongs to its creator; in a setgid directory to the directory's group
        (and a new directory there is setgid too)."""
        caller = self._caller(caller)
        gid = caller.gid
        if parent.depth >= 2:  # a namespace's directory too: a shared pipeline is setgid
            p = self.attr(parent)
            if p.mode & stat.S_ISGID:
                gid = p.gid
                if stat.S_ISDIR(mode):
                    mode |= stat.S_ISGID
        now = time.time()
        return Meta(mode, caller.uid, gid, now, now, now, rdev)

    @_naming(_own)
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

    async def _uploads_settled(self, paths) -> None:
        """Wait for the uploads in flight of the files at or below ``paths`` (known to this mount)."""
        for path in paths:
            node = self.inodes.at(path)
            if node is None:
                continue
            for n in [node] + (self.inodes.below(node) if node.is_dir else []):
                staged = n.staged
                if staged is not None and staged.lock.locked():
                    async with staged.lock:
                        pass

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

    @_naming(_child)
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
        self._check(caller, parent, X_OK)
        node = await self.names.resolve(parent, name)
        if node is None:
            raise FSError(errno.ENOENT, f"{parent.display}/{name}: no such file or directory")
        await self.names.need_meta(node)
        if node.depth == 2:
            await self.namespaces.owner(node.path)
        node.lookups += 1
        return self.attr(node)

    def forget(self, items) -> None:
        for ino, n in items:
            self.inodes.forget(ino, n)

    # -- directories -------------------------------------------------------------------------

    @_naming(_own)
    async def opendir(self, ino: int, caller: Optional[Caller] = None) -> int:
        node = self._node(ino)
        if not node.is_dir:
            raise FSError(errno.ENOTDIR, f"{node.display} is not a directory")
        if self.namespaces.checked(node.path):
            await self.namespaces.enter(caller, node.path)
        self._check(caller, node, R_OK)
        fh = self.files.new_fh()
        self.dir_handles[fh] = (node, None)
        node.open_count += 1  # fstat of the descriptor answers after an rmdir, as on ext4
        return fh

    @_naming(_listed)
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

    def dots(self, fh: int) -> list:
        """``.`` and ``..`` of a directory handle, as (name, Node): the root is its own parent (a
        parent this mount no longer knows too: only its inode number would differ)."""
        node = self.dir_handles[fh][0]
        parent = self.inodes.at(node.path[:-1]) if node.path else None
        return [(".", node), ("..", parent or node)]

    def releasedir(self, fh: int) -> None:
        node, snapshot = self.dir_handles.pop(fh, (None, None))
        for _, child in snapshot or ():
            child.pins -= 1
            self.inodes.release_unreferenced(child)
        if node is not None:
            node.open_count -= 1
            self.inodes.release_unreferenced(node)

    @_naming(_child)
    async def mkdir(self, parent_ino: int, name: str, caller: Optional[Caller] = None,
                    mode: Optional[int] = None) -> Attr:
        parent = self._node(parent_ino)
        if parent.is_store:
            raise FSError(errno.EPERM, f"{parent.display}/{name}: a store holds records (<key>.json files), not directories", logging.INFO)
        path = self.names.child_path(parent, name, creating=True)
        if parent.depth >= 2:
            await self.namespaces.enter(caller, parent.path)
        self._check(caller, parent, W_OK | X_OK)
        exists = await self.names.resolve(parent, name) is not None
        if parent.depth == 1:
            await self.namespaces.create(caller, parent.path[0], name, exists)
        if exists:
            raise FSError(errno.EEXIST, f"{parent.display}/{name} exists")
        prefix = "/".join(path) + "/"
        meta = None
        if mode is not None and len(path) >= 3 and path[0] != "kv":
            meta = self._new_meta(caller, parent, stat.S_IFDIR | stat.S_IMODE(mode))
        try:
            await self.backend.put_bytes(prefix, b"", if_none_match=True,
                                         meta=posixattrs.to_headers(meta) if meta else None)
        except PreconditionFailed:
            raise FSError(errno.EEXIST, f"{parent.display}/{name} was created meanwhile") from None
        node = self.inodes.node_for(path, True)
        node.has_marker, node.mtime = True, time.time()
        node.meta, node.meta_known, node.attr_time = meta, True, self.clock()  # (as stored: fresh)
        node.listing = Listing({}, self.clock())
        self.names.listed(parent, name, (True, None))
        self.attributes.touch_dir(parent)
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

    @_naming(_child)
    async def rmdir(self, parent_ino: int, name: str, caller: Optional[Caller] = None) -> None:
        parent, node = await self._to_remove(parent_ino, name, caller, "directory")
        if not node.is_dir:
            raise FSError(errno.ENOTDIR, f"{node.display} is not a directory")
        await self.names.need_meta(node)
        self._check_remove(caller, parent, node)
        if node.depth == 2:
            await self.namespaces.may_remove(caller, node)
        await self.names.check_empty(node)
        await self.dirindex.removed(node)  # no index write of it may make its marker again
        if node.is_store:
            await self.backend.delete_prefix(node.prefix + kvnames.EXPIRES)
        # No round storing directory times runs meanwhile (as for a directory rename): one in
        # flight would store the removed directory's times after its delete and fail; once it is
        # removed (unlinked), the next round skips it.
        async with self.attributes.held():
            await self.backend.delete(node.prefix)
            self.inodes.remove(node)
        if node.depth == 2 and node.path[0] == "pipeline":  # an empty pipeline is gone for good
            await self.backend.run(owners.remove, self.sync_backend, name)
            self.namespaces.forget_pipeline(name)
        self.names.listed(parent, name, None)
        self.attributes.touch_dir(parent)
        await self.names.keep_parent(parent)

    # -- files -------------------------------------------------------------------------------

    @_naming(_own)
    async def open(self, ino: int, flags: int, caller: Optional[Caller] = None) -> tuple[int, bool, bool]:
        """Open a file; returns (fh, keep_cache, direct_io)."""
        node = self._node(ino)
        if node.is_dir:
            raise FSError(errno.EISDIR, f"{node.display} is a directory")
        if ino == CONTROL_INO:
            raise FSError(errno.EPERM, "the control file answers xattrs only")
        seen = (node.size, node.etag)  # what the kernel may hold (see the end)
        await self.namespaces.enter(caller, node.path)
        if node.is_record:
            await self.records.settled(node)  # a commit at release (after close returned) counts
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        truncate = bool(flags & os.O_TRUNC) and writable
        await self.names.need_meta(node)
        self._check(caller, node, (W_OK if writable else 0) | (R_OK if flags & os.O_ACCMODE != os.O_WRONLY else 0))
        if writable and self.options.read_only:
            raise FSError(errno.EROFS, "mounted read-only")
        if writable and node.is_record:
            node.attr_time = 0  # a record's write is conditional on the version read: get it fresh
        # A record another descriptor is creating here (its first commit not made yet): a second
        # writer opens it too, as on ext4 (not ENOENT from a HEAD); the commits then decide.
        created_here = (node.is_record and writable and node.etag is None
                        and any(h.node is node and h.writable for h in self.files.handles.values()))
        if not created_here and (node.is_record or not (writable and node.etag is None and node.staged is None)):
            await self.names.refresh(node)  # close-to-open: see another node's change once the TTL passed
        # else: a file created here whose content never reached the backend (its write failed):
        # the kernel still knows the name, and writing it creates it (not ENOENT from a HEAD).
        if flags & os.O_TRUNC and not writable and self.has_posix(node):
            # Linux truncates on O_TRUNC whatever the access mode (given write permission)
            self._check(caller, node, W_OK)
            await self.setattr(ino, size=0, caller=caller)
        fh, keep_cache, direct_io = await self.files.open(node, writable, truncate, bool(flags & os.O_APPEND))
        self.files.handles[fh].caller = caller
        if (node.size, node.etag) != seen:
            # This open found the file changed elsewhere.  The kernel may still hold the old size
            # (its attribute timeout runs apart from this mount's TTL) and stops reading there: a
            # longer new version would read cut short.  Make its next read past that size ask.
            with trio.CancelScope(shield=True):  # the handle is registered: the open must answer
                await self.records.invalidate_attrs(ino)
        return fh, keep_cache, direct_io

    @_naming(_child)
    async def create(self, parent_ino: int, name: str, flags: int, caller: Optional[Caller] = None,
                     mode: Optional[int] = None) -> tuple[int, Attr, bool]:
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
            try:
                await self.names.need_meta(existing)
            except FSError as e:
                if e.errno != errno.ENOENT:
                    raise  # removed elsewhere meanwhile: created anew below
            else:
                writing = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC
                self._check(caller, existing, W_OK if writing else R_OK)
        else:
            self._check(caller, parent, W_OK | X_OK)
        node = self.inodes.node_for(path, False)
        fh = await self.files.create(node, bool(flags & os.O_APPEND), bool(flags & os.O_EXCL),
                                     create_only=existing is None and not flags & os.O_TRUNC)
        self.files.handles[fh].caller = caller
        node.mtime = time.time()
        if existing is None:
            node.size, node.etag = 0, None
            node.meta_known = True  # created here: what it carries is what this mount gives it
            if mode is not None and self.has_posix(node):
                node.meta = self._new_meta(caller, parent, stat.S_IFREG | stat.S_IMODE(mode))
            self.attributes.touch_dir(parent)
        elif node.meta is not None:
            node.meta = node.meta.touched(data=True)
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
        handle = self.files.handles.get(fh)
        if handle is not None and handle.writable and handle.node.nlink > 1:
            await self._links_changed()  # the other names of a hard-linked file show the new content

    async def fsync(self, fh: int) -> None:
        await self.files.fsync(fh)

    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    @_naming(_own)
    async def setattr(self, ino: int, *, size=None, mtime=None, mode=None, uid=None, gid=None, fh=None,
                      caller: Optional[Caller] = None, atime_ns=None, mtime_ns=None, ctime=False) -> Attr:
        """truncate, chmod, chown and utimens (``mtime`` in seconds, or ``mtime_ns``/``atime_ns``);
        ``ctime`` alone (a chown to -1/-1 by the owner) stamps the change time."""
        node = self._node(ino)
        if ino == CONTROL_INO:
            raise FSError(errno.EPERM, "the control file cannot be changed")
        if node.is_record:
            await self.records.settled(node)
        if node.depth >= 3:
            await self.namespaces.enter(caller, node.path)
        elif node.depth == 2:
            await self.namespaces.owner(node.path)
        if mtime_ns is None and mtime is not None:
            mtime_ns = int(round(mtime * 1e9))
        if not self.has_posix(node):
            self._fixed_attributes(node, mode, uid, gid, caller)
        elif mode is not None or uid is not None or gid is not None or mtime_ns is not None or atime_ns is not None \
                or (ctime and size is None):
            if self.options.read_only:
                raise FSError(errno.EROFS, "mounted read-only")
            await self.names.need_meta(node)
            await self.attributes.change(node, self._setattr_edit(node, caller, mode, uid, gid, atime_ns, mtime_ns))
            mtime_ns = None  # stored with the other attributes
            if node.nlink > 1:
                await self._links_changed()
        if size is not None:
            if node.is_dir:
                raise FSError(errno.EISDIR, f"{node.display} is a directory")
            if self.options.read_only:
                raise FSError(errno.EROFS, "mounted read-only")
            if fh is None:
                self._check(caller, node, W_OK)
                # truncate(2) acts on the current version (one HEAD: one another node stored
                # within the TTL counts), and the times set below go on its attributes
                node.attr_time = 0
                await self.names.refresh(node)

            def stamp():
                if node.meta is not None:
                    node.meta = node.meta.touched(data=True)
                    node.meta = node.meta.with_(mode=posixattrs.mode_after_write(
                        node.meta.mode, node.meta.gid, self._caller(caller)))

            stamp()
            version = node.etag
            await self.files.truncate(node, size, fh)
            handle = self.files.handles.get(fh) if fh is not None else None
            if handle is not None and handle.writable and node.etag != version:
                stamp()  # it took another node's newer version (`OpenFiles._follow_current`) and its attributes
            node.mtime = time.time()
            if node.nlink > 1 and fh is None:
                await self._links_changed()
        if mtime_ns is not None and not node.is_dir:
            await self.files.set_mtime(node, mtime_ns / 1e9)
        return self.attr(node)

    def _fixed_attributes(self, node: Node, mode, uid, gid, caller: Optional[Caller] = None) -> None:
        """Namespaces and records show their namespace's owner and mode: setting the value they
        have succeeds, anything else is EPERM (docs/permissions.md).  A store's scratch file (a temp
        file on its way to becoming a record) takes any: rsync and cp -p set the mode of their temp
        file before the rename, and it keeps showing its store's.

        One exception, for the tools that copy a directory's mode onto a namespace they fill
        (``tar -x`` of an archive holding ``./``, ``cp -a src/. ns/``, ``rsync -a src/ ns/``): a chmod
        of a namespace by its owner or root that would grant at least every permission it has
        succeeds and changes nothing (logged), as gcsfuse and rclone treat modes they cannot keep.
        It leaves the namespace no more open than asked; one that would take a permission away,
        or change a setuid, setgid or sticky bit, stays EPERM."""
        if node.is_scratch:
            return
        now = self.attr(node)
        if (mode is not None and stat.S_IMODE(mode) != stat.S_IMODE(now.mode)
                and self._kept_wider(node, caller, now, mode)):
            mode = None
        if mode is not None and stat.S_IMODE(mode) != stat.S_IMODE(now.mode) or (
                uid is not None and uid != now.uid) or (gid is not None and gid != now.gid):
            raise FSError(errno.EPERM, f"{node.display}: the modes and owners of namespaces and records follow "
                          "the namespace and cannot be changed (see docs/permissions.md)", logging.INFO)

    def _kept_wider(self, node: Node, caller: Optional[Caller], now: Attr, mode: int) -> bool:
        """A chmod of a namespace that `_fixed_attributes` answers with success, changing nothing."""
        caller = self._caller(caller)
        have, want = stat.S_IMODE(now.mode), stat.S_IMODE(mode)
        if (node.depth != 2 or caller.uid not in (0, now.uid) or have & 0o777 & ~want
                or have & 0o7000 != want & 0o7000):  # a setuid/setgid/sticky bit it cannot keep: not wider
            return False
        log.info("%s: chmod %o kept as %o (a namespace's mode follows the namespace; it grants no more "
                 "than asked); see docs/permissions.md", node.display, stat.S_IMODE(mode), stat.S_IMODE(now.mode))
        return True

    def _setattr_edit(self, node: Node, caller, mode, uid, gid, atime_ns, mtime_ns):
        """Check a chmod/chown/utimens against the POSIX rules; the edit it makes to `Meta`."""
        caller = self._caller(caller)
        now = self.attr(node)
        if mode is not None:
            writer = posixattrs.may_access(caller, now.mode, now.uid, now.gid, W_OK)
            mode = stat.S_IFMT(now.mode) | posixattrs.check_chmod(caller, now.uid, now.gid, mode, node.display,
                                                                  now.mode, writer)
        if uid is not None or gid is not None:
            posixattrs.check_chown(caller, now.uid, now.gid, uid, gid, node.display)
        if atime_ns is not None or mtime_ns is not None:
            # the kernel refuses explicit times to non-owners; UTIME_NOW needs write permission
            posixattrs.check_utimens(caller, now.mode, now.uid, now.gid, False, node.display)

        def edit(meta: Meta) -> Meta:
            changes = {"ctime": time.time()}
            if mode is not None:
                changes["mode"] = stat.S_IFMT(meta.mode) | stat.S_IMODE(mode)
            if uid is not None:
                changes["uid"] = uid
            if gid is not None:
                changes["gid"] = gid
            if mtime_ns is not None:
                changes["mtime"], changes["mtime_ns"] = mtime_ns / 1e9, mtime_ns
            if atime_ns is not None:
                changes["atime"], changes["atime_ns"] = atime_ns / 1e9, atime_ns
            return meta.with_(**changes)

        return edit

    @_naming(_child)
    async def unlink(self, parent_ino: int, name: str, caller: Optional[Caller] = None) -> None:
        await self._records_settled(parent_ino, name)
        parent, node = await self._to_remove(parent_ino, name, caller, "file")
        if node.is_dir:
            raise FSError(errno.EISDIR, f"{node.display} is a directory")
        await self.names.need_meta(node)
        self._check_remove(caller, parent, node)
        links = node.nlink
        if links > 1 and node.meta is not None and node.staged is None:
            await self.attributes.change(node, lambda m: m.touched())  # the other names' ctime
        await self.files.delete(node)
        if node.is_record:
            await self.records.drop_expiry_markers(parent.prefix, name)
        self.inodes.remove(node)
        node.nlink = max(links - 1, 0)  # fstat of an open descriptor: the other names remain
        self.files.drop_staged(node)
        self.names.listed(parent, name, None)
        self.attributes.touch_dir(parent)
        if links > 1:
            await self._links_changed()
        await self.names.keep_parent(parent)

    async def _records_settled(self, parent_ino: int, name: str) -> None:
        """A record's commit at release (close() returned before it) comes before what follows."""
        parent = self.inodes.get(parent_ino)
        if parent is not None and parent.is_store:
            await self.records.settled_at(parent.path + (name,))

    @_moving
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
        if target is node or self._same_file(node, target):
            return  # POSIX: renaming a file onto another name of itself does nothing
        await self.names.need_meta(node)
        self._check_remove(caller, old_parent, node)
        self._check(caller, new_parent, W_OK | X_OK)
        if node.is_dir and old_parent is not new_parent:
            self._check(caller, node, W_OK)  # its ".." entry changes
        if target is not None:
            await self.names.need_meta(target)
            self._check_remove(caller, new_parent, target)
        if node.is_dir and not node.in_store:
            # keys made too long by the move refuse it before anything changed (the target too)
            await self.backend.run(self.sync_backend.check_rename, node.prefix, "/".join(new_path) + "/")
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FSError(errno.EEXIST, f"{target.display} exists")
            if target.is_dir and not node.is_dir:
                raise FSError(errno.EISDIR, f"{target.display} is a directory")
            if node.is_dir and not target.is_dir:
                raise FSError(errno.ENOTDIR, f"{target.display} is not a directory")
            if target.is_dir:
                await self.names.check_empty(target)
                await self.dirindex.removed(target)  # its pending times never land on what replaces it
                await self.backend.delete(target.prefix)
        replaced_links = target.nlink if target is not None else 0
        if replaced_links > 1 and target.meta is not None and target.staged is None:
            await self.attributes.change(target, lambda m: m.touched())  # the other names' ctime
        await self.renames.move(node, target, old_parent, new_parent, new_path)
        if replaced_links > 1:
            await self._links_changed()
        self.attributes.touch_dir(old_parent)
        if new_parent is not old_parent:
            self.attributes.touch_dir(new_parent)

    # -- symbolic links, special files, hard links ------------------------------------------

    @_naming(_child)
    async def symlink(self, parent_ino: int, name: str, target: bytes, caller: Optional[Caller] = None) -> Attr:
        """A symbolic link: an object whose content is the target (as s3fs stores them)."""
        now = await self._new_object(parent_ino, name, caller, stat.S_IFLNK | 0o777, 0, target)
        now.target = target
        return self.attr(now)

    @_naming(_child)
    async def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, caller: Optional[Caller] = None) -> Attr:
        """A FIFO, socket or device node (metadata only, never data), or an empty regular file."""
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FSError(errno.EINVAL, f"mknod: file type {kind:o} is not a special file", logging.INFO)
        rdev = rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        return self.attr(await self._new_object(parent_ino, name, caller, kind | stat.S_IMODE(mode), rdev, b""))

    async def _new_object(self, parent_ino: int, name: str, caller: Optional[Caller], mode: int, rdev: int,
                          content: bytes) -> Node:
        """Create ``parent/name`` with ``content`` and attributes at once (durable on return)."""
        parent = self._node(parent_ino)
        path = self.names.child_path(parent, name, creating=True)
        if parent.depth < 2 or parent.path[0] == "kv":
            raise FSError(errno.EPERM, f"{parent.display}/{name}: only regular files live here", logging.INFO)
        await self.namespaces.enter(caller, parent.path)
        self._check(caller, parent, W_OK | X_OK)
        if await self.names.resolve(parent, name) is not None:
            raise FSError(errno.EEXIST, f"{parent.display}/{name} exists")
        meta = self._new_meta(caller, parent, mode, rdev)
        key = "/".join(path)
        await self.uploader.supersede(key)
        try:
            info = await self.backend.put_bytes(key, content, if_none_match=True, meta=posixattrs.to_headers(meta))
        except PreconditionFailed:
            raise FSError(errno.EEXIST, f"{parent.display}/{name} was created meanwhile") from None
        node = self.inodes.node_for(path, False)
        self.inodes.changed(node)
        node.meta, node.meta_known = meta, True
        self.files.uploaded(node, info)
        self.attributes.touch_dir(parent)
        node.lookups += 1
        return node

    @_naming(_own)
    async def readlink(self, ino: int, caller: Optional[Caller] = None) -> bytes:
        node = self._node(ino)
        await self.namespaces.enter(caller, node.path)
        await self.names.need_meta(node)
        if node.meta is None or not stat.S_ISLNK(node.meta.mode):
            raise FSError(errno.EINVAL, f"{node.display} is not a symbolic link", logging.DEBUG)
        if node.target is None:
            node.target = await self.backend.get_range(node.key, 0, None, if_match=node.etag)
        return node.target

    @_naming(_linked)
    async def link(self, ino: int, new_parent_ino: int, new_name: str, caller: Optional[Caller] = None) -> Attr:
        """A hard link: on backends that have them (disk); EPERM elsewhere (as s3fs, mountpoint-s3)."""
        node = self._node(ino)
        if not getattr(self.sync_backend, "hard_links", False) or not self.has_posix(node) or node.is_dir:
            raise FSError(errno.EPERM, f"{node.display}: hard links are not supported "
                          f"{'here' if self.has_posix(node) else 'by this backend'}", logging.INFO)
        parent = self._node(new_parent_ino)
        path = self.names.child_path(parent, new_name, creating=True)
        if parent.depth < 2 or parent.path[0] == "kv":
            raise FSError(errno.EPERM, f"{parent.display}/{new_name}: only regular files live here", logging.INFO)
        await self.namespaces.enter(caller, node.path)
        await self.namespaces.enter(caller, parent.path)
        self._check(caller, parent, W_OK | X_OK)
        if await self.names.resolve(parent, new_name) is not None:
            raise FSError(errno.EEXIST, f"{parent.display}/{new_name} exists")
        staged = node.staged
        if staged is not None and (staged.dirty or staged.pending):
            # the link shares the content written so far; a failed close's content lands only over
            # the version it replaced (as a rename's, `fsdriver.renames`)
            try:
                await self.files.upload(node, staged, retry=staged.replaces_known)
            except BaseException:
                self.files.drop_staged(node)  # a pending upload refused on the way is not shown any more
                raise
        try:
            info = await self.backend.link(node.key, "/".join(path))
        except PreconditionFailed:
            raise FSError(errno.EEXIST, f"{parent.display}/{new_name} was created meanwhile") from None
        if node.meta is not None:
            await self.attributes.change(node, lambda m: m.touched())
        new = self.inodes.node_for(path, False)
        self.names.set_info(new, info, self.clock(), self.inodes.seq)
        new.meta, new.meta_known, new.nlink, node.nlink = node.meta, True, info.nlink, info.nlink
        self.names.listed(parent, new_name, (False, info))
        self.attributes.touch_dir(parent)
        await self._links_changed()
        new.lookups += 1
        return self.attr(new)

    @staticmethod
    def _same_file(a: Node, b: Optional[Node]) -> bool:
        """Two names of one file (hard links on disk share the etag: inode, mtime, size)."""
        return (b is not None and not a.is_dir and not b.is_dir and a.nlink > 1 and b.nlink > 1
                and a.etag is not None and a.etag == b.etag and a.staged is None and b.staged is None)

    async def _links_changed(self) -> None:
        """Hard links share one inode on disk but have a node each here: the others' link counts and
        attributes are read again, and the kernel asked to forget what it cached of them."""
        for other in list(self.inodes.by_ino.values()):
            if other.nlink > 1 and not other.is_dir:
                other.attr_time = 0
                parent = self.inodes.at(other.path[:-1])
                if parent is not None:
                    parent.listing = None  # its entry carries the old size and times (readdirplus)
                await self.records.invalidate_attrs(other.ino)

    @_naming(_own)
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

    async def flush_metadata(self) -> list:
        """Store the directory times and index rows gathered in the background (at unmount);
        returns the directories whose index rows could not be written."""
        await self.attributes.flush()
        return await self.dirindex.flush()

    # -- control -----------------------------------------------------------------------------

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "backend": self.sync_backend.url,
            "cache_dir": str(self.cache.root),
            **self.stats.as_dict(),
            "open_files": len(self.files.handles),
            "pending_uploads": self.uploader.describe_pending(),
            "memory": {"limit": self.budget.limit, "in_use": self.budget.used, "peak": self.budget.peak,
                       "overdrawn": self.budget.overdrawn},
            "kernel_readahead": self.kernel_readahead(),
        }

