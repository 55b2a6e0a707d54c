"""Uploading the parts of a large file while it is written, so close() waits only for the tail.

Once a file being written on a backend with `multipart_uploads` (S3) grows past the multipart
threshold, its staged file gets a `PartStream`: a multipart upload started in the background
(CreateMultipartUpload), whose full parts are uploaded by supervised background tasks as soon as
the writer has filled them.  close()/fsync() (`Uploader.upload_locked`) then uploads only the parts
still missing — the tail, and any part written again since its upload — and completes the upload
with the file's conditions (If-Match / If-None-Match).  The object appears at its key only then,
atomically, as with a single put.

What holds:

- **Parts are read back from the staged file**, not kept, into buffers reused from one part to
  the next (`fsdriver.backend.partbuf`; botocore hashes and sends views of them, no copies): a
  buffer is counted in the memory budget from its mapping until no part is in flight any more;
  at most ``limiter`` parts are in flight (all files together), so at most that many buffers.
- **A part is "done" only while unchanged since its upload.**  Every change of the staged file
  (write, truncate) bumps the generation of the parts it touches, after its bytes are in the file;
  a part upload records its result only if the generation it read is still current, so a write
  racing the read of a part makes it dirty again (uploaded again at close).  S3 lets a part number
  be uploaded again before completion: the latest wins.  A truncate drops the parts past the end;
  at close a part whose uploaded length is not the one the final size gives is uploaded again.
- **Only fully local parts stream**: a staged file of an existing object is sparse until its
  upload; a part with bytes not yet fetched waits for close, where the whole file is completed
  first.  Records, scratch files and backends with local files (disk) never stream.
- **Any failure falls back to the whole-file upload**: a background step that fails (create or a
  part) stops the stream; at close the stream is then aborted and the file uploaded by `put_file`
  as without streaming (a part that got no answer, in an outage that may be over by then, is
  tried again by the close itself with the other parts still missing: the parts done are kept)
  — as are a final size at or below the threshold, a key changed by a rename, and a completion
  refused for a reason other than a condition or an unreachable backend.  Data is
  never lost: the staged file stays the source of truth until an upload succeeded.
- **The object's user metadata is the one at close, its times to within `TIME_SKEW`**: S3 fixes the
  metadata at CreateMultipartUpload, and every write moves the file's mtime and ctime after that.
  Replacing it at close (`set_meta`: a server-side copy of the whole object, conditional on the
  completed etag) costs about as much again as the completion, so it is done only when more than
  the times changed (chmod, chown) or the times moved by more than `TIME_SKEW` seconds since the
  stream started (a slow writer).  Otherwise the object keeps the times of the moment its stream
  started: at most `TIME_SKEW` earlier than the last write (the mount shows the exact ones while
  the file is written, the stored ones from the close or fsync that completes its upload:
  `OpenFiles.uploaded`).  ``STASHFS_STREAM_TIME_SKEW`` (seconds) in the daemon's environment
  overrides it; 0 stores exact times (and copies nearly every streamed file at close).  Parts carry
  CRC32 checksums, as boto3's `upload_file` sends them (not with exact times: a copy follows).
- **Concurrency**: parts of all files share one `trio.CapacityLimiter` of ``max(MIN_WORKERS,
  transfer_workers)`` (boto3's `upload_file` uses 10 threads), inside the backend's own limit.
- **No multipart upload is left behind**: each open stream is recorded in the cache dir
  (`Cache.record_stream`) until it is completed or aborted, and so is each multipart upload of a
  file uploaded whole (`S3Backend.upload_journal`); an abandoned stream (unlinked file,
  fallback) is aborted in the background, and the next daemon aborts what a crash left (`recover`).
  A bucket lifecycle rule (AbortIncompleteMultipartUpload) is the backstop when even that fails,
  and for a CreateMultipartUpload whose answer was lost and that the client retried: the first
  attempt's upload (no parts) has an id nobody learned.
"""

import logging
import os
from typing import TYPE_CHECKING, Optional

import trio

