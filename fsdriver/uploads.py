"""Getting staged data into the backend: uploads, pending uploads, retries and crash recovery.

The rule this module keeps: when an upload returns, the object is durable in the backend; when it
fails, the staged data stays in the cache dir, journaled as pending, and is retried with backoff
(and by the next daemon after a crash) until it succeeds.  Nothing acknowledged is ever lost and
nothing unacknowledged is reported as saved.
"""

import errno
import logging
import time

import trio

from .backend.aio import AsyncBackend
from .errors import BackendError
from .fserrors import FSError
from .inodes import Node
from .staging import Cache, StagedFile
from .stats import Stats

log = logging.getLogger("stashfs.uploads")

RETRY_MIN, RETRY_MAX = 1.0, 60.0


class Uploader:
    def __init__(self, backend: AsyncBackend, cache: Cache, stats: Stats):
        self.backend, self.cache, self.stats = backend, cache, stats
        self.pending: set[Node] = set()  # nodes whose last upload failed
        self.orphans: list[tuple[str, "trio.Path", "trio.Path"]] = []  # recovered, not yet uploaded
        self._wake = trio.Event()

    async def upload(self, node: Node) -> None:
        """Make ``node``'s staged content durable at its current key, or raise EIO."""
        staged: StagedFile = node.staged
        if staged is None:
            return
        async with staged._lock:
            if not (staged.dirty or staged.pending) or node.unlinked:
                return
            if staged.broken is not None:
                raise FSError(
                    staged.broken.errno or errno.EIO,
                    f"not uploaded: an earlier write failed ({staged.broken.strerror}); "
                    "the previous content is unchanged",
                    logging.ERROR,
                )
            await staged._ensure_locked(0, staged.size)
            staged.origin_size, staged.fetch = 0, None
            key = node.key
            await trio.to_thread.run_sync(self.cache.journal, staged, key, limiter=self.cache.io_limiter)
            staged.pending, staged.dirty = True, False
            try:
                info = await self.backend.put_file(key, staged.path)
            except BackendError as e:
                staged.dirty = True
                staged.error = str(e)
                self.stats.upload_failures += 1
                if node not in self.pending:  # a retry that fails again must not spin the loop
                    self.pending.add(node)
                    self._wake.set()
                raise FSError(
                    errno.EIO,
                    f"upload failed, kept as a pending upload ({staged.path}): {e}",
                    logging.ERROR,
                ) from e
            staged.pending, staged.error = False, None
            self.cache.unjournal(staged)
            self.pending.discard(node)
            node.size, node.mtime, node.etag = info.size, info.mtime, info.etag
            node.attr_time = time.monotonic()

    def describe_pending(self) -> list[dict]:
        out = [{"path": n.display, "key": n.key, "bytes": n.staged.size, "error": n.staged.error}
               for n in self.pending if n.staged is not None]
        out += [{"path": None, "key": key, "bytes": path.stat().st_size if path.exists() else 0,
                 "error": "recovered after a restart"} for key, path, _ in self.orphans]
        return out

    async def flush_all(self) -> list[dict]:
        """Try every pending upload now; returns what still failed."""
        for node in list(self.pending):
            try:
                await self.upload(node)
            except FSError:
                pass
        await self._upload_orphans()
        return self.describe_pending()

    async def recover(self) -> None:
        """Before serving: upload what a previous daemon journaled, drop what it never closed."""
        entries = self.cache.pending()
        keep = {path for _, path, _ in entries} | {j for _, _, j in entries}
        dropped = self.cache.discard_unjournaled(keep)
        if dropped:
            log.warning("discarded %d staged files that were never closed before a restart", dropped)
        self.orphans = [e for e in entries if e[1].exists()]
        for key, path, journal in entries:
            if not path.exists():
                log.error("pending upload of %s lost its staged file %s; dropping the entry", key, path)
                journal.unlink()
        if self.orphans:
            log.warning("uploading %d pending uploads from a previous run", len(self.orphans))
            await self._upload_orphans()

    async def _upload_orphans(self) -> None:
        remaining = []
        for key, path, journal in self.orphans:
            try:
                await self.backend.put_file(key, path)
            except BackendError as e:
                log.error("pending upload of %s failed again: %s", key, e)
                remaining.append((key, path, journal))
                continue
            log.warning("uploaded pending %s from a previous run", key)
            path.unlink()
            journal.unlink()
        self.orphans = remaining

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
