"""An open ``stashfs://`` file (`StashFile`): buffered writes put as one atomic object at close
(spilled to a local temp file past the block size), ranged reads pinned to the etag seen at open
(ESTALE when the object is replaced, as in the mount).
"""

from __future__ import annotations

import errno
import shutil
import tempfile
from typing import TYPE_CHECKING

from fsspec.spec import AbstractBufferedFile

from .fsspec_errors import os_errors
from .fsspec_paths import resolve

if TYPE_CHECKING:
    from .fsspec_fs import StashFileSystem


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
