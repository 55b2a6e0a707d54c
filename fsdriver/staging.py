"""The cache directory: staged writes and the journal of pending uploads.

Layout of ``--cache-dir`` (one daemon at a time, enforced by an flock on ``lock``)::

    staged/<id>          the local content of a file being written
    pending/<id>.json    {"key": ..., "staged": "<id>"}: staged/<id> must reach the backend
    multipart/<id>.json  {"key": ..., "upload_id": ...}: a multipart upload started while a file was
                         written (fsdriver.multipart), to abort unless it is completed
    reserve              space held back for journal entries, given up when the disk is full

A staged file becomes *pending* when an upload of it starts (close, fsync, flush) and stops being
pending when that upload succeeded.  After a crash the next daemon uploads every pending file before
serving; a staged file without a journal entry was never closed and is discarded.  See
docs/concurrency.md for the crash states.

A `StagedFile` of an existing object starts empty and sparse: the blocks of the object that a
partial write or a read needs are fetched on demand (pinned to the etag the file was opened at),
and the rest only when the file is uploaded.

On S3 a large file's full parts are uploaded while it is written (`fsdriver.multipart`): its
`StagedFile.stream` is told of every change of the content (after the bytes are in the file), and
the multipart uploads such streams started are recorded under ``multipart/`` until completed or
aborted, so that the next daemon aborts what a crash left open.
"""

import errno
import fcntl
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Optional

import trio

from .errors import PreconditionFailed, Unavailable
from .fsutil import durable_temp, replace_durably

log = logging.getLogger("stashfs.staging")

BLOCK = 1 << 20
# Blocks of the origin still missing when a file is completed (its upload, `complete_locked`) are
# fetched in ranges of up to this many bytes, this many ranges at once (`ensure_locked`).
FETCH_RUN = 8 << 20
FETCH_PARALLEL = 4
# A new file's content up to this size is held in memory (charged to the memory budget) until it
# is uploaded or grows: its writes then answer without a thread hop each, and the upload writes it
# into the staged file in the worker thread that uploads it (`spill_sync`): one hop per close of a
# small file instead of two.  Nothing is acknowledged from memory: a staged file without a journal
# entry is discarded after a crash anyway, and an upload journals only what is in the file.
IN_MEMORY_MAX = 64 << 10
# Enough for thousands of journal entries: when the cache disk fills up, giving this back lets the
# journal entry of a failed upload still be written (else its data would not survive a crash).
JOURNAL_RESERVE = 1 << 20


def _runs(blocks: list[int], longest: int) -> list[tuple[int, int]]:
    """Ascending block numbers as ``[first, stop)`` runs of consecutive ones, each at most
    ``longest`` blocks."""
    runs: list[tuple[int, int]] = []
    for b in blocks:
        if runs and runs[-1][1] == b and b - runs[-1][0] < longest:
            runs[-1] = (runs[-1][0], b + 1)
        else:
            runs.append((b, b + 1))
    return runs


def _pwrite_all(fd: int, data, off: int) -> int:
    """``pwrite`` all of ``data`` at ``off``: a write the disk cut short (it filled up meanwhile)
    goes on where it stopped, so it ends written whole or with the OSError of the rest."""
    done = 0
    with memoryview(data) as view:  # released on the way out, an error's too: a bytearray written
        while done < len(view):     # (content held in memory) stays resizable
            with view[done:] as rest:
                done += os.pwrite(fd, rest, off + done)
    return done


class CacheLocked(Exception):
    pass


@dataclass
class Pending:
    """A journaled upload found in the cache dir at start-up."""

    key: str
    path: Path
    journal: Path
    conditions: dict
    meta: Optional[dict] = None  # the user metadata (POSIX attributes) stored with it
    # The version of the key this content replaces, as the mount that wrote it knew it when it
    # journaled it (None: it knew no object there); absent from entries older than this field.
    replaces: Optional[str] = None
    replaces_known: bool = False
    size: Optional[int] = None  # the staged file's size when journaled (absent from older entries)

    def upload_conditions(self) -> dict:
        """The conditions of its upload by a later daemon (`conditions_over`)."""
        return conditions_over(self.conditions, self.replaces, self.replaces_known)


