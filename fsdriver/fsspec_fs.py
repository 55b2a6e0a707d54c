"""``stashfs://`` for fsspec: pandas, pyarrow, dask and polars on the mount's objects, no mount needed.

    import pandas as pd
    df = pd.read_parquet("stashfs://pipeline/p1/table/")          # backend as for the API
    df.to_csv("stashfs://user/alice/t.csv", storage_options={"backend": "s3://bucket/stashfs"})

Registered through the ``fsspec.specs`` entry point.  Paths are the mount's paths (`fsspec_paths`):
the same keys, the same name rules, the same layout.  The backend is the ``backend`` storage option,
else ``$STASHFS_BACKEND``, the config file or the local default (`fsdriver.configured`).

- Reads are ranged GETs, each pinned to the etag seen at open (ESTALE when the object is replaced,
  as in the mount).  ``info``/``ls`` give size, mtime and etag.
- A write is one atomic object put at close (spilled to a local temp file past the block size);
  ``"xb"`` and ``mode="create"`` are conditional puts (FileExistsError).
- ``/kv/<store>/<key>.json`` records are checked as JSON when written (`strictjson`), expired ones
  read as missing, and writing a record ends its TTL — the mount's rules.
- Like the mount, a directory on S3 keeps a marker when its last entry is removed, and a name that
  is both an object and a prefix is a directory.

Nothing here imports pyfuse3 or trio.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import shutil
import tempfile
import time
from glob import has_magic

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from fsspec.utils import stringify_path

from . import kvexpiry, kvnames, layout, owners, strictjson
from .access import login_name
from .backend import Backend, CommonPrefix, ObjectInfo
from .backend.disk import DiskBackend
from .configured import open_backend, shared_backend
from .data import claim_pipeline
from .errors import (BucketNotFound, InvalidRequest, NotFound, OutOfDescriptors, PermissionDenied,
                     PreconditionFailed, Unavailable)
from .fsspec_cache import MetaCache
from .fsspec_paths import Place, check_writable, is_listable_name, resolve

PROTOCOL = "stashfs"


@contextlib.contextmanager
def os_errors(path: str):
    """The backend's vocabulary as the OSErrors fsspec callers expect (FileNotFoundError above all)."""
    try:
        yield
    except BucketNotFound as e:
        raise OSError(errno.ENXIO, str(e), path) from None
    except NotFound as e:
        raise FileNotFoundError(errno.ENOENT, str(e), path) from None
    except PermissionDenied as e:
        raise PermissionError(errno.EACCES, str(e), path) from None
    except PreconditionFailed as e:
        raise OSError(errno.ESTALE, f"{e} (it changed while open)", path) from None
    except OutOfDescriptors as e:
        raise OSError(e.errno, str(e), path) from None
    except Unavailable as e:
        raise OSError(errno.EIO, str(e), path) from None
    except InvalidRequest as e:
        raise NotADirectoryError(errno.ENOTDIR, str(e), path) from None


def _dir(path: str) -> dict:
    return {"name": path, "size": 0, "type": "directory"}


def _file(path: str, info: ObjectInfo) -> dict:
    return {"name": path, "size": info.size, "type": "file", "mtime": info.mtime, "etag": info.etag}


