"""Small new files are held in memory (fsdriver.staging, ``IN_MEMORY_MAX``): their writes take
no worker-thread hop, and the close puts them from memory in one worker thread, with no staged
file made unless a journal entry needs one.  What must not change: reads see the writes, the content reaches the backend
whole at close, a journal entry always names a staged file holding the content, a file that
grows past the limit moves to its staged file, and a cache disk that cannot take it (full) still
lets the close upload it from memory.  Kernel-free, on both backends."""

import errno
import os

import pytest
import trio

from fsdriver.staging import IN_MEMORY_MAX
from .test_core_freshness import run

CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def test_a_small_file_is_staged_only_at_its_close(tmp_path, backend):
    async def body(fs, d, clock):
        hops = []
        real = trio.to_thread.run_sync

        async def counting(fn, *args, **kw):
            hops.append(getattr(fn, "__name__", "?"))
            return await real(fn, *args, **kw)

        fh, attr, _ = await fs.create(d, "small", CREATE)
        staged = fs.files.handles[fh].staged
        trio.to_thread.run_sync = counting
        try:
            assert await fs.write(fh, 0, b"hello ") == 6
            assert await fs.write(fh, 6, b"world") == 5
            assert await fs.write(fh, 20, b"!") == 1  # past the end: a hole of zeros
            assert hops == []  # the writes answered without a thread
            assert not staged.path.exists() and staged.behind is not None
            assert fs.budget.used >= 21
            assert await fs.read(fh, 0, 100) == b"hello world" + bytes(9) + b"!"
            assert (await fs.getattr(attr.ino)).size == 21
            await fs.flush(fh)
            assert len(hops) == 1, hops  # the put, from memory: one hop
        finally:
            trio.to_thread.run_sync = real
        assert not staged.path.exists() and list(fs.cache.staged_dir.iterdir()) == []  # never needed
        assert fs.sync_backend.get_range("pipeline/p1/d/small", 0) == b"hello world" + bytes(9) + b"!"
        assert await fs.read(fh, 0, 100) == b"hello world" + bytes(9) + b"!"
        await fs.release(fh)
        assert fs.budget.used == 0

    run(tmp_path, backend, body)


def test_a_file_growing_past_the_limit_moves_to_its_staged_file(tmp_path, backend):
    async def body(fs, d, clock):
        fh, attr, _ = await fs.create(d, "grows", CREATE)
        staged = fs.files.handles[fh].staged
        first = os.urandom(IN_MEMORY_MAX - 10)
        await fs.write(fh, 0, first)
        assert staged.behind is not None
        more = os.urandom(100)
        await fs.write(fh, len(first), more)
        assert staged.behind is None and staged.path.stat().st_size == len(first) + 100
        assert fs.budget.used == 0
        assert await fs.read(fh, 0, 1 << 20) == first + more
        await fs.flush(fh)
        await fs.release(fh)
        assert fs.sync_backend.get_range("pipeline/p1/d/grows", 0) == first + more

    run(tmp_path, backend, body)


def test_a_truncate_in_memory(tmp_path, backend):
    async def body(fs, d, clock):
        fh, attr, _ = await fs.create(d, "t", CREATE)
        await fs.write(fh, 0, b"0123456789")
        await fs.setattr(attr.ino, size=4, fh=fh)
        await fs.write(fh, 6, b"xy")
        assert await fs.read(fh, 0, 100) == b"0123\0\0xy"
        await fs.flush(fh)
        await fs.release(fh)
        assert fs.sync_backend.get_range("pipeline/p1/d/t", 0) == b"0123\0\0xy"

    run(tmp_path, backend, body)


