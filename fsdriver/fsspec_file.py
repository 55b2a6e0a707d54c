"""An open ``stashfs://`` file (`StashFile`): buffered writes put as one atomic object at close
(spilled to a local temp file past the block size), ranged reads pinned to one version of the
object, as in the mount (docs/semantics.md, "Close-to-open"):

- an open takes the version `info` knows, which may be one remembered within the metadata TTL;
  when that version turns out to be gone at the first read, and that read starts at offset 0
  (replaced by another writer, nothing read from it yet, no position taken from its size), the
  file takes the current one, size included, and reads it whole, as an open a moment later would
  have (``pd.read_csv`` after ``exists``); a first read elsewhere (``seek(-n, 2)``, a parquet
  footer at ``f.size - 8``) is ESTALE, since its position came from the old size, and so is one
  after a seek from the end (pyarrow: ``seek(0, 2)``, ``tell()``, ``seek(0)``) or one whose length
  is the old size (``f.read(f.size)``), when the current version's size differs: the caller would
  take a part of the new version for all of it;
- once bytes of a version were read, every later read is pinned to it (``If-Match``): ESTALE when
  the object is replaced while open, never bytes of two versions.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
from typing import TYPE_CHECKING

from fsspec.caching import caches
from fsspec.spec import AbstractBufferedFile

from .errors import PreconditionFailed
from .fsspec_errors import os_errors
from .fsspec_paths import resolve

if TYPE_CHECKING:
    from .fsspec_fs import StashFileSystem

REPINS = 3  # times a first read takes the current version before giving up (replaced over and over)


class _Unpinned(Exception):
    """The version an open file took is gone, and nothing was read from it yet."""


class StashFile(AbstractBufferedFile):
    """An open file: ranged GETs pinned to one version of the object, or one atomic put at close."""

    def __init__(self, fs: StashFileSystem, path: str, mode="rb", block_size=None, autocommit=True,
                 cache_type="readahead", cache_options=None, **kwargs):
        self.place = resolve(path)
        self._spill = None  # a local temp file once the data outgrows the block size
        self._small = b""
        kwargs.pop("size", None)
        if mode == "rb":
            self._cache_type, self._cache_options = cache_type, dict(cache_options or {})
            self._read_any = False  # bytes of the pinned version were read: it stays pinned
            self._from_end = False  # a seek from the end placed the reader by the size it was told
            self.details = self._pin(fs.info(path))
            try:
                super().__init__(fs, path, mode, block_size, autocommit, cache_type=cache_type,
                                 cache_options=cache_options, size=self.size, **kwargs)
            except _Unpinned:  # the "all" cache reads the whole file at open
                self._repin()
            return
        if mode not in ("wb", "xb", "ab"):
            raise ValueError(f"stashfs files open in rb, wb, xb or ab mode, not {mode!r}")
        self._replaces = fs._check_target(self.place)
        if mode == "xb" and fs.exists(path):
            raise FileExistsError(errno.EEXIST, f"{path} exists", path)
        super().__init__(fs, path, mode, block_size, autocommit, cache_type=cache_type,
                         cache_options=cache_options, **kwargs)
        if mode == "ab":  # append: the new object is the old one plus the writes
            try:
                old = fs.cat_file(path)
            except FileNotFoundError:
                old = None
            if old is not None:
                self._replaces = True
                self._spill_file().write(old)
                self.loc = len(old)  # tell() is the size, as after open(..., "ab")

    def _pin(self, details: dict) -> dict:
        if details["type"] != "file":
            raise IsADirectoryError(errno.EISDIR, f"{self.path} is a directory", self.path)
        self.etag = details["etag"]
        return details

    def _repin(self) -> None:
        """Take the current version (its etag and size) in place of the one that is gone."""
        self.fs.known.forget(self.place.path)
        self.details = self._pin(self.fs.info(self.place.path))  # the setter takes the size too
        self.cache = None  # made again by the next read, for the new size

    def seek(self, loc, whence=0):
        if whence == 2 and self.mode == "rb" and not self._read_any:
            self._from_end = True
        return super().seek(loc, whence)

    def read(self, length=-1):
        for _ in range(REPINS):
            told = self.size
            try:
                if self.cache is None and not self.closed:
                    self.cache = caches[self._cache_type](self.blocksize, self._fetch_range, self.size,
                                                          **self._cache_options)
                return super().read(length)
            except _Unpinned:
                self._repin()
                if self.size != told and (self._from_end or (length is not None and length >= 0
                                                             and length == told - self.loc)):
                    raise OSError(errno.ESTALE, f"{self.path}: replaced by a new version of another size "
                                  "after its size was used", self.path) from None
        raise OSError(errno.ESTALE, f"{self.path}: replaced again each time it was about to be read", self.path)

    def _fetch_range(self, start: int, end: int) -> bytes:
        with os_errors(self.path):
            try:
                data = self.fs.backend.get_range(self.place.key, start, end, if_match=self.etag)
            except PreconditionFailed:
                if not self._read_any and self.loc == 0:
                    raise _Unpinned() from None
                # Bytes of the version were read, or the reader placed itself by its size (a
                # seek from the end, a footer at f.size - 8): the current version's bytes there
                # would be silently wrong.
                raise OSError(errno.ESTALE, f"{self.path}: replaced by a new version while open",
                              self.path) from None
        self._read_any = True
        return data

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
                self.fs._store(self.place, data=self._small, exclusive=exclusive, checked=True,
                               replaces=self._replaces)
            else:
                self._spill.flush()
                self.fs._store(self.place, file=self._spill.name, exclusive=exclusive, checked=True,
                               replaces=self._replaces)
        finally:
            self.discard()

    def discard(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None
