"""The floor of a pyfuse3 daemon for the S3 sequential read: one object served by one streamed GET,
read on the trio thread, so `make bench` can show what the row's target asks of the platform.

``python -m bench.s3floor URL SIZE MOUNTPOINT`` mounts a directory holding one file, ``object``,
of ``SIZE`` bytes, until unmounted (``fusermount3 -u``).  Each ``open`` of it sends one GET of
``URL`` (a presigned URL of the object: signed once by the harness, no boto3 here; over
``https://`` the certificate is checked against ``AWS_CA_BUNDLE`` when set, as boto3 does);
each read is answered with the next bytes of that body, read straight from the socket on the trio
thread into the reply's buffer (one copy, no thread hop, no read-ahead buffer, no budget).  The
least any pyfuse3 daemon does to hand a streamed object to a sequential reader: the socket read
and the FUSE reply.  Same mount options as stashfs's S3 mount (1 MiB reads, as libfuse 3.14 allows); the
harness sets the same 1 MiB kernel read-ahead.

Not a filesystem to use: a read anywhere but where the last one ended fails with EIO, and a slow
server stalls every request (the socket is read on the trio thread, as nothing real may do).
"""

import errno
import http.client
import os
import ssl
import sys
import urllib.parse

import pyfuse3
import trio

from .floorfs import flat_attr, serve

NAME = b"object"
INODE = pyfuse3.ROOT_INODE + 1


class S3Floor(pyfuse3.Operations):
    def __init__(self, url: str, size: int):
        super().__init__()
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("an http:// or https:// URL of the object is needed")
        self.host, self.port, self.size = u.hostname, u.port or (443 if u.scheme == "https" else 80), size
        self.tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE")) if u.scheme == "https" else None
        self.target = u.path + (f"?{u.query}" if u.query else "")
        self.bodies: dict[int, tuple[http.client.HTTPConnection, http.client.HTTPResponse, list[int]]] = {}
        self.next_fh = 1

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        return flat_attr(inode, 0o444, self.size, 60)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(INODE)

    async def getattr(self, inode, ctx=None):
        if inode not in (pyfuse3.ROOT_INODE, INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def open(self, inode, flags, ctx):
        if inode != INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if self.tls is not None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=60, context=self.tls)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", self.target)
            resp = conn.getresponse()
        except OSError:
            conn.close()
            raise pyfuse3.FUSEError(errno.EIO) from None
        if resp.status != 200:
            conn.close()
            raise pyfuse3.FUSEError(errno.EIO)
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        self.bodies[fh] = (conn, resp, [0])
        return pyfuse3.FileInfo(fh=fh)  # keep_cache off: each open reads through FUSE again

    async def read(self, fh, off, size):
        _conn, resp, pos = self.bodies[fh]
        if off != pos[0]:
            raise pyfuse3.FUSEError(errno.EIO)
        size = max(0, min(size, self.size - off))
        buf = bytearray(size)
        view, got = memoryview(buf), 0
        try:
            while got < size:
                n = resp.readinto(view[got:])
                if not n:
                    break
                got += n
        except OSError:
            raise pyfuse3.FUSEError(errno.EIO) from None
        pos[0] += got
        return buf if got == size else bytes(view[:got])

    async def release(self, fh):
        conn, _resp, _pos = self.bodies.pop(fh)
        conn.close()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m bench.s3floor URL SIZE MOUNTPOINT", file=sys.stderr)
        return 2
    trio.run(serve, S3Floor(argv[0], int(argv[1])), argv[2], "stashfs-s3floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
