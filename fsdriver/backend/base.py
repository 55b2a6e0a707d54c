"""The backend protocol: what every storage backend offers, synchronously.

Keys are "/"-separated strings relative to the backend's root.  A key ending in "/" is a directory
marker (a zero-byte object on S3, a real directory on disk).  All methods block; async code goes
through `fsdriver.backend.aio.AsyncBackend`, which runs them in worker threads.

Errors are always one of `fsdriver.errors` (NotFound, PreconditionFailed, PermissionDenied,
Unavailable, InvalidRequest) — never OSError or botocore exceptions.
"""

import abc
import os

from ..errors import NotFound
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, Union

# Multipart/parallel transfer defaults, shared by the backends and the mount.
PART_SIZE = 8 * 1024 * 1024
MULTIPART_THRESHOLD = 8 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a HEAD tells about one object."""

    key: str
    size: int
    mtime: float  # seconds since the epoch
    etag: str  # changes whenever the content changes; opaque


@dataclass(frozen=True)
class CommonPrefix:
    """A "directory" in a delimited listing: every key below starts with ``key`` (ends in "/")."""

    key: str


ListEntry = Union[ObjectInfo, CommonPrefix]
PathLike = Union[str, os.PathLike]


class Backend(abc.ABC):
    """One storage backend.  Implementations must be safe to call from several threads.

    Where backends differ in what they can do, the difference is a capability here, not a check of
    which backend it is: ``local_path`` (objects are local files the mount reads directly),
    ``keeps_empty_dirs`` (a directory with nothing below it still exists, so the mount needs no
    marker object), ``keeps_mtime``/``set_mtime`` (an object's modification time can be set) and
    ``capacity``.
    """

    url: str
    keeps_empty_dirs = False  # a prefix with no object below it does not exist (S3)
    keeps_mtime = False  # `set_mtime` works (an S3 object keeps the time it was written)

    @abc.abstractmethod
    def check(self) -> None:
        """Verify the backend is usable (bucket exists, credentials accepted); raise otherwise."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size, mtime and etag of ``key``; NotFound if it does not exist."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, end: int | None = None, *, if_match: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``key``; ``end`` past EOF (or None) is clipped to EOF.

        A range starting at or past EOF gives ``b""`` (the object must still exist).
        ``if_match``: PreconditionFailed unless the object still has this etag.
        """

    @abc.abstractmethod
    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the whole object in chunks.  NotFound is raised before the first chunk."""

    def get_to_file(self, key: str, fileobj: BinaryIO) -> int:
        """Copy the whole object into an open binary file; returns the byte count."""
        n = 0
        for chunk in self.read_stream(key):
            fileobj.write(chunk)
            n += len(chunk)
        return n

    @abc.abstractmethod
    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> ObjectInfo:
        """Store ``data`` at ``key`` atomically.

        ``if_match``: only if the current etag equals it (else PreconditionFailed, also when the
        object is missing).  ``if_none_match``: only if the key does not exist yet.
        """

    @abc.abstractmethod
    def put_file(
        self, key: str, path: PathLike, *, if_match: str | None = None, if_none_match: bool = False
    ) -> ObjectInfo:
        """Store the content of the local file ``path`` at ``key``, same rules as put_bytes."""

    @abc.abstractmethod
    def list(self, prefix: str = "", delimiter: str | None = None, max_keys: int | None = None) -> Iterator[ListEntry]:
        """Every key starting with ``prefix``, in UTF-8 byte order, paginated internally.

        ``max_keys`` stops after that many entries (one small request on S3).

        With ``delimiter="/"``, keys with a further "/" after the prefix are rolled up into one
        CommonPrefix each.  Entries carry size/mtime/etag: no per-object HEAD is ever needed.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``.  Deleting a missing key is not an error (as on S3)."""

    @abc.abstractmethod
    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete every key of ``keys`` (objects or markers); missing keys are not an error.

        Not atomic: on a failure some keys may already be gone (S3 sends 1,000 keys per request).
        """

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; returns how many objects were deleted."""

    @abc.abstractmethod
    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Copy object ``src`` to ``dst`` inside the backend (no download)."""

    def rename(self, src: str, dst: str) -> dict[str, ObjectInfo]:
        """Move object ``src`` to ``dst`` (keys ending in "/": a whole directory).

        Returns what the objects at their new keys are now (new key -> ObjectInfo) where that
        changed: a copy can give an object a new etag (S3 does for multipart objects).

        The default copies then deletes, object by object: not atomic (S3).  Backends that can do
        better (disk: one rename(2), etags unchanged) override it.
        """
        if not src.endswith("/"):
            info = self.copy(src, dst)
            self.delete(src)
            return {dst: info}
        entries = [e for e in self.list(src) if isinstance(e, ObjectInfo)]
        if not entries:
            raise NotFound(f"{src}: no such directory", src)
        moved = {}
        for e in entries:
            new = dst + e.key[len(src):]
            moved[new] = self.copy(e.key, new)
        for e in entries:
            self.delete(e.key)
        return moved

    def lookup(self, key: str) -> tuple["ObjectInfo | None", bool]:
        """What ``key`` names: (the object's info or None, whether keys exist below ``key/``)."""
        try:
            info = self.head(key)
        except NotFound:
            info = None
        is_dir = next(iter(self.list(key + "/", max_keys=1)), None) is not None
        return info, is_dir

    def local_path(self, key: str):
        """A local file holding object ``key`` to read directly, or None (remote backends)."""
        return None

    def set_mtime(self, key: str, mtime: float) -> "ObjectInfo | None":
        """Set ``key``'s modification time and return its new info, or None where objects keep
        the time they were written (S3: an object's Last-Modified cannot be set)."""
        return None

    def capacity(self) -> "dict | None":
        """statvfs-like figures (bsize, frsize, blocks, bfree, bavail, files, ffree) of the storage
        behind the backend, or None where it has no fixed size (object stores)."""
        return None

    def close(self) -> None:
        """Release connections and threads."""
