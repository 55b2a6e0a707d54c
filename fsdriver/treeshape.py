"""The tree's shape where the backend does not keep it (S3): the rules every writer keeps.

On disk a directory is a directory: an object cannot be put where a directory is, or below an
object (the disk backend refuses both: `KeyIsPrefix`, `ParentIsObject`), and an empty directory
stays.  S3 has keys only, so a writer keeps the mount's rules itself (docs/semantics.md: the mount
never makes a name both a file and a directory, and a directory whose last entry goes stays):

- `check_new_object`, before a put: no file where a directory is (IsADirectoryError) or below a
  file (NotADirectoryError).  One LIST (is the name a directory, is a file there?) and one HEAD per
  directory level above it (is it a file?), less what ``known`` already tells;
- `keep_directory`, after a delete: a directory left with nothing below it gets a marker, so it
  stays (one LIST, and the PUT of the marker when it was the last entry).

Keys are the tree's paths (``pipeline/<id>/a/b``, no trailing "/"); the levels checked are those
below the namespace (``pipeline/<id>``), which is a directory by construction.  ``known`` is what
the caller learnt lately (`fsdriver.fsspec_cache.MetaCache`: ``get(path)``, an info dict with a
"type", or None; ``absent(path)``, whether a fresh listing showed no such name), or None; a caller
without listings of its own (the data API) passes `recent_writes`, what it put lately.
"""

from __future__ import annotations

import errno
import threading
import weakref

from .backend import Backend
from .errors import BucketNotFound, NotFound
from .dirmarkers import NAMESPACE_DEPTH, has_entries, keep_directory
from .fsspec_cache import MetaCache

__all__ = ["NAMESPACE_DEPTH", "RecentWrites", "check_new_object", "has_entries", "keep_directory", "recent_writes"]


def check_new_object(backend: Backend, key: str, name: str, known=None) -> bool | None:
    """Refuse, as the mount does, an object at ``key`` where a directory is or below a file.
    ``name``: what the caller called it (the errors' filename).  Returns whether an object is at
    ``key`` already (None: not asked, on a backend that keeps the tree itself)."""
    if backend.keeps_empty_dirs:
        return None  # a real tree: the backend refuses a clash itself
    entry = known.get(key) if known is not None else None
    if entry is not None:
        if entry["type"] == "directory":
            raise IsADirectoryError(errno.EISDIR, f"{key} is a directory", name)
        exists = True
    elif known is not None and known.absent(key):
        exists = False
    else:  # one LIST tells both: the object, and keys below it
        obj, is_dir = backend.lookup(key)
        if is_dir:
            raise IsADirectoryError(errno.EISDIR, f"{key} is a directory", name)
        exists = obj is not None
    parts = key.split("/")
    for depth in range(NAMESPACE_DEPTH + 1, len(parts)):
        parent = "/".join(parts[:depth])
        if known is not None and known.absent(parent):
            break  # nothing there, nor below
        entry = known.get(parent) if known is not None else None
        if entry is not None:
            if entry["type"] == "file":
                raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a directory", name)
            continue
        try:
            backend.head(parent)
        except BucketNotFound:
            raise
        except NotFound:
            continue
        raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a directory", name)
    return exists


class RecentWrites:
    """What this process put lately on one backend, as ``known`` for `check_new_object`:
    a name put within the TTL is a file and its parents are directories, so putting more there
    asks nothing about them again.  The mount's metadata TTL (a change made elsewhere counts at
    the latest one TTL later); thread-safe (pipeline code puts from threads)."""

    TTL = 1.0

    def __init__(self):
        self._lock = threading.Lock()
        self._cache = MetaCache(self.TTL)

    def get(self, path: str) -> dict | None:
        with self._lock:
            return self._cache.get(path)

    def absent(self, path: str) -> bool:
        return False  # no listings: nothing is known to be missing

    def wrote(self, key: str) -> None:
        parts = key.split("/")
        with self._lock:
            self._cache.forget(key, tree=True)
            self._cache.put({"name": key, "type": "file"})
            for depth in range(NAMESPACE_DEPTH + 1, len(parts)):
                self._cache.put({"name": "/".join(parts[:depth]), "type": "directory"})

    def removed(self, key: str) -> None:
        with self._lock:
            self._cache.forget(key, tree=True)


_recent: "weakref.WeakKeyDictionary[Backend, RecentWrites]" = weakref.WeakKeyDictionary()
_recent_lock = threading.Lock()


def recent_writes(backend: Backend) -> RecentWrites:
    """The `RecentWrites` of ``backend`` in this process (one per backend object)."""
    with _recent_lock:
        recent = _recent.get(backend)
        if recent is None:
            recent = _recent[backend] = RecentWrites()
        return recent