class StashFileSystem(AbstractFileSystem):
    """The stashfs tree (``pipeline/``, ``user/``, ``kv/``) on one backend."""

    protocol = PROTOCOL
    root_marker = ""

    def __init__(self, backend: Backend | str | None = None, endpoint_url: str | None = None,
                 metadata_ttl: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.known = MetaCache(metadata_ttl)  # the mount's --metadata-ttl rule (fsspec_cache)
        if isinstance(backend, Backend):
            self.backend = backend
        elif endpoint_url:
            self.backend = open_backend(backend, endpoint_url=endpoint_url)
        else:
            self.backend = shared_backend(backend)
        # The disk backend refuses file/directory clashes itself; on S3 they are checked first.
        self._remote = not isinstance(self.backend, DiskBackend)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        for head in (PROTOCOL + "://", PROTOCOL + "::"):
            if path.startswith(head):
                path = path[len(head):]
        return path.strip("/")

    # -- reading metadata ----------------------------------------------------------------------

    def info(self, path, **kwargs) -> dict:
        place = resolve(self._strip_protocol(path))
        if place.depth < 2:
            return _dir(place.path)
        known = self.known.get(place.path)
        if known is not None:
            return known
        info = self._info(place)
        self.known.put(info)
        return info

    def _info(self, place: Place) -> dict:
        with os_errors(place.path):
            if place.depth == 2:
                if next(iter(self.backend.list(place.prefix, max_keys=1)), None) is None:
                    raise NotFound(f"{place.path}: no such namespace", place.key)
                return _dir(place.path)
            if place.tree == "kv":
                return _file(place.path, self._record_info(place))
            obj, is_dir = self.backend.lookup(place.key)
        if is_dir:
            return _dir(place.path)
        if obj is None:
            raise FileNotFoundError(errno.ENOENT, f"{place.path}: no such file or directory", place.path)
        return _file(place.path, obj)

    def _record_info(self, place: Place) -> ObjectInfo:
        """A live record's info; NotFound when missing, expired (then removed) or not a record."""
        if place.depth != 3 or kvnames.is_scratch(place.parts[2]):
            raise NotFound(f"{place.path}: no such record", place.key)
        info = self.backend.head(place.key)
        store, name = place.parent().prefix, place.parts[2]
        markers = kvexpiry.markers_of(self.backend, store, name)
        if markers and kvexpiry.is_expired(info.etag, markers, time.time()):
            kvexpiry.expire_record(self.backend, store, name, markers)
            raise NotFound(f"{place.path}: no such record (expired)", place.key)
        return info

    def ls(self, path, detail=True, **kwargs):
        place = resolve(self._strip_protocol(path))
        if place.depth == 0:
            entries = [_dir(tree) for tree in layout.TREES]
        elif place.is_record:
            entries = [self.info(place.path)]
        else:
            with os_errors(place.path):
                found, entries = self._list(place)
            if not found:
                if place.depth == 1:
                    entries = []
                else:  # a file lists as itself; a missing path raises
                    entries = [self.info(place.path)]
        return entries if detail else [e["name"] for e in entries]

    def _list(self, place: Place) -> tuple[bool, list]:
        """(whether the directory exists, its entries), from one delimited listing."""
        found, files, dirs = False, {}, {}
        base = place.path + "/" if place.path else ""
        for e in self.backend.list(place.prefix, "/"):
            found = True
            name = e.key[len(place.prefix):].rstrip("/")
            if not name or not is_listable_name(name):
                continue  # the directory's own marker, or a key that cannot be a file name
            if isinstance(e, CommonPrefix):
                if place.depth >= 2 or layout.NAME_RE.match(name):
                    dirs[name] = _dir(base + name)
            elif place.depth >= 2:
                files[name] = e
        if place.tree == "kv" and place.depth == 2:
            dirs = {}  # .expires/ holds TTL markers, not a directory
            files = self._live_records(place, files)
        out = [_file(base + n, info) for n, info in files.items() if n not in dirs]
        out = sorted(out + list(dirs.values()), key=lambda d: d["name"])
        for entry in out:
            self.known.put(entry)
        if found and place.depth >= 2:
            self.known.put(_dir(place.path))
            self.known.put_listing(place.path, set(files) | set(dirs))
        return found, out

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        """Everything below ``path`` from one flat listing (the default walks directory by directory)."""
        place = resolve(self._strip_protocol(path))
        if maxdepth is not None or place.depth < 2 or place.tree == "kv":
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        found, files, dirs = False, {}, set()
        with os_errors(place.path):
            for e in self.backend.list(place.prefix):
                found = True
                rel = e.key[len(place.prefix):]
                segments = rel.rstrip("/").split("/")
                if rel in ("", "/") or not all(is_listable_name(s) for s in segments):
                    continue  # the directory's own marker, or a key that cannot be a file name
                dirs.update("/".join(segments[:i]) for i in range(1, len(segments)))
                if rel.endswith("/"):
                    dirs.add(rel[:-1])
                else:
                    files[rel] = e
        out = {}
        if found:
            if withdirs:
                out[place.path] = _dir(place.path)
                out.update({f"{place.path}/{d}": _dir(f"{place.path}/{d}") for d in dirs})
            out.update({f"{place.path}/{n}": _file(f"{place.path}/{n}", info)
                        for n, info in files.items() if n not in dirs})
            for entry in out.values():
                self.known.put(entry)
            listings = {place.path: set()} | {f"{place.path}/{d}": set() for d in dirs}
            for rel in list(dirs) + list(files):
                parent, _, name = f"{place.path}/{rel}".rpartition("/")
                listings[parent].add(name)
            for directory, names in listings.items():
                self.known.put_listing(directory, names)
        else:
            try:
                info = self.info(place.path)
            except FileNotFoundError:
                info = None
            if info is not None and info["type"] == "file":
                out[place.path] = info
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def _live_records(self, place: Place, files: dict) -> dict:
        expiries = kvexpiry.store_expiries(self.backend, place.prefix) if files else {}
        now, live = time.time(), {}
        for name, info in files.items():
            try:
                kvnames.key_of(name)
            except ValueError:
                continue  # not a record: a stray object in the store
            markers = expiries.get(name, [])
            if markers and kvexpiry.is_expired(info.etag, markers, now):
                kvexpiry.expire_record(self.backend, place.prefix, name, markers)
                continue
            live[name] = info
        return live

    def modified(self, path) -> datetime.datetime:
        info = self.info(path)
        if info["type"] != "file":
            raise IsADirectoryError(errno.EISDIR, "a directory has no modification time here", info["name"])
        return datetime.datetime.fromtimestamp(info["mtime"], tz=datetime.timezone.utc)

    # -- reading data --------------------------------------------------------------------------

    def cat_file(self, path, start=None, end=None, **kwargs) -> bytes:
        place = resolve(self._strip_protocol(path))
        if place.depth < 3:
            raise IsADirectoryError(errno.EISDIR, f"{place.path or '/'} is a directory", place.path)
        with os_errors(place.path):
            if place.tree == "kv":
                info = self._record_info(place)
                return self.backend.get_range(place.key, 0, if_match=info.etag)[start:end]
            if (start is not None and start < 0) or (end is not None and end < 0):
                size = self.backend.head(place.key).size
                start = max(size + start, 0) if start is not None and start < 0 else start
                end = max(size + end, 0) if end is not None and end < 0 else end
            start = start or 0
            if end is not None and end <= start:
                self.backend.head(place.key)  # still FileNotFoundError for a missing object
                return b""
            return self.backend.get_range(place.key, start, end)

    def get_file(self, rpath, lpath, callback=None, outfile=None, **kwargs) -> None:
        place = resolve(self._strip_protocol(rpath))
        target = outfile if outfile is not None else lpath
        if hasattr(target, "write"):
            target.write(self.cat_file(place.path))
            return
        if self.isdir(place.path):
            os.makedirs(lpath, exist_ok=True)
            return
        directory = os.path.dirname(os.path.abspath(lpath))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".stashfs-get-")
        try:  # the local file is replaced whole, or not at all
            with os.fdopen(fd, "wb") as f:
                if place.tree == "kv":
                    f.write(self.cat_file(place.path))
                else:
                    with os_errors(place.path):
                        self.backend.get_to_file(place.key, f)
                if callback is not None:
                    callback.set_size(f.tell())
                    callback.relative_update(f.tell())
            os.replace(tmp, lpath)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        return StashFile(self, self._strip_protocol(path), mode, block_size, autocommit,
                         cache_options=cache_options, **kwargs)

    # -- writing -------------------------------------------------------------------------------

    def _check_target(self, place: Place) -> None:
        """The mount's rules for a new object at ``place`` (raises before anything is written)."""
        check_writable(place)
        if place.tree == "kv":
            return  # stores are flat
        if not self._remote:  # the disk backend refuses the other clashes itself
            if self.backend.local_path(place.key).is_dir():
                raise IsADirectoryError(errno.EISDIR, f"{place.path} is a directory", place.path)
            return
        with os_errors(place.path):
            known = self.known.get(place.path)
            if known is not None and known["type"] == "directory" or known is None and not self.known.absent(
                    place.path) and next(iter(self.backend.list(place.key + "/", max_keys=1)), None) is not None:
                raise IsADirectoryError(errno.EISDIR, f"{place.path} is a directory", place.path)
            for depth in range(3, place.depth):
                parent = "/".join(place.parts[:depth])
                if self.known.absent(parent):
                    break  # nothing there, nor below
                known = self.known.get(parent)
                if known is not None:
                    if known["type"] == "file":
                        raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a directory", place.path)
                    continue
                try:
                    self.backend.head(parent)
                except NotFound:
                    continue
                raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a directory", place.path)

    def _store(self, place: Place, data: bytes | None = None, file: str | None = None,
               exclusive: bool = False, checked: bool = False) -> ObjectInfo:
        """Put ``data`` (or the local ``file``) at ``place`` atomically, by the mount's rules
        (``checked``: `_check_target` already passed, when the file was opened)."""
        if not checked:
            self._check_target(place)
        if place.tree == "kv":
            if data is None:
                data = _read_record_file(file, place.path)
            if data:  # an empty record is the JSON string "" (docs/kv.md)
                strictjson.check(data)
        elif place.tree == "pipeline":
            claim_pipeline(self.backend, place.parts[1])
        cond = {"if_none_match": True} if exclusive else {}
        try:
            with os_errors(place.path):
                if data is not None:
                    info = self.backend.put_bytes(place.key, bytes(data), **cond)
                else:
                    info = self.backend.put_file(place.key, file, **cond)
        except OSError as e:
            self.known.forget(place.path, tree=True, listing=True)
            if e.errno == errno.ESTALE and exclusive:
                raise FileExistsError(errno.EEXIST, f"{place.path} exists", place.path) from None
            raise
        self._written(place, info)
        if place.tree == "kv":  # writing a record ends its TTL
            kvexpiry.drop_markers(self.backend, place.parent().prefix, place.parts[2])
        return info

    def _written(self, place: Place, info: ObjectInfo | None) -> None:
        """Remember what a write made: the file (None: a directory), its parents as directories,
        and each name in its parent's listing."""
        self.known.forget(place.path, tree=True)
        self.known.put(_file(place.path, info) if info is not None else _dir(place.path))
        for depth in range(2, place.depth):
            self.known.put(_dir("/".join(place.parts[:depth])))
        for depth in range(3, place.depth + 1):
            self.known.added("/".join(place.parts[:depth]))

    def pipe_file(self, path, value, mode="overwrite", **kwargs) -> None:
        place = resolve(self._strip_protocol(path))
        self._store(place, data=bytes(value), exclusive=mode == "create")

    def put_file(self, lpath, rpath, callback=None, mode="overwrite", **kwargs) -> None:
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        place = resolve(self._strip_protocol(rpath))
        size = os.path.getsize(lpath)
        if callback is not None:
            callback.set_size(size)
        self._store(place, file=os.fspath(lpath), exclusive=mode == "create")
        if callback is not None:
            callback.relative_update(size)

    def cp_file(self, path1, path2, **kwargs) -> None:
        src = resolve(self._strip_protocol(path1))
        dst = resolve(self._strip_protocol(path2))
        if self.isdir(src.path):
            self.makedirs(dst.path, exist_ok=True)
            return
        if src.tree == "kv" or dst.tree == "kv":  # records are checked, and expired ones are missing
            self._store(dst, data=self.cat_file(src.path))
            return
        self._check_target(dst)
        if dst.tree == "pipeline":
            claim_pipeline(self.backend, dst.parts[1])
        try:
            with os_errors(src.path):
                info = self.backend.copy(src.key, dst.key)
        except BaseException:
            self.known.forget(dst.path, tree=True, listing=True)
            raise
        self._written(dst, info)

    def mkdir(self, path, create_parents=True, **kwargs) -> None:
        place = resolve(self._strip_protocol(path))
        if self.exists(place.path):
            raise FileExistsError(errno.EEXIST, f"{place.path or '/'} exists", place.path)
        self._mkdir(place, create_parents)

    def _mkdir(self, place: Place, create_parents: bool) -> None:
        if place.depth < 2:
            raise PermissionError(errno.EPERM, f"{place.path}: the top of the tree is fixed", place.path)
        if place.tree == "kv" and place.depth > 2:
            raise PermissionError(errno.EPERM, "a store holds records (<key>.json files), not directories",
                                  place.path)
        if place.depth > 2:
            if not create_parents and not self.isdir(place.parent().path):
                raise FileNotFoundError(errno.ENOENT, f"{place.parent().path}: no such directory", place.path)
            self._check_target(place)
        elif place.tree == "pipeline":
            with os_errors(place.path):
                owners.claim(self.backend, place.parts[1], login_name(), os.getuid())
        try:
            with os_errors(place.path):
                self.backend.put_bytes(place.prefix, b"")
        except BaseException:
            self.known.forget(place.path, tree=True, listing=True)
            raise
        self._written(place, None)
        self.known.put_listing(place.path, ())  # it did not exist: it is empty

    def makedirs(self, path, exist_ok=False) -> None:
        place = resolve(self._strip_protocol(path))
        try:
            info = self.info(place.path)
        except FileNotFoundError:
            self._mkdir(place, create_parents=True)
            return
        if info["type"] != "directory":
            raise FileExistsError(errno.EEXIST, f"{place.path} exists and is a file", place.path)
        if not exist_ok:
            raise FileExistsError(errno.EEXIST, f"{place.path or '/'} exists", place.path)

    # -- removing ------------------------------------------------------------------------------

    def rmdir(self, path) -> None:
        place = resolve(self._strip_protocol(path))
        if place.depth < 2:
            raise PermissionError(errno.EPERM, f"{place.path or '/'}: the top of the tree is fixed", place.path)
        if self.info(place.path)["type"] != "directory":
            raise NotADirectoryError(errno.ENOTDIR, f"{place.path} is not a directory", place.path)
        found, entries = self._list(place)
        if entries:
            raise OSError(errno.ENOTEMPTY, f"{place.path} is not empty", place.path)
        self._remove_dir(place)
        self._keep_parent(place)

    def _remove_dir(self, place: Place, content: bool = False) -> None:
        """Remove a directory's marker (with ``content``: everything below it too)."""
        try:
            with os_errors(place.path):
                if content:
                    self.backend.delete_prefix(place.prefix)
                elif place.tree == "kv" and place.depth == 2:
                    self.backend.delete_prefix(place.prefix + kvnames.EXPIRES)
                self.backend.delete(place.prefix)
                if place.tree == "pipeline" and place.depth == 2:  # an empty pipeline is gone for good
                    owners.remove(self.backend, place.parts[1])
        finally:
            self.known.forget(place.path, tree=True)
            self.known.removed(place.path)

    def _remove_file(self, place: Place) -> None:
        try:
            with os_errors(place.path):
                self.backend.delete(place.key)
                if place.tree == "kv":
                    kvexpiry.drop_markers(self.backend, place.parent().prefix, place.parts[2])
        finally:
            self.known.forget(place.path)
            self.known.removed(place.path)

    def rm_file(self, path) -> None:
        place = resolve(self._strip_protocol(path))
        if place.depth < 3 or self.info(place.path)["type"] == "directory":
            raise IsADirectoryError(errno.EISDIR, f"{place.path or '/'} is a directory", place.path)
        self._remove_file(place)
        self._keep_parent(place)

    def _rm(self, path) -> None:
        self.rm_file(path)

    def rm(self, path, recursive=False, maxdepth=None) -> None:
        if isinstance(path, str) and recursive and maxdepth is None and not has_magic(path):
            place = resolve(self._strip_protocol(path))
            if place.depth >= 2 and self.info(place.path)["type"] == "directory":
                self._remove_dir(place, content=True)  # one listing and batch deletes on S3
                self._keep_parent(place)
                return
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        removed, parents = set(), set()
        for p in reversed(paths):  # children before their directories
            place = resolve(p)
            try:
                info = self.info(place.path)
            except FileNotFoundError:
                removed.add(place.path)  # a directory on S3 that vanished with its last entry
                self.known.removed(place.path)
                continue
            if info["type"] == "file":
                self._remove_file(place)
            elif place.depth >= 2:
                if self._list(place)[1]:
                    raise IsADirectoryError(errno.EISDIR, f"{place.path} is a directory (recursive=True "
                                                          "removes it with its content)", place.path)
                self._remove_dir(place)
            else:
                raise PermissionError(errno.EPERM, f"{place.path or '/'}: the top of the tree is fixed", p)
            removed.add(place.path)
            parents.add(place.parent().path)
        for parent in sorted(parents - removed):
            self._keep(resolve(parent))

    def _keep_parent(self, place: Place) -> None:
        self._keep(place.parent())

    def _keep(self, directory: Place) -> None:
        """On S3 a directory whose last entry went away would vanish: give it a marker, as the
        mount does (a namespace and the directories below it stay until removed themselves)."""
        if not self._remote or directory.depth < 2:
            return
        with os_errors(directory.path):
            if next(iter(self.backend.list(directory.prefix, max_keys=1)), None) is None:
                self.backend.put_bytes(directory.prefix, b"")
        self.known.put(_dir(directory.path))


