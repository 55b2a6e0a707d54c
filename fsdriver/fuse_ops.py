"""The pyfuse3 adapter: converts FUSE requests to `core.Filesystem` calls and back.

Every handler goes through `_boundary`, the one place where exceptions become errno values
(`errno_boundary.errno_for`): only `FUSEError` leaves a handler, so no request can take the mount down.
Names arrive as bytes and must be UTF-8 (EINVAL otherwise, as they could not be S3 keys).
"""

import errno
import functools
import json
import logging
import os
import stat

import pyfuse3
import trio

from .access import Caller
from .core import Attr, Filesystem
from .errno_boundary import FSError, errno_for
from . import control, statuspages
from .backend.aio import request_deadline
from .inodes import CONTROL_INO

log = logging.getLogger("stashfs.fuse")

# The control file's commands, named in fsdriver.control (mountctl sends the same names).
XATTR_STATUS = control.STATUS.encode()
XATTR_FLUSH = control.FLUSH.encode()
XATTR_DISCARD = control.DISCARD.encode()  # value: {"keys": [...]} or {"all": true}
XATTR_LOGLEVEL = control.LOGLEVEL.encode()
XATTR_PREFIX = control.PREFIX.encode()


def _name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FSError(errno.EINVAL, f"name {raw!r} is not valid UTF-8", logging.INFO) from None


def _caller(ctx) -> Caller | None:
    """Who sent the request (None: the mount owner, for requests without a context)."""
    return Caller(ctx.uid, ctx.gid, ctx.pid) if ctx is not None else None


# Requests whose backend reads share one deadline (--backend-timeout): a black-holed endpoint gives
# EIO within the bound, not within one bound per backend call.  Not the uploads (flush, fsync,
# release, the control file's flush): fetching the unwritten parts of a large file may take long.
BOUNDED_OPS = frozenset({"lookup", "getattr", "readlink", "open", "opendir", "readdir", "read", "create", "mkdir",
                         "statfs"})


def _boundary(describe):
    """Count the request, run it, and turn any failure into a FUSEError with one log line."""

    def decorate(fn):
        op = fn.__name__.lstrip("_")  # _getxattr: the getxattr requests that reach the boundary

        bounded = op in BOUNDED_OPS

        @functools.wraps(fn)
        async def handler(self, *args):
            self.fs.stats.requests[op] += 1
            # A release forgets its handle first: the file it failed on is named from before.
            what = self._describe(describe, args) if op == "release" else None
            try:
                with request_deadline(self.fs.backend.timeout if bounded else None):
                    return await fn(self, *args)
            except pyfuse3.FUSEError:
                raise
            except Exception as e:  # trio.Cancelled is a BaseException and passes through
                raise pyfuse3.FUSEError(errno_for(e, op, what or self._describe(describe, args))) from None

        return handler

    return decorate


async def _invalidate_attrs(ino: int) -> None:
    """Drop the kernel's cached attributes of ``ino`` and return once it has (records: the request
    that changed a record answers only after the next stat is sure to ask again).  Attributes only:
    that takes no page lock, so unlike a page invalidation it cannot deadlock inside a request."""
    await trio.to_thread.run_sync(_notify_attrs, ino)


