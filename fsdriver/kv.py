"""Key/value stores from Python: ``DataStore``, a dict-like view of ``/kv/<store>`` records.

    from fsdriver.kv import DataStore
    seen = DataStore("welcome")
    seen["last_ran_at"] = "2026-11-22T07:00:00Z"
    seen.incr("runs")                          # atomic: no lost update between workers
    seen.modify("emails", lambda e: e + ["a@example.com"], default=[])
    seen.set("lock", "worker-3", ttl=60)       # reads as missing after 60 s

It reads and writes the same objects as the mount (``kv/<store>/<encoded key>.json``, see
`fsdriver.kvnames`; TTLs follow `fsdriver.kvexpiry`), with no mount needed.  Values are JSON; what you get back is a fresh copy, so
changing ``ds["a"]["b"]`` in place writes nothing — assign the whole value again (or use modify).
A store is a `collections.abc.MutableMapping`: code written for a dict works (``update(mapping)``,
``pop``, ``setdefault``, ``values``).  A missing key raises `MissingKey`, both a KeyError (what
Python code expects) and a TypeError (what Pipedream documents).  A failure of the backend is an
OSError naming the key (`fsdriver.apierrors`: a missing bucket is `BucketNotFoundError`, both an
OSError and a `BucketNotFound`).  A local backend directory that is named must exist unless
``create=True``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import numbers
import random
import time
from collections.abc import MutableMapping
from typing import Any, Callable, Iterator

from . import dirmarkers, kvnames, layout, strictjson
from .apierrors import api_errors
from .backend import Backend, ObjectInfo
from .configured import shared_backend
from .errors import BucketNotFound, NotFound, PreconditionFailed
from .kvexpiry import drop_markers, expire_record, is_expired, markers_of, set_expiry, store_expiries

_MISSING = object()
MAX_ATTEMPTS = 200


def dumps(value: Any) -> bytes:
    """A value as record bytes: TypeError if JSON cannot hold it, ValueError (`strictjson.InvalidJSON`,
    `strictjson.RecordTooLarge`) if it breaks a record's limits or holds a string that UTF-8
    cannot encode — the same rules as the mount's."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise strictjson.InvalidJSON(f"value nested more than {strictjson.MAX_DEPTH} deep") from None
    except (TypeError, ValueError) as e:
        raise TypeError(f"value of type {type(value).__name__} is not JSON-serializable: {e}") from None
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start:e.end]
        raise strictjson.InvalidJSON(
            f"value holds a string with a lone surrogate {bad!r}: records are UTF-8 JSON, which cannot "
            "encode it (a surrogate is only valid as half of a pair)") from None
    strictjson.check(data)
    return data


def check_ttl(ttl: Any) -> None:
    """A TTL is None or a positive, finite number of seconds (TypeError, ValueError naming it):
    any real number but a bool (numpy's and pandas' numbers, a Fraction)."""
    if ttl is None:
        return
    if isinstance(ttl, bool) or not isinstance(ttl, numbers.Real):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__} ({ttl!r})")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive, finite number of seconds, got {ttl!r}")