from .backend.base import MULTIPART_THRESHOLD, PART_SIZE, ObjectInfo
from .backend.partbuf import PartBuffers, read_into, release
from .errors import BackendError, NotFound, PreconditionFailed, Unavailable
from .supervise import spawn

if TYPE_CHECKING:
    from .inodes import Node
    from .staging import StagedFile
    from .uploads import Uploader

log = logging.getLogger("stashfs.multipart")

# Parts in flight at once (all files), at least: boto3's upload_file uses 10 threads.
MIN_WORKERS = 10
MAX_PARTS = 10_000  # S3's limit: a larger file is uploaded as without streaming
# The times stored with a streamed file may be this much earlier than at close (seconds) before
# its metadata is fixed by a copy at close (see the module docstring).
TIME_SKEW = 2.0


class PartStream:
    """The multipart upload of one staged file, started while it is written (see the module
    docstring).  Part ``i`` (0-based) holds bytes ``[i*part_size, (i+1)*part_size)`` and is
    uploaded as part number ``i + 1``."""

    def __init__(self, key: str, part_size: int, meta: Optional[dict]):
        self.key = key
        self.part_size = part_size
        self.meta = dict(meta or {})  # sent with CreateMultipartUpload
        self.upload_id: Optional[str] = None
        self.record = None  # its entry in the cache dir (Cache.record_stream), once written
        self.created = trio.Event()  # the create step ended (upload_id set, or failed)
        self.gen: dict[int, int] = {}  # part -> changes seen since the stream started
        self.done: dict[int, tuple[str, int]] = {}  # part -> (etag, length): uploaded, unchanged since
        self.busy: dict[int, trio.Event] = {}  # parts being uploaded -> set when that ends
        self.failed: Optional[str] = None  # a background step failed: the whole file goes at close
        # ... because the backend did not answer (a flag, not the exception: its traceback would
        # keep the failed part's buffer mapped, outside the budget, for as long as the stream lives)
        self.outage = False
        self.closed = False  # completed or abandoned: nothing more is uploaded for it
        self.on_abandon = lambda: None  # set by `Streams`: aborts it in the background

    def parts(self, start: int, end: int) -> range:
        return range(start // self.part_size, (max(end, start + 1) - 1) // self.part_size + 1)

    def changed(self, start: int, end: int) -> None:
        """Bytes [start, end) of the staged file changed (called after they are in the file)."""
        for i in self.parts(start, end):
            self.gen[i] = self.gen.get(i, 0) + 1
            self.done.pop(i, None)

    def resized(self, old: int, new: int) -> None:
        """The staged file went from ``old`` to ``new`` bytes (the parts between changed)."""
        if old != new:
            self.changed(min(old, new), max(old, new))

    def abandon(self) -> None:
        """Never complete it: abort it (in the background)."""
        if not self.closed:
            self.closed = True
            self.on_abandon()


class Streams:
    """Starts, feeds, completes and aborts the `PartStream` of staged files, for an `Uploader`."""

    def __init__(self, uploader: "Uploader"):
        self.up = uploader
        sync = uploader.backend.sync
        self.part_size = getattr(sync, "part_size", PART_SIZE)
        self.threshold = max(self.part_size, getattr(sync, "multipart_threshold", MULTIPART_THRESHOLD))
        self.limiter = trio.CapacityLimiter(max(MIN_WORKERS, getattr(sync, "transfer_workers", 1)))
        self.buffers = PartBuffers(self.part_size)  # what parts are read into (fsdriver.backend.partbuf)
        if hasattr(sync, "upload_journal"):  # a file uploaded whole in parts: recorded as a stream is
            sync.upload_journal = (uploader.cache.record_stream, uploader.cache.forget_stream)
        self._budget = None  # the memory budget whose reclaimers include the kept buffers
        self.running = 0  # background steps started and not ended
        self._idle = trio.Event()  # set (and replaced) whenever ``running`` drops to 0
        # How much earlier than at close the stored times may be (seconds; see the module doc).
        self.time_skew = _seconds(os.environ.get("STASHFS_STREAM_TIME_SKEW"), TIME_SKEW)

    def _eligible(self, node: "Node", staged: "StagedFile") -> bool:
        up = self.up
        if node.is_record or node.is_scratch or node.unlinked or staged is not node.staged:
            return False
        if staged.removed or staged.broken is not None or staged.rejected is not None:
            return False
        if staged.pending or staged in up.pending:  # a failed upload is retried whole
            return False
        sync = up.backend.sync
        return getattr(sync, "multipart_uploads", False) and sync.local_path(node.key) is None

    def wrote(self, node: "Node", staged: "StagedFile", nursery: Optional[trio.Nursery],
              start: int, end: int) -> None:
        """Bytes [start, end) of ``node``'s staged file were written: upload the parts it filled
        (starting the stream once the file is past the threshold).  Never blocks."""
        if nursery is None or not self._eligible(node, staged):
            return
        stream = staged.stream
        full = min(staged.size // self.part_size, MAX_PARTS)
        if stream is None or stream.closed:
            if staged.size <= self.threshold:
                return
            stream = staged.stream = PartStream(node.key, self.part_size, self.up.meta_for(node))
            stream.on_abandon = lambda: self._spawn(nursery, "multipart-abort", self._abort, stream,
                                                    what=f"aborting the multipart upload of {node.display}")
            self._spawn(nursery, "multipart-create", self._create, stream, staged,
                        what=f"starting the multipart upload of {node.display}")
            candidates = range(full)  # everything written so far
        else:
            candidates = stream.parts(start, end)
        if stream.failed is not None:
            return
        for i in candidates:
            if i < full and i not in stream.done and i not in stream.busy \
                    and staged.is_local(i * self.part_size, (i + 1) * self.part_size):
                stream.busy[i] = trio.Event()
                self._spawn(nursery, "multipart-part", self._background_part, stream, staged, i,
                            what=f"uploading part {i + 1} of {node.display}")

    def _spawn(self, nursery: trio.Nursery, kind: str, fn, *args, what: str) -> None:
        """A supervised background task, counted until it ends (`wait_idle`)."""
        self.running += 1

        async def counted():
            try:
                await fn(*args)
            finally:
                self.running -= 1
                if self.running == 0:
                    self._idle.set()
                    self._idle = trio.Event()

        spawn(nursery, self.up.stats, kind, counted, what=what)

    async def wait_idle(self) -> None:
        """Until no background step (create, part, abort) is running."""
        while self.running:
            await self._idle.wait()

    async def _create(self, stream: PartStream, staged: "StagedFile") -> None:
        up = self.up
        try:
            # Checksummed parts as boto3 sends them, unless the object is copied at close to fix
            # its times anyway (exact times).
            upload_id = await up.backend.create_multipart(stream.key, meta=stream.meta,
                                                          checksum=self.time_skew > 0)
        except BackendError as e:
            stream.failed = f"starting the multipart upload failed: {e}"
            stream.outage = isinstance(e, Unavailable)
            log.info("%s: %s; the file is uploaded whole at close", stream.key, stream.failed)
            stream.created.set()
            return
        except BaseException:
            stream.created.set()
            raise
        stream.upload_id = upload_id
        try:
            # recorded before any part goes up (parts wait for ``created``): a crash from now on
            # leaves an entry for the next daemon to abort it
            stream.record = await trio.to_thread.run_sync(
                up.cache.record_stream, stream.key, upload_id, limiter=up.cache.io_limiter)
        except OSError as e:  # only a crash would leave it behind (the lifecycle rule's case)
            log.warning("%s: cannot record multipart upload in %s (%s); a crash now would leave it "
                        "for the bucket's lifecycle rule", stream.key, up.cache.root, e.strerror or e)
        finally:
            stream.created.set()
        if stream.closed:  # abandoned while it was being created: nobody else aborts it
            await self._abort(stream)

    async def _background_part(self, stream: PartStream, staged: "StagedFile", i: int) -> None:
        try:
            await stream.created.wait()
            if stream.closed or stream.failed is not None or stream.upload_id is None:
                return
            await self._part(stream, staged, i, background=True)
        except (BackendError, OSError) as e:
            if not stream.closed:
                stream.failed = f"part {i + 1} failed: {e}"
                stream.outage = isinstance(e, Unavailable)
                log.info("%s: %s; the file is uploaded whole at close", stream.key, stream.failed)
        finally:
            stream.busy.pop(i).set()

    async def _part(self, stream: PartStream, staged: "StagedFile", i: int, background: bool = False) -> None:
        """Upload part ``i`` as the staged file holds it now; recorded as done only if nothing
        changed it meanwhile."""
        up = self.up
        async with self.limiter:
            lo = i * self.part_size
            length = min(self.part_size, staged.size - lo)
            if background and (length < self.part_size or stream.closed or i in stream.done):
                return  # truncated, abandoned or uploaded meanwhile: close() decides
            gen = stream.gen.get(i, 0)
            budget = up.budget
            buf = self.buffers.reuse()  # counted in the budget already
            if buf is None:
                if budget is not None:
                    self._reclaim_from(budget)
                    await budget.acquire(self.part_size)
                try:  # (in a worker thread: the kernel fills its pages there)
                    buf = await trio.to_thread.run_sync(self.buffers.new, limiter=up.cache.io_limiter)
                except BaseException:
                    if budget is not None:
                        budget.release(self.part_size)
                    raise
            ended = False  # nothing reads ``buf`` any more (a call that did not end may still)
            data = None
            try:
                data = memoryview(buf)[:length]
                n = await trio.to_thread.run_sync(_read_into, staged.path, lo, data, limiter=up.cache.io_limiter)
                if n != length:
                    ended = True
                    if background:
                        return  # truncated meanwhile
                    raise OSError(f"staged file {staged.path} is shorter than its size")
                etag = await up.backend.upload_part(stream.key, stream.upload_id, i + 1, data)
                ended = True
            finally:
                release(data)  # no view of ``buf`` left here: it can be unmapped when let go
                freed = self.buffers.give(buf) if ended else self.buffers.drop(buf)
                if budget is not None:
                    if budget.waiting:  # someone waits for memory: none kept for the next part
                        freed += self.buffers.trim()
                    if freed:
                        budget.release(freed)
        if stream.gen.get(i, 0) == gen and not stream.closed:
            stream.done[i] = (etag, length)

    def _reclaim_from(self, budget) -> None:
        """Give the buffers kept for the next part back when memory is short (a reclaimer of
        ``budget``, registered once)."""
        if self._budget is budget:
            return
        self._budget = budget

        def reclaim() -> int:
            freed = self.buffers.trim()
            if freed:
                budget.release(freed)
            return freed

        budget.add_reclaimer(reclaim)

    async def finish(self, stream: PartStream, node: "Node", staged: "StagedFile",
                     conditions: dict) -> Optional[ObjectInfo]:
        """At close/fsync (``staged.lock`` held, the content complete): upload the missing parts
        and complete the upload under ``conditions``; the object's info.  None when the
        stream cannot be used (it was abandoned: the caller uploads the whole file).  Errors of
        the completion (a lost condition, an unreachable backend) are raised, the stream
        abandoned."""
        staged.stream = None
        if not stream.created.is_set():  # closed right after it started: not worth waiting for
            stream.abandon()
            return None
        for event in list(stream.busy.values()):
            await event.wait()
        if stream.outage and stream.upload_id is not None:
            # A background part got no answer.  The outage may be over: this close uploads the
            # parts still missing itself, its requests bounded as any close's upload's, and fails
            # (EIO, a pending upload) only if they get no answer either.
            stream.failed, stream.outage = None, False
        why = (stream.failed or ("the file was renamed" if node.key != stream.key else None)
               or ("it is now below the multipart threshold" if staged.size <= self.threshold else None)
               or ("it has more parts than S3 allows" if staged.size > MAX_PARTS * self.part_size else None)
               or ("it was abandoned" if stream.closed or stream.upload_id is None else None))
        if why is not None:
            log.debug("%s: not completing the streamed upload (%s); uploading the whole file", node.display, why)
            stream.abandon()
            return None
        size, p = staged.size, self.part_size
        count = (size + p - 1) // p
        errors: list[Exception] = []

        async def part(i: int) -> None:
            try:
                await self._part(stream, staged, i)
            except (BackendError, OSError) as e:
                errors.append(e)

        try:
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    done = stream.done.get(i)
                    if done is None or done[1] != min(p, size - i * p):
                        nursery.start_soon(part, i)
            if errors:
                raise errors[0]
            if any(stream.done.get(i) is None for i in range(count)):  # changed during close: a bug
                raise BackendError(f"{node.display}: parts changed while the file was being completed")
            parts = [(i + 1, stream.done[i][0]) for i in range(count)]
            info = await self.up.backend.complete_multipart(stream.key, stream.upload_id, parts, size,
                                                            **conditions)
        except BaseException:
            stream.abandon()
            if stream.meta and stream.meta != staged.meta:
                # A completion that landed unheard stored the stream's attributes (the times of its
                # start), not the close's: a retry that finds them there knows it for this file's.
                staged.attempts.append((size, dict(stream.meta)))
            raise
        stream.closed = True
        self._forget(stream)
        final = dict(staged.meta or {})
        if final != stream.meta and (_untimed(final) != _untimed(stream.meta)
                                     or _skew(final, stream.meta) > self.time_skew):
            # changed since the upload started (a chmod; a write's mtime, beyond the skew allowed):
            # a copy of the object onto itself
            try:
                info = await self.up.backend.set_meta(stream.key, staged.meta, if_match=info.etag)
            except (PreconditionFailed, NotFound):
                # Another writer replaced (or removed) the object after this content landed: its
                # change is the later one (last close wins), and this close did write.
                log.info("%s: changed by another writer right after its upload completed; "
                         "its attributes were not stored over that change", node.display)
        return info

    async def _abort(self, stream: PartStream) -> None:
        if stream.upload_id is None:
            return  # never created (or its create is still running: it aborts it when done)
        for event in list(stream.busy.values()):  # a part landing after the abort would keep it
            await event.wait()
        await self.up.backend.abort_multipart(stream.key, stream.upload_id)
        self._forget(stream)

    def _forget(self, stream: PartStream) -> None:
        if stream.record is not None:
            self.up.cache.forget_stream(stream.record)
            stream.record = None

    async def recover(self) -> None:
        """Abort the multipart uploads a previous daemon left open (recorded in the cache dir)."""
        for record, key, upload_id in self.up.cache.streams():
            try:
                await self.up.backend.abort_multipart(key, upload_id)
            except NotFound:
                pass
            except (BackendError, OSError) as e:
                log.warning("cannot abort the multipart upload of %s left by a previous run (%s); "
                            "tried again at the next start", key, e)
                if isinstance(e, Unavailable):
                    return
                continue
            log.info("aborted the multipart upload of %s left open by a previous run", key)
            self.up.cache.forget_stream(record)


def _untimed(meta) -> dict:
    return {k: v for k, v in (meta or {}).items() if k not in _TIME_FIELDS}


def _skew(final: dict, started: dict) -> float:
    """How much later the times of ``final`` are than those of ``started`` (seconds)."""
    def at(meta, name):
        try:
            return int(meta.get(name, 0)) + int(meta.get(name + "-nsec", 0)) / 1e9
        except ValueError:
            return float("inf")
    return max(abs(at(final, n) - at(started, n)) for n in ("mtime", "ctime"))


def _seconds(text: Optional[str], default: float) -> float:
    try:
        return max(0.0, float(text)) if text else default
    except ValueError:
        log.warning("STASHFS_STREAM_TIME_SKEW=%r is not a number of seconds; using %g", text, default)
        return default


_TIME_FIELDS = frozenset({"mtime", "mtime-nsec", "ctime", "ctime-nsec"})


def _read_into(path, start: int, view: memoryview) -> int:
    """Read the staged file at ``path`` from ``start`` into ``view`` (less only at its end); the
    bytes read.  The file is opened anew: a part read in a worker thread never uses the staged
    file's descriptor, which may be closed (and its number reused) meanwhile."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_into(fd, start, view)
    finally:
        os.close(fd)
