"""Getting staged data into the backend: uploads, pending uploads, retries and crash recovery.

The rule this module keeps: when an upload returns, the object is durable in the backend; when it
fails for a reason that may pass (the backend is unreachable), the staged data stays in the cache
dir, journaled as pending, and is retried with backoff (and by the next daemon after a crash)
until it succeeds.  An upload that can never succeed — a conditional write that lost, a key/value
record that is not JSON, a key the backend cannot hold or refuses (`upload_errors`) — is reported
to the writer with its own errno at once and never queued.  A pending upload has one owner at a
time (whoever holds its staged file's lock while it is still pending), and a delete of its key wins
over it.  A large file on S3 has its parts uploaded while it is written (`fsdriver.multipart`): its
upload here then only adds the parts still missing and completes that multipart upload, or uploads
the whole file when that cannot be done.  "Kept" is only ever said of data whose journal entry is
on disk.
"""

import errno
import logging
import time
from typing import Optional

import trio

from .backend.aio import AsyncBackend, BeforeFailed
from .errors import BackendError, NotFound, PreconditionFailed, Unavailable
from .errno_boundary import FSError
from .inodes import Node
from .memory import MemoryBudget
from .multipart import Streams
from .records import record_content
from .staging import Cache, Pending, StagedFile
from .stats import Stats
from .upload_errors import permanent_errno, transient_errno

log = logging.getLogger("stashfs.uploads")

RETRY_MIN, RETRY_MAX = 1.0, 60.0
# Uploads of at least this size are journaled before they start, even when a caller waits.
JOURNAL_FIRST_SIZE = 8 << 20


