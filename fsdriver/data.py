"""The Python data API: ``pipeline`` and ``user`` object stores.

Pipeline code reads and writes the same objects the mount shows, with no mount needed::

    from fsdriver.data import pipeline, user
    pipeline.puts("stage1/out.csv", b"a,b\\n1,2\\n")     # id from $STASHFS_PIPELINE_ID
    user("alice").gets("model.bin", byte_range=[0, 1024])

``pipeline`` and ``user`` can be used directly (the namespace comes from the environment) or
called to bind arguments: ``pipeline(id="p1", backend="s3://bucket")``.  Semantics are the same on
every backend:

- names are relative paths validated by `fsdriver.layout` (``ValueError`` for a bad one);
- a missing object raises ``FileNotFoundError``;
- ``gets(name, byte_range=[begin, end])`` is half-open, ``end`` past EOF is clipped, ``begin < 0``
  or ``end < begin`` is a ``ValueError``; ``end`` may be ``None`` (to EOF);
- ``list(prefix)`` gives the names of the objects that start with ``prefix`` (as Conducto's
  does: ``list("stage")`` gives ``stage1/rows.csv``), relative to the store root, sorted;
  ``list_tree(path)`` every object at or below ``path`` taken as a path ("a/b" lists "a/b" and
  "a/b/...", never "a/bc");
- ``delete(name, recursive=True)`` removes ``name`` and everything below ``name/``, never
  ``namefoo``; the directory it was in stays (on S3 it gets a marker if it is left empty);
- a file is never put where a directory is (``IsADirectoryError``) or below a file
  (``NotADirectoryError``), on S3 as on disk (`fsdriver.treeshape`, shared with the mount's rules);
- every failure of the backend is an ``OSError`` with ``errno`` set (`fsdriver.apierrors`: a
  missing bucket is ``BucketNotFoundError``, ENXIO, never "no such object");
- a local backend directory that is named must exist (``create=True`` makes a new store).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from typing import Sequence

from . import layout, owners, treeshape
from .access import current_user, login_name
from .apierrors import api_errors
from .backend import Backend, ObjectInfo
from .configured import shared_backend
from .errors import BackendError, BucketNotFound, InvalidName, NotFound


_claimed: set = set()  # (backend url, pipeline id) whose owner record this process has ensured


def claim_pipeline(backend: Backend, pipeline_id: str) -> None:
    """The first writer of a pipeline owns it (fsdriver.owners): one request per process."""
    if (backend.url, pipeline_id) in _claimed:
        return
    try:
        owners.claim(backend, pipeline_id, login_name(), os.getuid())
    except BackendError as e:  # e.g. credentials limited to pipeline/*: the data still counts
        logging.getLogger("stashfs.data").warning("pipeline %s: owner not recorded: %s", pipeline_id, e)
    _claimed.add((backend.url, pipeline_id))



@contextlib.contextmanager
def _naming(file):
    """A local OSError (a missing directory, a directory in the way) names ``file``."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        raise type(e)(e.errno, e.strerror, os.fspath(file)) from None

