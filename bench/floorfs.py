"""The floor of a pyfuse3 daemon: a passthrough filesystem that does the least any pyfuse3 + trio
filesystem can do, so `make bench` can show what the disk targets ask of the platform itself.

``python -m bench.floorfs BACKING MOUNTPOINT`` mounts ``BACKING`` at ``MOUNTPOINT`` and serves it
until unmounted (``fusermount3 -u``).  Every request is answered on the trio thread with one plain
system call on the backing file or directory: no staging, no metadata, no thread hops, no checks.
A read is one ``pread`` returned as it is; a write one ``pwrite``.  It keeps the promise the disk
mount keeps at ``close()`` in the cheapest way: the ``flush`` of a descriptor that wrote ``fsync``s
the backing file (one journal commit; stashfs makes two, see docs/performance.md).  Same mount
options as stashfs's disk mount (1 MiB reads and writes, as libfuse 3.14 allows), default
permissions checked by the kernel, attributes cached for a second.

Not a filesystem to use: no rename, unlink, setattr or xattrs; inode numbers are never forgotten.
"""

import errno
import functools
import os
import stat
import sys

import pyfuse3
import trio

TIMEOUT = 1.0  # attribute and entry cache, seconds (stashfs's --metadata-ttl default)


def _errno(handler):
    """The backing file's OSError as the request's errno (pyfuse3 ends its main loop on any other
    exception)."""
    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
    return wrapper


class Floor(pyfuse3.Operations):
    def __init__(self, root: str):
        super().__init__()
        self.paths = {pyfuse3.ROOT_INODE: root}
        self.inodes = {root: pyfuse3.ROOT_INODE}
        self.written: set[int] = set()  # descriptors written since their last flush

    def _inode(self, path: str) -> int:
        ino = self.inodes.get(path)
        if ino is None:
            ino = self.inodes[path] = len(self.paths) + 1
            self.paths[ino] = path
        return ino

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        a = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
                     "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(a, name, getattr(st, name))
        a.st_ino, a.st_blksize = self._inode(path), 4096
        a.attr_timeout = a.entry_timeout = TIMEOUT
        return a

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self.paths[parent], os.fsdecode(name))

    @_errno
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(self._child(parent_inode, name))

    @_errno
    async def getattr(self, inode, ctx=None):
        return self._entry(self.paths[inode])

    @_errno
    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENODATA)

    @_errno
    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name)
        os.mkdir(path, mode)
        return self._entry(path)

    @_errno
    async def opendir(self, inode, ctx):
        return inode

    @_errno
    async def readdir(self, fh, start_id, token):
        names = sorted(os.listdir(self.paths[fh]))
        for i in range(start_id, len(names)):
            path = os.path.join(self.paths[fh], names[i])
            if not pyfuse3.readdir_reply(token, os.fsencode(names[i]), self._entry(path), i + 1):
                break

    @_errno
    async def releasedir(self, fh):
        pass

    @_errno
    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=os.open(self.paths[inode], flags & ~(os.O_CREAT | os.O_EXCL)))

    @_errno
    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name)
        fd = os.open(path, flags | os.O_CREAT, mode)
        return pyfuse3.FileInfo(fh=fd), self._entry(path)

    @_errno
    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    @_errno
    async def write(self, fh, off, buf):
        self.written.add(fh)
        return os.pwrite(fh, buf, off)

    @_errno
    async def flush(self, fh):
        if fh in self.written:  # durable when close() returns, as the disk mount promises
            self.written.discard(fh)
            os.fsync(fh)

    @_errno
    async def release(self, fh):
        self.written.discard(fh)
        os.close(fh)

    @_errno
    async def statfs(self, ctx):
        st = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out


def flat_attr(inode: int, file_mode: int, size: int, timeout: float) -> pyfuse3.EntryAttributes:
    """The attributes of the S3 floors' one directory (the root inode) or of a regular file in it
    (``file_mode``, ``size`` bytes): `bench.s3floor`'s and `bench.s3writefloor`'s."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = inode
    if inode == pyfuse3.ROOT_INODE:
        a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
    else:
        a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | file_mode, 1, size
    a.st_blksize = 4096
    a.attr_timeout = a.entry_timeout = timeout
    return a


async def serve(operations: pyfuse3.Operations, mountpoint: str, fsname: str) -> None:
    """Mount ``operations`` at ``mountpoint`` with pyfuse3's default options (those of stashfs's
    mounts) and serve until unmounted: the floors' (this one's and `bench.s3floor`'s) main loop."""
    pyfuse3.init(operations, mountpoint, set(pyfuse3.default_options) | {f"fsname={fsname}"})
    try:
        await pyfuse3.main()
    finally:
        pyfuse3.close(unmount=False)  # unmounted by fusermount3 (the harness), or already gone


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m bench.floorfs BACKING MOUNTPOINT", file=sys.stderr)
        return 2
    os.umask(0)  # the kernel applied the caller's umask to the modes it sends
    trio.run(serve, Floor(os.path.abspath(argv[0])), argv[1], "stashfs-floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