class Uploader:
    def __init__(self, backend: AsyncBackend, cache: Cache, stats: Stats, clock=time.monotonic):
        self.backend, self.cache, self.stats, self.clock = backend, cache, stats, clock
        self.pending: dict[StagedFile, Node] = {}  # uploads that failed and are retried
        self.orphans: list[Pending] = []  # journaled by a previous daemon, not yet uploaded
        self._orphans_busy: dict[str, trio.Event] = {}  # key -> set when its orphan upload ends
        self._wake = trio.Event()
        # Called when the retry loop settled a pending upload (uploaded, or refused for good):
        # the core frees the staged file if no handle holds it any more.
        self.on_settled = lambda node, staged: None
        # Called when an upload landed, with what the backend now holds and the metadata the
        # upload carried: the core records it.
        self.on_uploaded = lambda node, info, sent: None
        self.meta_for = lambda node: None  # the user metadata an upload of a node stores
        # The daemon's memory budget: checking a record reserves its memory there (set by the core).
        self.budget: Optional[MemoryBudget] = None
        self.streams = Streams(self)  # parts uploaded while files are written (fsdriver.multipart)

    def wrote(self, node: Node, staged: StagedFile, nursery: Optional[trio.Nursery], start: int, end: int) -> None:
        """Bytes [start, end) of ``node``'s staged file were just written: start uploading the
        parts it filled, in ``nursery`` (fsdriver.multipart).  Never blocks, never raises."""
        try:
            self.streams.wrote(node, staged, nursery, start, end)
        except Exception:  # a bug here must not fail the write: the file is uploaded whole at close
            log.exception("%s: streaming its parts failed unexpectedly", node.display)

    async def upload(self, node: Node, staged: StagedFile | None = None, *, awaited: bool = False,
                     retry: bool = False) -> None:
        """Make ``staged`` (by default the node's shared staged file) durable at the node's key.

        ``awaited``: a caller (close, fsync) waits for the answer, so a small file needs no journal
        entry unless its upload fails (`journal_first`)."""
        staged = staged if staged is not None else node.staged
        if staged is None or node.is_scratch:
            return
        async with staged.lock:
            await self.upload_locked(node, staged, awaited=awaited, retry=retry)

    def journal_first(self, staged: StagedFile, awaited: bool, key: str) -> bool:
        """Whether an upload is journaled before it starts.

        An upload nobody waits for (at release, a record's commit) and a big one are journaled
        first, so a crash during the upload leaves it for the next daemon.  A small file whose
        close()/fsync() waits for the upload is journaled only if the upload fails: a crash before
        the answer gives the caller no answer (nothing was acknowledged), and the two fsyncs of a
        journal entry would cost more than the upload itself.  Except when it supersedes a
        pending upload of the same key left by a previous run (data once reported as kept): that
        one is dropped before this upload lands, so this one must be kept in its place."""
        if not awaited or staged.size >= JOURNAL_FIRST_SIZE:
            return True
        return any(p.key == key for p in self.orphans)

    async def _journal(self, node: Node, staged: StagedFile) -> None:
        def journal():
            staged.spill_sync()  # a journal entry names the staged file: it must hold the content
            self.cache.journal(staged, node.key, node.etag)

        try:
            try:
                await trio.to_thread.run_sync(journal, limiter=self.cache.io_limiter)
            finally:
                staged.settle_memory()
            staged.journal_error = None
        except OSError as e:  # the upload can still succeed; only a crash before it would lose it
            staged.journal_error = f"cannot journal it in {self.cache.root}: {e.strerror or e}"
            log.error("%s: %s; until an upload succeeds its data is NOT kept across a restart",
                      node.display, staged.journal_error)

    async def upload_locked(self, node: Node, staged: StagedFile, *, awaited: bool = False,
                            retry: bool = False) -> None:
        """`upload` for a caller that holds ``staged.lock`` (a rename, an unlink).

        ``retry``: the retry loop (or a flush of pending uploads) tries again an upload whose
        close failed: it lands only over the version that close replaced (`StagedFile.retry_conditions`),
        so it never replaces what another writer stored after it.  A new close() of the file is
        a new last close, and replaces whatever is there."""
        if staged.rejected is not None:
            raise staged.rejected
        if staged.removed or not (staged.dirty or staged.pending) or node.unlinked or node.is_scratch:
            return  # freed, settled or deleted by whoever held the lock before us
        if staged.broken is not None:
            raise FSError(
                staged.broken.errno or errno.EIO,
                f"not uploaded: an earlier write failed ({staged.broken.strerror}); "
                "the previous content is unchanged",
                logging.ERROR,
            )
        try:
            await staged.complete_locked()  # the parts never read or written
        except PreconditionFailed:
            self._reject(node, staged, FSError(
                errno.ESTALE, "not uploaded: the object changed since it was opened, so the parts "
                "this file did not write cannot be filled in; the other writer's version stays",
                logging.WARNING))
            raise staged.rejected from None
        except NotFound:
            self._reject(node, staged, FSError(
                errno.ESTALE, "not uploaded: the object was deleted since it was opened, so the parts "
                "this file did not write cannot be filled in", logging.WARNING))
            raise staged.rejected from None
        except BackendError as e:
            self._failed(node, staged, e)
        if node.is_record:
            await self._prepare_record(node, staged)
        key = node.key
        staged.meta = self.meta_for(node)  # the attributes as they are now travel with the content
        if self.journal_first(staged, awaited, key) or staged.journaled:
            await self._journal(node, staged)  # (again, if journaled before: the metadata may differ)
        await self.supersede(key)  # older leftovers of this key must not land after this upload
        conditions = staged.retry_conditions() if retry else staged.conditions
        retried = conditions is not staged.conditions  # a retry over the version its close replaced
        staged.begin_upload()
        attempt = conditions
        while True:
            try:
                info = await self._store(node, staged, attempt)
                break
            except PreconditionFailed as e:
                found = await self._own_upload_there(node, staged) if retried and attempt is conditions else None
                if found is not None and found[0] == "this":
                    info = found[1]
                    break
                if found is not None:  # an earlier upload of this file landed after all: replace it
                    attempt = {"if_match": found[1].etag}
                    continue
                self._reject(node, staged, self._lost_condition(node, staged, retried))
                raise staged.rejected from e
            except (BackendError, OSError) as e:
                if not staged.journaled:
                    await self._journal(node, staged)  # kept for the retries (and the next daemon)
                self._failed(node, staged, e)
        staged.uploaded(info.etag)
        self.cache.unjournal(staged)
        self.pending.pop(staged, None)
        self.on_uploaded(node, info, staged.meta)

    async def _own_upload_there(self, node: Node, staged: StagedFile):
        """A retry found the key no longer holding the version its failed close replaced.  What it
        holds may be this mount's own upload, landed after all (its answer was lost: a timeout, an
        outage that held the request): ("this", info) when it is this content (the same size and
        attributes: the POSIX times to the nanosecond, which another writer's file would not
        share), ("earlier", info) when it is an earlier upload of this file whose answer was lost
        too (this content replaces it), else None (another writer's; or it cannot be told)."""
        if not staged.meta:
            return None
        try:
            info = await self.backend.head(node.key)
        except BackendError:
            return None
        if info.size == staged.size and info.meta == staged.meta:
            log.info("%s: its pending upload had landed already (the answer to it was lost)", node.display)
            return "this", info
        if (info.size, info.meta) in staged.attempts:
            log.info("%s: an earlier upload of it had landed (the answer to it was lost); replacing it",
                     node.display)
            return "earlier", info
        return None

    async def _orphan_there(self, p: Pending) -> bool:
        """Whether the key holds ``p``'s own content, landed before a crash: the same size and
        attributes (the POSIX times to the nanosecond, which another writer's file would not
        share).  Without attributes it cannot be told."""
        if not p.meta or p.size is None:
            return False
        try:
            info = await self.backend.head(p.key)
        except BackendError:
            return False
        return info.size == p.size and info.meta == p.meta

    @staticmethod
    def _lost_condition(node: Node, staged: StagedFile, retried: bool) -> FSError:
        """The error of an upload whose condition did not hold: its content is never stored."""
        if retried:
            return FSError(errno.ESTALE, "pending upload not stored: the file no longer holds the version "
                           "its failed close replaced (another writer stored or deleted it since; that "
                           "stays)", logging.WARNING)
        return FSError(
            errno.EEXIST if staged.conditions.get("if_none_match") else errno.ESTALE,
            "not written: the record changed since it was read (another writer's value stays)"
            if "if_match" in staged.conditions else
            "not written: the record was created meanwhile" if node.is_record else
            "not written: another writer created this file after it was created here without "
            "O_TRUNC (its version stays)",
            logging.WARNING,
        )

    async def _store(self, node: Node, staged: StagedFile, conditions: dict):
        """Put the staged content at the node's key under ``conditions``: by completing the
        multipart upload of its parts streamed while it was written, else as a whole file."""
        stream = staged.stream
        if stream is not None:
            try:
                info = await self.streams.finish(stream, node, staged, conditions)
            except (PreconditionFailed, Unavailable):
                raise  # the whole file would meet the same condition, or the same outage
            except BackendError as e:
                log.info("%s: completing the streamed upload failed (%s); uploading the whole file",
                         node.display, e)
                info = None
            if info is not None:
                return info
        if staged.behind is None:
            return await self._put_file(node.key, staged.path, staged.size, meta=staged.meta, **conditions)
        # A small file's content is still in memory: put from there (a memfd) in one worker thread,
        # with no staged file made for it (an inode and an unlink fewer); a journal entry, if one
        # is needed, makes the staged file (`_journal`).  Where memfds are missing, the staged file
        # is made in the same thread, right before the put.
        try:
            return await self.backend.put_file(node.key, staged.path, content=bytes(staged.behind),
                                               before=staged.spill_sync, meta=staged.meta, **conditions)
        except BeforeFailed as e:  # not staged (a full cache disk), nothing put: the content is still in memory
            log.warning("%s: cannot stage it in the cache dir (%s); uploading it from memory", node.display,
                        e.error.strerror or e.error)
            return await self.backend.put_bytes(node.key, bytes(staged.behind), meta=staged.meta,
                                                **conditions)
        finally:
            staged.settle_memory()

    async def _put_file(self, key: str, path, size: int, **kwargs):
        """`put_file` of a staged file of ``size`` bytes, the memory it maps for itself
        (`Backend.upload_memory`: S3's part buffers) counted in the memory budget meanwhile."""
        n = self.backend.sync.upload_memory(size) if self.budget is not None else 0
        if n:
            await self.budget.acquire(n)
        try:
            return await self.backend.put_file(key, path, **kwargs)
        finally:
            if n:
                self.budget.release(n)

    def _failed(self, node: Node, staged: StagedFile, e: Exception):
        """A failed upload.  One that can never succeed is refused at once with its own errno;
        one that may pass is kept, retried in the background, and answered EIO (or EMFILE/ENFILE)
        — saying "kept" only when its journal entry is on disk."""
        self.stats.upload_failures += 1
        code = permanent_errno(e)
        if code is not None:
            self._reject(node, staged, FSError(
                code, f"not uploaded and not retried (this cannot succeed): {e}; "
                "the previous content is unchanged", logging.ERROR))
            raise staged.rejected from e
        if staged.journaled:
            staged.upload_failed(str(e), node.etag)
            message = f"upload failed, kept as a pending upload ({staged.path}) and retried: {e}"
        else:
            why = staged.journal_error or "the parts of the object it did not write could not be fetched"
            staged.upload_failed(f"{e}; NOT kept across a restart ({why})", node.etag)
            where = "memory" if staged.behind is not None else staged.path  # (not staged: cache disk full)
            message = (f"upload failed: {e}; retried by this daemon from {where}, but NOT kept "
                       f"across a restart ({why})")
        if staged not in self.pending:  # a retry that fails again must not spin the loop
            self.pending[staged] = node
            self._wake.set()
        raise FSError(transient_errno(e), message, logging.ERROR) from e

    async def supersede(self, key: str) -> None:
        """A newer write or a delete of ``key`` is about to happen here: older leftovers from a
        previous run are dropped, and one being uploaded right now is waited for, so that it
        cannot land after (and overwrite or resurrect) what follows."""
        for p in [p for p in self.orphans if p.key == key]:
            log.warning("dropping the pending upload of %s from a previous run: superseded", key)
            self._drop_orphan(p)
        busy = self._orphans_busy.get(key)
        if busy is not None:
            await busy.wait()

    def _drop_orphan(self, p: Pending) -> None:
        if p in self.orphans:
            self.orphans.remove(p)
        if p.key not in self._orphans_busy:  # else its uploader removes the files when done
            p.path.unlink(missing_ok=True)
            p.journal.unlink(missing_ok=True)

    async def _prepare_record(self, node: Node, staged: StagedFile) -> None:
        try:
            data = await record_content(staged, self.budget)
        except FSError as e:
            self._reject(node, staged, e)
            raise
        if staged.size == 0:
            await staged.replace_contents(data)

    def _reject(self, node: Node, staged: StagedFile, error: FSError) -> None:
        staged.reject(error)
        self.cache.unjournal(staged)
        self.pending.pop(staged, None)
        node.attr_time = 0  # read the backend's version again

    def describe_pending(self) -> list[dict]:
        # "kept": journaled, so the next daemon uploads it; otherwise a restart loses it
        out = [{"path": n.display, "key": n.key, "bytes": st.size, "error": st.error, "kept": st.journaled}
               for st, n in self.pending.items()]
        out += [{"path": None, "key": p.key, "bytes": p.path.stat().st_size if p.path.exists() else 0,
                 "error": "recovered after a restart", "kept": True} for p in self.orphans]
        return out

    async def flush_all(self) -> list[dict]:
        """Try every pending upload now; returns what still failed.

        The retry loop, `mountctl flush` and umount may run this at the same time: whoever takes
        a staged file's lock while it is still pending owns that round, and only the owner that
        settled it hands it back to the core (once), so a staged file is never freed twice."""
        for staged, node in list(self.pending.items()):
            settled = False
            try:
                async with staged.lock:
                    if self.pending.get(staged) is not node or staged.removed:
                        # Completed by another flush while we waited; it could not free it while
                        # we were queued on the lock, so that falls to us (freeing twice is safe).
                        settled = not staged.removed
                        continue
                    if node.unlinked:  # deleted meanwhile: it must never be uploaded again
                        self.pending.pop(staged, None)
                        self.cache.unjournal(staged)
                        settled = True
                        continue
                    await self.upload_locked(node, staged, retry=True)
                settled = True
                log.info("%s: pending upload done", node.display)
            except FSError as e:
                if staged.rejected is not None:
                    log.warning("%s: pending upload given up: %s", node.display, e)
                    settled = True
                elif isinstance(e.__cause__, Unavailable):
                    # The backend does not answer (each try takes up to --backend-timeout): the
                    # others would wait as long in turn, so they wait for the next round instead.
                    log.warning("the backend is unreachable; %d pending uploads wait for the next try",
                                len(self.pending) + len(self.orphans))
                    return self.describe_pending()
            except Exception:  # never let one bad upload end the retry loop (and the mount)
                log.exception("%s: retrying the upload failed unexpectedly; still pending", node.display)
            finally:
                if settled:
                    self.on_settled(node, staged)
        await self._upload_orphans()
        return self.describe_pending()

    async def discard(self, keys: Optional[set[str]]) -> list[str]:
        """Drop the pending uploads of ``keys`` (None: all) without uploading them; returns the
        keys dropped.  Their local data is deleted (`mountctl flush --discard`)."""
        out = []
        for staged, node in list(self.pending.items()):
            if keys is not None and node.key not in keys:
                continue
            async with staged.lock:
                if self.pending.get(staged) is not node:
                    continue
                self._reject(node, staged, FSError(
                    errno.EIO, "not uploaded: its pending upload was discarded (mountctl flush --discard)",
                    logging.WARNING))
            log.warning("%s: pending upload of %d bytes discarded on request", node.display, staged.size)
            out.append(node.key)
            self.on_settled(node, staged)
        for p in list(self.orphans):
            if keys is None or p.key in keys:
                log.warning("pending upload of %s from a previous run discarded on request", p.key)
                self._drop_orphan(p)
                out.append(p.key)
        return out

    async def recover(self, progress=lambda message: None) -> None:
        """Before serving: upload what a previous daemon journaled, drop what it never closed."""
        entries = self.cache.pending()
        dropped = self.cache.discard_unjournaled({p.path for p in entries} | {p.journal for p in entries})
        if dropped:
            log.warning("discarded %d staged files that were never closed before a restart", dropped)
        self.orphans = []
        newest = {p.key: p for p in entries if p.path.exists()}  # oldest first: the last is the last close
        for p in entries:
            if not p.path.exists():
                log.error("pending upload of %s lost its staged file %s; dropping the entry", p.key, p.path)
                p.journal.unlink()
            elif p.size is not None and p.path.stat().st_size < p.size:
                # Its data never reached the disk before a power loss (the entry did): uploading
                # it would replace the key's content with a truncated file.  (Larger: written to
                # after it was journaled, which is what the next close would have stored.)
                log.error("pending upload of %s: its staged file %s holds %d bytes of %d (lost in a power "
                          "cut?); dropped, the key keeps its content", p.key, p.path, p.path.stat().st_size,
                          p.size)
                self._drop_orphan(p)
            elif newest[p.key] is not p:
                # An earlier close of the same key: the later one replaces it anyway, and with the
                # same version to replace, only one of them could land (last close wins).
                log.warning("dropping the pending upload of %s from a previous run: superseded by a "
                            "later close of it", p.key)
                self._drop_orphan(p)
            else:
                self.orphans.append(p)
        if self.orphans:
            log.warning("uploading %d pending uploads from a previous run", len(self.orphans))
            await self._upload_orphans(progress)
        await self.streams.recover()  # multipart uploads a crash left open

    async def _upload_orphans(self, progress=lambda message: None) -> None:
        unreachable = False
        for p in list(self.orphans):
            if p not in self.orphans or p.key in self._orphans_busy:
                continue  # superseded meanwhile, or being uploaded by a concurrent flush
            self._orphans_busy[p.key] = done = trio.Event()
            try:
                progress(f"uploading {p.key} left pending by a previous run")
                size = p.size if p.size is not None else p.path.stat().st_size
                await self._put_file(p.key, p.path, size, meta=p.meta, **p.upload_conditions())
            except PreconditionFailed:
                if await self._orphan_there(p):
                    log.info("pending upload of %s from a previous run had landed before the restart "
                             "(the answer to it was lost)", p.key)
                else:
                    log.error("pending upload of %s from a previous run not stored: the key no longer "
                              "holds the version it replaces (another writer's later write, or this "
                              "upload itself, landed before the restart); dropped, the key keeps what "
                              "it holds", p.key)
                self._drop_orphan(p)
            except (BackendError, OSError) as e:
                if isinstance(e, Unavailable):
                    log.error("pending upload of %s failed again: %s; the others wait for the next try",
                              p.key, e)
                    unreachable = True
                elif permanent_errno(e) is None:
                    log.error("pending upload of %s failed again: %s", p.key, e)
                else:
                    log.error("pending upload of %s from a previous run can never succeed (%s); "
                              "dropped, the backend keeps its previous content", p.key, e)
                    self._drop_orphan(p)
            else:
                log.warning("uploaded pending %s from a previous run", p.key)
                self._drop_orphan(p)
            finally:
                del self._orphans_busy[p.key]
                done.set()
                if p not in self.orphans:  # done, or superseded while it was in flight
                    p.path.unlink(missing_ok=True)
                    p.journal.unlink(missing_ok=True)
            if unreachable:
                return

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
