"""The local-disk backend: objects are files under a root directory, mirroring their keys.

- Every put writes a temp file under ``<root>/.stashfs/tmp`` (same filesystem), fsyncs it and
  renames it into place, so a reader sees the old object or the new one, never half of one.
- The etag is derived from (inode, mtime_ns, size).  A put renames a new inode into place and
  stamps it with a strictly increasing nanosecond mtime of its own (the filesystem's own timestamps
  are only as fine as the kernel tick, and inode numbers are reused), so two versions never share
  an etag.
- Conditional puts are race-free between threads and processes: the check of the current etag
  and the rename happen under an flock on one of a fixed set of lock files picked by key hash.
  Unconditional puts take the same lock so they cannot slip in between a check and its rename.
- A directory marker (key ending in "/") is a real directory.  A file and a directory cannot share
  a name on disk (S3 allows it): such a put raises InvalidRequest.
"""

import errno
import fcntl
import itertools
import os
import shutil
import stat
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InvalidRequest, NotFound, PermissionDenied, PreconditionFailed, Unavailable
from ..fsutil import durable_temp, fsync_dir
from .base import Backend, CommonPrefix, ListEntry, ObjectInfo, PathLike

INTERNAL = ".stashfs"
LOCK_STRIPES = 64


_last_ns = 0
_ns_lock = threading.Lock()


def _unique_ns() -> int:
    """A nanosecond time stamp never handed out twice by this process."""
    global _last_ns
    with _ns_lock:
        _last_ns = max(_last_ns + 1, time.time_ns())
        return _last_ns


