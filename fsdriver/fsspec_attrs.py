"""The POSIX attributes a file of the mount keeps in its object's user metadata (mode, owner,
times: `fsdriver.posixattrs`), as the ``stashfs://`` filesystem treats them; ``touch``.

`Attributes` is a part of `fsdriver.fsspec_fs.StashFileSystem`.

- A write that replaces a file keeps its attributes, with the write's mtime and ctime
  (`kept_attributes`), as a write through the mount does: a file made 0640 through the mount stays
  0640 when a pipeline rewrites it through fsspec.  It costs a HEAD of the file being replaced
  (a local stat on disk); a new file, which `_check_target` saw missing, costs nothing more.
- ``touch(path, truncate=False)`` of a file sets its modification time to now, content unchanged
  (`touch_times`): the backing file's mtime on disk, a copy of the object onto itself on S3 (an
  object's Last-Modified cannot be set otherwise); where the object carries attributes, their
  times too, which are what the mount shows.

Only files inside ``/pipeline/<id>`` and ``/user/<name>`` carry attributes (records and
namespaces show their namespace's).  Other user metadata is not kept, as in the mount.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from . import kvexpiry, posixattrs
from .access import Caller
from .backend import Backend, ObjectInfo
from .errors import NotFound
from .fsspec_errors import os_errors
from .fsspec_listing import file_entry
from .fsspec_paths import Place, resolve


def has_attributes(place: Place) -> bool:
    return place.depth >= 3 and place.tree != "kv"


def kept_attributes(backend: Backend, place: Place) -> dict | None:
    """The user metadata a write replacing the file at ``place`` stores: the file's attributes
    as a write leaves them (mtime and ctime now, setuid/setgid cleared as Linux clears them for
    a writer who is not root); None when there is no file, or it carries none.  A symbolic link
    or special file is replaced by a regular file, which takes none of its attributes."""
    if not has_attributes(place):
        return None
    try:
        info = backend.head(place.key)
    except NotFound:
        return None
    old = posixattrs.from_headers(info.meta, info.mtime, is_dir=False)
    if old is None or not stat.S_ISREG(old.mode):
        return None
    new = old.touched(data=True)
    writer = Caller(os.getuid(), os.getgid(), os.getpid())
    return posixattrs.to_headers(new.with_(mode=posixattrs.mode_after_write(new.mode, new.gid, writer)))


def touch_times(backend: Backend, place: Place, info: ObjectInfo) -> ObjectInfo:
    """Set the modification time of the file ``info`` describes (a HEAD's answer: its metadata
    included) to now, content unchanged; its new info.  PreconditionFailed if it was replaced
    meanwhile."""
    now = time.time()
    meta = info.meta
    attrs = posixattrs.from_headers(meta, info.mtime, is_dir=False) if has_attributes(place) else None
    if attrs is not None:
        meta = {**meta, **posixattrs.to_headers(attrs.with_(mtime=now, mtime_ns=None, atime=now, atime_ns=None,
                                                            ctime=now))}
    if attrs is not None or not backend.keeps_mtime:
        info = backend.set_meta(place.key, meta, if_match=info.etag)  # S3: a copy onto itself
    if backend.keeps_mtime:
        info = backend.set_mtime(place.key, now)
    return info


class Attributes:
    """The ``touch`` of `StashFileSystem`."""

    def touch(self, path, truncate=True, **kwargs) -> None:
        """Make an empty file (an existing one is emptied, keeping its attributes); with
        ``truncate=False`` an existing file keeps its content and its modification time becomes
        now (`touch_times`), as ``LocalFileSystem.touch`` does."""
        place = resolve(self._strip_protocol(path))
        if not truncate:
            try:
                found = self.info(place.path)
            except FileNotFoundError:
                found = None
            if found is not None:
                if found["type"] != "file":
                    raise IsADirectoryError(errno.EISDIR, f"{place.path} is a directory: a directory has no "
                                            "modification time here", place.path)
                self._touch(place)
                return
        self._store(place, data=b"")

    def _touch(self, place: Place) -> None:
        try:
            with os_errors(place.path):
                old = self.backend.head(place.key)
                info = touch_times(self.backend, place, old)
                if place.tree == "kv" and info.etag != old.etag:  # the disk's etag follows the mtime
                    store, name = place.parent().prefix, place.parts[2]
                    ttl = [m for m in kvexpiry.markers_of(self.backend, store, name) if m[1] == old.etag]
                    if ttl:  # the record keeps its TTL
                        kvexpiry.set_expiry(self.backend, store, name, info.etag, min(m[0] for m in ttl), ttl)
        finally:
            self.known.forget(place.path)
        self.known.put(file_entry(place.path, info))
