"""The floor of a pyfuse3 daemon for the S3 big write: the reference's own upload (boto3, 8 MiB
parts on 10 threads, CRC32 checksums) fed by FUSE writes, so `make bench` can show what the row's
target asks of the platform.

``python -m bench.s3writefloor ENDPOINT BUCKET PREFIX MOUNTPOINT`` mounts an empty directory until
unmounted (``fusermount3 -u``).  A file created in it is uploaded to ``PREFIX/<name>`` of
``BUCKET`` at ``ENDPOINT`` (the counting proxy) as a multipart upload: CreateMultipartUpload when
it is created, each full 8 MiB part uploaded on a worker thread as soon as the writes filled it
(at most 10 at once, as boto3's ``upload_file``), from the very buffers pyfuse3 handed the writes
in (no copy: the part's body is views of them), and at ``fsync`` or the ``close`` the tail and
CompleteMultipartUpload.  The least a pyfuse3 daemon that uploads as ``upload_file`` does (boto3,
its part size, concurrency and checksums) does for the promise the mount makes (durable at
``close``): FUSE's writes and the reference's upload, nothing else — no staged file, no memory
budget, no journal, no metadata.

Not a filesystem to use: writes anywhere but at the end of the file (or after its ``fsync``) fail
with EIO, nothing can be read back, a failed request fails the file's ``fsync``/``close`` with EIO
(and the upload is aborted at its release), a file exists only while it is open, and every byte
written stays in memory until its part is uploaded (no bound: a writer faster than the uploads
fills memory).
"""

import errno
import io
import os
import sys

import boto3
import pyfuse3
import trio
from botocore.config import Config

from .floorfs import flat_attr, serve

PART = 8 << 20
WORKERS = 10


class ChunksBody(io.RawIOBase):
    """A read-only, seekable file over a list of byte buffers; reads return views of them."""

    def __init__(self, chunks: list):
        super().__init__()
        self._chunks = [memoryview(c).cast("B") for c in chunks]
        self._starts = []
        n = 0
        for c in self._chunks:
            self._starts.append(n)
            n += len(c)
        self._size, self._pos, self._i = n, 0, 0

    def __len__(self) -> int:
        return max(0, self._size - self._pos)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        pos = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence] + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos, self._i = pos, 0
        while self._i + 1 < len(self._chunks) and self._starts[self._i + 1] <= pos:
            self._i += 1
        return pos

    def read(self, size: int = -1):
        if self._pos >= self._size:
            return b""
        if size is None or size < 0:  # the rest, joined (botocore reads in sizes; this is not its path)
            rest = []
            while self._pos < self._size:
                rest.append(self.read(self._size - self._pos))
            return b"".join(rest)
        c = self._chunks[self._i]
        start = self._pos - self._starts[self._i]
        end = min(len(c), start + size)
        self._pos += end - start
        if end == len(c) and self._i + 1 < len(self._chunks):
            self._i += 1
        return c[start:end]

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b) -> int:
        chunk = self.read(len(b))
        memoryview(b).cast("B")[:len(chunk)] = chunk
        return len(chunk)


class Upload:
    """One file: its multipart upload, the writes not yet in a part, the parts under way."""

    def __init__(self, key: str):
        self.key = key
        self.size = 0
        self.chunks: list = []  # written, not yet in a part
        self.held = 0
        self.parts: dict[int, dict] = {}
        self.number = 0
        self.in_flight = 0
        self.idle = trio.Event()
        self.idle.set()
        self.created = trio.Event()
        self.upload_id = None
        self.failed = False
        self.finishing = False  # fsync/close began completing it: no more writes
        self.completion = trio.Lock()  # one completion at a time (fsync and close may race)
        self.done = False


