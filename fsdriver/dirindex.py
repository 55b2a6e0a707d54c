"""The directory index: the attributes of a directory's entries, read with its listing (S3).

An S3 listing carries no user metadata, so showing each file's own mode, owner and times in
``ls -l`` would cost one HEAD per entry (what s3fs and rclone do).  Instead each directory's marker
object ``<dir>/`` holds, as its body, an index of its entries' attributes: per name, the etag of
the object it describes and that object's user metadata (a subdirectory's row holds the metadata
of its marker).  The marker's own user metadata stays the directory's attributes.  A listing
shows the marker and its etag; when that differs from the index read last, one GET brings the new
one.  `ls -l` of N entries is N/1000 LISTs plus one GET.

The truth stays in each object's own metadata: the index is a cache of it, checked against the
listing row by row (`annotate`):

- a row whose etag is the listed object's: its attributes are shown, no request;
- an object the index has no (current) row for, written after the index was (another node's new
  file, not indexed yet): one HEAD, and the row is added to the index;
- an older object without a row (written by another tool before the index existed, or in a
  directory without an index): shown with the mount's defaults by ``readdir``, read with one HEAD
  when it is looked up by name;
- a subdirectory without a row (made by another tool, or its row not written yet): its own
  marker is read with one HEAD when it is looked up.

Rows are written by the node that changed an entry, in the background (`note`, `run`): one
conditional PUT of the marker per directory (``If-Match`` its etag, which every write changes)
for the changes of about a second (longer for a large index: at most about a quarter of the time
goes into writing it), merged with what another node wrote on a conflict.  A directory's own
attributes, when changed explicitly (chmod, chown, utimens), are written at once (`store_dir`).
Where the backend's listings carry metadata (disk), there is no index.
"""

import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Optional

import trio

from . import posixattrs
from .backend import CommonPrefix, ObjectInfo
from .errors import BackendError, NotFound, PreconditionFailed
from .inodes import Node

log = logging.getLogger("stashfs.fs")

VERSION = 1
WRITE_DELAY = 1.0  # seconds of changes gathered into one write of a directory's index
RECENT = 2.0  # seconds: an unindexed object this much older than the index is not HEADed
# A row describes the listed object if the etags match and the listing's Last-Modified is not a
# second or more after the row's time: that time is the server's, in whole seconds (the Date of the
# put's answer, a HEAD's Last-Modified), the listing's has milliseconds.  A metadata change is a
# copy of the object onto itself, which keeps a single-part object's etag and moves only its
# Last-Modified: one made a second or more after the row's write is told apart by this.
ROW_SLACK = 1.0
HEADS_AT_ONCE = 32
CONFLICT_RETRIES = 8


@dataclass
class Index:
    """A directory's index as last read or written."""

    etag: Optional[str]  # the marker's etag (None: the directory has no marker)
    rows: dict = field(default_factory=dict)  # name -> {"e": etag or None (a directory), "m": metadata}
    dir_meta: Optional[dict] = None  # the directory's own user metadata (None: not known)
    time: float = 0.0  # when the marker was written (the backend's clock)
    seq: int = 0  # InodeTable.seq once this mount wrote it: a listing that started before is older


@dataclass
class _Changes:
    node: Node
    rows: dict = field(default_factory=dict)  # name -> row, or None: remove the row
    gone: dict = field(default_factory=dict)  # name -> when this mount removed it
    dir_edits: list = field(default_factory=list)  # edits of the directory's own Meta, in order

    def merge_into(self, newer: "_Changes") -> None:
        """Put these (older, unwritten) changes under ``newer`` ones of the same directory."""
        for name, row in self.rows.items():
            if name not in newer.rows:
                newer.rows[name] = row
                if name in self.gone:
                    newer.gone[name] = self.gone[name]
        newer.dir_edits[:0] = self.dir_edits


def _newer(ours: dict, theirs: Optional[dict]) -> bool:
    """Whether our row describes a later state of the entry than theirs: a later version of the
    object (``t``: its Last-Modified), or of the same version, later metadata (every change of
    it sets the ctime; S3's times are too coarse to order two changes within a second)."""
    if theirs is None:
        return True
    if ours.get("e") != theirs.get("e"):
        return ours.get("t", 0) >= theirs.get("t", 0)
    return _changed_at(ours) >= _changed_at(theirs)


def _changed_at(row: dict) -> float:
    meta = row.get("m") or {}
    try:
        return int(meta["ctime"]) + int(meta.get("ctime-nsec", 0)) / 1e9
    except (KeyError, ValueError):
        return row.get("t", 0)


