"""Parts of a large file uploaded while it is written (fsdriver/multipart.py), without the kernel:
the core over the memory backend with 1 MiB parts, its calls counted and faulted."""

import errno
import os

import pytest
import trio

from fsdriver import multipart
from fsdriver.backend.memory import MemoryBackend
from fsdriver.errno_boundary import FSError
from fsdriver.errors import BackendError, PreconditionFailed, Unavailable
from fsdriver.inodes import ROOT_INO
from fsdriver.staging import Cache

from .memcore import run_core

MiB = 1 << 20


def small_parts() -> MemoryBackend:
    be = MemoryBackend()
    be.part_size = be.multipart_threshold = MiB
    return be


def blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(256)) * (n // 256) + b"x" * (n % 256)


async def new_file(fs, name="f", flags=os.O_RDWR | os.O_TRUNC, mode=None):
    tree = (await fs.lookup(ROOT_INO, "pipeline")).ino
    ns = (await fs.mkdir(tree, "p")).ino
    fh, _, _ = await fs.create(ns, name, flags, mode=mode)
    return ns, fh


async def write_all(fs, fh, data: bytes, chunk: int = 256 << 10) -> None:
    for off in range(0, len(data), chunk):
        await fs.write(fh, off, data[off:off + chunk])


async def background_done(fs) -> None:
    await fs.uploader.streams.wait_idle()


def test_full_parts_are_uploaded_while_writing_and_close_adds_only_the_tail(tmp_path):
    data = blob(5 * MiB + 12345)

    async def body(fs, be, nursery):
        _, fh = await new_file(fs)
        await write_all(fs, fh, data)
        await background_done(fs)
        assert be.calls["create_multipart"] == 1
        assert be.calls["upload_part"] == 5  # every full part, before close
        assert be.contents().get("pipeline/p/f") is None  # nothing visible before close
        await fs.flush(fh)
        assert be.calls["upload_part"] == 6  # the tail
        assert be.calls["complete_multipart"] == 1 and be.calls["put_file"] == 0
        assert be.contents()["pipeline/p/f"] == data
        await fs.release(fh)
        assert be.open_uploads() == []
        assert list((tmp_path / "cache" / "multipart").iterdir()) == []

    run_core(tmp_path, body, small_parts())


def test_a_part_written_again_after_its_upload_is_uploaded_again(tmp_path):
    data = bytearray(blob(4 * MiB))

    async def body(fs, be, nursery):
        _, fh = await new_file(fs)
        await write_all(fs, fh, bytes(data))
        await background_done(fs)
        assert be.calls["upload_part"] == 4
        await fs.write(fh, 100, b"REWRITTEN")  # into part 1, uploaded already
        data[100:109] = b"REWRITTEN"
        await fs.write(fh, 4 * MiB, b"tail")
        data.extend(b"tail")
        await fs.flush(fh)
        assert be.calls["upload_part"] == 6  # part 1 again, and the tail
        assert be.contents()["pipeline/p/f"] == bytes(data)
        await fs.release(fh)

    run_core(tmp_path, body, small_parts())


def test_truncate_shrinks_the_part_list(tmp_path):
    data = blob(6 * MiB)

    async def body(fs, be, nursery):
        _, fh = await new_file(fs)
        await write_all(fs, fh, data)
        await background_done(fs)
        node = fs.files.handles[fh].node
        await fs.setattr(node.ino, size=2 * MiB + 5, fh=fh)  # parts 3..6 go, part 3 is cut
        await fs.write(fh, 2 * MiB + 5, b"end")
        await fs.flush(fh)
        assert be.contents()["pipeline/p/f"] == data[:2 * MiB + 5] + b"end"
        await fs.release(fh)
        await background_done(fs)
        assert be.open_uploads() == []

    run_core(tmp_path, body, small_parts())


def test_below_the_threshold_at_close_the_stream_is_aborted_and_the_file_put_whole(tmp_path):
    data = blob(3 * MiB)

    async def body(fs, be, nursery):
        _, fh = await new_file(fs)
        await write_all(fs, fh, data)
        await background_done(fs)
        node = fs.files.handles[fh].node
        await fs.setattr(node.ino, size=1000, fh=fh)
        await fs.flush(fh)
        assert be.contents()["pipeline/p/f"] == data[:1000]
        assert be.calls["put_file"] == 1 and be.calls["complete_multipart"] == 0
        await fs.release(fh)
        await background_done(fs)
        assert be.open_uploads() == [] and be.calls["abort_multipart"] == 1
        assert list((tmp_path / "cache" / "multipart").iterdir()) == []

    run_core(tmp_path, body, small_parts())


def test_a_failed_background_part_falls_back_to_the_whole_file(tmp_path):
    data = blob(5 * MiB + 1)

    async def body(fs, be, nursery):
        be.fail("upload_part", BackendError("injected part failure"))
        _, fh = await new_file(fs)
        await write_all(fs, fh, data)
        await background_done(fs)
        await fs.flush(fh)
        assert be.contents()["pipeline/p/f"] == data
        assert be.calls["put_file"] == 1 and be.calls["complete_multipart"] == 0
        await fs.release(fh)
        await background_done(fs)
        assert be.open_uploads() == []

    run_core(tmp_path, body, small_parts())


@pytest.mark.expected_log(r"upload failed")
def test_a_failed_completion_is_a_pending_upload_retried_whole(tmp_path):
    data = blob(3 * MiB + 7)

    async def body(fs, be, nursery):
        be.fail("complete_multipart", Unavailable("injected outage"))
        _, fh = await new_file(fs)
        await write_all(fs, fh, data)
        await background_done(fs)
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EIO
        assert "pipeline/p/f" not in be.contents()
        await fs.release(fh)
        assert await fs.uploader.flush_all() == []
        assert be.contents()["pipeline/p/f"] == data
        await background_done(fs)
        assert be.open_uploads() == []

    run_core(tmp_path, body, small_parts())


@pytest.mark.expected_log(r"upload failed")
def test_a_part_lost_to_an_outage_that_lasts_makes_close_fail_and_kept(tmp_path):
    """The backend did not answer a background part, nor the close's own try of the parts still
    missing: close() fails (EIO), the file is a pending upload, and the retry uploads it whole."""
    data = blob(4 * MiB + 3)

    async def body(fs, be, nursery):
        be.fail("upload_part", Unavailable("injected outage"), times=None)
        _, fh = await new_file(fs)
        await write_all(fs, fh, data)
        await background_done(fs)
        tried = be.calls["upload_part"]
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EIO and be.calls["put_file"] == 0
        assert be.calls["upload_part"] > tried  # the close tried the missing parts itself
        await fs.release(fh)
        be.heal()
        assert await fs.uploader.flush_all() == []
        assert be.contents()["pipeline/p/f"] == data
        await background_done(fs)
        assert be.open_uploads() == []

    run_core(tmp_path, body, small_parts())


def test_a_part_lost_to_an_outage_over_by_the_close_is_uploaded_by_the_close(tmp_path):
    """A background part got no answer, but the backend answers again by the close: the close
    uploads the parts still missing (not the whole file) and completes the upload; no EIO."""
    data = blob(4 * MiB + 3)

    async def body(fs, be, nursery):
        be.fail("upload_part", Unavailable("injected outage"), times=1)
        _, fh = await new_file(fs)
        await write_all(fs, fh, data)
        await background_done(fs)
        await fs.flush(fh)
        assert be.contents()["pipeline/p/f"] == data
        assert be.calls["put_file"] == 0 and fs.uploader.describe_pending() == []
        await fs.release(fh)
        await background_done(fs)
        assert be.open_uploads() == []

    run_core(tmp_path, body, small_parts())


@pytest.mark.expected_log(r"another writer created this file")
def test_the_create_condition_applies_to_the_completion(tmp_path):
    """A file created here without O_TRUNC must not replace one another node created meanwhile:
    the If-None-Match goes with CompleteMultipartUpload."""
    async def body(fs, be, nursery):
        _, fh = await new_file(fs, flags=os.O_RDWR | os.O_CREAT)
        await write_all(fs, fh, blob(3 * MiB))
        be.put_bytes("pipeline/p/f", b"the other writer's")
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EEXIST
        assert be.contents()["pipeline/p/f"] == b"the other writer's"
        await fs.release(fh)
        await background_done(fs)
        assert be.open_uploads() == []

    run_core(tmp_path, body, small_parts())


def test_parts_of_an_existing_object_not_fetched_wait_for_close(tmp_path):
    old = blob(4 * MiB, seed=3)

    async def body(fs, be, nursery):
        ns, fh = await new_file(fs, "other")
        await fs.release(fh)
        be.put_bytes("pipeline/p/f", old)  # written by another node
        ino = (await fs.lookup(ns, "f")).ino
        fh, _, _ = await fs.open(ino, os.O_RDWR)
        await fs.write(fh, 4 * MiB, b"more")  # appended: the old parts are not local
        await fs.write(fh, 10, b"early")
        await background_done(fs)
        assert be.calls["upload_part"] == 1  # only part 1: fetched whole for the partial write
        await fs.flush(fh)
        assert be.contents()["pipeline/p/f"] == old[:10] + b"early" + old[15:] + b"more"
        await fs.release(fh)

    run_core(tmp_path, body, small_parts(), metadata_ttl=0)


def test_times_moved_within_the_skew_are_not_worth_a_copy(tmp_path):
    """A write's mtime after CreateMultipartUpload: the object keeps the times of the stream's
    start (at most TIME_SKEW earlier), and no copy replaces its metadata."""
    async def body(fs, be, nursery):
        fs.uploader.streams.time_skew = 3600  # a loaded machine may take seconds: not under test here
        _, fh = await new_file(fs, mode=0o640)
        await write_all(fs, fh, blob(3 * MiB))
        await background_done(fs)
        node = fs.files.handles[fh].node
        started = fs.upload_meta(node)
        await fs.write(fh, 3 * MiB, b"last")
        final = fs.upload_meta(node)
        assert final != started  # the write's mtime
        await fs.flush(fh)
        stored = be.head("pipeline/p/f").meta
        assert stored["mode"] == str(0o100640) and be.calls["set_meta"] == 0
        assert 0 <= int(final["mtime"]) - int(stored["mtime"]) <= fs.uploader.streams.time_skew
        await fs.release(fh)

    run_core(tmp_path, body, small_parts())


@pytest.mark.parametrize("change", ["times beyond the skew", "mode"])
def test_metadata_changed_beyond_the_times_is_the_objects_at_close(tmp_path, change):
    async def body(fs, be, nursery):
        _, fh = await new_file(fs, mode=0o640)
        await write_all(fs, fh, blob(3 * MiB))
        await background_done(fs)
        node = fs.files.handles[fh].node
        if change == "mode":
            await fs.setattr(node.ino, mode=0o600, fh=fh)
        else:
            fs.uploader.streams.time_skew = 0  # exact times
        await fs.write(fh, 3 * MiB, b"last")
        await fs.flush(fh)
        assert be.head("pipeline/p/f").meta == fs.upload_meta(node)
        assert be.calls["set_meta"] == 1
        assert be.contents()["pipeline/p/f"] == blob(3 * MiB) + b"last"
        await fs.release(fh)

    run_core(tmp_path, body, small_parts())


def test_a_close_whose_content_landed_succeeds_though_its_attributes_lost_a_race(tmp_path):
    """The copy that stores a chmod after the completion finds the object changed by another
    writer (412): that writer's change is the later one, and this close did write: no error."""
    async def body(fs, be, nursery):
        _, fh = await new_file(fs, mode=0o640)
        await write_all(fs, fh, blob(3 * MiB))
        await background_done(fs)
        node = fs.files.handles[fh].node
        await fs.setattr(node.ino, mode=0o600, fh=fh)
        be.fail("set_meta", PreconditionFailed("injected: changed by another writer"))
        await fs.flush(fh)  # no EEXIST/ESTALE "not written": the content is there
        assert be.contents()["pipeline/p/f"] == blob(3 * MiB)
        assert fs.uploader.describe_pending() == []
        await fs.release(fh)

    run_core(tmp_path, body, small_parts())


def test_an_unlinked_file_aborts_its_stream(tmp_path):
    async def body(fs, be, nursery):
        ns, fh = await new_file(fs)
        await write_all(fs, fh, blob(3 * MiB))
        await background_done(fs)
        await fs.unlink(ns, "f")
        await fs.release(fh)
        await background_done(fs)
        assert be.open_uploads() == []
        assert "pipeline/p/f" not in be.contents()

    run_core(tmp_path, body, small_parts())


def test_a_restart_aborts_the_multipart_uploads_a_crash_left(tmp_path):
    be = small_parts()
    upload_id = be.create_multipart("pipeline/p/f")
    cache = Cache(tmp_path / "cache")
    cache.record_stream("pipeline/p/f", upload_id)
    cache.close()

    async def body(fs, be, nursery):
        await fs.uploader.recover()
        assert be.open_uploads() == []
        assert list((tmp_path / "cache" / "multipart").iterdir()) == []

    run_core(tmp_path, body, be)


def test_parts_reuse_the_buffers_of_parts_uploaded_and_none_is_kept_afterwards(tmp_path):
    """While part 1's upload is held, parts 2-6 go up one after another through one buffer (each
    given back for the next: fsdriver/backend/partbuf.py), counted in the memory budget while it is
    kept; once no part is in flight no buffer is kept or counted; the object is the data."""
    from .memcore import entered

    data = blob(6 * MiB)

    async def body(fs, be, nursery):
        buffers = fs.uploader.streams.buffers
        gate = be.gate("upload_part")
        _, fh = await new_file(fs)
        await fs.write(fh, 0, data[:MiB])
        await fs.write(fh, MiB, data[MiB:MiB + 1])  # past the threshold: part 1's upload starts
        await entered(gate)
        for part in range(2, 7):  # then the others, one at a time
            end = min(part * MiB + 1, len(data))
            await fs.write(fh, (part - 1) * MiB + 1, data[(part - 1) * MiB + 1:end])
            while be.calls["upload_part"] < part:
                await trio.sleep(0.01)  # polling a count, bounded by run_core's limit
            await background_idle_but(fs, 1)
        assert buffers.out == 1 and buffers.made == 2  # part 1's, and one the others shared
        assert fs.budget.used == 2 * MiB  # both in the memory budget, the one kept too
        gate.open()
        await background_done(fs)
        assert buffers.out == 0 and buffers.held == 0 and fs.budget.used == 0
        await fs.flush(fh)
        await fs.release(fh)
        assert be.contents()["pipeline/p/f"] == data
        assert be.calls["upload_part"] == 6

    run_core(tmp_path, body, small_parts())


async def background_idle_but(fs, n: int) -> None:
    """Until at most ``n`` background steps are running (bounded by run_core's limit)."""
    while fs.uploader.streams.running > n:
        await trio.sleep(0.01)  # polling a count


def test_a_buffer_whose_part_failed_is_not_kept_and_kept_ones_go_when_memory_is_short(tmp_path):
    """Part 1 held; part 2 uploaded (its buffer kept for the next part), part 3 refused: its
    buffer is not kept. A task that needs more memory than is free gets the kept buffer back
    (a reclaimer of the budget); the file is uploaded whole at close, intact."""
    from .memcore import entered

    data = blob(4 * MiB)

    async def body(fs, be, nursery):
        buffers, budget = fs.uploader.streams.buffers, fs.budget
        gate = be.gate("upload_part")
        _, fh = await new_file(fs)
        await fs.write(fh, 0, data[:MiB + 1])
        await entered(gate)  # part 1 held
        await fs.write(fh, MiB + 1, data[MiB + 1:2 * MiB + 1])  # part 2 goes up
        await background_idle_but(fs, 1)
        assert buffers.out == 1 and buffers.held == MiB and budget.used == 2 * MiB
        n = budget.limit - budget.used + 1  # more than is free: reclaimers are asked first
        await budget.acquire(n)
        assert buffers.held == 0 and budget.used == MiB + n  # part 1's buffer, and this
        budget.release(n)
        be.fail("upload_part", BackendError("injected part failure"))
        await fs.write(fh, 2 * MiB + 1, data[2 * MiB + 1:3 * MiB + 1])  # part 3: refused
        await background_idle_but(fs, 1)
        assert be.calls["upload_part"] == 3
        assert buffers.out == 1 and buffers.held == 0 and buffers.made == 3  # not kept
        gate.open()
        await background_done(fs)
        assert buffers.out == 0 and budget.used == 0
        await fs.write(fh, 3 * MiB + 1, data[3 * MiB + 1:])
        await fs.flush(fh)
        await fs.release(fh)
        assert be.contents()["pipeline/p/f"] == data

    run_core(tmp_path, body, small_parts())


@pytest.mark.expected_log(r"starting the multipart upload failed")
def test_a_file_uploaded_whole_holds_its_part_buffers_in_the_budget(tmp_path):
    """A large file uploaded whole (its stream could not start) is read into the backend's own
    part buffers (`Backend.upload_memory`: S3's, one per transfer thread): the memory budget
    counts them while `put_file` runs, so the daemon stays within its limit, and gives them back
    after."""
    from .memcore import entered

    class Buffered(MemoryBackend):
        def upload_memory(self, size: int) -> int:
            return 3 * MiB if size > self.multipart_threshold else 0

    be = Buffered()
    be.part_size = be.multipart_threshold = MiB
    data = blob(5 * MiB + 1)

    async def body(fs, be, nursery):
        be.fail("create_multipart", BackendError("injected: no multipart upload"))
        _, fh = await new_file(fs)
        await write_all(fs, fh, data)
        await background_done(fs)
        gate, closed = be.gate("put_file"), trio.Event()

        async def close():
            await fs.flush(fh)
            closed.set()
        nursery.start_soon(close)
        await entered(gate)
        assert fs.budget.used == 3 * MiB  # held while the upload runs
        gate.open()
        await closed.wait()
        await fs.release(fh)
        assert be.contents()["pipeline/p/f"] == data and fs.budget.used == 0

    run_core(tmp_path, body, be)


def _record_new_buffers(fs, keep) -> None:
    """``keep(buf)`` for every part buffer the streams map from now on."""
    buffers = fs.uploader.streams.buffers
    new = buffers.new

    def recorded():
        buf = new()
        keep(buf)
        return buf
    buffers.new = recorded


def test_part_buffers_let_go_are_unmapped_when_the_budget_gets_them_back(tmp_path):
    """A buffer given back to the budget is really unmapped then: no view of it is left in the
    part's upload (an mmap with a view alive cannot close, and the memory stayed mapped a while
    after the budget counted it free)."""
    made = []

    async def body(fs, be, nursery):
        _record_new_buffers(fs, made.append)
        _, fh = await new_file(fs)
        await write_all(fs, fh, blob(4 * MiB + 5))
        await background_done(fs)
        await fs.flush(fh)
        await fs.release(fh)
        assert made and fs.budget.used == 0
        assert all(buf.closed for buf in made)

    run_core(tmp_path, body, small_parts())


def test_the_backend_records_its_whole_file_multipart_uploads_where_streams_are(tmp_path):
    """A backend that opens multipart uploads of its own in `put_file` (S3) is told to record them
    in the cache dir with the streams: the next daemon's `recover` aborts what a crash left."""
    class Recording(MemoryBackend):
        upload_journal = None

    be = Recording()

    async def body(fs, be, nursery):
        record, forget = be.upload_journal
        entry = record("pipeline/p/f", "upload-1")
        assert [(key, upload_id) for _, key, upload_id in fs.uploader.cache.streams()] == [("pipeline/p/f", "upload-1")]
        forget(entry)
        assert fs.uploader.cache.streams() == []

    run_core(tmp_path, body, be)


@pytest.mark.expected_log(r"upload failed, kept as a pending upload", r"landed")
def test_a_completion_that_landed_unheard_is_recognised_by_the_retry(tmp_path):
    """The completion of a streamed upload lands but its answer is lost (an outage: the close
    answers EIO, a pending upload).  The object then holds the stream's attributes (the times of
    its start, within the skew), not the close's exact ones: the retry must still recognise it
    as this file's own upload and store the file over it, not give it up as another writer's."""
    class Unheard(MemoryBackend):
        lose = True

        def complete_multipart(self, *args, **kwargs):
            info = super().complete_multipart(*args, **kwargs)
            if self.lose:
                self.lose = False
                raise Unavailable("injected: the answer to a completion that landed was lost")
            return info

    be = Unheard()
    be.part_size = be.multipart_threshold = MiB
    data = blob(3 * MiB + 11)

    async def body(fs, be, nursery):
        _, fh = await new_file(fs, mode=0o640)
        await write_all(fs, fh, data)
        await background_done(fs)
        node = fs.files.handles[fh].node
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EIO
        assert be.contents()["pipeline/p/f"] == data  # it landed, unheard
        assert be.head("pipeline/p/f").meta != fs.upload_meta(node)  # with the stream's times
        await fs.release(fh)
        assert await fs.uploader.flush_all() == []  # (a "given up" would be a WARNING: refused here)
        assert fs.uploader.describe_pending() == []
        assert be.contents()["pipeline/p/f"] == data
        assert be.head("pipeline/p/f").meta == fs.upload_meta(node)  # the retry stored the file over it

    run_core(tmp_path, body, be)