def _notify_attrs(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino, True)
    except OSError as e:  # ENOENT: the kernel does not know the inode (any more)
        if e.errno != errno.ENOENT:
            log.debug("invalidating the attributes of inode %d: %s", ino, e)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, fs: Filesystem, mountpoint: str):
        super().__init__()
        self.fs = fs
        self.mountpoint = mountpoint
        fs.invalidate_entry = self._invalidate_entry
        # as /proc/<pid>/fd shows the files of this mount (`fsdriver.closes`): symlinks resolved
        fs.mountpoint = os.path.realpath(mountpoint)
        fs.records.invalidate_attrs = _invalidate_attrs
        self._pending_pages: list = [[]]  # the pending list as of the last read of its page 0

    @staticmethod
    def _invalidate_entry(parent_ino: int, name: str) -> None:
        # The async variant: calling the kernel from inside a request could deadlock.
        pyfuse3.invalidate_entry_async(parent_ino, name.encode("utf-8"), ignore_enoent=True)

    # -- helpers -----------------------------------------------------------------------------

    def _control_caller(self, ctx) -> None:
        """The control file is the mount owner's (and root's), like its 0600 mode says."""
        if ctx is not None and ctx.uid not in (0, self.fs.options.uid):
            raise FSError(errno.EACCES, f"the control file is the mount owner's; denied to uid {ctx.uid}", logging.INFO)

    def _describe(self, how: str, args) -> str:
        try:
            if how == "ino":
                node = self.fs.inodes.get(args[0])
                return node.display if node else f"inode {args[0]}"
            if how == "parent":
                node = self.fs.inodes.get(args[0])
                return f"{node.display if node else args[0]}/{args[1].decode('utf-8', 'replace')}"
            if how == "fh":
                handle = self.fs.files.handles.get(args[0])
                return handle.node.display if handle else f"handle {args[0]}"
        except Exception:  # describing must never fail the request
            pass
        return "-"

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid, e.st_gid = a.uid, a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = 128 * 1024
        e.st_blocks = (a.size + 511) // 512
        ns = int(round(a.mtime * 1e9))
        e.st_mtime_ns = ns if a.mtime_ns is None else a.mtime_ns
        e.st_ctime_ns = ns if a.ctime is None else int(round(a.ctime * 1e9))
        e.st_atime_ns = ns if a.atime is None else (int(round(a.atime * 1e9)) if a.atime_ns is None else a.atime_ns)
        ttl = self.fs.options.metadata_ttl
        e.entry_timeout = e.attr_timeout = ttl
        return e

    # -- metadata ----------------------------------------------------------------------------

    @_boundary("parent")
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(await self.fs.lookup(parent_inode, _name(name), _caller(ctx)))

    async def forget(self, inode_list):
        try:
            self.fs.forget(inode_list)
        except Exception:  # forget must never raise
            log.exception("forget failed")

    @_boundary("ino")
    async def getattr(self, inode, ctx=None):
        return self._entry(await self.fs.getattr(inode, _caller(ctx)))

    @_boundary("ino")
    async def setattr(self, inode, attr, fields, fh, ctx):
        a = await self.fs.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            ctime=bool(getattr(fields, "update_ctime", False)),
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            fh=fh,
            caller=_caller(ctx),
        )
        return self._entry(a)

    @_boundary("ino")
    async def statfs(self, ctx):
        s = await self.fs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize, out.f_frsize = s["bsize"], s["frsize"]
        out.f_blocks, out.f_bfree, out.f_bavail = s["blocks"], s["bfree"], s["bavail"]
        out.f_files, out.f_ffree, out.f_favail = s["files"], s["ffree"], s["ffree"]
        out.f_namemax = s["namemax"]
        return out

    # -- directories -------------------------------------------------------------------------

    @_boundary("ino")
    async def opendir(self, inode, ctx):
        return await self.fs.opendir(inode, _caller(ctx))

    @_boundary("fh")
    async def readdir(self, fh, start_id, token):
        """The directory's entries after "." and ".." (as ext4 lists them: `ls -a`).  The kernel
        takes a lookup of every entry of a READDIRPLUS reply but those two."""
        entries = self.fs.dots(fh) + await self.fs.readdir(fh)
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if not pyfuse3.readdir_reply(token, name.encode("utf-8"), self._entry(self.fs.attr(node)), i + 1):
                break
            if i >= 2:
                node.lookups += 1

    @_boundary("fh")
    async def releasedir(self, fh):
        self.fs.releasedir(fh)

    @_boundary("parent")
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(await self.fs.mkdir(parent_inode, _name(name), _caller(ctx), mode=mode))

    @_boundary("parent")
    async def rmdir(self, parent_inode, name, ctx):
        await self.fs.rmdir(parent_inode, _name(name), _caller(ctx))

    @_boundary("parent")
    async def unlink(self, parent_inode, name, ctx):
        await self.fs.unlink(parent_inode, _name(name), _caller(ctx))

    @_boundary("parent")
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.fs.rename(parent_inode_old, _name(name_old), parent_inode_new, _name(name_new), flags,
                             _caller(ctx))

    # -- links and special files -------------------------------------------------------------

    @_boundary("ino")
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(await self.fs.link(inode, new_parent_inode, _name(new_name), _caller(ctx)))

    @_boundary("parent")
    async def symlink(self, parent_inode, name, target, ctx):
        return self._entry(await self.fs.symlink(parent_inode, _name(name), target, _caller(ctx)))

    @_boundary("ino")
    async def readlink(self, inode, ctx):
        return await self.fs.readlink(inode, _caller(ctx))

    @_boundary("parent")
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(await self.fs.mknod(parent_inode, _name(name), mode, rdev, _caller(ctx)))

    # -- files -------------------------------------------------------------------------------

    @_boundary("ino")
    async def open(self, inode, flags, ctx):
        fh, keep_cache, direct_io = await self.fs.open(inode, flags, _caller(ctx))
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache, direct_io=direct_io)

    @_boundary("parent")
    async def create(self, parent_inode, name, mode, flags, ctx):
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise FSError(errno.EPERM, "only regular files can be created", logging.INFO)
        fh, attr, direct_io = await self.fs.create(parent_inode, _name(name), flags, _caller(ctx), mode=mode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=direct_io), self._entry(attr)

    @_boundary("fh")
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @_boundary("fh")
    async def write(self, fh, off, buf):
        return await self.fs.write(fh, off, buf)

    @_boundary("fh")
    async def flush(self, fh):
        await self.fs.flush(fh)

    @_boundary("fh")
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh)

    @_boundary("fh")
    async def release(self, fh):
        await self.fs.release(fh)

    # -- xattrs: the control file ------------------------------------------------------------

    async def _discard(self, value: bytes) -> None:
        """Drop pending uploads without uploading them; ENOENT if a key named has none."""
        try:
            request = json.loads(value)
            if request.get("all") is True:
                keys = None
            elif isinstance(request["keys"], list) and all(isinstance(k, str) for k in request["keys"]):
                keys = set(request["keys"])
            else:
                raise TypeError("keys must be a list of strings")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FSError(errno.EINVAL, 'discard wants {"keys": [...]} or {"all": true}', logging.INFO) from None
        done = await self.fs.uploader.discard(keys)
        missing = sorted((keys or set()) - set(done))
        if missing:
            raise FSError(errno.ENOENT, f"no pending upload of {', '.join(missing)}", logging.INFO)

    async def getxattr(self, inode, name, ctx):
        if inode != CONTROL_INO and not name.startswith(XATTR_PREFIX):
            # Answered here, without the request boundary's deadline and error handling (nothing can
            # fail). Only user.* names are stored: the other namespaces (ACLs, security labels) are
            # not supported (EOPNOTSUPP, as the kernel says of a filesystem without their handler),
            # which tells ls -l, cp and tar to stop asking every file of this mount for them.
            self.fs.stats.requests["getxattr"] += 1
            raise pyfuse3.FUSEError(errno.ENODATA if name.startswith(b"user.") else errno.EOPNOTSUPP)
        return await self._getxattr(inode, name, ctx)

    @_boundary("ino")
    async def _getxattr(self, inode, name, ctx):
        if inode == CONTROL_INO:
            self._control_caller(ctx)
        if inode == CONTROL_INO and name == XATTR_STATUS:
            # A summary: the whole pending list can pass the 64 KiB xattr limit (E2BIG).
            return statuspages.summarize(self.fs.status() | {"mountpoint": self.mountpoint})
        page = statuspages.page_number(name.decode("utf-8", "replace")) if inode == CONTROL_INO else None
        if page is not None:
            if page == 0:  # a snapshot, so that the pages after it belong to the same list
                self._pending_pages = statuspages.paginate(self.fs.status()["pending_uploads"])
            if page >= len(self._pending_pages):
                raise pyfuse3.FUSEError(errno.ENODATA)
            return statuspages.page_value(self._pending_pages, page)
        if not name.startswith(XATTR_PREFIX):
            raise pyfuse3.FUSEError(errno.ENODATA)  # the control file has only its own
        value = (await self.fs.xattrs(inode, _caller(ctx))).get(name.decode("utf-8", "replace"))
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value.encode()

    async def listxattr(self, inode, ctx):
        # A file's user.stashfs.etag and .mtime are read by name (getfattr -n, mountctl) but not
        # listed: copy tools preserve what is listed (cp -a, rsync -X, tar --xattrs) and would
        # carry them onto copies outside the mount, or try to remove them from files inside it
        # (ENOTSUP: rsync exits 23).  Nothing to look up, so no request per file copied.
        self.fs.stats.requests["listxattr"] += 1
        return [XATTR_STATUS] if inode == CONTROL_INO else []

    @_boundary("ino")
    async def setxattr(self, inode, name, value, ctx):
        if inode != CONTROL_INO:
            raise FSError(errno.ENOTSUP, "extended attributes are not stored", logging.DEBUG)
        self._control_caller(ctx)
        if name == XATTR_FLUSH:
            remaining = await self.fs.uploader.flush_all()
            if remaining:
                raise FSError(errno.EIO, f"{len(remaining)} uploads still pending", logging.WARNING)
        elif name == XATTR_DISCARD:
            await self._discard(value)
        elif name == XATTR_LOGLEVEL:
            level = value.decode("utf-8", "replace").strip().upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
                raise FSError(errno.EINVAL, f"unknown log level {level!r} (DEBUG, INFO, WARNING, ERROR)", logging.INFO)
            logging.getLogger("stashfs").setLevel(level)
        else:
            raise FSError(errno.EINVAL, f"unknown control command {name!r}", logging.INFO)
