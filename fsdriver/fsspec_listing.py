"""Reading metadata for the ``stashfs://`` filesystem: ``info``, ``exists``, ``ls``, ``find``, ``modified``.

`Listing` is a part of `fsdriver.fsspec_fs.StashFileSystem` (``self.backend``, ``self.known``).
Entries are fsspec info dicts (`dir_entry`, `file_entry`: size, mtime and etag); what a listing
shows is remembered in the `MetaCache`, and expired ``/kv`` records read as missing (and are
removed), as in the mount.
"""

from __future__ import annotations

import datetime
import errno
import time

from . import kvexpiry, kvnames, layout
from .backend import CommonPrefix, ObjectInfo
from .errors import InvalidName, NotFound
from .fsspec_errors import os_errors
from .fsspec_paths import Place, is_listable_name, resolve


def _omit_missing(error: OSError) -> None:
    """`Listing.walk`'s "omit": a path that went missing is left out; any other error raises."""
    if not isinstance(error, (FileNotFoundError, NotADirectoryError)):
        raise error


def dir_entry(path: str) -> dict:
    return {"name": path, "size": 0, "type": "directory"}


def file_entry(path: str, info: ObjectInfo) -> dict:
    return {"name": path, "size": info.size, "type": "file", "mtime": info.mtime, "etag": info.etag}