class ObjectStore:
    """The objects of one namespace: ``pipeline/<id>/`` or ``user/<name>/``.

    ``backend``: a URL (or an open `Backend`), else the configured one; a local directory that is
    named must exist unless ``create`` (as the mount's ``--create``)."""

    def __init__(self, tree: str, name: str, backend: Backend | str | None = None, create: bool = False):
        self.tree = tree
        self.name = name
        self.root = layout.root_prefix(tree, name)
        self.backend = backend if isinstance(backend, Backend) else shared_backend(backend, create=create)

    def __repr__(self) -> str:
        return f"<{self.tree} store {self.name!r} on {self.backend.url}>"

    def _key(self, name: str) -> str:
        return self.root + "/".join(layout.split_path(name))

    def _not_found(self, name: str) -> FileNotFoundError:
        return FileNotFoundError(2, f"no object {name!r} in {self.tree} {self.name!r}", name)

    @contextlib.contextmanager
    def _object(self, name: str):
        """A missing object as FileNotFoundError naming it (a missing bucket stays what it is)."""
        try:
            yield
        except BucketNotFound:
            raise
        except NotFound:
            raise self._not_found(name) from None

    def _head(self, name: str) -> ObjectInfo:
        with self._object(name):
            return self.backend.head(self._key(name))

    def put(self, name: str, file: str | os.PathLike) -> None:
        """Store the local file ``file`` at ``name``."""
        if os.path.isdir(file):  # (the disk backend's own open would not name it)
            raise IsADirectoryError(errno.EISDIR, "put() stores one local file, not a directory", os.fspath(file))
        self._put(name, lambda key: self.backend.put_file(key, file))

    def puts(self, name: str, data: bytes) -> None:
        """Store ``data`` at ``name``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"puts() takes bytes, not {type(data).__name__}")
        self._put(name, lambda key: self.backend.put_bytes(key, bytes(data)))

    def _put(self, name: str, do_put) -> None:
        key = self._key(name)
        known = treeshape.recent_writes(self.backend)
        with api_errors(name):
            treeshape.check_new_object(self.backend, key, name, known)
            if self.tree == "pipeline":
                claim_pipeline(self.backend, self.name)
            try:
                do_put(key)
            except BaseException:
                known.removed(key)
                raise
        known.wrote(key)

    def get(self, name: str, file: str | os.PathLike) -> None:
        """Store object ``name`` into the local file ``file`` (replaced atomically)."""
        key = self._key(name)
        directory = os.path.dirname(os.path.abspath(file))
        with _naming(file):  # not the temp file's name: the user never gave it
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".stashfs-get-")
        try:
            with os.fdopen(fd, "wb") as f:
                with api_errors(name), self._object(name):
                    self.backend.get_to_file(key, f)
            with _naming(file):
                os.replace(tmp, file)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def gets(self, name: str, *, byte_range: Sequence[int | None] | None = None) -> bytes:
        """Return object ``name``, or the half-open ``byte_range=[begin, end)`` of it."""
        key = self._key(name)
        begin, end = 0, None
        if byte_range is not None:
            if len(byte_range) != 2:
                raise ValueError(f"byte_range must be [begin, end), got {byte_range!r}")
            begin, end = byte_range
            if not isinstance(begin, int) or (end is not None and not isinstance(end, int)):
                raise ValueError(f"byte_range must hold integers, got {byte_range!r}")
            if begin < 0:
                raise ValueError(f"byte_range begin {begin} is negative")
            if end is not None and end < begin:
                raise ValueError(f"byte_range end {end} is before begin {begin}")
        with api_errors(name), self._object(name):
            return self.backend.get_range(key, begin, end)

    def size(self, name: str) -> int:
        """The size of object ``name`` in bytes."""
        with api_errors(name):
            return self._head(name).size

    def exists(self, name: str) -> bool:
        """Whether object ``name`` exists (a missing bucket or an unreachable backend raises)."""
        try:
            with api_errors(name):
                self._head(name)
        except FileNotFoundError:
            return False
        return True

    def stat(self, name: str) -> ObjectInfo:
        """Size, mtime and etag of object ``name`` (``key`` relative to the store)."""
        with api_errors(name):
            info = self._head(name)
        return ObjectInfo(name, info.size, info.mtime, info.etag)

    def list(self, prefix: str = "") -> list[str]:
        """Names of the objects that start with ``prefix`` (Conducto's ``list``): ``list("stage")``
        gives ``stage1/rows.csv`` and ``stage/x``; sorted."""
        return [info.key for info in self.list_info(prefix)]

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """Like `list`, with size, mtime and etag (from the listing, no per-object HEAD)."""
        head, sep, partial = prefix.rpartition("/")
        segments = layout.split_path(head, allow_empty=True) if sep else []
        if "\0" in partial or head.endswith("/"):
            raise InvalidName(f"invalid prefix {prefix!r}: contains NUL or a doubled '/'")
        with api_errors(prefix or None):
            return self._listing(self.root + "".join(s + "/" for s in segments) + partial)

    def list_tree(self, path: str = "") -> list[str]:
        """Names of the objects at or below ``path`` taken as a path ("a/b" lists "a/b" and
        "a/b/...", never "a/bc"), sorted."""
        return [info.key for info in self.list_tree_info(path)]

    def list_tree_info(self, path: str = "") -> list[ObjectInfo]:
        """Like `list_tree`, with size, mtime and etag."""
        segments = layout.split_path(path, allow_empty=True)
        base = self.root + "".join(s + "/" for s in segments)
        with api_errors(path or None):
            found = self._listing(base)
            if segments:
                try:
                    info = self._head(path)
                    found.append(ObjectInfo(info.key[len(self.root):], info.size, info.mtime, info.etag))
                except FileNotFoundError:
                    pass
        found.sort(key=lambda i: i.key.encode("utf-8"))
        return found

    def _listing(self, key_prefix: str) -> list[ObjectInfo]:
        """The objects (not directory markers) whose key starts with ``key_prefix``, sorted."""
        cut = len(self.root)
        return [
            ObjectInfo(e.key[cut:], e.size, e.mtime, e.etag)
            for e in self.backend.list(key_prefix)
            if isinstance(e, ObjectInfo) and not e.key.endswith("/")
        ]

    def delete(self, name: str, recursive: bool = False) -> None:
        """Delete object ``name``; with ``recursive``, also everything below ``name/``.  The
        directory it was in stays, as on disk and in the mount (on S3: a marker if it is left
        empty, `treeshape.keep_directory`)."""
        key = self._key(name)
        with api_errors(name):
            try:
                self._head(name)
                exists = True
            except FileNotFoundError:
                exists = False
            if not exists and not (recursive and treeshape.has_entries(self.backend, key)):
                if not recursive and treeshape.has_entries(self.backend, key):
                    raise IsADirectoryError(errno.EISDIR, f"{name!r} is a directory: a recursive delete "
                                            "(recursive=True, mountctl data rm -r) removes what it holds", name)
                raise self._not_found(name)  # neither an object nor a directory (an empty one counts)
            try:
                if exists:
                    self.backend.delete(key)
                if recursive:
                    self.backend.delete_prefix(key + "/")
            finally:
                treeshape.recent_writes(self.backend).removed(key)
            treeshape.keep_directory(self.backend, key.rpartition("/")[0])


class _StoreFactory:
    """``pipeline`` / ``user``: call to bind arguments, or use the methods directly."""

    def __init__(self, tree: str):
        self._tree = tree

    def __call__(self, name: str | None = None, *, backend: Backend | str | None = None, create: bool = False,
                 **kw) -> ObjectStore:
        name = name or kw.pop(f"{'id' if self._tree == 'pipeline' else 'name'}", None)
        if kw:
            raise TypeError(f"unexpected arguments: {', '.join(kw)}")
        if name is None:
            name = self._default_name()
        return ObjectStore(self._tree, name, backend, create=create)

    def _default_name(self) -> str:
        if self._tree == "pipeline":
            pid = os.environ.get("STASHFS_PIPELINE_ID")
            if not pid:
                raise RuntimeError(
                    "no pipeline id: pass pipeline(id=...) or set STASHFS_PIPELINE_ID"
                )
            return pid
        return current_user()

    def __getattr__(self, attr: str):
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self(), attr)

    def __repr__(self) -> str:
        return f"<stashfs {self._tree} stores>"


pipeline = _StoreFactory("pipeline")
user = _StoreFactory("user")