def test_a_failed_upload_is_journaled_with_its_content(tmp_path, backend):
    """The put fails: the journal entry names a staged file that holds the content."""
    from fsdriver.errors import Unavailable

    async def body(fs, d, clock):
        fh, attr, _ = await fs.create(d, "j", CREATE)
        staged = fs.files.handles[fh].staged
        await fs.write(fh, 0, b"keep me")
        real = fs.sync_backend.put_file

        def down(*a, **kw):
            raise Unavailable("down")

        fs.sync_backend.put_file = down
        try:
            try:
                await fs.flush(fh)
            except Exception as e:
                assert getattr(e, "errno", None) == errno.EIO
            else:
                raise AssertionError("the close should have failed")
        finally:
            fs.sync_backend.put_file = real
        assert staged.journaled
        assert staged.path.read_bytes() == b"keep me"
        [p] = fs.cache.pending()
        assert p.path == staged.path and p.key == "pipeline/p1/d/j"
        assert await fs.uploader.flush_all() == []
        await fs.release(fh)
        assert fs.sync_backend.get_range("pipeline/p1/d/j", 0) == b"keep me"

    run(tmp_path, backend, body)


@pytest.mark.expected_log("cannot stage it in the cache dir")
def test_a_cache_disk_that_cannot_take_it_still_lets_the_close_upload_it(tmp_path, backend):
    """Staging fails at close (ENOSPC, no reserve left): the put goes from memory."""

    async def body(fs, d, clock):
        fh, attr, _ = await fs.create(d, "full", CREATE)
        staged = fs.files.handles[fh].staged
        await fs.write(fh, 0, b"from memory")
        fs.cache.reserve.unlink()

        def full(content):
            raise OSError(errno.ENOSPC, "No space left on device")

        staged._file_of = full
        import fsdriver.backend.aio as aio
        real, aio._PROC_FDS = aio._PROC_FDS, False  # no memfds: the staged file is needed
        try:
            await fs.flush(fh)
        finally:
            aio._PROC_FDS = real
        await fs.release(fh)
        assert fs.sync_backend.get_range("pipeline/p1/d/full", 0) == b"from memory"
        assert fs.budget.used == 0

    run(tmp_path, backend, body)


def test_without_memfds_the_put_stages_it_in_the_same_thread(tmp_path, backend):
    import fsdriver.backend.aio as aio

    async def body(fs, d, clock):
        fh, attr, _ = await fs.create(d, "nomemfd", CREATE)
        staged = fs.files.handles[fh].staged
        await fs.write(fh, 0, b"via the staged file")
        real, aio._PROC_FDS = aio._PROC_FDS, False
        try:
            await fs.flush(fh)
        finally:
            aio._PROC_FDS = real
        assert staged.behind is None and staged.path.read_bytes() == b"via the staged file"
        assert fs.budget.used == 0
        await fs.release(fh)
        assert fs.sync_backend.get_range("pipeline/p1/d/nomemfd", 0) == b"via the staged file"

    run(tmp_path, backend, body)


def test_files_held_open_keep_at_most_a_quarter_of_the_budget_in_memory(tmp_path, backend):
    """Small files written, closed (uploaded) and still held open keep their content in memory
    until released: without a bound they could take the whole budget, and every read and write
    that needs memory would wait for releases that may never come."""
    async def body(fs, d, clock):
        fs.budget.limit = 1 << 20
        fhs = []
        for i in range(40):  # 40 x 60 KiB: more than the whole budget
            fh, _, _ = await fs.create(d, f"held{i}", CREATE)
            await fs.write(fh, 0, bytes([i]) * (60 << 10))
            await fs.flush(fh)
            fhs.append(fh)
        assert 0 < fs.budget.used <= fs.budget.limit // 4
        with trio.fail_after(5):  # a bound, not a wait: the memory is there at once
            await fs.budget.acquire(fs.budget.limit // 2)
        fs.budget.release(fs.budget.limit // 2)
        for i, fh in enumerate(fhs):
            assert await fs.read(fh, 0, 60 << 10) == bytes([i]) * (60 << 10)
            await fs.release(fh)
        assert fs.budget.used == 0
        assert fs.sync_backend.get_range("pipeline/p1/d/held39", 0) == bytes([39]) * (60 << 10)

    run(tmp_path, backend, body)