def _read_record_file(file: str, path: str) -> bytes:
    size = os.path.getsize(file)
    if size > strictjson.MAX_RECORD_BYTES:
        raise strictjson.RecordTooLarge(f"{path}: {strictjson.too_large(size)}")
    with open(file, "rb") as f:
        return f.read()


class StashFile(AbstractBufferedFile):
    """An open file: ranged GETs pinned to the etag seen at open, or one atomic put at close."""

    def __init__(self, fs: StashFileSystem, path: str, mode="rb", block_size=None, autocommit=True,
                 cache_type="readahead", cache_options=None, **kwargs):
        self.place = resolve(path)
        self._spill = None  # a local temp file once the data outgrows the block size
        self._small = b""
        kwargs.pop("size", None)
        if mode == "rb":
            details = fs.info(path)
            if details["type"] != "file":
                raise IsADirectoryError(errno.EISDIR, f"{path} is a directory", path)
            self.etag = details["etag"]
            super().__init__(fs, path, mode, block_size, autocommit, cache_type=cache_type,
                             cache_options=cache_options, size=details["size"], **kwargs)
            self.details = details
            return
        if mode not in ("wb", "xb", "ab"):
            raise ValueError(f"stashfs files open in rb, wb, xb or ab mode, not {mode!r}")
        fs._check_target(self.place)
        if mode == "xb" and fs.exists(path):
            raise FileExistsError(errno.EEXIST, f"{path} exists", path)
        super().__init__(fs, path, mode, block_size, autocommit, cache_type=cache_type,
                         cache_options=cache_options, **kwargs)
        if mode == "ab" and fs.exists(path):  # append: the new object is the old one plus the writes
            self._spill_file().write(fs.cat_file(path))

    def _fetch_range(self, start: int, end: int) -> bytes:
        with os_errors(self.path):
            return self.fs.backend.get_range(self.place.key, start, end, if_match=self.etag)

    def _spill_file(self):
        if self._spill is None:
            self._spill = tempfile.NamedTemporaryFile(prefix="stashfs-fsspec-")
        return self._spill

    def _upload_chunk(self, final: bool = False) -> bool:
        if final and self._spill is None:
            self._small = self.buffer.getvalue()  # all of it fits in one block: no temp file
        else:
            self.buffer.seek(0)
            shutil.copyfileobj(self.buffer, self._spill_file(), 1 << 20)
        if final and self.autocommit:
            self.commit()
        return True

    def commit(self) -> None:
        exclusive = self.mode == "xb"
        try:
            if self._spill is None:
                self.fs._store(self.place, data=self._small, exclusive=exclusive, checked=True)
            else:
                self._spill.flush()
                self.fs._store(self.place, file=self._spill.name, exclusive=exclusive, checked=True)
        finally:
            self.discard()

    def discard(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None