class Listing:
    """The metadata side of `StashFileSystem`."""

    def info(self, path, refresh=False, **kwargs) -> dict:
        """``refresh``: ask the backend, whatever was learnt within the metadata TTL."""
        place = resolve(self._strip_protocol(path))
        if place.depth < 2:
            return dir_entry(place.path)
        known = None if refresh else self.known.get(place.path)
        if known is not None:
            return known
        info = self._info(place)
        self.known.put(info)
        return info

    def exists(self, path, **kwargs) -> bool:
        """Whether ``path`` exists: False when it is missing, or could not exist (a name the tree's
        rules refuse, `InvalidName`, as ``os.path.exists`` answers for a name too long).  A missing
        bucket (ENXIO) or an unreachable backend (EIO) raises, where fsspec's own ``exists``
        answered False to any error: ``if not fs.exists("done"): recompute()`` must not take
        that branch on an outage."""
        try:
            self.info(path)
        except (FileNotFoundError, InvalidName):
            return False
        return True

    def isdir(self, path) -> bool:
        """Like `exists`: False for a missing path, an outage raises (fsspec's own answers False
        to any error, so ``if fs.isdir(...)`` took the wrong branch during one)."""
        try:
            return self.info(path)["type"] == "directory"
        except (FileNotFoundError, NotADirectoryError, InvalidName):
            return False

    def isfile(self, path) -> bool:
        try:
            return self.info(path)["type"] == "file"
        except (FileNotFoundError, NotADirectoryError, InvalidName):
            return False

    def walk(self, path, maxdepth=None, topdown=True, on_error="omit", **kwargs):
        """fsspec's walk, where "omit" (the default, also of ``find(maxdepth=...)`` and ``glob``)
        leaves out only what is missing: a backend error (a missing bucket, an outage) raises
        instead of reading as an empty tree."""
        if on_error == "omit":
            on_error = _omit_missing
        yield from super().walk(path, maxdepth=maxdepth, topdown=topdown, on_error=on_error, **kwargs)

    def invalidate_cache(self, path=None) -> None:
        """Forget what was learnt within the metadata TTL: everything, or ``path`` and what is below
        it (s3fs and gcsfs users call this to see other writers' changes at once)."""
        try:
            place = None if path is None else resolve(self._strip_protocol(path))
        except InvalidName:  # ("a//b"): whatever it meant, forgetting everything covers it
            place = None
        if place is None or not place.path:
            self.known.clear()
        else:
            self.known.forget(place.path, tree=True, listing=True)
        super().invalidate_cache(path)

    def _info(self, place: Place) -> dict:
        with os_errors(place.path):
            if place.depth == 2:
                if next(iter(self.backend.list(place.prefix, max_keys=1)), None) is None:
                    raise NotFound(f"{place.path}: no such namespace", place.key)
                return dir_entry(place.path)
            if place.tree == "kv":
                return file_entry(place.path, self._record_info(place))
            obj, is_dir = self.backend.lookup(place.key)
        if is_dir:
            return dir_entry(place.path)
        if obj is None:
            raise FileNotFoundError(errno.ENOENT, f"{place.path}: no such file or directory", place.path)
        return file_entry(place.path, obj)

    def _record_info(self, place: Place) -> ObjectInfo:
        """A live record's info; NotFound when missing, expired (then removed) or not a record."""
        if place.depth != 3 or kvnames.is_scratch(place.parts[2]):
            raise NotFound(f"{place.path}: no such record", place.key)
        info = self.backend.head(place.key)
        store, name = place.parent().prefix, place.parts[2]
        markers = kvexpiry.markers_of(self.backend, store, name)
        if markers and kvexpiry.is_expired(info.etag, markers, time.time()):
            kvexpiry.expire_record(self.backend, store, name, markers)
            raise NotFound(f"{place.path}: no such record (expired)", place.key)
        return info

    def ls(self, path, detail=True, **kwargs):
        place = resolve(self._strip_protocol(path))
        if place.depth == 0:
            entries = [dir_entry(tree) for tree in layout.TREES]
        elif place.is_record:
            entries = [self.info(place.path)]
        else:
            with os_errors(place.path):
                found, entries = self._list(place)
            if not found:
                if place.depth == 1:
                    entries = []
                else:  # a file lists as itself; a missing path raises
                    entries = [self.info(place.path)]
        return entries if detail else [e["name"] for e in entries]

    def _list(self, place: Place) -> tuple[bool, list]:
        """(whether the directory exists, its entries), from one delimited listing."""
        found, files, dirs = False, {}, {}
        base = place.path + "/" if place.path else ""
        for e in self.backend.list(place.prefix, "/"):
            found = True
            name = e.key[len(place.prefix):].rstrip("/")
            if not name or not is_listable_name(name):
                continue  # the directory's own marker, or a key that cannot be a file name
            if isinstance(e, CommonPrefix):
                if place.depth >= 2 or layout.NAME_RE.match(name):
                    dirs[name] = dir_entry(base + name)
            elif place.depth >= 2:
                files[name] = e
        if place.tree == "kv" and place.depth == 2:
            dirs = {}  # .expires/ holds TTL markers, not a directory
            files = self._live_records(place, files)
        out = [file_entry(base + n, info) for n, info in files.items() if n not in dirs]
        out = sorted(out + list(dirs.values()), key=lambda d: d["name"])
        for entry in out:
            self.known.put(entry)
        if found and place.depth >= 2:
            self.known.put(dir_entry(place.path))
            self.known.put_listing(place.path, set(files) | set(dirs))
        return found, out

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        """Everything below ``path`` from one flat listing (the default walks directory by directory)."""
        place = resolve(self._strip_protocol(path))
        if maxdepth is not None or place.depth < 2 or place.tree == "kv":
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        found, files, dirs = False, {}, set()
        with os_errors(place.path):
            for e in self.backend.list(place.prefix):
                found = True
                rel = e.key[len(place.prefix):]
                segments = rel.rstrip("/").split("/")
                if rel in ("", "/") or not all(is_listable_name(s) for s in segments):
                    continue  # the directory's own marker, or a key that cannot be a file name
                dirs.update("/".join(segments[:i]) for i in range(1, len(segments)))
                if rel.endswith("/"):
                    dirs.add(rel[:-1])
                else:
                    files[rel] = e
        out = {}
        if found:
            if withdirs:
                out[place.path] = dir_entry(place.path)
                out.update({f"{place.path}/{d}": dir_entry(f"{place.path}/{d}") for d in dirs})
            out.update({f"{place.path}/{n}": file_entry(f"{place.path}/{n}", info)
                        for n, info in files.items() if n not in dirs})
            for entry in out.values():
                self.known.put(entry)
            listings = {place.path: set()} | {f"{place.path}/{d}": set() for d in dirs}
            for rel in list(dirs) + list(files):
                parent, _, name = f"{place.path}/{rel}".rpartition("/")
                listings[parent].add(name)
            for directory, names in listings.items():
                self.known.put_listing(directory, names)
        else:
            try:
                info = self.info(place.path)
            except FileNotFoundError:
                info = None
            if info is not None and info["type"] == "file":
                out[place.path] = info
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def _live_records(self, place: Place, files: dict) -> dict:
        expiries = kvexpiry.store_expiries(self.backend, place.prefix) if files else {}
        now, live = time.time(), {}
        for name, info in files.items():
            try:
                kvnames.key_of(name)
            except ValueError:
                continue  # not a record: a stray object in the store
            markers = expiries.get(name, [])
            if markers and kvexpiry.is_expired(info.etag, markers, now):
                kvexpiry.expire_record(self.backend, place.prefix, name, markers)
                continue
            live[name] = info
        return live

    def modified(self, path) -> datetime.datetime:
        info = self.info(path)
        if info["type"] != "file":
            raise IsADirectoryError(errno.EISDIR, "a directory has no modification time here", info["name"])
        return datetime.datetime.fromtimestamp(info["mtime"], tz=datetime.timezone.utc)
