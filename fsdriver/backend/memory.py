"""An in-memory backend with S3's semantics, and fault injection for tests of the core.

Semantics (where the disk backend differs, this one does what S3 does):

- Keys and prefixes coexist: ``a`` and ``a/b`` can both exist; a directory marker (``d/``) is an
  ordinary zero-byte object, and deleting it leaves the keys below it.
- Every put gives a new etag, even for the same content; a copy (and so a rename) gives the copy
  a new etag too, as S3 does for multipart objects: `rename` reports every object it moved.
- Conditional puts (``if_match``, ``if_none_match``) and ranged reads with ``if_match`` raise
  PreconditionFailed; a put with ``if_match`` on a missing key does too.
- `list` pages through the keys (``page_size`` entries per request, like ListObjectsV2), each page
  read at its own moment, so a key added or removed during a listing may or may not be seen.
- `rename` copies then deletes, key by key, without being atomic; `local_path` is None, so the core
  takes its remote (S3) code paths: prefetcher reads, directory markers kept on S3.
- User metadata is kept per object (markers too) and, unlike S3, listed: a CommonPrefix carries
  the metadata of its marker ({} without one).  `set_meta` keeps the etag and gives a new mtime
  (S3's in-place copy of a single-part object does the same); `link` is refused as on S3.

Fault injection (never used in production): every protocol method counts its calls
(``calls[name]``), can fail (`fail`: raise a given exception once, n times or always) and can be
held at a `Gate` until the test opens it (`gate`).  Internal steps of one call (the copy inside a
rename, the HEAD inside a lookup) are not separate calls: they are neither counted nor faulted.
"""

import bisect
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, Optional

from ..errors import InvalidRequest, NotFound, PreconditionFailed
from .base import Backend, CommonPrefix, ListEntry, ObjectInfo, PathLike, RangeReader, check_meta

MAX_KEY_BYTES = 1024  # S3's limit


def _order(key: str) -> bytes:
    return key.encode("utf-8")  # S3 lists in UTF-8 byte order


@dataclass(frozen=True)
class _Object:
    data: bytes
    mtime: float
    etag: str
    meta: dict  # never mutated: replaced with the object

    def info(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.data), self.mtime, self.etag, meta=dict(self.meta))


class Gate:
    """Holds one backend call (in its worker thread) until the test opens the gate.

    ``entered`` is set once the call reached the gate; ``when="after"`` holds it after the backend
    did its work and before the answer is returned (the request "in flight" with a result)."""

    def __init__(self, names: tuple, prefix: Optional[str], when: str, timeout: float):
        if when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', not {when!r}")
        self.names, self.prefix, self.when, self.timeout = names, prefix, when, timeout
        self.name = "/".join(names)
        self.method: Optional[str] = None  # the method of the call that was held
        self.entered = threading.Event()
        self._opened = threading.Event()
        self.key: Optional[str] = None  # the key of the call that was held

    def open(self) -> None:
        self._opened.set()

    def wait_entered(self, timeout: Optional[float] = None) -> None:
        """Block until a call reached the gate (AssertionError after ``timeout`` seconds)."""
        t = self.timeout if timeout is None else timeout
        assert self.entered.wait(t), f"no {self.name} call reached the gate within {t} s"

    def _hold(self, key: Optional[str]) -> None:
        self.key = key
        self.entered.set()
        if not self._opened.wait(self.timeout):  # bounded: a forgotten gate fails, never hangs
            raise AssertionError(f"gate of {self.name} ({key}) never opened within {self.timeout} s")


@dataclass
class _Fault:
    exc: BaseException
    times: Optional[int]  # None: every matching call
    prefix: Optional[str]


def _matches(prefix: Optional[str], keys: tuple) -> bool:
    return prefix is None or any(k is not None and k.startswith(prefix) for k in keys)


class _SnapshotReader(RangeReader):
    """`MemoryBackend.open_range`: reads a fixed snapshot of the range (bytes of one version)."""

    def __init__(self, view: memoryview):
        self.view, self.pos = view, 0

    def read(self, n: int) -> bytes:
        data = bytes(self.view[self.pos : self.pos + max(n, 0)])
        self.pos += len(data)
        return data

    def close(self) -> None:
        self.pos = len(self.view)


