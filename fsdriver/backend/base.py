"""The backend protocol: what every storage backend offers, synchronously.

Keys are "/"-separated strings relative to the backend's root.  A key ending in "/" is a directory
marker (a zero-byte object on S3, a real directory on disk).  All methods block; async code goes
through `fsdriver.backend.aio.AsyncBackend`, which runs them in worker threads.

Every object (and directory marker) carries *user metadata*: a flat ``dict[str, str]`` stored with
it atomically (S3 user metadata, an xattr on disk), replaced as a whole by every put and by
`Backend.set_meta`, kept by copy and rename.  `check_meta` states what a valid one is.

Errors are always one of `fsdriver.errors` (NotFound, PreconditionFailed, PermissionDenied,
Unavailable, InvalidRequest) — never OSError or botocore exceptions.
"""

import abc
import os
import re

from ..errors import InvalidRequest, NameTooLong, NotFound, PermissionDenied
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Iterator, Mapping, Union

# Multipart/parallel transfer defaults, shared by the backends and the mount.
PART_SIZE = 8 * 1024 * 1024
MULTIPART_THRESHOLD = 8 * 1024 * 1024

# User metadata limits.  S3 allows 2 KiB of user metadata per object, counted as the UTF-8 bytes of
# every name and value; 64 of them stay free for the S3 backend's own put token ("stashfs-put").
# The count of names is bounded so that the disk backend's JSON xattr stays well under a block.
MAX_META_BYTES = 2048 - 64
MAX_META_NAMES = 64
RESERVED_META = frozenset({"stashfs-put"})  # the S3 backend's own
_META_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_META_VALUE = re.compile(r"([\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?)?\Z")


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a HEAD tells about one object.

    ``meta``: the object's user metadata ({} when it has none), or None when this answer does not
    carry it (S3 listings).  ``nlink``: how many keys name this object (hard links, disk only; a
    directory marker is 1).  ``copied_from``: for the answer of a copy (a rename, a metadata change
    on S3), the etag of the version it copied, when the server guaranteed it (None: not known).
    None of these takes part in equality: two answers about the same version of an object compare
    equal whether or not they carry its metadata.
    """

    key: str
    size: int
    mtime: float  # seconds since the epoch
    etag: str  # changes whenever the content changes (not with the metadata); opaque
    meta: "dict[str, str] | None" = field(default=None, compare=False)
    nlink: int = field(default=1, compare=False)
    copied_from: "str | None" = field(default=None, compare=False)


@dataclass(frozen=True)
class CommonPrefix:
    """A "directory" in a delimited listing: every key below starts with ``key`` (ends in "/").

    ``meta``: the user metadata of the directory's marker ``key`` ({} without one), or None when
    the listing does not carry it (S3).
    """

    key: str
    meta: "dict[str, str] | None" = field(default=None, compare=False)


ListEntry = Union[ObjectInfo, CommonPrefix]
PathLike = Union[str, os.PathLike]


def check_meta(key: str, meta: "Mapping[str, str] | None") -> dict[str, str]:
    """A copy of ``meta`` ({} for None) after checking that every backend can store it;
    InvalidRequest otherwise.

    Names are lowercase ``[a-z0-9][a-z0-9._-]*`` (S3 lowercases them), not in `RESERVED_META`;
    values are printable ASCII without leading or trailing blanks (they travel as HTTP headers);
    at most `MAX_META_NAMES` names and `MAX_META_BYTES` bytes of names and values together.
    """
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise InvalidRequest(f"{key}: metadata must be a mapping of str to str", key)
    out: dict[str, str] = {}
    size = 0
    for name, value in meta.items():
        if not isinstance(name, str) or not _META_NAME.match(name) or name in RESERVED_META:
            raise InvalidRequest(f"{key}: invalid metadata name {name!r}", key)
        if not isinstance(value, str) or not _META_VALUE.match(value):
            raise InvalidRequest(f"{key}: invalid value of metadata {name!r} (printable ASCII only)", key)
        size += len(name) + len(value)
        out[name] = value
    if len(out) > MAX_META_NAMES or size > MAX_META_BYTES:
        raise InvalidRequest(
            f"{key}: metadata too large ({len(out)} names, {size} bytes; at most "
            f"{MAX_META_NAMES} names and {MAX_META_BYTES} bytes)", key)
    return out


class RangeReader:
    """What `Backend.open_range` returns: ``read(n)`` gives the next at most ``n`` bytes of the
    range (fewer only at its end; ``b""`` after it), ``close()`` ends the request early and may be
    called from any thread, also while a ``read`` runs in another (it then takes effect when that
    read returns).  A reader is read by one thread at a time.

    This generic one makes one `Backend.get_range` per ``read``; backends that can stream (S3)
    return their own."""

    # A reader that can be polled (S3's body on a socket) reads without blocking: ``poll_into(view,
    # need)`` gives the bytes that arrived (None: none yet; 0: the end; ``need``: what the caller
    # waits for in all), and the caller waits for ``wait_fd()`` to be readable (writable if
    # ``wants_write``) in between.
    pollable = False
    wants_write = False

    def __init__(self, backend: "Backend", key: str, start: int, end: "int | None", if_match: "str | None"):
        self.backend, self.key, self.pos, self.end, self.if_match = backend, key, start, end, if_match

    def read(self, n: int) -> bytes:
        stop = self.pos + n if self.end is None else min(self.pos + n, self.end)
        if stop <= self.pos:
            return b""
        data = self.backend.get_range(self.key, self.pos, stop, if_match=self.if_match)
        short = len(data) < stop - self.pos  # the object ends here
        self.pos += len(data)
        if short:
            self.end = self.pos
        return data

    def read_into(self, buffers: "list[bytearray]") -> int:
        """Fill ``buffers`` in order with the next bytes; returns how many were read (fewer than
        the buffers hold only at the end).  The caller allocates them: on S3 the bodies of many
        streams, read by many worker threads, then land in memory of the caller's thread, not in
        the allocator's per-thread arenas (which would each keep what was freed in them).
        This one makes one `read` for all of them."""
        data = memoryview(self.read(sum(map(len, buffers))))
        done = 0
        for buf in buffers:
            k = min(len(buf), len(data) - done)
            buf[:k] = data[done : done + k]
            done += k
        return done

    def close(self) -> None:
        self.end = self.pos

    def poll_into(self, view: memoryview, need: "int | None" = None) -> "int | None":
        raise NotImplementedError("this reader cannot be polled")

    def wait_fd(self) -> int:
        raise NotImplementedError("this reader cannot be polled")


class Backend(abc.ABC):
    """One storage backend.  Implementations must be safe to call from several threads.

    Where backends differ in what they can do, the difference is a capability here, not a check of
    which backend it is: ``local_path`` (objects are local files the mount reads directly),
    ``keeps_empty_dirs`` (a directory with nothing below it still exists, so the mount needs no
    marker object), ``keeps_mtime``/``set_mtime`` (an object's modification time can be set),
    ``lists_meta`` (`list` fills ``meta``), ``hard_links`` (`link` works) and ``capacity``.
    """

    url: str
    keeps_empty_dirs = False  # a prefix with no object below it does not exist (S3)
    keeps_mtime = False  # `set_mtime` works (an S3 object keeps the time it was written)
    lists_meta = False  # `list` fills ``meta`` of every ObjectInfo and CommonPrefix (S3: None)
    max_key_bytes: "int | None" = None  # the longest key it can store (UTF-8 bytes), if limited
    hard_links = False  # `link` works (S3: PermissionDenied)

    @abc.abstractmethod
    def check(self) -> None:
        """Verify the backend is usable (bucket exists, credentials accepted); raise otherwise."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size, mtime, etag and user metadata of ``key``; NotFound if it does not exist."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, end: int | None = None, *, if_match: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``key``; ``end`` past EOF (or None) is clipped to EOF.

        A range starting at or past EOF gives ``b""`` (the object must still exist).
        ``if_match``: PreconditionFailed unless the object still has this etag.
        """

    def get_object(self, key: str) -> "tuple[bytes, ObjectInfo]":
        """The whole object with its info (metadata included), in one request where the backend
        can (S3: one GET); NotFound if it does not exist.  For small objects (directory markers)."""
        info = self.head(key)
        return self.get_range(key, 0, None, if_match=info.etag), info

    @abc.abstractmethod
    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the whole object in chunks.  NotFound is raised before the first chunk."""

    def open_range(self, key: str, start: int, end: int | None = None, *,
                   if_match: str | None = None) -> "RangeReader":
        """A reader of bytes ``[start, end)`` of ``key`` (``end`` None or past EOF: to EOF), front
        to back, from one request where the backend can (S3: one GET, streamed, without a Range
        header for a whole object).  Errors of the request (NotFound, PreconditionFailed for a
        stale ``if_match``) are raised here, or by the first read of this default, which serves
        each `RangeReader.read` with a `get_range` pinned to ``if_match``.  A range starting at or
        past EOF reads as empty."""
        if start < 0 or (end is not None and end < start):
            raise InvalidRequest(f"{key}: invalid range [{start}, {end})", key)
        return RangeReader(self, key, start, end, if_match)

    def get_to_file(self, key: str, fileobj: BinaryIO) -> int:
        """Copy the whole object into an open binary file; returns the byte count."""
        n = 0
        for chunk in self.read_stream(key):
            fileobj.write(chunk)
            n += len(chunk)
        return n

    @abc.abstractmethod
    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False,
        meta: "Mapping[str, str] | None" = None,
    ) -> ObjectInfo:
        """Store ``data`` at ``key`` atomically, with the user metadata ``meta`` (None: none),
        which replaces the old object's.  The answer's ``meta`` is what was stored.

        ``if_match``: only if the current etag equals it (else PreconditionFailed, also when the
        object is missing).  ``if_none_match``: only if the key does not exist yet.
        A key ending in "/" is a directory marker: ``data`` must be empty.
        """

    @abc.abstractmethod
    def put_file(
        self, key: str, path: PathLike, *, if_match: str | None = None, if_none_match: bool = False,
        meta: "Mapping[str, str] | None" = None,
    ) -> ObjectInfo:
        """Store the content of the local file ``path`` at ``key``, same rules as put_bytes."""

    def upload_memory(self, size: int) -> int:
        """The most memory a `put_file` of a ``size``-byte file maps for itself (S3: the buffers
        its parts are read into), which a caller with a memory budget counts there meanwhile; 0
        where it reads the file in small pieces."""
        return 0

    def cap_upload_memory(self, most: int) -> None:
        """Let `put_file` map at most about ``most`` bytes for itself, all uploads together (S3:
        at least one part buffer); `upload_memory` says what it may then take."""

    def set_meta(self, key: str, meta: "Mapping[str, str] | None", *, if_match: str | None = None,
                 if_meta: "Mapping[str, str] | None" = None) -> ObjectInfo:
        """Replace the user metadata of the object or marker ``key`` without changing its content;
        returns its new info.  NotFound if it does not exist; PreconditionFailed if ``if_match``
        is given and is not its etag, or ``if_meta`` is given and is not its metadata now (a
        metadata change alone may keep the etag).  The etag may change (S3 multipart objects) or not.

        Every backend here implements it; this default (PermissionDenied) is for wrappers."""
        raise PermissionDenied("setting user metadata is not supported by this backend", key)

    def link(self, src: str, dst: str) -> ObjectInfo:
        """Make ``dst`` a hard link of object ``src``: one object (content and metadata) under two
        keys; returns the info of ``dst``.  NotFound if ``src`` is missing, PreconditionFailed if
        ``dst`` exists.  Only where ``hard_links``; elsewhere PermissionDenied."""
        raise PermissionDenied("hard links are not supported by this backend", dst)

    # -- multipart uploads driven by the caller (only where ``multipart_uploads``) ------------------
    # The mount uploads the parts of a large file while it is written (fsdriver.multipart).  Parts
    # are numbered from 1; uploading a number again replaces that part; every part but the last
    # must be at least 5 MiB (S3).  Elsewhere these raise PermissionDenied and files are uploaded
    # whole by `put_file`.
    multipart_uploads = False

    def create_multipart(self, key: str, *, meta: "Mapping[str, str] | None" = None, checksum: bool = False) -> str:
        """Start a multipart upload of ``key`` whose object gets the user metadata ``meta``;
        returns its upload id.  Nothing is visible at ``key`` until `complete_multipart`.
        ``checksum``: its parts carry checksums the server verifies (S3: CRC32, what boto3's
        `upload_file` sends by default)."""
        raise PermissionDenied("multipart uploads are not supported by this backend", key)

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload part ``number`` of the upload; returns the part's etag.  NotFound if the upload
        is gone (completed or aborted)."""
        raise PermissionDenied("multipart uploads are not supported by this backend", key)

    def complete_multipart(self, key: str, upload_id: str, parts: "Iterable[tuple[int, str]]", size: int, *,
                           if_match: str | None = None, if_none_match: bool = False) -> ObjectInfo:
        """Make the object at ``key`` the concatenation of ``parts`` ((number, etag), ascending),
        ``size`` bytes in all, atomically, under the same conditions as `put_bytes`."""
        raise PermissionDenied("multipart uploads are not supported by this backend", key)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop the upload and its parts; an upload that no longer exists is not an error."""
        raise PermissionDenied("multipart uploads are not supported by this backend", key)

    @abc.abstractmethod
    def list(self, prefix: str = "", delimiter: str | None = None, max_keys: int | None = None) -> Iterator[ListEntry]:
        """Every key starting with ``prefix``, in UTF-8 byte order, paginated internally.

        ``max_keys`` stops after that many entries (one small request on S3).

        With ``delimiter="/"``, keys with a further "/" after the prefix are rolled up into one
        CommonPrefix each.  Entries carry size/mtime/etag: no per-object HEAD is ever needed.
        """

    @abc.abstractmethod
    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete ``key``.  Deleting a missing key is not an error (as on S3).

        ``if_match``: only while the object has that etag (an object, not a marker); another
        etag raises PreconditionFailed, a missing key is still not an error.  S3 general purpose
        buckets honour If-Match on DeleteObject; an S3-compatible server that ignores it deletes
        whatever is there, as a delete without it does.
        """

    @abc.abstractmethod
    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete every key of ``keys`` (objects or markers); missing keys are not an error.

        Not atomic: on a failure some keys may already be gone (S3 sends 1,000 keys per request).
        """

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; returns how many objects were deleted."""

    @abc.abstractmethod
    def copy(self, src: str, dst: str, *, meta: "Mapping[str, str] | None" = None) -> ObjectInfo:
        """Copy object ``src`` to ``dst`` inside the backend (no download), user metadata included
        (``meta``: the copy's metadata instead, in the same request)."""

    def rename(self, src: str, dst: str, *, meta: "Mapping[str, str] | None" = None) -> dict[str, ObjectInfo]:
        """Move object ``src`` to ``dst`` (keys ending in "/": a whole directory), metadata included
        (``meta``, for an object: its metadata after the move instead, e.g. a new ctime).

        Returns what the objects at their new keys are now (new key -> ObjectInfo) where that
        changed: a copy can give an object a new etag (S3 does for multipart objects).

        The default copies then deletes, object by object: not atomic (S3).  Backends that can do
        better (disk: one rename(2), etags unchanged) override it.
        """
        if not src.endswith("/"):
            info = self.copy(src, dst, meta=meta)
            self.delete(src)
            return {dst: info}
        entries = [e for e in self.list(src) if isinstance(e, ObjectInfo)]
        if not entries:
            raise NotFound(f"{src}: no such directory", src)
        self._check_keys(src, dst, entries)  # before anything is copied: not half a tree moved
        moved = {}
        for e in entries:
            new = dst + e.key[len(src):]
            moved[new] = self.copy(e.key, new)
        for e in entries:
            self.delete(e.key)
        return moved

    def check_rename(self, src: str, dst: str) -> None:
        """NameTooLong if moving directory ``src`` to ``dst`` (keys ending in "/") would make a
        key longer than the backend takes; asks nothing when ``dst`` is not longer than ``src``.
        Called before a rename touches anything (the target it replaces, the first copy)."""
        if self.max_key_bytes is not None and len(dst.encode()) > len(src.encode()):
            self._check_keys(src, dst, [e for e in self.list(src) if isinstance(e, ObjectInfo)])

    def _check_keys(self, src: str, dst: str, entries) -> None:
        if self.max_key_bytes is None or not entries:
            return
        new = dst + max(entries, key=lambda e: len(e.key.encode())).key[len(src):]
        if len(new.encode()) > self.max_key_bytes:
            raise NameTooLong(f"{new}: longer than the backend's keys may be ({self.max_key_bytes} bytes); "
                              f"{src} not moved")

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