class S3WriteFloor(pyfuse3.Operations):
    def __init__(self, endpoint: str, bucket: str, prefix: str):
        super().__init__()
        self.s3 = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            config=Config(max_pool_connections=WORKERS + 2, s3={"addressing_style": "path"},
                          retries={"mode": "standard", "max_attempts": 3}))
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.limiter = trio.CapacityLimiter(WORKERS)
        self.files: dict[int, Upload] = {}
        self.names: dict[bytes, int] = {}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.nursery = None

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        return flat_attr(inode, 0o644, self.files[inode].size if inode in self.files else 0, 0)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name not in self.names:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self.names[name])

    async def getattr(self, inode, ctx=None):
        if inode != pyfuse3.ROOT_INODE and inode not in self.files:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def create(self, parent_inode, name, mode, flags, ctx):
        if parent_inode != pyfuse3.ROOT_INODE or name in self.names:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino, self.next_ino = self.next_ino, self.next_ino + 1
        up = self.files[ino] = Upload(f"{self.prefix}/{os.fsdecode(name)}")
        self.names[name] = ino
        self.nursery.start_soon(self._create, up)
        return pyfuse3.FileInfo(fh=ino), self._attr(ino)

    async def _create(self, up: Upload) -> None:
        try:
            r = await trio.to_thread.run_sync(lambda: self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=up.key, ChecksumAlgorithm="CRC32"), limiter=self.limiter)
            up.upload_id = r["UploadId"]
        except Exception as e:
            print(f"s3writefloor: create {up.key}: {e}", file=sys.stderr, flush=True)
            up.failed = True
        up.created.set()

    async def write(self, fh, off, buf):
        up = self.files[fh]
        if off != up.size or up.finishing:
            raise pyfuse3.FUSEError(errno.EIO)
        up.chunks.append(buf)
        up.held += len(buf)
        up.size += len(buf)
        while up.held >= PART:
            self._send(up, self._take(up, PART))
        return len(buf)

    def _take(self, up: Upload, n: int) -> list:
        out, got = [], 0
        while got < n and up.chunks:
            c = up.chunks.pop(0)
            if got + len(c) > n:
                keep = n - got
                up.chunks.insert(0, memoryview(c)[keep:])
                c = memoryview(c)[:keep]
            out.append(c)
            got += len(c)
        up.held -= got
        return out

    def _send(self, up: Upload, chunks: list) -> None:
        up.number += 1
        up.in_flight += 1
        if up.idle.is_set():
            up.idle = trio.Event()
        self.nursery.start_soon(self._part, up, up.number, chunks)

    async def _part(self, up: Upload, number: int, chunks: list) -> None:
        try:
            await up.created.wait()
            if not up.failed:
                r = await trio.to_thread.run_sync(lambda: self.s3.upload_part(
                    Bucket=self.bucket, Key=up.key, UploadId=up.upload_id, PartNumber=number,
                    Body=ChunksBody(chunks), ChecksumAlgorithm="CRC32"), limiter=self.limiter)
                up.parts[number] = {"PartNumber": number, "ETag": r["ETag"], "ChecksumCRC32": r["ChecksumCRC32"]}
        except Exception as e:
            print(f"s3writefloor: part {number} of {up.key}: {e}", file=sys.stderr, flush=True)
            up.failed = True
        finally:
            up.in_flight -= 1
            if up.in_flight == 0:
                up.idle.set()

    async def _finish(self, up: Upload) -> None:
        async with up.completion:
            if up.done:
                return
            up.finishing = True
            if up.held or up.number == 0:
                self._send(up, self._take(up, up.held))
            await up.idle.wait()
            if up.failed:
                raise pyfuse3.FUSEError(errno.EIO)
            parts = [up.parts[n] for n in sorted(up.parts)]
            try:
                await trio.to_thread.run_sync(lambda: self.s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=up.key, UploadId=up.upload_id, MultipartUpload={"Parts": parts}))
            except Exception as e:
                print(f"s3writefloor: complete {up.key}: {e}", file=sys.stderr, flush=True)
                up.failed = True
                raise pyfuse3.FUSEError(errno.EIO) from None
            up.done = True

    async def fsync(self, fh, datasync):
        await self._finish(self.files[fh])

    async def flush(self, fh):
        await self._finish(self.files[fh])

    async def release(self, fh):
        up = self.files.pop(fh)
        self.names = {k: v for k, v in self.names.items() if v != fh}
        if not up.done and up.upload_id:
            try:
                await trio.to_thread.run_sync(lambda: self.s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=up.key, UploadId=up.upload_id))
            except Exception as e:  # (a bench's server is thrown away: said, not retried)
                print(f"s3writefloor: abort {up.key}: {e}", file=sys.stderr, flush=True)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        pass

    async def releasedir(self, fh):
        pass


async def _main(ops: S3WriteFloor, mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        await serve(ops, mountpoint, "stashfs-s3writefloor")
        nursery.cancel_scope.cancel()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 4:
        print("usage: python -m bench.s3writefloor ENDPOINT BUCKET PREFIX MOUNTPOINT", file=sys.stderr)
        return 2
    trio.run(_main, S3WriteFloor(*argv[:3]), argv[3])
    return 0


if __name__ == "__main__":
    sys.exit(main())