def conditions_over(own: dict, replaces: Optional[str], known: bool) -> dict:
    """The conditions of an upload whose close failed, tried again later (by the retry loop, or a
    later daemon): its own (a record's, a create's), else that the key still holds the version it
    replaces (``replaces``; None: no object).  Its writer never heard that it was stored, and a
    write another node made since then is the later one: it must stay.  Unknown (``known``
    False: a journal entry of an older daemon): its own conditions only."""
    if own or not known:
        return own
    return {"if_match": replaces} if replaces else {"if_none_match": True}


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.staged_dir = self.root / "staged"
        self.pending_dir = self.root / "pending"
        self.streams_dir = self.root / "multipart"
        # Staged data is users' file content: private to the daemon's user (0700, files 0600).
        self.root.parent.mkdir(parents=True, exist_ok=True)
        for d in (self.root, self.staged_dir, self.pending_dir, self.streams_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        self.lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock_fd)
            raise CacheLocked(f"cache dir {self.root} is in use by another stashfs daemon") from None
        # Local file I/O is quick but may block (slow disk, ENOSPC): it never runs on the trio thread.
        self.io_limiter = trio.CapacityLimiter(8)
        # The daemon's memory budget (set by the core): small new files' content held in memory
        # is charged to it; without one, every write goes to the staged file at once.
        self.budget = None
        self.reserve = self.root / "reserve"
        self._hold_reserve()

    def close(self) -> None:
        os.close(self.lock_fd)

    def new_path(self) -> Path:
        return self.staged_dir / uuid.uuid4().hex

    def _hold_reserve(self) -> None:
        """Allocate the journal reserve if it is missing (best effort: a full disk has no room)."""
        if self.reserve.exists():
            return
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, JOURNAL_RESERVE)
            finally:
                os.close(fd)
        except OSError as e:
            self.reserve.unlink(missing_ok=True)
            log.warning("cannot reserve %d bytes for the upload journal in %s: %s",
                        JOURNAL_RESERVE, self.root, e.strerror)

    def journal(self, staged: "StagedFile", key: str, replaces: Optional[str] = None) -> None:
        """Record that ``staged`` must reach ``key`` (written atomically, fsynced), replacing the
        version ``replaces`` (its etag as this mount knows it; None: no object known there).

        On a full disk the reserve is given up for it; OSError when even that is not enough.
        """
        entry = self.pending_dir / (staged.path.name + ".json")
        meta = json.dumps({"key": key, "staged": staged.path.name, "conditions": staged.conditions,
                           "meta": staged.meta, "replaces": replaces, "size": staged.size}).encode()
        staged.journal_tried = True  # from here on an entry may exist, whatever happens below
        try:
            tmp = durable_temp(self.pending_dir, meta, prefix=".", suffix=".tmp")
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.reserve.exists():
                raise
            log.warning("cache dir %s is full: using the journal reserve for the pending upload of %s",
                        self.root, key)
            self.reserve.unlink(missing_ok=True)  # another journal thread may have given it up first
            tmp = durable_temp(self.pending_dir, meta, prefix=".", suffix=".tmp")
        replace_durably(tmp, entry)
        staged.journaled = True
        self._hold_reserve()

    def give_up_reserve(self, what: str) -> bool:
        """The cache disk is full: free the journal reserve for ``what`` (False: none is left)."""
        if not self.reserve.exists():
            return False
        log.warning("cache dir %s is full: using the journal reserve for %s", self.root, what)
        self.reserve.unlink(missing_ok=True)
        return True

    def unjournal(self, staged: "StagedFile") -> None:
        staged.journaled = False
        if not staged.journal_tried:
            return  # no entry was ever written for it: nothing to remove (no syscall per close)
        try:
            os.unlink(self.pending_dir / (staged.path.name + ".json"))
        except FileNotFoundError:
            pass

    def pending(self) -> list["Pending"]:
        """Every pending upload, oldest first."""
        out = []
        entries = sorted(self.pending_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for entry in entries:
            try:
                meta = json.loads(entry.read_text())
                out.append(Pending(meta["key"], self.staged_dir / meta["staged"], entry,
                                   meta.get("conditions", {}), meta.get("meta"), meta.get("replaces"),
                                   "replaces" in meta, meta.get("size")))
            except (ValueError, KeyError, OSError) as e:
                log.error("pending upload %s is unreadable (%s); left in place", entry, e)
        return out

    def record_stream(self, key: str, upload_id: str) -> Path:
        """Record (durably) that multipart upload ``upload_id`` of ``key`` is open; its entry."""
        meta = json.dumps({"key": key, "upload_id": upload_id}).encode()
        tmp = durable_temp(self.streams_dir, meta, prefix=".", suffix=".tmp")
        entry = self.streams_dir / (uuid.uuid4().hex + ".json")
        replace_durably(tmp, entry)
        return entry

    def forget_stream(self, entry: Path) -> None:
        """The upload of ``entry`` was completed or aborted (not durable: aborting again is harmless)."""
        entry.unlink(missing_ok=True)

    def streams(self) -> list[tuple[Path, str, str]]:
        """Every recorded open multipart upload: (entry, key, upload id)."""
        out = []
        for entry in sorted(self.streams_dir.glob("*.json")):
            try:
                meta = json.loads(entry.read_text())
                out.append((entry, meta["key"], meta["upload_id"]))
            except (ValueError, KeyError, OSError) as e:
                log.error("multipart upload record %s is unreadable (%s); left in place", entry, e)
        for tmp in self.streams_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return out

    def discard_unjournaled(self, keep: set[Path]) -> int:
        """Remove staged files that no journal entry refers to (never closed before a crash)."""
        n = 0
        for p in self.staged_dir.iterdir():
            if p not in keep:
                p.unlink()
                n += 1
        for p in self.pending_dir.glob("*.tmp"):
            p.unlink()
        return n


Fetch = Callable[[int, int], Awaitable[bytes]]


class StagedFile:
    """The local content of one file being written: a sparse file plus which blocks are present.

    Its upload state moves only through the methods below (the attributes are read elsewhere, and
    written here):

        clean ──write/truncate──▶ dirty ──begin_upload──▶ pending ──uploaded──▶ clean
                                    ▲                        │
                                    └──────upload_failed─────┘ (kept for a retry; EIO)
        any ──reject──▶ rejected (never uploaded again; `accept_again` after a refused record
                        close whose handle writes more)
        any ──a staging write fails / mark_broken──▶ broken (never uploaded; cleared by
                        truncating to 0)

    ``lock`` serialises every change of the content and every upload of it.
    """

    def __init__(self, cache: Cache, size: int = 0, origin_size: int = 0, fetch: Optional[Fetch] = None,
                 dirty: bool = False, conditions: Optional[dict] = None):
        self.cache = cache
        self.path = cache.new_path()
        # The content is held in memory first when it starts empty and new (see `behind`): the file
        # is then made by `spill_sync`, in a worker thread, if it is ever needed.
        in_memory = size == 0 and fetch is None and cache.budget is not None
        self.fd = -1 if in_memory else os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._removed = False
        self.size = size
        # Bytes [0, origin_size) come from the object the file was opened on, fetched lazily.
        self.origin_size = origin_size if fetch else 0
        self.fetch = fetch
        self.present: set[int] = set()  # block numbers already in the staged file
        self.dirty = dirty  # holds content the backend does not have yet
        self.pending = False  # an upload started and has not succeeded yet
        self.error: Optional[str] = None  # why the last upload failed
        self.broken: Optional[OSError] = None  # a staging write failed: never upload this content
        self.rejected: Optional[Exception] = None  # the backend or validation refused it: never retry
        self.journaled = False  # a journal entry in pending/ names this file (it survives a crash)
        self.journal_tried = False  # `Cache.journal` ran for it: an entry may exist (unjournal removes it)
        self.journal_error: Optional[str] = None  # why the last attempt to journal it failed
        # Conditions of the next upload (key/value records): {"if_match": etag} when this content
        # was built on a version of the record, {"if_none_match": True} for an O_EXCL create.
        self.conditions: dict = conditions or {}
        # The version of the key this content replaces, as this mount knew it when its upload
        # first failed (None: no object): a retry lands only over it (`retry_conditions`).
        self.replaces: Optional[str] = None
        self.replaces_known = False
        # (size, attributes) of its uploads since then whose answers were lost: one may have landed
        # (`Uploader.upload_locked` recognises it in the key and replaces it).
        self.attempts: list = []
        # A file created here without O_TRUNC: its first upload must not replace one another
        # writer created meanwhile (If-None-Match), the later ones are plain (`create_only_upload`).
        self.create_only = False
        # The user metadata (POSIX attributes) its upload stores: set when an upload starts
        self.meta: Optional[dict] = None
        # The multipart upload of its parts started while it is written (fsdriver.multipart), if any:
        # told of every change of the content, abandoned when the file is removed.
        self.stream = None
        # Made only to hold a removed file's content for the descriptors still open on it
        # (`OpenFiles.keep_for_descriptors`): nothing was written to it.
        self.for_readers = False
        self.lock = trio.Lock()
        # Reads of the staged file in flight without the lock (`read`): `rebase_locked` waits for them.
        self._reads = 0
        self._reads_done: Optional[trio.Event] = None
        # The whole content, while it is in memory only (the staged file on disk is empty): a new
        # (or truncated) file without origin, no larger than IN_MEMORY_MAX.  Moved into the file by
        # `spill_sync` (in a worker thread), before anything reads or changes the file itself.
        self.behind: Optional[bytearray] = bytearray() if in_memory else None
        self.charged = 0  # bytes of the memory budget ``behind`` holds (taken and given back on the loop)
        if size:
            os.ftruncate(self.fd, size)

    async def _io(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.cache.io_limiter)

    def _keep_in_memory(self, end: int) -> bool:
        """Whether content up to ``end`` may stay in memory: charge the budget for its growth."""
        if self.behind is None or self.stream is not None or end > IN_MEMORY_MAX:
            return False
        budget = self.cache.budget
        grow = end - self.charged
        if grow > 0:
            # At most a quarter of the budget: files held open after their close keep theirs,
            # and nothing else may be kept waiting for it.
            if budget is None or budget.used + grow > budget.limit // 4 or not budget.try_acquire(grow):
                return False
            self.charged += grow
        return True

    def spill_sync(self) -> None:
        """Move content held in memory into the staged file, made now (in a worker thread; the
        caller holds ``lock``, so nothing changes the content meanwhile).  A full cache disk gives
        up the journal reserve for it, as a journal entry would (the content of a close is what
        the reserve keeps).  On OSError the file is removed again and the content stays in memory,
        whole: the caller can still upload it from there."""
        behind = self.behind
        if behind is None:
            return
        try:
            fd = self._file_of(behind)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.cache.give_up_reserve(self.path.name):
                raise
            fd = self._file_of(behind)
        if self._removed:  # freed meanwhile: the file must not outlive it
            os.close(fd)
            os.unlink(self.path)
            return
        self.fd = fd
        self.behind = None  # the file holds it now (reads on the loop take either: both are whole)

    def _file_of(self, content: bytearray) -> int:
        """The staged file made, holding ``content``; its descriptor (nothing left on OSError)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _pwrite_all(fd, content, 0)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        return fd

    def settle_memory(self) -> None:
        """Give the budget back what content no longer in memory held (on the trio thread)."""
        if self.behind is None and self.charged:
            n, self.charged = self.charged, 0
            if self.cache.budget is not None:
                self.cache.budget.release(n)

    async def _spill(self) -> None:
        """Move content held in memory into the file before an operation on the file itself."""
        if self.behind is not None:
            try:
                await self._io(self.spill_sync)
            finally:
                self.settle_memory()

    def _missing(self, start: int, end: int) -> list[int]:
        end = min(end, self.origin_size)
        if start >= end:
            return []
        return [b for b in range(start // BLOCK, (end - 1) // BLOCK + 1) if b not in self.present]

    def is_local(self, start: int, end: int) -> bool:
        """Whether bytes [start, end) are all in the staged file (none left to fetch)."""
        return not self._missing(start, end)

    async def ensure(self, start: int, end: int) -> None:
        """Make bytes [start, end) of the origin present in the staged file."""
        if self._missing(start, end):
            async with self.lock:
                await self.ensure_locked(start, end)

    async def ensure_locked(self, start: int, end: int) -> None:
        """`ensure` for a caller that holds ``lock``.  Missing blocks next to each other are
        fetched as one range of up to `FETCH_RUN` bytes, and up to `FETCH_PARALLEL` such ranges at
        once, within the memory budget (a file completed for its upload: a 500 MiB object appended
        to is 63 GETs of 8 MiB, 4 at a time, not 500 of 1 MiB one after another).  The first
        failure is raised once the others stopped; blocks fetched before it stay present."""
        # Every change of the staged file happens under self.lock, so a fetched block can never
        # land on top of bytes written meanwhile.
        runs = _runs(self._missing(start, end), FETCH_RUN // BLOCK)
        if len(runs) == 1 and runs[0][1] - runs[0][0] == 1:
            await self._fetch_run(*runs[0])  # one block (a partial write's edge): as it always was
        elif runs:
            await self._fetch_runs(runs)

    async def _fetch_run(self, first: int, stop: int) -> None:
        """Fetch blocks ``[first, stop)`` of the origin into the staged file."""
        lo, hi = first * BLOCK, min(stop * BLOCK, self.origin_size)
        data = await self.fetch(lo, hi)
        if len(data) != hi - lo:  # the object is shorter than when it was opened
            raise PreconditionFailed(f"fetched {len(data)} bytes of [{lo}, {hi}): the object changed")
        await self._io(_pwrite_all, self.fd, data, lo)
        self.present.update(range(first, stop))  # (only once every byte of them is in the file)

    async def _fetch_runs(self, runs: list[tuple[int, int]]) -> None:
        """Several runs, up to `FETCH_PARALLEL` at once, each holding its size in the memory
        budget while it is fetched, taken only if free (else it waits for one in flight to end).
        With none in flight and no room, the run is fetched a block at a time outside the budget,
        as a single block's fetch for a partial write is; so is a run whose fetch got no answer
        within the backend's bound (`Unavailable`: 8 MiB may take longer than 1 MiB did)."""
        budget = self.cache.budget
        failures: list[Exception] = []
        in_flight = 0
        ended = trio.Event()

        async def fetch(run: tuple[int, int], charged: int, scope: trio.CancelScope) -> None:
            nonlocal in_flight
            try:
                if charged:
                    try:
                        await self._fetch_run(*run)
                        return
                    except Unavailable:
                        if run[1] - run[0] == 1:
                            raise
                        # no answer in time: a slow link, which 1 MiB ranges (each within the
                        # backend's bound, as before) may still get through
                # a block at a time (also with no room in the budget)
                for b in range(run[0], run[1]):
                    if b not in self.present:
                        await self._fetch_run(b, b + 1)
            except Exception as e:  # kept, not raised into the nursery (no exception group)
                failures.append(e)
                scope.cancel()
            finally:
                in_flight -= 1
                if charged:
                    budget.release(charged)
                ended.set()

        # (A cancellation from outside reaches the caller as a group holding trio.Cancelled, which
        # the cancelling scope takes apart; nothing here catches Cancelled by type.)
        async with trio.open_nursery() as nursery:
            for run in runs:
                size = min(run[1] * BLOCK, self.origin_size) - run[0] * BLOCK
                while not failures:
                    if in_flight < FETCH_PARALLEL and budget is not None and budget.try_acquire(size):
                        charged = size
                        break
                    if in_flight == 0:
                        charged = 0
                        break
                    ended = trio.Event()
                    await ended.wait()
                if failures:
                    break
                in_flight += 1
                nursery.start_soon(fetch, run, charged, nursery.cancel_scope)
        if failures:
            raise failures[0]

    async def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        behind = self.behind  # (an upload's thread may move it into the file meanwhile)
        if behind is not None:
            return bytes(behind[off:end])
        await self.ensure(off, end)
        self._reads += 1  # (no checkpoint since `ensure` found the bytes present)
        try:
            return await self._io(os.pread, self.fd, end - off, off)
        finally:
            self._reads -= 1
            if not self._reads and self._reads_done is not None:
                self._reads_done.set()

    @property
    def reading(self) -> bool:
        """Whether a read of the staged file is in flight (its descriptor must not go)."""
        return self._reads > 0

    async def write(self, off: int, data: bytes) -> int:
        end = off + len(data)
        async with self.lock:
            if self.behind is not None:
                if self._keep_in_memory(max(end, self.size)):
                    behind = self.behind
                    if off > len(behind):
                        behind.extend(bytes(off - len(behind)))  # a hole reads as zeros
                    behind[off:end] = data
                    self.size = max(self.size, end)
                    self.dirty = True
                    return len(data)
                await self._spill()
            # Only partial blocks at the edges need the origin's bytes first.
            if off % BLOCK:
                await self.ensure_locked((off // BLOCK) * BLOCK, off)
            if end % BLOCK:
                await self.ensure_locked(end, (end // BLOCK + 1) * BLOCK)
            try:
                n = await self._io(_pwrite_all, self.fd, data, off)
            except OSError as e:
                # The staged content is now incomplete: it must never replace the object.
                self.broken = e
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    log.error("cache disk full while staging a write (%s)", self.cache.root)
                raise
            finally:
                if self.stream is not None:  # after the bytes are in the file: see fsdriver.multipart
                    self.stream.changed(off, end)
            self.present.update(range(off // BLOCK, (end - 1) // BLOCK + 1))
            self.size = max(self.size, end)
            self.dirty = True
            return n

    async def truncate(self, size: int) -> None:
        async with self.lock:
            if self.behind is not None:
                if self._keep_in_memory(size):
                    behind = self.behind
                    if size < len(behind):
                        del behind[size:]
                    else:
                        behind.extend(bytes(size - len(behind)))
                    if size == 0:
                        self.broken = None
                    self.size = size
                    self.dirty = True
                    return
                await self._spill()
            if size < self.origin_size:
                if size % BLOCK:
                    await self.ensure_locked((size // BLOCK) * BLOCK, size)
                self.origin_size = size
            await self._io(os.ftruncate, self.fd, size)
            if size == 0:
                self.broken = None  # nothing of the failed write is left
            if self.stream is not None:
                self.stream.resized(self.size, size)
            self.size = size
            self.dirty = True

    async def complete(self) -> None:
        """Fetch every block still missing, so the staged file holds the whole content."""
        async with self.lock:
            await self.complete_locked()

    async def complete_locked(self) -> None:
        """`complete` for a caller that holds ``lock`` (an upload)."""
        await self.ensure_locked(0, self.size)
        self.origin_size = 0
        self.fetch = None

    async def rebase_locked(self, size: int, fetch: Fetch) -> None:
        """(``lock`` held; nothing written here, `OpenFiles.rebase`) Forget the copy of the old
        version: the content is now the ``size`` bytes ``fetch`` gives, filled in as needed."""
        # Readers that find a block missing go through `ensure` and wait for the lock (held): the
        # state says "nothing present" before the first await.  Reads already past it finish first.
        if self.behind is not None:  # content held in memory (IN_MEMORY_MAX): now a file
            fd = await self._io(os.open, self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            self.fd, self.behind = fd, None
            self.settle_memory()
        self.present = set()
        self.size = self.origin_size = size
        self.fetch = fetch
        while self._reads:
            self._reads_done = trio.Event()
            await self._reads_done.wait()
        self._reads_done = None
        await self._io(os.ftruncate, self.fd, 0)
        await self._io(os.ftruncate, self.fd, size)

    async def contents(self) -> bytes:
        """The whole content (the caller made it complete and holds ``lock``, or owns the file)."""
        behind = self.behind
        if behind is not None:
            return bytes(behind)
        return await self._io(os.pread, self.fd, self.size, 0)

    async def replace_contents(self, data: bytes) -> None:
        """Make ``data`` the content (a record's empty content becoming ``""``); it stays as
        dirty or clean as it was."""
        await self._spill()
        await self._io(_pwrite_all, self.fd, data, 0)
        await self._io(os.ftruncate, self.fd, len(data))
        if self.stream is not None:
            self.stream.changed(0, max(self.size, len(data)))
        self.size = len(data)

    async def scan(self, fn):
        """``fn(fd, size)`` in a worker thread (reading the content without holding it whole)."""
        await self._spill()
        return await self._io(fn, self.fd, self.size)

    # -- upload state (see the class docstring) ------------------------------------------------

    def begin_upload(self) -> None:
        self.pending, self.dirty = True, False

    def uploaded(self, etag: str) -> None:
        """The backend holds this content now, as ``etag``."""
        self.pending, self.error = False, None
        self.replaces, self.replaces_known, self.attempts = None, False, []
        if self.create_only:  # a file created here without O_TRUNC exists now: later uploads replace it
            self.conditions, self.create_only = {}, False
        elif self.conditions:  # later writes through this handle build on what was just written
            self.conditions = {"if_match": etag}

    def upload_failed(self, error: str, replaces: Optional[str]) -> None:
        """The upload may pass later: the content is to be uploaded again (retried), over the
        version ``replaces`` (the one the failed close replaced: kept from the first failure)."""
        self.dirty, self.error = True, error
        if not self.replaces_known:
            self.replaces, self.replaces_known = replaces, True
        if self.meta:
            self.attempts.append((self.size, self.meta))

    def retry_conditions(self) -> dict:
        """The conditions of a retry of a failed upload (`conditions_over`)."""
        return conditions_over(self.conditions, self.replaces, self.replaces_known)

    def reject(self, error: Exception) -> None:
        """Refused for good (a lost conditional write, not a record): never uploaded again."""
        self.rejected = error
        self.dirty = self.pending = False

    def accept_again(self) -> None:
        """More content after a refusal of what was there (a record's intermediate close)."""
        self.rejected = None

    def mark_broken(self, error: OSError) -> None:
        """The content can never be stored (a write failed, or it would be too large)."""
        self.broken = error

    def mark_stored(self) -> None:
        """Its content was stored by other means (a scratch file put as a record)."""
        self.dirty = False

    def create_only_upload(self) -> None:
        """The next upload creates the object only if it does not exist (then plain again)."""
        self.conditions, self.create_only = {"if_none_match": True}, True

    def mark_dirty(self, conditions: Optional[dict] = None) -> None:
        """Its content must be uploaded (with ``conditions``, if given) though nothing was written."""
        self.dirty = True
        if conditions is not None:
            self.conditions = conditions

    @property
    def removed(self) -> bool:
        return self._removed

    def remove(self) -> None:
        """Free the staged file.  Idempotent: a second call must never close a descriptor number
        that meanwhile belongs to another file."""
        if self._removed:
            return
        self._removed = True
        if self.stream is not None:  # never completed now: aborted in the background
            self.stream, stream = None, self.stream
            stream.abandon()
        fd, self.fd = self.fd, -1
        self.behind = None
        self.settle_memory()
        if fd >= 0:  # (never made while the content was in memory only)
            os.close(fd)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.cache.unjournal(self)