def _parse(data: bytes, key: str) -> dict:
    """The rows of an index body; {} for an empty marker or a body that is not ours."""
    if not data:
        return {}
    try:
        doc = json.loads(data)
        rows = doc["rows"] if doc.get("v") == VERSION else {}
        return {name: row for name, row in rows.items()
                if isinstance(row, dict) and isinstance(row.get("m"), dict)}
    except (ValueError, KeyError, TypeError, AttributeError):
        log.info("%r: a directory marker with a body that is not an index; ignored", key)
        return {}


class DirIndex:
    last_error = ""  # why the last write of an index failed (the unmount's error repeats it)

    def __init__(self, fs):
        self.fs = fs  # the core.Filesystem
        self.enabled = not fs.sync_backend.lists_meta
        self._changes: dict[int, _Changes] = {}
        self._writing: dict[int, _Changes] = {}  # being written: still what listings must show
        self._locks: dict[int, trio.Lock] = {}
        # ino -> writes taken out of _changes and not finished (waiting for the lock, or running):
        # the directory's changes are still pending meanwhile (`pending`)
        self._taken: dict[int, int] = {}
        self._flushing = trio.Lock()
        self._wake = trio.Event()
        # ino -> (monotonic time before which it is not written again, the last back-off)
        self._due: dict[int, tuple[float, float]] = {}

    # -- reading -----------------------------------------------------------------------------

    async def _load(self, node: Node) -> Index:
        try:
            data, info = await self.fs.backend.get_object(node.prefix)
        except NotFound:
            return Index(None)
        return Index(info.etag, _parse(data, node.prefix), info.meta, info.mtime)

    async def annotate(self, node: Node, entries: dict, marker: Optional[ObjectInfo], seq: int) -> None:
        """Give the listed entries of ``node`` their attributes from its index (see the module
        doc); ``marker`` is the marker object the listing showed (None: none), in a listing that
        started at change number ``seq``."""
        if not self.enabled or node.depth < 2 or node.path[0] == "kv":
            return
        idx = node.index
        if idx is not None and idx.etag is not None and seq < idx.seq:
            pass  # this mount wrote the index after the listing began: ours is newer than its marker
        elif marker is None:
            idx = Index(None)
        elif idx is None or idx.etag != marker.etag:
            try:
                idx = Index(marker.etag, time=marker.mtime) if marker.size == 0 else await self._load(node)
            except BackendError as e:  # the listing stands without it: defaults, HEADs on lookup
                log.info("%s: its directory index cannot be read now (%s)", node.display, e)
                return
        node.index = idx
        ours = {}
        for changes in (self._writing.get(node.ino), self._changes.get(node.ino)):  # newest last
            if changes is not None:
                ours.update(changes.rows)
        heads = []
        for name, (is_dir, info) in list(entries.items()):
            row = ours[name] if name in ours else idx.rows.get(name)
            if row is None and is_dir:
                continue  # its marker is read (one HEAD) when it is looked up without attributes
            if row is None:
                if idx.etag is not None and info.mtime >= idx.time - RECENT:
                    heads.append(name)
                continue
            if is_dir:
                entries[name] = (True, CommonPrefix(node.prefix + name + "/", meta=row["m"]))
            elif row.get("e") == info.etag and info.mtime < row.get("t", 0) + ROW_SLACK:
                entries[name] = (False, replace(info, meta=row["m"]))
            elif idx.etag is not None:
                heads.append(name)  # changed since its row was written
        if heads:
            await self._head(node, entries, heads)

    async def _head(self, node: Node, entries: dict, names: list) -> None:
        """Read the attributes of entries the index does not describe, and add them to it."""
        limit = trio.Semaphore(HEADS_AT_ONCE)

        async def one(name):
            async with limit:
                try:
                    info = await self.fs.backend.head(node.prefix + name)
                except NotFound:
                    return  # removed meanwhile: the next listing drops it
                except BackendError as e:  # shown with the defaults; read again when looked up
                    log.info("%s/%s: its attributes cannot be read now (%s)", node.display, name, e)
                    return
            entries[name] = (False, info)
            self.note(node, name, row_of(info))

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)

    # -- writing -----------------------------------------------------------------------------

    def note(self, parent: Node, name: str, row: Optional[dict]) -> None:
        """This mount changed ``parent/name`` (``row``: its new row; None: it is gone)."""
        if not self.enabled or parent.depth < 2 or parent.path[0] == "kv" or self.fs.options.read_only:
            return
        changes = self._queued(parent)
        changes.rows[name] = row
        # The directory's node lives until its rows are written (`Attributes.stored`), as for its
        # times: forgotten by the kernel meanwhile, it would keep its old path through a rename of
        # a directory above it, and its rows would be lost with the old marker.
        parent.attrs_pending = True
        if row is None:
            changes.gone[name] = time.time()
        else:
            changes.gone.pop(name, None)
        self._wake.set()

    def note_dir(self, node: Node, edit) -> None:
        """The directory's own attributes changed here (its times): ``edit`` is stored with its
        index, applied to the marker's metadata as it is then."""
        if not self.enabled or self.fs.options.read_only:
            return
        self._queued(node).dir_edits.append(edit)
        self._wake.set()

    def _queued(self, node: Node) -> _Changes:
        """The queued changes of ``node``'s directory (made if none).  An entry of an older node
        of the same inode number (forgotten, then looked up again) is the same directory's: it is
        written with the node the table holds now, at its path now."""
        changes = self._changes.get(node.ino)
        if changes is None:
            changes = self._changes[node.ino] = _Changes(node)
        elif changes.node is not node:
            changes.node = node
        return changes

    def pending(self, node: Node) -> bool:
        return node.ino in self._changes or node.ino in self._taken

    async def store_dir(self, node: Node, edit) -> None:
        """Store a change of the directory's own attributes now (chmod/chown/utimens); on a
        failure nothing of it is applied later (the caller returns the error)."""
        changes = self._changes.pop(node.ino, None) or _Changes(node)
        rows_only = _Changes(node, dict(changes.rows), dict(changes.gone), list(changes.dir_edits))
        changes.dir_edits.append(edit)
        try:
            await self._tracked(changes)
        except BaseException:
            if rows_only.rows or rows_only.dir_edits:
                self._requeue(rows_only)  # what was pending before stays pending
            raise
        self.fs.attributes.stored(node)

    async def write_now(self, node: Node) -> None:
        """Write the directory's pending rows now (its subdirectory's attributes changed)."""
        changes = self._changes.pop(node.ino, None)
        if changes is None:
            return
        try:
            await self._tracked(changes)
        except BaseException:
            self._requeue(changes)
            raise
        self.fs.attributes.stored(node)

    async def removed(self, node: Node) -> None:
        """The directory is being removed: nothing pending of it is written any more, and a write
        in flight is waited for (it must not make the marker again after the delete)."""
        self._changes.pop(node.ino, None)
        self._due.pop(node.ino, None)
        lock = self._locks.get(node.ino)
        if lock is not None:
            async with lock:
                pass
        self.fs.attributes.stored(node)

    @asynccontextmanager
    async def held(self, nodes):
        """No index write of the directories among ``nodes`` runs meanwhile; one in flight is
        waited for.  A directory rename copies their markers and then deletes the old ones: a
        write landing on an old marker between its copy and its delete would be lost with it
        while this mount took its changes (the directory's times) for written, and the next write
        of the new marker, refused for the etag the lost one gave, would start again from the
        copy and show the directory's times going back.  Writes held here run after, at the new
        keys."""
        held = []
        try:
            for node in sorted((n for n in nodes if n.is_dir), key=lambda n: n.ino):
                lock = self._locks.setdefault(node.ino, trio.Lock())
                await lock.acquire()
                held.append((node.ino, lock))
            yield
        finally:
            for ino, lock in reversed(held):
                # (before the release, as `_tracked`: a release hands the lock to its waiter)
                if not lock.statistics().tasks_waiting and self._locks.get(ino) is lock:
                    del self._locks[ino]
                lock.release()

    def _requeue(self, changes: _Changes) -> None:
        newer = self._changes.get(changes.node.ino)
        if newer is not None:
            changes.merge_into(newer)
        else:
            self._changes[changes.node.ino] = changes
        self._wake.set()

    async def _tracked(self, changes: _Changes) -> None:
        """One write at a time per directory; its rows stay visible to listings meanwhile, and
        pending (the directory's node stays in the table) from the moment they left the queue."""
        ino = changes.node.ino
        lock = self._locks.setdefault(ino, trio.Lock())
        self._taken[ino] = self._taken.get(ino, 0) + 1
        try:
            async with lock:
                self._writing[ino] = changes
                try:
                    await self._write(changes)
                finally:
                    del self._writing[ino]
                    if not lock.statistics().tasks_waiting and self._locks.get(ino) is lock:
                        del self._locks[ino]
        finally:
            self._taken[ino] -= 1
            if not self._taken[ino]:
                del self._taken[ino]

    async def run(self) -> None:
        """Background task: write the indexes changed since the last round."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(WRITE_DELAY)  # gather: one write per directory per round
            await self.flush(due_only=True)

    async def flush(self, due_only: bool = False) -> list:
        """Write every index with changes not written yet (all of them at unmount, after the
        writes in flight).  A write that fails is tried again later (after a longer wait each time).
        Returns the directories whose changes are still not written (the unmount reports them)."""
        async with self._flushing:  # the unmount's flush waits for the background round
            await self._flush(due_only)
        if not due_only:
            for lock in list(self._locks.values()):
                async with lock:  # an explicit change being written
                    pass
        return self.unwritten()

    def unwritten(self) -> list:
        """The directories with index changes not written (yet)."""
        return [changes.node for changes in (*self._changes.values(), *self._writing.values())]

    async def _flush(self, due_only: bool) -> None:
        now = time.monotonic()
        for ino in list(self._changes):
            changes = self._changes.get(ino)
            if changes is None:
                continue
            if due_only and now < self._due.get(ino, (0, 0))[0]:
                self._wake.set()  # not yet: look again next round
                continue
            del self._changes[ino]
            node = changes.node
            if node.unlinked:
                self._due.pop(ino, None)
                self.fs.attributes.stored(node)
                continue
            started = time.monotonic()
            try:
                await self._tracked(changes)
            except (BackendError, OSError) as e:
                backoff = min(60.0, 2 * self._due.get(ino, (0, WRITE_DELAY / 2))[1])
                self._due[ino] = (time.monotonic() + backoff, backoff)
                log.warning("%s: directory index not written (%s); trying again in %.0f s", node.display, e, backoff)
                self.last_error = str(e)
                self._requeue(changes)
                continue
            except BaseException:  # cancelled (the unmount's bound): still not written
                self._requeue(changes)
                raise
            took = time.monotonic() - started
            if took * 3 > WRITE_DELAY:  # a large index: at most about a quarter of the time writing it
                self._due[ino] = (time.monotonic() + 3 * took, 0)
            else:
                self._due.pop(ino, None)
            self.fs.attributes.stored(node)

    async def _write(self, changes: _Changes) -> None:
        node = changes.node
        backend = self.fs.backend
        known = node.index is not None and node.index.etag is not None
        for _ in range(CONFLICT_RETRIES):
            if node.unlinked:
                return
            idx = node.index
            if idx is None or idx.etag is None or idx.dir_meta is None:
                idx = await self._load(node)  # the marker's own metadata is needed to write it
                if idx.etag is None and (known or node.has_marker or await backend.first(node.prefix) is None):
                    return  # the directory was removed (here or elsewhere) meanwhile: not made again
            rows = dict(idx.rows)
            for name, row in changes.rows.items():
                theirs = rows.get(name)
                if row is None:
                    if theirs is None or theirs.get("t", 0) <= changes.gone.get(name, 0):
                        rows.pop(name, None)
                elif _newer(row, theirs):
                    rows[name] = row
            dir_meta = idx.dir_meta or {}
            new_meta = None
            if changes.dir_edits:
                base = posixattrs.from_headers(idx.dir_meta, idx.time, True, *self.fs.default_owner(node))
                if base is None:
                    saved, node.meta = node.meta, None
                    base = self.fs.attributes.current(node)  # the defaults made explicit
                    node.meta = saved
                new_meta = base
                for edit in changes.dir_edits:
                    new_meta = edit(new_meta)
                dir_meta = posixattrs.to_headers(new_meta)
            body = json.dumps({"v": VERSION, "n": uuid.uuid4().hex[:12], "rows": rows},
                              separators=(",", ":")).encode()
            try:
                if idx.etag is None:
                    info = await backend.put_bytes(node.prefix, body, meta=dir_meta, if_none_match=True)
                else:
                    info = await backend.put_bytes(node.prefix, body, meta=dir_meta, if_match=idx.etag)
            except PreconditionFailed:
                node.index, known = None, known or idx.etag is not None  # another node wrote it: merge
                continue
            self.fs.inodes.seq += 1
            node.index = Index(info.etag, rows, dir_meta, info.mtime, seq=self.fs.inodes.seq)
            node.has_marker = True
            if new_meta is not None and not node.unlinked:
                shown = node.meta if node.meta_known else None
                if shown is not None and shown.ctime > new_meta.ctime:
                    # Its times moved on here while this was written (an entry created meanwhile):
                    # those stay shown, never going backwards; the next round stores them.
                    new_meta = new_meta.with_(mtime=shown.mtime, mtime_ns=shown.mtime_ns, ctime=shown.ctime)
                node.meta, node.meta_known = new_meta, True
                self.fs.inodes.changed(node)
            return
        raise PreconditionFailed(f"{node.prefix}: changed by other nodes {CONFLICT_RETRIES} times meanwhile")


def row_of(info: ObjectInfo) -> dict:
    """The index row of an object as an answer describes it (its metadata must be known)."""
    return {"e": info.etag, "t": info.mtime, "m": info.meta or {}}
