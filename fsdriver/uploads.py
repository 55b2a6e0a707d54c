"""Getting staged data into the backend: uploads, pending uploads, retries and crash recovery.

The rule this module keeps: when an upload returns, the object is durable in the backend; when it
fails for a reason that may pass (the backend is unreachable), the staged data stays in the cache
dir, journaled as pending, and is retried with backoff (and by the next daemon after a crash)
until it succeeds.  An upload the backend *refuses* for good — a conditional write that lost, a
key/value record that is not JSON — is reported to the writer and never retried.
"""

import errno
import json
import logging
import os
import time

import trio

from .backend.aio import AsyncBackend
from .errors import BackendError, PreconditionFailed
from .fserrors import FSError
from .inodes import Node
from .staging import Cache, Pending, StagedFile
from .stats import Stats

log = logging.getLogger("stashfs.uploads")

RETRY_MIN, RETRY_MAX = 1.0, 60.0
MAX_RECORD_BYTES = 16 << 20


async def record_content(staged: StagedFile) -> bytes:
    """A record's bytes, checked: an empty file stores "", anything not JSON is refused (EINVAL)."""
    if staged.size > MAX_RECORD_BYTES:
        raise FSError(errno.EFBIG, f"record is {staged.size} bytes, at most {MAX_RECORD_BYTES}", logging.WARNING)
    if staged.size == 0:
        return b'""'
    data = await staged._io(os.pread, staged.fd, staged.size, 0)
    try:
        json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FSError(
            errno.EINVAL, f"not saved, the record is not valid JSON ({e}); the previous value is unchanged",
            logging.ERROR) from None
    return data


