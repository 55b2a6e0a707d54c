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

The filesystem is put together from parts, each with one job: `fsspec_listing` (metadata),
`fsspec_writes`, `fsspec_moves`, `fsspec_removal`, `fsspec_attrs` (POSIX attributes, ``touch``),
`fsspec_file` (an open file), `fsspec_errors` (OSErrors), `fsspec_paths` (paths to keys) and
`fsspec_cache` (the metadata TTL); this module holds the class, its configuration and reading
data.  Nothing here imports pyfuse3 or trio.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile

from fsspec.spec import AbstractFileSystem
from fsspec.utils import stringify_path

from .backend import Backend
from .backend.disk import DiskBackend
from .configured import open_backend, shared_backend
from .errors import NotFound
from .fsspec_attrs import Attributes
from .fsspec_cache import MetaCache
from .fsspec_errors import os_errors
from .fsspec_file import StashFile
from .fsspec_listing import Listing
from .fsspec_moves import Moving
from .fsspec_paths import resolve
from .fsspec_removal import Removal
from .fsspec_writes import Writing

__all__ = ["PROTOCOL", "StashFile", "StashFileSystem", "os_errors"]

PROTOCOL = "stashfs"


class StashFileSystem(Listing, Writing, Moving, Removal, Attributes, AbstractFileSystem):
    """The stashfs tree (``pipeline/``, ``user/``, ``kv/``) on one backend."""

    protocol = PROTOCOL
    root_marker = ""

    def __init__(self, backend: Backend | str | None = None, endpoint_url: str | None = None,
                 metadata_ttl: float = 1.0, create: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.known = MetaCache(metadata_ttl)  # the mount's --metadata-ttl rule (fsspec_cache)
        if isinstance(backend, Backend):
            self.backend = backend
        elif endpoint_url:
            self.backend = open_backend(backend, endpoint_url=endpoint_url, create=create)
        else:  # create: a local directory named that does not exist yet is made (a new store)
            self.backend = shared_backend(backend, create=create)
        # File/directory clashes are checked before a write: with LISTs on S3, local stats on disk.
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

    # -- reading data --------------------------------------------------------------------------

    def cat_file(self, path, start=None, end=None, **kwargs) -> bytes:
        place = resolve(self._strip_protocol(path))
        if place.depth < 3:
            raise IsADirectoryError(errno.EISDIR, f"{place.path or '/'} is a directory", place.path)
        with os_errors(place.path):
            if place.tree == "kv":
                info = self._record_info(place)
                return self.backend.get_range(place.key, 0, if_match=info.etag)[start:end]
            try:
                if (start is not None and start < 0) or (end is not None and end < 0):
                    size = self.backend.head(place.key).size
                    start = max(size + start, 0) if start is not None and start < 0 else start
                    end = max(size + end, 0) if end is not None and end < 0 else end
                start = start or 0
                if end is not None and end <= start:
                    self.backend.head(place.key)  # still FileNotFoundError for a missing object
                    return b""
                return self.backend.get_range(place.key, start, end)
            except NotFound:
                if self._known_directory(place):
                    raise IsADirectoryError(errno.EISDIR, f"{place.path} is a directory", place.path) from None
                raise

    def _known_directory(self, place) -> bool:
        """Whether a missing object's name is a directory: what a listing taught (``cat(d,
        recursive=True)`` lists first), else on disk a local stat; no S3 request (zarr and FSMap
        probe missing keys: each would cost a LIST more)."""
        known = self.known.get(place.path)
        if known is not None:
            return known["type"] == "directory"
        return not self._remote and self.backend.lookup(place.key)[1]

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
