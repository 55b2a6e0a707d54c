"""The local-disk backend: objects are files under a root directory, mirroring their keys.

- Every put writes a temp file under ``<root>/.stashfs/tmp`` (same filesystem), fsyncs it and
  renames it into place, so a reader sees the old object or the new one, never half of one.
  It returns once durable: the temp file (content, metadata, mtime stamp) is fsynced before the
  rename and the directory after it.  That is two journal commits where creating the file in
  place takes one: the price of never showing half an object, even after a crash.
- The etag is derived from (inode, mtime_ns, size).  A put renames a new inode into place and
  stamps it with a strictly increasing nanosecond mtime of its own (the filesystem's own timestamps
  are only as fine as the kernel tick, and inode numbers are reused), so two versions never share
  an etag.
- Conditional puts are race-free between threads and processes: the check of the current etag
  and the rename happen under an flock on one of a fixed set of lock files picked by key hash.
  Unconditional puts take the same lock so they cannot slip in between a check and its rename.
- A directory marker (key ending in "/") is a real directory.  A file and a directory cannot share
  a name on disk (S3 allows it): such a put raises InvalidRequest (`KeyIsPrefix` for an object
  where a directory is, `ParentIsObject` below an object).
- User metadata is one xattr, ``user.stashfs.meta`` (compact JSON of the dict), on the backing
  file, or directory for a marker; no xattr means {}.  A put sets it on the temp file before the
  rename, so content and metadata land together; `set_meta` rewrites it in place (etag unchanged).
- Hard links (`link`) are hard links of the backing files: two keys, one inode, so content,
  metadata and etag are shared.  A put to either key renames a new file over it, which detaches
  that key from the other (it keeps the old object).
"""

import errno
import fcntl
import itertools
import json
import os
import shutil
import stat
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from ..errors import (InvalidRequest, KeyIsPrefix, NotFound, ParentIsObject, PermissionDenied, PreconditionFailed,
                      Unavailable)
from ..fsutil import fsync_dir
from .base import Backend, CommonPrefix, ListEntry, ObjectInfo, PathLike, check_meta

INTERNAL = ".stashfs"
LOCK_STRIPES = 64
META_XATTR = "user.stashfs.meta"
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)


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


def _info(key: str, st: os.stat_result, meta: dict | None = None) -> ObjectInfo:
    is_dir = stat.S_ISDIR(st.st_mode)
    return ObjectInfo(key=key, size=0 if is_dir else st.st_size, mtime=st.st_mtime, etag=etag_of(st),
                      meta=meta, nlink=1 if is_dir else st.st_nlink)


def read_meta(target) -> dict[str, str]:
    """The user metadata of a backing file or directory (a path or an open fd): {} without the
    xattr, on a filesystem without user xattrs, or if the xattr is not a JSON object of strings."""
    try:
        raw = os.getxattr(target, META_XATTR)
    except OSError as e:
        if e.errno == errno.ENODATA or e.errno in _NO_XATTRS:
            return {}
        raise
    try:
        meta = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        return {}
    return meta