class MemoryBackend(Backend):
    lists_meta = True

    def __init__(self, name: str = "test", *, page_size: int = 1000, clock=time.time, gate_timeout: float = 20.0):
        self.url = f"memory://{name}"
        self.page_size = page_size
        self.clock = clock  # wall-clock seconds for mtimes
        self.gate_timeout = gate_timeout
        self.calls: Counter = Counter()  # protocol method -> calls (and "list.page" -> pages)
        self._objects: dict[str, _Object] = {}
        self._lock = threading.Lock()
        self._etags = itertools.count(1)
        self._faults: dict[str, list[_Fault]] = {}
        self._gates: list[Gate] = []
        self._uploads: dict[str, tuple] = {}  # multipart upload id -> (key, meta, {number: (etag, data)})

    # -- fault injection -------------------------------------------------------------------------

    def fail(self, name: str, exc: BaseException, *, times: Optional[int] = 1, prefix: Optional[str] = None) -> None:
        """Make the next ``times`` calls of method ``name`` (None: every call until `heal`) whose
        key starts with ``prefix`` (None: any) raise ``exc`` before doing anything."""
        with self._lock:
            self._faults.setdefault(name, []).append(_Fault(exc, times, prefix))

    def heal(self, name: Optional[str] = None) -> None:
        """Remove the failures of method ``name`` (None: of every method)."""
        with self._lock:
            if name is None:
                self._faults.clear()
            else:
                self._faults.pop(name, None)

    def gate(self, name: str | tuple, *, prefix: Optional[str] = None, when: str = "before") -> Gate:
        """Hold the next call of method ``name`` (or of any of a tuple of methods) with a key
        starting with ``prefix`` at a gate."""
        g = Gate((name,) if isinstance(name, str) else tuple(name), prefix, when, self.gate_timeout)
        with self._lock:
            self._gates.append(g)
        return g

    def _enter(self, name: str, *keys) -> Optional[Gate]:
        """Count the call, raise its injected failure, hold it at its gate; returns an "after" gate."""
        with self._lock:
            self.calls[name] += 1
            for f in self._faults.get(name, ()):
                if _matches(f.prefix, keys):
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self._faults[name].remove(f)
                    raise f.exc
            gate = next((g for g in self._gates if name in g.names and _matches(g.prefix, keys)), None)
            if gate is not None:
                self._gates.remove(gate)
                gate.method = name
        if gate is not None and gate.when == "before":
            gate._hold(keys[0] if keys else None)
            return None
        return gate

    @staticmethod
    def _leave(gate: Optional[Gate], keys: tuple) -> None:
        if gate is not None:
            gate._hold(keys[0] if keys else None)

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _check_key(key: str) -> None:
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidRequest(f"invalid key {key!r}: not valid UTF-8", key) from None
        if size == 0 or size > MAX_KEY_BYTES:
            raise InvalidRequest(f"invalid key {key!r}: keys are 1 to {MAX_KEY_BYTES} bytes", key)

    def _get(self, key: str) -> _Object:
        obj = self._objects.get(key)
        if obj is None:
            raise NotFound(f"{key}: no such object", key)
        return obj

    def _store(self, key: str, data: bytes, if_match=None, if_none_match=False, meta=None) -> ObjectInfo:
        self._check_key(key)
        with self._lock:
            current = self._objects.get(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"{key}: already exists", key)
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"{key}: etag changed since it was read", key)
            obj = _Object(bytes(data), self.clock(), f"mem-{next(self._etags):x}", dict(meta or {}))
            self._objects[key] = obj
        return obj.info(key)

    def _copy(self, src: str, dst: str, meta=None) -> ObjectInfo:
        with self._lock:
            o = self._get(src)
        return self._store(dst, o.data, meta=o.meta if meta is None else meta)

    def _delete(self, key: str) -> bool:
        with self._lock:
            return self._objects.pop(key, None) is not None

    def _page(self, prefix: str, delimiter: Optional[str], after: Optional[str], rolled: Optional[str]):
        """One ListObjectsV2 page: up to page_size entries after the key ``after``, skipping the keys
        under the prefix ``rolled`` already reported.  Returns (entries, last key, last prefix)."""
        with self._lock:
            self.calls["list.page"] += 1
            keys = sorted((k for k in self._objects if k.startswith(prefix)), key=_order)
            infos = {k: self._objects[k] for k in keys}
        start = 0 if after is None else bisect.bisect_right([_order(k) for k in keys], _order(after))
        out: list[ListEntry] = []
        for key in keys[start:]:
            if len(out) == self.page_size:
                break
            if rolled is not None and key.startswith(rolled):
                continue
            cut = key.find("/", len(prefix)) if delimiter else -1
            if cut >= 0:
                rolled = key[: cut + 1]
                marker = infos.get(rolled)
                out.append(CommonPrefix(rolled, {} if marker is None else dict(marker.meta)))
            else:
                out.append(infos[key].info(key))
            after = key
        return out, after, rolled

    # -- protocol --------------------------------------------------------------------------------

    def check(self) -> None:
        self._leave(self._enter("check"), ())

    def head(self, key: str) -> ObjectInfo:
        gate = self._enter("head", key)
        with self._lock:
            o = self._get(key)
        self._leave(gate, (key,))
        return o.info(key)

    def _ranged(self, call: str, key: str, start: int, end: int | None, if_match: str | None):
        """The object a ranged read of ``call`` reads (checked, counted, faultable)."""
        gate = self._enter(call, key)
        if start < 0 or (end is not None and end < start):
            raise InvalidRequest(f"{key}: invalid range [{start}, {end})", key)
        with self._lock:
            o = self._get(key)
        if if_match is not None and o.etag != if_match:
            raise PreconditionFailed(f"{key}: changed since it was opened", key)
        self._leave(gate, (key,))
        return o

    def get_range(self, key: str, start: int, end: int | None = None, *, if_match: str | None = None) -> bytes:
        return self._ranged("get_range", key, start, end, if_match).data[start:end]

    def open_range(self, key: str, start: int, end: int | None = None, *, if_match: str | None = None):
        """One counted call (``calls["open_range"]``: one GET) whose reader serves the version of
        the object at that moment, as a streamed S3 body does; its reads are not calls."""
        o = self._ranged("open_range", key, start, end, if_match)
        return _SnapshotReader(memoryview(o.data)[start:end])

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        gate = self._enter("read_stream", key)
        with self._lock:
            data = self._get(key).data
        self._leave(gate, (key,))
        return (data[i : i + chunk_size] for i in range(0, len(data), chunk_size))

    def get_to_file(self, key: str, fileobj: BinaryIO) -> int:
        gate = self._enter("get_to_file", key)
        with self._lock:
            data = self._get(key).data
        fileobj.write(data)
        self._leave(gate, (key,))
        return len(data)

    def put_bytes(self, key, data, *, if_match=None, if_none_match=False, meta=None) -> ObjectInfo:
        gate = self._enter("put_bytes", key)
        meta = check_meta(key, meta)
        info = self._store(key, data, if_match, if_none_match, meta)
        self._leave(gate, (key,))
        return info

    def put_file(self, key, path: PathLike, *, if_match=None, if_none_match=False, meta=None) -> ObjectInfo:
        gate = self._enter("put_file", key)
        meta = check_meta(key, meta)
        with open(path, "rb") as f:  # a problem with the local file is the caller's OSError
            data = f.read()
        info = self._store(key, data, if_match, if_none_match, meta)
        self._leave(gate, (key,))
        return info

    # -- multipart uploads (S3's semantics; parts of any size; `part_size` is what the mount uses) --
    multipart_uploads = True
    part_size = 8 << 20
    multipart_threshold = 8 << 20
    transfer_workers = 4

    def create_multipart(self, key: str, *, meta=None, checksum: bool = False) -> str:
        gate = self._enter("create_multipart", key)
        self._check_key(key)
        meta = check_meta(key, meta)
        with self._lock:
            upload_id = f"upload-{next(self._etags):x}"
            self._uploads[upload_id] = (key, meta, {})
        self._leave(gate, (key,))
        return upload_id

    def _upload(self, key: str, upload_id: str) -> tuple:
        u = self._uploads.get(upload_id)
        if u is None or u[0] != key:
            raise NotFound(f"{key}: no such upload {upload_id}", key)
        return u

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        gate = self._enter("upload_part", key)
        with self._lock:
            parts = self._upload(key, upload_id)[2]
            etag = f"part-{next(self._etags):x}"
            parts[number] = (etag, bytes(data))
        self._leave(gate, (key,))
        return etag

    def complete_multipart(self, key: str, upload_id: str, parts, size: int, *,
                           if_match=None, if_none_match=False) -> ObjectInfo:
        gate = self._enter("complete_multipart", key)
        with self._lock:
            _, meta, uploaded = self._upload(key, upload_id)
            chunks = []
            for number, etag in parts:
                if number not in uploaded or uploaded[number][0] != etag:
                    raise InvalidRequest(f"{key}: part {number} of {upload_id} was not uploaded as {etag}", key)
                chunks.append(uploaded[number][1])
        info = self._store(key, b"".join(chunks), if_match, if_none_match, meta)
        with self._lock:
            self._uploads.pop(upload_id, None)
        self._leave(gate, (key,))
        return info

    def abort_multipart(self, key: str, upload_id: str) -> None:
        gate = self._enter("abort_multipart", key)
        with self._lock:
            self._uploads.pop(upload_id, None)
        self._leave(gate, (key,))

    def open_uploads(self) -> list[str]:
        """For assertions: the keys of multipart uploads neither completed nor aborted."""
        with self._lock:
            return [u[0] for u in self._uploads.values()]

    def set_meta(self, key: str, meta, *, if_match: str | None = None, if_meta=None) -> ObjectInfo:
        gate = self._enter("set_meta", key)
        meta = check_meta(key, meta)
        with self._lock:
            o = self._get(key)
            if if_match is not None and o.etag != if_match:
                raise PreconditionFailed(f"{key}: etag changed since it was read", key)
            if if_meta is not None and (o.meta or {}) != dict(if_meta):
                raise PreconditionFailed(f"{key}: its metadata changed since it was read", key)
            o = self._objects[key] = _Object(o.data, self.clock(), o.etag, meta)
        self._leave(gate, (key,))
        return o.info(key)

    def link(self, src: str, dst: str) -> ObjectInfo:
        self._leave(self._enter("link", src, dst), (src, dst))
        return super().link(src, dst)

    def list(self, prefix: str = "", delimiter: str | None = None, max_keys: int | None = None) -> Iterator[ListEntry]:
        gate = self._enter("list", prefix)
        if delimiter not in (None, "/"):
            raise InvalidRequest(f"unsupported delimiter {delimiter!r}")

        def entries():
            after = rolled = None
            n = 0
            while True:
                page, after, rolled = self._page(prefix, delimiter, after, rolled)
                for e in page:
                    yield e
                    n += 1
                    if max_keys and n >= max_keys:
                        return
                if len(page) < self.page_size:
                    return

        self._leave(gate, (prefix,))
        return entries()

    def lookup(self, key: str) -> tuple[ObjectInfo | None, bool]:
        gate = self._enter("lookup", key)
        with self._lock:
            o = self._objects.get(key)
            is_dir = any(k.startswith(key + "/") for k in self._objects)
        self._leave(gate, (key,))
        return (None if o is None else o.info(key)), is_dir

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        gate = self._enter("delete", key)
        with self._lock:
            current = self._objects.get(key)
            if if_match is not None and current is not None and current.etag != if_match:
                raise PreconditionFailed(f"{key}: etag changed (if_match)", key)
            self._objects.pop(key, None)
        self._leave(gate, (key,))

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = tuple(keys)
        gate = self._enter("delete_many", *keys)
        for key in keys:
            self._delete(key)
        self._leave(gate, keys)

    def delete_prefix(self, prefix: str) -> int:
        gate = self._enter("delete_prefix", prefix)
        with self._lock:
            doomed = [k for k in self._objects if k.startswith(prefix)]
        count = sum(self._delete(k) and not k.endswith("/") for k in doomed)
        self._leave(gate, (prefix,))
        return count

    def copy(self, src: str, dst: str, *, meta=None) -> ObjectInfo:
        gate = self._enter("copy", src, dst)
        info = self._copy(src, dst, meta)
        self._leave(gate, (src, dst))
        return info

    def rename(self, src: str, dst: str, *, meta=None) -> dict[str, ObjectInfo]:
        """Copy then delete, object by object (not atomic, as on S3); every copy has a new etag."""
        gate = self._enter("rename", src, dst)
        if src.endswith("/"):
            with self._lock:
                keys = sorted((k for k in self._objects if k.startswith(src)), key=_order)
            if not keys:
                raise NotFound(f"{src}: no such directory", src)
            moved = {dst + k[len(src):]: self._copy(k, dst + k[len(src):]) for k in keys}
            for k in keys:
                self._delete(k)
        else:
            moved = {dst: self._copy(src, dst, meta)}
            self._delete(src)
        self._leave(gate, (src, dst))
        return moved

    def local_path(self, key: str):
        return None

    # -- for assertions (not protocol calls: neither counted nor faulted) --------------------------

    def contents(self) -> dict[str, bytes]:
        """Every object now: key -> bytes."""
        with self._lock:
            return {k: o.data for k, o in self._objects.items()}
