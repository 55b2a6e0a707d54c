"""Writing for the ``stashfs://`` filesystem: ``pipe_file``, ``put_file``, ``cp_file``, ``mkdir``.

`Writing` is a part of `fsdriver.fsspec_fs.StashFileSystem`.  Every write is one atomic object
put (``exclusive``: a conditional put, FileExistsError), checked first by the mount's rules: no
file where a directory is or under a file, records checked as JSON (`strictjson`), a pipeline
claimed on its first write; writing a record ends its TTL.  A file replaced keeps its POSIX
attributes (`fsspec_attrs`).  What a write made is remembered in the `MetaCache`.
"""

from __future__ import annotations

import errno
import os

from . import kvexpiry, owners, strictjson, treeshape
from .access import login_name
from .backend import ObjectInfo
from .data import claim_pipeline
from .errors import NameTooLong
from .fsspec_attrs import kept_attributes
from .fsspec_errors import os_errors
from .fsspec_listing import dir_entry, file_entry
from .fsspec_paths import Place, check_writable, resolve


class Writing:
    """The writing side of `StashFileSystem`."""

    def _check_target(self, place: Place) -> bool | None:
        """The mount's rules for a new object at ``place`` (raises before anything is written);
        whether a file is there already (None: not known)."""
        check_writable(place)
        limit = self.backend.max_key_bytes
        if limit is not None and len(place.key.encode()) + 1 > limit:  # +1: a directory's marker, as in the mount
            raise NameTooLong(f"{place.path}: longer than the backend's keys may be ({limit} bytes)")
        if place.tree == "kv":
            return None  # stores are flat
        if not self._remote:  # local stats: the disk backend's own refusal would not say which clash
            path = self.backend.local_path(place.key)
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, f"{place.path} is a directory", place.path)
            if not path.parent.is_dir():
                for depth in range(3, place.depth):
                    parent = "/".join(place.parts[:depth])
                    if self.backend.local_path(parent).is_file():
                        raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a directory", place.path)
            return None
        with os_errors(place.path):  # the data API's check too, with what this filesystem learnt
            return treeshape.check_new_object(self.backend, place.key, place.path, self.known)

    def _store(self, place: Place, data: bytes | None = None, file: str | None = None,
               exclusive: bool = False, checked: bool = False, replaces: bool | None = None) -> ObjectInfo:
        """Put ``data`` (or the local ``file``) at ``place`` atomically, by the mount's rules
        (``checked``: `_check_target` already passed, when the file was opened, and told
        ``replaces``).  A file replaced keeps its attributes (`kept_attributes`)."""
        if not checked:
            replaces = self._check_target(place)
        meta = None
        if replaces is not False and not exclusive:
            with os_errors(place.path):
                meta = kept_attributes(self.backend, place)
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
                    info = self.backend.put_bytes(place.key, bytes(data), meta=meta, **cond)
                else:
                    info = self.backend.put_file(place.key, file, meta=meta, **cond)
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
        and each name in its parent's listing.  The data API's memory of this process's puts on
        the same backend forgets the name (`treeshape.recent_writes`): its shape may have changed."""
        treeshape.recent_writes(self.backend).removed(place.key)
        self.known.forget(place.path, tree=True)
        self.known.put(file_entry(place.path, info) if info is not None else dir_entry(place.path))
        for depth in range(2, place.depth):
            self.known.put(dir_entry("/".join(place.parts[:depth])))
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
        self._copy(resolve(self._strip_protocol(path1)), resolve(self._strip_protocol(path2)))

    def _copy(self, src: Place, dst: Place, moving: bool = False) -> None:
        """Copy one file (or make one directory) in the backend.  A file replaced keeps its
        attributes, as ``cp`` keeps them, unless ``moving``: a move takes the source's, as
        rename(2) does."""
        if src.path == dst.path:  # onto itself (however spelt): nothing to do, as os.rename(a, a)
            self.info(src.path)  # still FileNotFoundError for a missing one
            return
        if self.isdir(src.path):
            self.makedirs(dst.path, exist_ok=True)
            return
        if src.tree == "kv" or dst.tree == "kv":  # records are checked, and expired ones are missing
            self._store(dst, data=self.cat_file(src.path))
            return
        replaces = self._check_target(dst)
        if dst.tree == "pipeline":
            claim_pipeline(self.backend, dst.parts[1])
        try:
            with os_errors(dst.path):
                meta = kept_attributes(self.backend, dst) if replaces is not False and not moving else None
            with os_errors(src.path):  # None: the source's attributes
                info = self.backend.copy(src.key, dst.key, meta=meta)
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


def _read_record_file(file: str, path: str) -> bytes:
    size = os.path.getsize(file)
    if size > strictjson.MAX_RECORD_BYTES:
        raise strictjson.RecordTooLarge(f"{path}: {strictjson.too_large(size)}")
    with open(file, "rb") as f:
        return f.read()