def _what_is_at(path: Path) -> tuple[bool, os.stat_result | None]:
    """Whether ``path`` is a file with other hard links (a put must keep them: write in place),
    and the stat of what is there, following a symlink (None: nothing, or a parent is missing or
    not a directory)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode):
            return stat.S_ISREG(st.st_mode) and st.st_nlink > 1, st
        return False, os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False, None


def _overwrite(path: Path, tmp: str, meta: Mapping[str, str], key: str) -> os.stat_result:
    """A put to a hard-linked file: its one inode gets the new content and metadata, so every
    link sees them (as a write on ext4 would; readers may see it half-written, unlike a rename)."""
    with open(tmp, "rb") as src, open(path, "r+b") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.truncate()
        _write_meta(dst.fileno(), meta, key)
        stamp = _unique_ns()
        os.utime(dst.fileno(), ns=(stamp, stamp))
        os.fsync(dst.fileno())
        return os.fstat(dst.fileno())


def _write_meta(target, meta: Mapping[str, str], key: str) -> None:
    """Set (or, for an empty ``meta``, remove) the metadata xattr of a path or an open fd."""
    try:
        if meta:
            os.setxattr(target, META_XATTR, json.dumps(meta, separators=(",", ":"), sort_keys=True).encode())
        else:
            try:
                os.removexattr(target, META_XATTR)
            except OSError as e:
                if e.errno != errno.ENODATA and e.errno not in _NO_XATTRS:
                    raise
    except OSError as e:
        if e.errno in _NO_XATTRS:
            raise InvalidRequest(f"{key}: the disk backend's filesystem does not support user "
                                 f"extended attributes ({META_XATTR}): cannot store metadata", key) from None
        raise


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
        # PATH_MAX (4096, with its NUL) holds the root, a "/", and the key
        self.max_key_bytes = 4095 - len(os.fsencode(self.root)) - 1
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

    def _commit(self, key: str, written: tuple[str, os.stat_result], if_match: str | None, if_none_match: bool,
                meta: dict) -> ObjectInfo:
        """Rename the fsynced, stamped temp file (``written``: its path and stat, from `_write_tmp`,
        holding ``meta`` already) into place under the key's lock, and fsync the directory.

        One lstat of the key tells a directory, a hard-linked file and the current etag; parents
        are made only when the rename finds one missing.  The rename keeps the inode, mtime and
        size, so the temp file's stat is the object's."""
        tmp, st = written
        path = self._path(key)
        renamed = False
        try:
            with self._lock(key):
                linked, there = _what_is_at(path)
                if if_match is not None or if_none_match:
                    current = None if there is None or stat.S_ISDIR(there.st_mode) else etag_of(there)
                    if if_none_match and current is not None:
                        raise PreconditionFailed(f"{key}: already exists", key)
                    if if_match is not None and current != if_match:
                        raise PreconditionFailed(f"{key}: etag changed since it was read", key)
                if there is not None and stat.S_ISDIR(there.st_mode):
                    raise KeyIsPrefix(f"{key}: is a prefix (directory), not an object", key)
                if linked:
                    with _os_errors(key):
                        return _info(key, _overwrite(path, tmp, meta, key), meta)
                with _os_errors(key):
                    try:
                        os.replace(tmp, path)
                    except (FileNotFoundError, NotADirectoryError):
                        self._make_parents(key, path)  # InvalidRequest if a parent is an object
                        os.replace(tmp, path)
                    renamed = True
                    fsync_dir(path.parent)
                return _info(key, st, meta)
        finally:
            if not renamed:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass

    def _make_parents(self, key: str, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ParentIsObject(
                f"{key}: a parent of this key is an object, not a prefix", key
            ) from None

    def _new_tmp(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self._tmp, prefix="put-")

    def _write_tmp(self, key: str, fill: Callable[[int], None], meta: dict) -> tuple[str, os.stat_result]:
        """A new temp file holding ``meta`` and what ``fill(fd)`` writes, stamped with a unique
        mtime and fsynced (content, metadata and stamp); its path and stat."""
        fd, tmp = self._new_tmp()
        try:
            with _os_errors(key):
                if meta:
                    _write_meta(fd, meta, key)
                fill(fd)
                os.utime(fd, ns=(_unique_ns(), _unique_ns()))
                os.fsync(fd)
                st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp, st

    # -- protocol ----------------------------------------------------------------------------

    def check(self) -> None:
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionDenied(f"{self.root}: not readable and writable")
        probe = f"user.stashfs.check.{os.getpid()}.{threading.get_ident()}"  # one per caller: checks run at once
        try:
            os.setxattr(self._tmp, probe, b"1")
            os.removexattr(self._tmp, probe)
        except OSError as e:
            if e.errno in _NO_XATTRS:
                raise InvalidRequest(
                    f"{self.root}: its filesystem does not support user extended attributes "
                    f"({e.strerror}); the disk backend keeps file attributes in the xattr {META_XATTR}"
                ) from None
            with _os_errors(str(self.root)):
                raise

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        with _os_errors(key):
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode) != key.endswith("/") or key in ("", "/"):
                raise NotFound(f"{key}: no such object", key)
            return _info(key, st, read_meta(path))

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

    def put_bytes(self, key, data, *, if_match=None, if_none_match=False, meta=None) -> ObjectInfo:
        meta = check_meta(key, meta)
        if key.endswith("/"):
            return self._put_marker(key, data, if_none_match, meta)
        self._path(key)  # validate before writing anything

        def fill(fd):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]

        return self._commit(key, self._write_tmp(key, fill, meta), if_match, if_none_match, meta)

    def put_file(self, key, path, *, if_match=None, if_none_match=False, meta=None) -> ObjectInfo:
        meta = check_meta(key, meta)
        if key.endswith("/"):
            return self._put_marker(key, b"", if_none_match, meta)
        self._path(key)
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # a problem with the local file is the caller's OSError
        try:
            written = self._write_tmp(key, lambda fd: _copy_into(src, fd), meta)
        finally:
            os.close(src)
        return self._commit(key, written, if_match, if_none_match, meta)

    def _put_marker(self, key: str, data: bytes, if_none_match: bool = False, meta: dict | None = None) -> ObjectInfo:
        """A marker is a directory: a new one is made in the temp area with its metadata and
        renamed into place; on an existing one (unless ``if_none_match``) the metadata is replaced."""
        if data or key == "/":
            raise InvalidRequest(f"{key}: a directory marker must be empty and not the root", key)
        meta = meta or {}
        path = self._path(key)
        self._make_parents(key, path)
        with self._lock(key.rstrip("/")), _os_errors(key):
            if not os.path.lexists(path) and self._new_dir(key, path, meta):
                return _info(key, os.stat(path), meta)
            if not path.is_dir():
                raise InvalidRequest(f"{key}: exists as an object, not a prefix", key)
            if if_none_match:
                raise PreconditionFailed(f"{key}: already exists", key)
            if meta or read_meta(path):
                _write_meta(path, meta, key)
                fsync_dir(path)
            return _info(key, os.stat(path), meta)

    def _new_dir(self, key: str, path: Path, meta: dict) -> bool:
        """Create directory ``path`` holding ``meta``; False if something appeared there first."""
        if not meta:
            try:
                os.mkdir(path)
            except FileExistsError:
                return False
            fsync_dir(path.parent)
            return True
        tmp = self._tmp / f"mkdir-{os.urandom(8).hex()}"
        os.mkdir(tmp)
        try:
            _write_meta(tmp, meta, key)
            fsync_dir(tmp)
            # rename(2) would replace an empty directory made meanwhile (by a put below it, which
            # takes no lock on this key): harmless, it had no metadata and nothing in it yet.
            os.rename(tmp, path)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                return False
            raise
        finally:
            if os.path.lexists(tmp):
                os.rmdir(tmp)
        fsync_dir(path.parent)
        return True

    def set_meta(self, key: str, meta, *, if_match: str | None = None, if_meta=None) -> ObjectInfo:
        """Rewrite the xattr in place under the key's lock and fsync it; the etag stays."""
        meta = check_meta(key, meta)
        path = self._path(key)
        with self._lock(key.rstrip("/")), _os_errors(key):
            fd = os.open(path, os.O_RDONLY)
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode) != key.endswith("/") or key in ("", "/"):
                    raise NotFound(f"{key}: no such object", key)
                if if_match is not None and etag_of(st) != if_match:
                    raise PreconditionFailed(f"{key}: etag changed since it was read", key)
                if if_meta is not None and read_meta(fd) != dict(if_meta):
                    raise PreconditionFailed(f"{key}: its metadata changed since it was read", key)
                _write_meta(fd, meta, key)
                os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
        return _info(key, st, meta)

    hard_links = True

    def link(self, src: str, dst: str) -> ObjectInfo:
        """A hard link of the backing file (one inode under two names), made durable."""
        if src.endswith("/") or dst.endswith("/"):
            raise InvalidRequest(f"{dst}: hard links are made between objects, not directories", dst)
        src_path, dst_path = self._path(src), self._path(dst)
        with _os_errors(src):
            if not stat.S_ISREG(os.lstat(src_path).st_mode):
                raise NotFound(f"{src}: no such object", src)
        self._make_parents(dst, dst_path)
        with self._lock(dst):
            try:
                with _os_errors(src):
                    os.link(src_path, dst_path, follow_symlinks=False)
            except FileExistsError:
                raise PreconditionFailed(f"{dst}: already exists", dst) from None
            with _os_errors(dst):
                st = os.stat(dst_path)
                meta = read_meta(dst_path)
        fsync_dir(dst_path.parent)
        return _info(dst, st, meta)

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
            yield _info(dir_key, os.stat(base), read_meta(base))
        if not dir_key:
            entries = [e for e in entries if e.name != INTERNAL]
        # S3 order: UTF-8 bytes of the full key, where a directory "d" sorts as "d/".
        entries.sort(key=lambda e: (e.name + ("/" if e.is_dir(follow_symlinks=False) else "")).encode("utf-8", "surrogateescape"))
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
                meta = read_meta(e.path) if delimiter or not stat.S_ISDIR(st.st_mode) else None
            except FileNotFoundError:
                continue  # removed while listing
            if stat.S_ISDIR(st.st_mode):
                sub_key = f"{dir_key}{e.name}/"
                if delimiter:
                    yield CommonPrefix(sub_key, meta)
                else:
                    yield from self._walk(Path(e.path), sub_key, "", None, emit_self=True)
            elif stat.S_ISREG(st.st_mode):
                yield _info(dir_key + e.name, st, meta)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        path = self._path(key)
        with self._lock(key.rstrip("/")):
            try:
                if key.endswith("/"):
                    os.rmdir(path)
                elif if_match is not None:
                    st = os.lstat(path)
                    if stat.S_ISDIR(st.st_mode):
                        return
                    if etag_of(st) != if_match:
                        raise PreconditionFailed(f"{key}: etag changed (if_match)", key)
                    os.unlink(path)
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

    def check_rename(self, src: str, dst: str) -> None:
        """Nothing: a directory moves with one rename(2) (paths below it that pass PATH_MAX are
        the filesystem's ENAMETOOLONG when used, as on any local filesystem), and walking the tree
        to check them would make every rename to a longer name cost as much as the tree."""

    def rename(self, src: str, dst: str, *, meta=None) -> dict[str, ObjectInfo]:
        """One atomic rename(2); a directory (keys ending in "/") moves with everything below.
        Inode, mtime and size stay, and so do the etags: nothing to report."""
        src_path, dst_path = self._path(src), self._path(dst)
        if not src_path.exists():
            raise NotFound(f"{src}: no such object", src)
        self._make_parents(dst, dst_path)
        with self._lock(dst.rstrip("/")), _os_errors(src):
            os.rename(src_path, dst_path)
            if meta is not None and not src.endswith("/"):
                _write_meta(dst_path, check_meta(dst, meta), dst)
        fsync_dir(dst_path.parent)
        if src_path.parent != dst_path.parent:
            fsync_dir(src_path.parent)
        return {}

    def local_path(self, key: str) -> Path:
        """Where object ``key`` lives on this machine (disk reads go straight to the file)."""
        return self._path(key)

    keeps_empty_dirs = True  # a directory is a directory
    keeps_mtime = True  # the backing file's mtime
    lists_meta = True  # one getxattr per entry: a local syscall

    def set_mtime(self, key: str, mtime: float) -> ObjectInfo:
        """The backing file's mtime (its etag changes with it: `head` tells the new one)."""
        with _os_errors(key):
            os.utime(self._path(key), (mtime, mtime))
        return self.head(key)

    def capacity(self) -> dict:
        st = os.statvfs(self.root)
        return {"bsize": st.f_bsize, "frsize": st.f_frsize, "blocks": st.f_blocks, "bfree": st.f_bfree,
                "bavail": st.f_bavail, "files": st.f_files, "ffree": st.f_ffree}

    def copy(self, src: str, dst: str, *, meta=None) -> ObjectInfo:
        """Content and metadata, read from one open file (one version of the source)."""
        info = self.head(src)  # NotFound for a missing source or a prefix
        if src.endswith("/"):
            return self._put_marker(dst, b"", meta=info.meta)
        self._path(dst)
        with _os_errors(src):
            f = open(self._path(src), "rb")
        with f:
            with _os_errors(src):
                meta = read_meta(f.fileno()) if meta is None else check_meta(dst, meta)
            written = self._write_tmp(dst, lambda fd: _copy_into(f.fileno(), fd), meta)
        return self._commit(dst, written, None, False, meta)


def _copy_into(src: int, fd: int) -> None:
    """Copy the file open as ``src``, from its current offset to its end, into ``fd``: in the
    kernel (copy_file_range), or through a buffer where the two files' filesystems cannot."""
    try:
        while os.copy_file_range(src, fd, 1 << 30):
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
            raise
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