def _os_errors(method):
    """A public method of `DataStore` whose backend failures are OSErrors naming its key (or the
    store, for one without a key)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        key = args[0] if args and isinstance(args[0], str) else None
        with api_errors(key if key is not None else self.name):
            return method(self, *args, **kwargs)

    return call


def loads(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8")) if data else ""
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{where}: stored record is not valid JSON ({e})") from None


class MissingKey(KeyError, TypeError):
    """No such key: ``except KeyError`` (Python) and ``except TypeError`` (Pipedream) both catch it."""


class DataStore(MutableMapping):
    """One key/value store.  Keys are non-empty strings; values anything JSON can hold."""

    def __init__(self, name: str, backend: Backend | str | None = None, create: bool = False):
        """``backend``: a URL (or an open `Backend`), else the configured one; a local directory
        that is named must exist unless ``create`` (as the mount's ``--create``)."""
        self.name = name
        self.prefix = layout.root_prefix("kv", name)
        self.backend = backend if isinstance(backend, Backend) else shared_backend(backend, create=create)

    def __repr__(self) -> str:
        return f"<DataStore {self.name!r} on {self.backend.url}>"

    def _key(self, key: str) -> str:
        return self.prefix + kvnames.record_name(key)

    def _read(self, key: str) -> tuple[Any, ObjectInfo] | None:
        """(value, info) of a live record, or None when missing or expired."""
        name = kvnames.record_name(key)
        # Markers first, then the record (as the mount does): an expiry removes the record before
        # its markers, so reading them in the other order could find a just-expired record live.
        markers = markers_of(self.backend, self.prefix, name)
        for _ in range(MAX_ATTEMPTS):
            try:
                info = self.backend.head(self.prefix + name)
                data = self.backend.get_range(self.prefix + name, 0, if_match=info.etag)
                break
            except BucketNotFound:
                raise  # not an empty store: the backend is wrong (a missing key is only a KeyError)
            except NotFound:
                return None
            except PreconditionFailed:  # changed between HEAD and GET: read again
                continue
        else:
            raise RuntimeError(f"{self.name}[{key!r}]: changed on every read attempt")
        if is_expired(info.etag, markers, time.time()):
            expire_record(self.backend, self.prefix, name, markers)
            return None
        return loads(data, f"{self.name}[{key!r}]"), info

    def _set_expiry(self, key: str, etag: str, ttl: float | None, old: list) -> None:
        expires = None if ttl is None else int(time.time() + ttl + 0.999)
        set_expiry(self.backend, self.prefix, kvnames.record_name(key), etag, expires, old)

    # -- the mapping -------------------------------------------------------------------------

    @_os_errors
    def __getitem__(self, key: str) -> Any:
        found = self._read(key)
        if found is None:
            raise MissingKey(key)
        return found[0]

    @_os_errors
    def get(self, key: str, default: Any = None) -> Any:
        found = self._read(key)
        return default if found is None else found[0]

    @_os_errors
    def __contains__(self, key: str) -> bool:
        return self._read(key) is not None

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    @_os_errors
    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value``; with ``ttl`` (seconds) the record reads as missing once it has passed."""
        check_ttl(ttl)
        data = dumps(value)
        name = kvnames.record_name(key)
        old = markers_of(self.backend, self.prefix, name)
        info = self.backend.put_bytes(self.prefix + name, data)
        if ttl is not None or old:
            self._set_expiry(key, info.etag, ttl, old)

    @_os_errors
    def set_ttl(self, key: str, ttl: float | None) -> None:
        """Give an existing record a TTL (None removes it); KeyError if the key is missing."""
        check_ttl(ttl)
        name = kvnames.record_name(key)
        found = self._read(key)
        if found is None:
            raise MissingKey(key)
        self._set_expiry(key, found[1].etag, ttl, markers_of(self.backend, self.prefix, name))

    @_os_errors
    def __delitem__(self, key: str) -> None:
        name = kvnames.record_name(key)
        if self._read(key) is None:
            raise MissingKey(key)
        self.backend.delete(self.prefix + name)
        drop_markers(self.backend, self.prefix, name)
        dirmarkers.keep_directory(self.backend, self.prefix.rstrip("/"))  # the emptied store stays (S3)

    def keys(self) -> "Keys":
        """An iterable of the keys (paginated from the backend; not a list)."""
        return Keys(self)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self) -> Iterator[tuple[str, Any]]:
        with api_errors(self.name):
            for key in self.keys():
                found = self._read(key)
                if found is not None:
                    yield key, found[0]

    def values(self) -> Iterator[Any]:
        for _, value in self.items():
            yield value

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def update(self, *args, **kwargs) -> None:
        """``dict.update``: store every pair of a mapping (or iterable of pairs) and of ``kwargs``."""
        if len(args) == 2 and callable(args[1]):
            raise TypeError("update() takes a mapping, like dict.update; the atomic read-modify-write "
                            "of one key is modify(key, fn, default=...)")
        super().update(*args, **kwargs)

    @_os_errors
    def setdefault(self, key: str, default: Any = None) -> Any:
        """The value of ``key``; if missing, store ``default`` and return it — atomically: of two
        workers, one stores its default and both get that value."""
        data = dumps(default)
        for _ in range(MAX_ATTEMPTS):
            found = self._read(key)
            if found is not None:
                return found[0]
            try:
                self.backend.put_bytes(self._key(key), data, if_none_match=True)
                return copy.deepcopy(default)
            except PreconditionFailed:  # created meanwhile (or an expired record in the way): read again
                continue
        raise RuntimeError(f"{self.name}[{key!r}]: gave up after {MAX_ATTEMPTS} conflicting writes")

    @_os_errors
    def clear(self) -> None:
        """Delete every record of the store (irreversible); the store itself stays."""
        self.backend.delete_prefix(self.prefix)
        self.backend.put_bytes(self.prefix, b"")

    # -- atomic read-modify-write ------------------------------------------------------------

    @_os_errors
    def modify(self, key: str, fn: Callable[[Any], Any], default: Any = _MISSING) -> Any:
        """Replace the value with ``fn(value)`` atomically; returns the new value.

        The write is conditional on the record not having changed since it was read; on a conflict
        it reads again and calls ``fn`` again, so concurrent updates are never lost.  A missing key
        starts from ``default`` (KeyError without one).  A TTL on the record is kept.
        """
        name = kvnames.record_name(key)
        for attempt in range(MAX_ATTEMPTS):
            found = self._read(key)
            if found is None:
                if default is _MISSING:
                    raise MissingKey(key)
                value, cond, etag = copy.deepcopy(default), {"if_none_match": True}, None
            else:
                value, cond, etag = found[0], {"if_match": found[1].etag}, found[1].etag
            new = fn(value)
            data = dumps(new)
            try:
                info = self.backend.put_bytes(self.prefix + name, data, **cond)
            except PreconditionFailed:
                time.sleep(random.uniform(0, min(0.05, 0.002 * 2 ** min(attempt, 5))))  # back off
                continue
            if etag is not None:
                markers = markers_of(self.backend, self.prefix, name)
                live = [m for m in markers if m[1] == etag]
                if live:
                    remaining = max(min(m[0] for m in live) - time.time(), 1)
                    self._set_expiry(key, info.etag, remaining, markers)
            return new
        raise RuntimeError(f"{self.name}[{key!r}]: gave up after {MAX_ATTEMPTS} conflicting updates")

    @_os_errors
    def incr(self, key: str, by: int | float = 1) -> int | float:
        """Add ``by`` to a numeric record (missing counts as 0) atomically; returns the new value."""

        def add(value):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{self.name}[{key!r}] holds {type(value).__name__}, not a number")
            return value + by

        return self.modify(key, add, default=0)


class Keys:
    """The keys of a store, read page by page when iterated (like Pipedream's Keys object)."""

    def __init__(self, store: DataStore):
        self._store = store

    def __iter__(self) -> Iterator[str]:
        with api_errors(self._store.name):
            yield from self._keys()

    def _keys(self) -> Iterator[str]:
        s = self._store
        expiries = store_expiries(s.backend, s.prefix)
        now = time.time()
        for e in s.backend.list(s.prefix, "/"):
            if not isinstance(e, ObjectInfo) or e.key == s.prefix:
                continue
            name = e.key[len(s.prefix):]
            try:
                key = kvnames.key_of(name)
            except Exception:
                continue  # not a record (a stray object in the store's prefix)
            markers = expiries.get(name, [])
            if markers and is_expired(e.etag, markers, now):
                expire_record(s.backend, s.prefix, name, markers)
                continue
            yield key

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def __repr__(self) -> str:
        return f"<Keys of {self._store.name!r}>"