def etag_of(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
    return ObjectInfo(key=key, size=size, mtime=st.st_mtime, etag=etag_of(st))


@contextmanager
def _os_errors(key: str):
    """Turn OSError into the backend vocabulary."""
    try:
        yield
    except FileNotFoundError:
        raise NotFound(f"{key}: no such object", key) from None
    except NotADirectoryError:
        raise NotFound(f"{key}: no such object (a parent is an object, not a prefix)", key) from None
    except PermissionError as e:
        raise PermissionDenied(f"{key}: permission denied: {e.strerror}", key) from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
            raise Unavailable(f"{key}: {e.strerror}", key) from e
        raise


class DiskBackend(Backend):
    def __init__(self, root: PathLike):
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"
        self._tmp = self.root / INTERNAL / "tmp"
        self._locks = self.root / INTERNAL / "locks"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new store is private to its user
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._locks.mkdir(parents=True, exist_ok=True)

    # -- helpers -----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if key.endswith("/"):
            parts = parts[:-1]
        if key in ("", "/"):
            return self.root
        for p in parts:
            if p in ("", ".", "..") or "\0" in p:
                raise InvalidRequest(f"invalid key {key!r}", key)
        if parts[0] == INTERNAL:
            raise InvalidRequest(f"invalid key {key!r}: {INTERNAL}/ is reserved", key)
        return self.root.joinpath(*parts)

    @contextmanager
    def _lock(self, key: str):
        n = zlib.crc32(key.encode("utf-8", "surrogateescape")) % LOCK_STRIPES
        fd = os.open(self._locks / str(n), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _current_etag(self, path: Path) -> str | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return None if stat.S_ISDIR(st.st_mode) else etag_of(st)

    def _commit(self, key: str, tmp: str, if_match: str | None, if_none_match: bool) -> ObjectInfo:
        """Rename the fsynced temp file ``tmp`` into place under the key's lock."""
        path = self._path(key)
        os.utime(tmp, ns=(_unique_ns(), _unique_ns()))
        try:
            with self._lock(key):
                if if_match is not None or if_none_match:
                    current = self._current_etag(path)
                    if if_none_match and current is not None:
                        raise PreconditionFailed(f"{key}: already exists", key)
                    if if_match is not None and current != if_match:
                        raise PreconditionFailed(f"{key}: etag changed since it was read", key)
                self._make_parents(key, path)
                if path.is_dir():
                    raise InvalidRequest(f"{key}: is a prefix (directory), not an object", key)
                with _os_errors(key):
                    os.replace(tmp, path)
                    st = os.stat(path)
                    fsync_dir(path.parent)
                return _info(key, st)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _make_parents(self, key: str, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidRequest(
                f"{key}: a parent of this key is an object, not a prefix", key
            ) from None

    def _new_tmp(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self._tmp, prefix="put-")

    # -- protocol ----------------------------------------------------------------------------

    def check(self) -> None:
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionDenied(f"{self.root}: not readable and writable")

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        with _os_errors(key):
            st = os.stat(path)
        if stat.S_ISDIR(st.st_mode) != key.endswith("/") or key in ("", "/"):
            raise NotFound(f"{key}: no such object", key)
        return _info(key, st)

    def get_range(self, key: str, start: int, end: int | None = None, *, if_match: str | None = None) -> bytes:
        if start < 0 or (end is not None and end < start):
            raise InvalidRequest(f"{key}: invalid range [{start}, {end})", key)
        path = self._path(key)
        with _os_errors(key):
            fd = os.open(path, os.O_RDONLY)
        try:
            with _os_errors(key):
                st = os.fstat(fd)
                if if_match is not None and etag_of(st) != if_match:
                    raise PreconditionFailed(f"{key}: changed since it was opened", key)
                size = st.st_size
                end = size if end is None else min(end, size)
                if start >= end:
                    return b""
                chunks, off = [], start
                while off < end:
                    chunk = os.pread(fd, end - off, off)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    off += len(chunk)
                return b"".join(chunks)
        except IsADirectoryError:
            raise NotFound(f"{key}: no such object", key) from None
        finally:
            os.close(fd)

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        path = self._path(key)
        with _os_errors(key):
            if path.is_dir():
                raise NotFound(f"{key}: no such object", key)
            f = open(path, "rb")

        def chunks():
            with f:
                while chunk := f.read(chunk_size):
                    yield chunk

        return chunks()

    def put_bytes(self, key, data, *, if_match=None, if_none_match=False) -> ObjectInfo:
        if key.endswith("/"):
            return self._put_marker(key, data, if_none_match)
        self._path(key)  # validate before writing anything
        with _os_errors(key):
            tmp = durable_temp(self._tmp, data, prefix="put-")
        return self._commit(key, tmp, if_match, if_none_match)

    def put_file(self, key, path, *, if_match=None, if_none_match=False) -> ObjectInfo:
        if key.endswith("/"):
            return self._put_marker(key, b"")
        self._path(key)
        with open(path, "rb") as src:  # a problem with the local file is the caller's OSError
            fd, tmp = self._new_tmp()
            try:
                with _os_errors(key), open(fd, "wb", closefd=True) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    dst.flush()
                    os.fsync(dst.fileno())
            except BaseException:
                os.unlink(tmp)
                raise
        return self._commit(key, tmp, if_match, if_none_match)

    def _put_marker(self, key: str, data: bytes, if_none_match: bool = False) -> ObjectInfo:
        if data:
            raise InvalidRequest(f"{key}: a directory marker must be empty", key)
        path = self._path(key)
        try:
            with _os_errors(key):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.mkdir(exist_ok=not if_none_match)
        except FileExistsError:
            if path.is_dir():
                raise PreconditionFailed(f"{key}: already exists", key) from None
            raise InvalidRequest(f"{key}: exists as an object, not a prefix", key) from None
        return self.head(key)

    def list(self, prefix: str = "", delimiter: str | None = None, max_keys: int | None = None) -> Iterator[ListEntry]:
        if delimiter not in (None, "/"):
            raise InvalidRequest(f"unsupported delimiter {delimiter!r}")
        dir_part, _, name_part = prefix.rpartition("/")
        try:
            base = self._path(dir_part + "/") if dir_part else self.root
        except InvalidRequest:
            return iter(())
        dir_key = dir_part + "/" if dir_part else ""
        entries = self._walk(base, dir_key, name_part, delimiter, emit_self=bool(dir_part) and not name_part)
        return itertools.islice(entries, max_keys) if max_keys else entries

    def _walk(self, base: Path, dir_key: str, name_part: str, delimiter, emit_self: bool):
        try:
            with os.scandir(base) as it:
                entries = [e for e in it if e.name.startswith(name_part)]
        except (FileNotFoundError, NotADirectoryError):
            return
        except PermissionError as e:
            raise PermissionDenied(f"{dir_key}: permission denied: {e.strerror}", dir_key) from None
        if emit_self:
            yield _info(dir_key, os.stat(base))
        if not dir_key:
            entries = [e for e in entries if e.name != INTERNAL]
        # S3 order: UTF-8 bytes of the full key, where a directory "d" sorts as "d/".
        entries.sort(key=lambda e: (e.name + ("/" if e.is_dir(follow_symlinks=False) else "")).encode("utf-8", "surrogateescape"))
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listing
            if stat.S_ISDIR(st.st_mode):
                sub_key = f"{dir_key}{e.name}/"
                if delimiter:
                    yield CommonPrefix(sub_key)
                else:
                    yield from self._walk(Path(e.path), sub_key, "", None, emit_self=True)
            elif stat.S_ISREG(st.st_mode):
                yield _info(dir_key + e.name, st)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._lock(key.rstrip("/")):
            try:
                if key.endswith("/"):
                    os.rmdir(path)
                elif not path.is_dir():
                    os.unlink(path)
                else:
                    return
            except (FileNotFoundError, NotADirectoryError):
                return
            except OSError as e:
                if e.errno == errno.ENOTEMPTY:
                    return  # like S3: removing a marker leaves the keys below it
                with _os_errors(key):
                    raise
        fsync_dir(path.parent)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:  # one unlink per key: there is no batch call to save
            self.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        count = 0
        dirs = []
        for entry in self.list(prefix):
            if entry.key.endswith("/"):
                dirs.append(entry.key)
            else:
                self.delete(entry.key)
                count += 1
        for d in reversed(dirs):  # deepest first: list() yields parents before children
            self.delete(d)
        return count

    def rename(self, src: str, dst: str) -> dict[str, ObjectInfo]:
        """One atomic rename(2); a directory (keys ending in "/") moves with everything below.
        Inode, mtime and size stay, and so do the etags: nothing to report."""
        src_path, dst_path = self._path(src), self._path(dst)
        if not src_path.exists():
            raise NotFound(f"{src}: no such object", src)
        self._make_parents(dst, dst_path)
        with self._lock(dst.rstrip("/")), _os_errors(src):
            os.rename(src_path, dst_path)
        fsync_dir(dst_path.parent)
        if src_path.parent != dst_path.parent:
            fsync_dir(src_path.parent)
        return {}

    def local_path(self, key: str) -> Path:
        """Where object ``key`` lives on this machine (disk reads go straight to the file)."""
        return self._path(key)

    keeps_empty_dirs = True  # a directory is a directory
    keeps_mtime = True  # the backing file's mtime

    def set_mtime(self, key: str, mtime: float) -> ObjectInfo:
        """The backing file's mtime (its etag changes with it: `head` tells the new one)."""
        with _os_errors(key):
            os.utime(self._path(key), (mtime, mtime))
        return self.head(key)

    def capacity(self) -> dict:
        st = os.statvfs(self.root)
        return {"bsize": st.f_bsize, "frsize": st.f_frsize, "blocks": st.f_blocks, "bfree": st.f_bfree,
                "bavail": st.f_bavail, "files": st.f_files, "ffree": st.f_ffree}

    def copy(self, src: str, dst: str) -> ObjectInfo:
        self.head(src)  # NotFound for a missing source or a prefix
        try:
            return self.put_file(dst, self._path(src))
        except FileNotFoundError:
            raise NotFound(f"{src}: no such object", src) from None