class Uploader:
    def __init__(self, backend: AsyncBackend, cache: Cache, stats: Stats):
        self.backend, self.cache, self.stats = backend, cache, stats
        self.pending: dict[StagedFile, Node] = {}  # uploads that failed and are retried
        self.orphans: list[Pending] = []  # journaled by a previous daemon, not yet uploaded
        self._wake = trio.Event()
        # Called when the retry loop settled a pending upload (uploaded, or refused for good):
        # the core frees the staged file if no handle holds it any more.
        self.on_settled = lambda node, staged: None

    async def upload(self, node: Node, staged: StagedFile | None = None) -> None:
        """Make ``staged`` (by default the node's shared staged file) durable at the node's key."""
        staged = staged if staged is not None else node.staged
        if staged is None or node.is_scratch:
            return
        async with staged._lock:
            await self.upload_locked(node, staged)

    async def upload_locked(self, node: Node, staged: StagedFile) -> None:
        """`upload` for a caller that holds ``staged._lock`` (a rename, an unlink)."""
        if staged.rejected is not None:
            raise staged.rejected
        if not (staged.dirty or staged.pending) or node.unlinked or node.is_scratch:
            return
        if staged.broken is not None:
            raise FSError(
                staged.broken.errno or errno.EIO,
                f"not uploaded: an earlier write failed ({staged.broken.strerror}); "
                "the previous content is unchanged",
                logging.ERROR,
            )
        try:
            await staged._ensure_locked(0, staged.size)  # the parts never read or written
        except PreconditionFailed:
            self._reject(node, staged, FSError(
                errno.ESTALE, "not uploaded: the object changed since it was opened, so the parts "
                "this file did not write cannot be filled in; the other writer's version stays",
                logging.WARNING))
            raise staged.rejected from None
        except BackendError as e:
            self._failed(node, staged, e)
        staged.origin_size, staged.fetch = 0, None
        if node.is_record:
            await self._prepare_record(node, staged)
        key = node.key
        try:
            await trio.to_thread.run_sync(self.cache.journal, staged, key, limiter=self.cache.io_limiter)
        except OSError as e:  # the upload can still succeed; only a crash before it would lose it
            log.error("%s: cannot journal the pending upload in %s: %s", node.display, self.cache.root, e)
        staged.pending, staged.dirty = True, False
        try:
            info = await self.backend.put_file(key, staged.path, **staged.conditions)
        except PreconditionFailed as e:
            self._reject(node, staged, FSError(
                errno.EEXIST if staged.conditions.get("if_none_match") else errno.ESTALE,
                "not written: the record changed since it was read (another writer's value stays)"
                if "if_match" in staged.conditions else "not written: the record was created meanwhile",
                logging.WARNING,
            ))
            raise staged.rejected from e
        except (BackendError, OSError) as e:
            self._failed(node, staged, e)
        staged.pending, staged.error = False, None
        if staged.conditions:  # later writes through this handle build on what we just wrote
            staged.conditions = {"if_match": info.etag}
        self.cache.unjournal(staged)
        self.pending.pop(staged, None)
        self.supersede(key)
        node.generation += 1
        node.size, node.mtime, node.etag = info.size, info.mtime, info.etag
        node.attr_time = time.monotonic()

    def _failed(self, node: Node, staged: StagedFile, e: Exception):
        """An upload that may succeed later: keep the data, retry in the background, answer EIO."""
        staged.dirty = True
        staged.error = str(e)
        self.stats.upload_failures += 1
        if staged not in self.pending:  # a retry that fails again must not spin the loop
            self.pending[staged] = node
            self._wake.set()
        raise FSError(
            errno.EIO, f"upload failed, kept as a pending upload ({staged.path}): {e}", logging.ERROR
        ) from e

    def supersede(self, key: str) -> None:
        """A newer write or a delete of ``key`` happened here: older leftovers must not follow it."""
        for p in [p for p in self.orphans if p.key == key]:
            log.warning("dropping the pending upload of %s from a previous run: superseded", key)
            self.orphans.remove(p)
            p.path.unlink(missing_ok=True)
            p.journal.unlink(missing_ok=True)

    async def _prepare_record(self, node: Node, staged: StagedFile) -> None:
        try:
            data = await record_content(staged)
        except FSError as e:
            self._reject(node, staged, e)
            raise
        if staged.size == 0:
            await staged._io(os.pwrite, staged.fd, data, 0)
            staged.size = len(data)

    def _reject(self, node: Node, staged: StagedFile, error: FSError) -> None:
        staged.rejected = error
        staged.dirty = staged.pending = False
        self.cache.unjournal(staged)
        self.pending.pop(staged, None)
        node.attr_time = 0  # read the backend's version again

    def describe_pending(self) -> list[dict]:
        out = [{"path": n.display, "key": n.key, "bytes": st.size, "error": st.error}
               for st, n in self.pending.items()]
        out += [{"path": None, "key": p.key, "bytes": p.path.stat().st_size if p.path.exists() else 0,
                 "error": "recovered after a restart"} for p in self.orphans]
        return out

    async def flush_all(self) -> list[dict]:
        """Try every pending upload now; returns what still failed."""
        for staged, node in list(self.pending.items()):
            try:
                await self.upload(node, staged)
            except FSError as e:
                if staged.rejected is not None:
                    log.warning("%s: pending upload given up: %s", node.display, e)
                    self.on_settled(node, staged)
            except Exception:  # never let one bad upload end the retry loop (and the mount)
                log.exception("%s: retrying the upload failed unexpectedly; still pending", node.display)
            else:
                log.info("%s: pending upload done", node.display)
                self.on_settled(node, staged)
        await self._upload_orphans()
        return self.describe_pending()

    async def recover(self, progress=lambda message: None) -> None:
        """Before serving: upload what a previous daemon journaled, drop what it never closed."""
        entries = self.cache.pending()
        dropped = self.cache.discard_unjournaled({p.path for p in entries} | {p.journal for p in entries})
        if dropped:
            log.warning("discarded %d staged files that were never closed before a restart", dropped)
        self.orphans = []
        for p in entries:
            if p.path.exists():
                self.orphans.append(p)
            else:
                log.error("pending upload of %s lost its staged file %s; dropping the entry", p.key, p.path)
                p.journal.unlink()
        if self.orphans:
            log.warning("uploading %d pending uploads from a previous run", len(self.orphans))
            await self._upload_orphans(progress)

    async def _upload_orphans(self, progress=lambda message: None) -> None:
        remaining = []
        for p in list(self.orphans):
            if p not in self.orphans:
                continue  # superseded meanwhile
            progress(f"uploading {p.key} left pending by a previous run")
            try:
                await self.backend.put_file(p.key, p.path, **p.conditions)
            except PreconditionFailed:
                log.error("pending upload of %s from a previous run lost a conditional write "
                          "(the record changed meanwhile); dropped", p.key)
            except (BackendError, OSError) as e:
                log.error("pending upload of %s failed again: %s", p.key, e)
                remaining.append(p)
                continue
            else:
                log.warning("uploaded pending %s from a previous run", p.key)
            p.path.unlink(missing_ok=True)
            p.journal.unlink(missing_ok=True)
        self.orphans = [p for p in self.orphans if p in remaining]

    async def retry_forever(self) -> None:
        """Background task: retry failed uploads with exponential backoff."""
        delay = RETRY_MIN
        while True:
            if not self.pending and not self.orphans:
                await self._wake.wait()
                self._wake = trio.Event()
                delay = RETRY_MIN
            with trio.move_on_after(delay):
                await self._wake.wait()  # a new failure or flush request, or the backoff elapsed
            self._wake = trio.Event()
            before = len(self.pending) + len(self.orphans)
            await self.flush_all()
            after = len(self.pending) + len(self.orphans)
            delay = RETRY_MIN if after < before else min(delay * 2, RETRY_MAX)
