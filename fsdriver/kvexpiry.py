"""Record TTLs in the backend: reading, applying and removing the expiry markers of a store.

The storage protocol of a TTL (the marker names are `fsdriver.kvnames`'): a record is expired when
a marker ``kv/<store>/.expires/<name>@<unix seconds>@<etag>`` for its *current* etag has passed.
An expired record reads as missing and is removed, only while it still has that etag; writing,
renaming or deleting a record removes its markers.  The mount's core, the Python API
(`fsdriver.kv`) and fsspec all use these functions, so they agree on every rule.

Synchronous and storage-level only (a `Backend`, no trio): the core runs them in a worker thread.
"""

from __future__ import annotations

from typing import Iterable

from . import dirmarkers, kvnames
from .backend.base import Backend
from .errors import NotFound, PreconditionFailed

# One marker: (expires at, unix seconds; the record etag it applies to; the marker's key).
Marker = tuple[int, str, str]


def store_expiries(backend: Backend, prefix: str, name: str | None = None) -> dict[str, list[Marker]]:
    """record file name -> its markers, for one record (``name``) or a whole store: one LIST."""
    marker_prefix = prefix + kvnames.EXPIRES + (f"{name}@" if name else "")
    out: dict[str, list[Marker]] = {}
    for e in backend.list(marker_prefix):
        parsed = kvnames.parse_expiry(prefix, e.key)
        if parsed and (name is None or parsed[0] == name):
            out.setdefault(parsed[0], []).append((parsed[1], parsed[2], e.key))
    return out


def markers_of(backend: Backend, prefix: str, name: str) -> list[Marker]:
    """The markers of one record (``prefix`` is the store's, ``name`` the record file name)."""
    return store_expiries(backend, prefix, name).get(name, [])


def is_expired(etag: str, markers: Iterable[Marker], now: float) -> bool:
    """A record is expired when a marker for its current etag has passed."""
    return any(exp <= now and tag == etag for exp, tag, _ in markers)


def delete_markers(backend: Backend, markers: Iterable[Marker]) -> None:
    """Remove markers already listed (missing ones are not an error)."""
    keys = [key for _, _, key in markers]
    if keys:
        backend.delete_many(keys)


def drop_markers(backend: Backend, prefix: str, name: str) -> None:
    """End every TTL of a record: after it was written, renamed away or deleted."""
    delete_markers(backend, markers_of(backend, prefix, name))


def set_expiry(backend: Backend, prefix: str, name: str, etag: str, expires: int | None,
               old: Iterable[Marker] = ()) -> None:
    """Give the record's version ``etag`` a TTL ending at ``expires`` (None: no TTL), replacing
    the markers ``old``.  The new marker is written before the old ones go, so a record that had a
    TTL never reads as having none in between."""
    if expires is not None:
        backend.put_bytes(kvnames.expiry_key(prefix, name, expires, etag), b"")
    delete_markers(backend, old)


def expire_record(backend: Backend, prefix: str, name: str, markers: Iterable[Marker]) -> None:
    """Remove an expired record, only while it still has the expired etag, and its markers.

    The delete is conditional (If-Match): a write that lands between the HEAD and the delete is
    never removed.  The HEAD first keeps that rule, all but that window, on an S3-compatible server
    that ignores If-Match on a delete."""
    markers = list(markers)
    key = prefix + name
    for _, tag, _ in markers:
        try:
            if backend.head(key).etag == tag:
                backend.delete(key, if_match=tag)
        except (NotFound, PreconditionFailed):
            pass  # gone, or written again since: the new version stays
    delete_markers(backend, markers)
    dirmarkers.keep_directory(backend, prefix.rstrip("/"))  # a store whose last record expired stays (S3)
