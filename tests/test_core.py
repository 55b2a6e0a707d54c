"""The filesystem core without the kernel: prefetcher, memory budget, staging, inodes, operations."""

import errno
import os

import pytest
import trio
import trio.testing

from fsdriver.backend.aio import AsyncBackend
from fsdriver.backend.disk import DiskBackend
from fsdriver.core import Filesystem, Options
from fsdriver.errors import InvalidName, NameTooLong, NotFound, Unavailable
from fsdriver.errno_boundary import FSError, errno_for
from fsdriver.inodes import ROOT_INO, InodeTable
from fsdriver.memory import MemoryBudget
from fsdriver.prefetch import INITIAL_WINDOW, Prefetcher
from fsdriver.staging import BLOCK, Cache, StagedFile
from fsdriver.stats import Stats

MiB = 1 << 20


class RecordingBackend(DiskBackend):
    """A real disk backend that records every ranged read it serves."""

    def __init__(self, root):
        super().__init__(root)
        self.ranges = []

    def get_range(self, key, start, end=None, **kw):
        self.ranges.append((start, end))
        return super().get_range(key, start, end, **kw)


@pytest.fixture
def rec(tmp_path):
    return RecordingBackend(tmp_path / "be")


def run_with_nursery(fn):
    async def main():
        async with trio.open_nursery() as nursery:
            result = await fn(nursery)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


def _prefetcher(rec, nursery, data, budget=None, **kw):
    rec.put_bytes("obj", data)
    info = rec.head("obj")
    stats = Stats()
    return Prefetcher(AsyncBackend(rec), budget or MemoryBudget(512 * MiB), nursery, lambda: "obj",
                      len(data), info.etag, stats, **kw), stats


def test_random_reads_fetch_only_what_is_asked(rec):
    data = os.urandom(16 * MiB)

    async def body(nursery):
        p, stats = _prefetcher(rec, nursery, data)
        for off in (5 * MiB + 3, 100, 9 * MiB, 2 * MiB):
            assert await p.read(off, 4096) == data[off : off + 4096]
        return stats

    stats = run_with_nursery(body)
    assert rec.ranges == [(5 * MiB + 3, 5 * MiB + 4099), (100, 4196), (9 * MiB, 9 * MiB + 4096), (2 * MiB, 2 * MiB + 4096)]
    assert stats.random_reads == 4


def test_sequential_window_doubles_and_seek_resets(rec):
    data = os.urandom(40 * MiB)

    async def body(nursery):
        # (an 8 MiB kernel read-ahead: the stream reads 9 MiB ahead by itself, in chunks up to 4 MiB)
        p, stats = _prefetcher(rec, nursery, data, part_size=4 * MiB, max_window=16 * MiB,
                               kernel_readahead=lambda: 8 * MiB)
        out = bytearray()
        for off in range(0, 20 * MiB, 128 * 1024):
            out += await p.read(off, 128 * 1024)
        assert bytes(out) == data[: 20 * MiB]
        sizes = [e - s for s, e in rec.ranges]
        assert sizes[0] == INITIAL_WINDOW  # just above the kernel's readahead
        assert max(sizes) == 4 * MiB  # the window grew into parallel parts of part_size
        assert len(rec.ranges) < 15
        assert p.window == 16 * MiB
        await p.stream.quiet()  # let the read-ahead in flight land before counting again
        rec.ranges.clear()
        stream = p.stream
        # A read behind the stream by at most max_window (the kernel reads again what it dropped
        # from its page cache, or a short seek back): exactly what it asks for; the stream ahead
        # goes on for the reads on.
        assert await p.read(8 * MiB, 1000) == data[8 * MiB : 8 * MiB + 1000]
        assert rec.ranges == [(8 * MiB, 8 * MiB + 1000)] and p.stream is stream and not stream.cancelled
        random = stats.random_reads
        assert await p.read(20 * MiB, MiB) == data[20 * MiB : 21 * MiB]
        assert stats.random_reads == random and p.stream is stream and p.window == 16 * MiB
        await stream.quiet()
        # Further back than that, then reads on from there: the stream ends; exact GETs until the
        # second read in a row that continues the one before starts a new stream there.
        rec.ranges.clear()
        assert await p.read(MiB, 4096) == data[MiB : MiB + 4096]
        assert stream.cancelled and p.stream is None and p.window == INITIAL_WINDOW
        assert await p.read(MiB + 4096, 4096) == data[MiB + 4096 : MiB + 8192]
        assert rec.ranges == [(MiB, MiB + 4096), (MiB + 4096, MiB + 8192)]
        assert await p.read(MiB + 8192, 4096) == data[MiB + 8192 : MiB + 12288]
        assert p.stream.start == MiB + 8192
        p.close()

    run_with_nursery(body)


def test_prefetch_respects_memory_budget(rec):
    data = os.urandom(24 * MiB)

    async def body(nursery):
        budget = MemoryBudget(3 * MiB)
        p, _ = _prefetcher(rec, nursery, data, budget=budget, part_size=2 * MiB)
        out = bytearray()
        for off in range(0, len(data), 256 * 1024):
            out += await p.read(off, 256 * 1024)
            assert budget.used <= budget.limit
        assert bytes(out) == data
        p.close()
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == 0
        return budget.peak

    assert run_with_nursery(body) <= 3 * MiB


def test_memory_budget_waits_and_reclaims():
    async def main():
        budget = MemoryBudget(100)
        assert budget.try_acquire(80)
        assert not budget.try_acquire(30)
        got = []

        async def taker():
            await budget.acquire(50)
            got.append(50)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(taker)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # waits instead of growing
            budget.release(80)
        assert got == [50] and budget.used == 50

        reclaimed = []

        def reclaim():
            reclaimed.append(1)
            budget.release(50)

        budget.add_reclaimer(reclaim)
        await budget.acquire(90)  # the reclaimer frees speculative memory first
        assert reclaimed == [1] and budget.used == 90
        budget.remove_reclaimer(reclaim)
        budget.release(90)
        await budget.acquire(500)  # larger than the whole budget: let through alone
        assert budget.used == 500
        budget.release(500)

        # ... also when a reclaimer frees everything first (it waited for a release that never came)
        assert budget.try_acquire(60)
        budget.add_reclaimer(lambda: budget.release(60) if budget.used else None)
        with trio.fail_after(10):  # a bound for the failure only: it goes through at once
            await budget.acquire(500)
        assert budget.used == 500

    trio.run(main)


def test_memory_budget_lets_a_request_through_when_only_waiters_and_holds_hold_memory():
    """Two reads each hold memory they cannot give back before they get more, and a record holds
    some for good: nothing would ever be released, so one of them is let through beyond the
    limit (`overdrawn`); once it gave its memory back the other fits.  While anything else
    holds memory (it will be released), a request waits as before."""
    async def main():
        budget = MemoryBudget(100)
        assert budget.try_hold(20)  # an open record's content
        assert budget.try_acquire(40) and budget.try_acquire(30)  # what reads A and B hold
        assert budget.try_acquire(10)  # other work in progress (released later)
        got = []

        async def read(name, holding, n):
            await budget.acquire(n, holding=holding)
            got.append(name)
            budget.release(holding + n)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "A", 40, 30)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(read, "B", 30, 30)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [] and budget.stuck == 70  # the other work will give back its 10
            assert budget.overdrawn == 0
            budget.release(10)  # 90 of 100 in use, all held by the waiters or for good
            await trio.testing.wait_all_tasks_blocked()
        # the first woken was let through (120 in use); once it gave back, the other fitted
        assert sorted(got) == ["A", "B"] and budget.overdrawn == 1 and budget.peak == 120
        assert budget.used == 20 and budget.stuck == 0 and budget.waiting == 0
        budget.drop_hold(20)

    trio.run(main)


def test_staged_file_fetches_only_edges(tmp_path, rec):
    origin = os.urandom(5 * BLOCK + 10)
    rec.put_bytes("o", origin)
    etag = rec.head("o").etag
    ab = AsyncBackend(rec)

    async def main():
        cache = Cache(tmp_path / "cache")
        fetch = lambda lo, hi: ab.get_range("o", lo, hi, if_match=etag)
        s = StagedFile(cache, len(origin), len(origin), fetch)
        await s.write(BLOCK + 5, b"abc")  # inside block 1
        assert rec.ranges == [(BLOCK, 2 * BLOCK)]
        await s.write(2 * BLOCK, b"x" * BLOCK)  # exactly block 2: nothing to fetch
        assert len(rec.ranges) == 1
        await s.truncate(4 * BLOCK + 7)
        assert rec.ranges[-1] == (4 * BLOCK, 5 * BLOCK)
        await s.complete()
        want = bytearray(origin[: 4 * BLOCK + 7])
        want[BLOCK + 5 : BLOCK + 8] = b"abc"
        want[2 * BLOCK : 3 * BLOCK] = b"x" * BLOCK
        assert open(s.path, "rb").read() == bytes(want)
        assert sorted(r[0] // BLOCK for r in rec.ranges) == [0, 1, 3, 4]  # block 2 never fetched
        s.remove()
        cache.close()

    trio.run(main)


def test_staged_file_completes_in_large_ranges_fetched_together(tmp_path, rec):
    """What a file never read or written holds of its object is fetched for its upload in ranges
    of up to FETCH_RUN (consecutive missing blocks together), up to FETCH_PARALLEL at once, each
    held in the memory budget; with no room there, a block at a time outside it (as before); a
    failing range is raised as itself (not an exception group) once the others stopped."""
    origin = os.urandom(40 * BLOCK + 10)
    rec.put_bytes("o", origin)
    etag = rec.head("o").etag
    ab = AsyncBackend(rec)

    async def main():
        cache = Cache(tmp_path / "cache")
        cache.budget = MemoryBudget(64 * BLOCK)
        active, most = 0, 0
        fail_at = []

        async def fetch(lo, hi):
            nonlocal active, most
            active += 1
            most = max(most, active)
            try:
                await trio.sleep(0)  # (the others start meanwhile)
                if lo in fail_at:
                    raise Unavailable("injected")
                return await ab.get_range("o", lo, hi, if_match=etag)
            finally:
                active -= 1

        s = StagedFile(cache, len(origin), len(origin), fetch)
        await s.write(5 * BLOCK + 1, b"abc")  # block 5 fetched for the partial write
        assert rec.ranges == [(5 * BLOCK, 6 * BLOCK)]
        await s.complete()
        want = bytearray(origin)
        want[5 * BLOCK + 1: 5 * BLOCK + 4] = b"abc"
        assert open(s.path, "rb").read() == bytes(want)
        runs = [(0, 5), (6, 14), (14, 22), (22, 30), (30, 38)]
        assert sorted(rec.ranges[1:]) == [(a * BLOCK, b * BLOCK) for a, b in runs] + [(38 * BLOCK, len(origin))]
        assert most == 4 and cache.budget.used == 0
        s.remove()

        rec.ranges.clear()
        most = 0
        assert cache.budget.try_acquire(64 * BLOCK)  # no room: a block at a time, outside the budget
        s = StagedFile(cache, len(origin), len(origin), fetch)
        await s.complete()
        assert open(s.path, "rb").read() == origin and most == 1 and len(rec.ranges) == 41
        cache.budget.release(64 * BLOCK)
        s.remove()

        fail_at.append(8 * BLOCK)
        s = StagedFile(cache, len(origin), len(origin), fetch)
        with pytest.raises(Unavailable, match="injected"):
            await s.complete()
        assert not s.is_local(8 * BLOCK, 16 * BLOCK) and cache.budget.used == 0  # the failed range stays missing
        s.remove()
        cache.close()

    trio.run(main)


def test_staged_file_fetch_written_whole_or_not_marked_and_slow_ranges_retried_by_block(tmp_path, rec,
                                                                                        monkeypatch):
    """A fetched range is marked present only once all of it is in the staged file: a write the
    cache disk cuts short goes on where it stopped, and one that then fails leaves its blocks
    missing (fetched again by the next upload, never uploaded as the file's sparse zeros).  A range
    that gets no answer within the backend's bound is fetched again a block at a time."""
    origin = os.urandom(24 * BLOCK + 5)
    rec.put_bytes("o", origin)
    etag = rec.head("o").etag
    ab = AsyncBackend(rec)
    real_pwrite = os.pwrite
    limit = {"per_call": None, "fail_after": None}
    written = [0]

    def pwrite(fd, data, off):  # a disk that takes at most so much per call, then fills up
        if limit["fail_after"] is not None and written[0] >= limit["fail_after"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_pwrite(fd, bytes(memoryview(data)[: limit["per_call"] or len(data)]), off)
        written[0] += n
        return n

    monkeypatch.setattr(os, "pwrite", pwrite)
    slow = []

    async def fetch(lo, hi):
        if hi - lo > BLOCK and slow:
            slow.append((lo, hi))
            raise Unavailable("the backend did not answer within 30s (get_range)")
        return await ab.get_range("o", lo, hi, if_match=etag)

    async def main():
        cache = Cache(tmp_path / "cache")
        cache.budget = MemoryBudget(64 * BLOCK)
        limit["per_call"] = 100_000
        s = StagedFile(cache, len(origin), len(origin), fetch)
        await s.complete()
        assert open(s.path, "rb").read() == origin  # short writes went on where they stopped
        s.remove()

        limit["per_call"], limit["fail_after"], written[0] = 300_000, 3 * BLOCK, 0
        s = StagedFile(cache, len(origin), len(origin), fetch)
        with pytest.raises(OSError) as e:
            await s.complete()
        assert e.value.errno == errno.ENOSPC and cache.budget.used == 0
        assert len(s.present) < 3  # nothing cut short is marked present
        limit["per_call"] = limit["fail_after"] = None
        await s.complete()
        assert open(s.path, "rb").read() == origin
        s.remove()

        slow.append("on")
        rec.ranges.clear()
        s = StagedFile(cache, len(origin), len(origin), fetch)
        await s.complete()
        assert open(s.path, "rb").read() == origin
        assert len(slow) == 1 + 3 and sorted(rec.ranges) == [(b * BLOCK, min((b + 1) * BLOCK, len(origin)))
                                                             for b in range(25)]
        s.remove()
        cache.close()

    trio.run(main)


def test_inode_table_move_and_forget():
    t = InodeTable()
    a = t.node_for(("pipeline", "p", "a"), True)
    b = t.node_for(("pipeline", "p", "a", "b"), False)
    a.lookups = b.lookups = 1
    t.move(a, ("pipeline", "p", "z"))
    assert t.at(("pipeline", "p", "z", "b")) is b and t.at(("pipeline", "p", "a")) is None
    t.forget(b.ino, 1)
    assert t.get(b.ino) is None
    t.forget(ROOT_INO, 100)
    assert t.get(ROOT_INO) is not None
    again = t.node_for(("pipeline", "p", "z"), False)  # became a file: a new inode
    assert again.ino != a.ino


def test_core_operations_on_disk(tmp_path):
    backend = DiskBackend(tmp_path / "be")

    async def body(nursery):
        fs = Filesystem(backend, Cache(tmp_path / "cache"), Options(uid=0, gid=0))
        await nursery.start(fs.run)
        tree = (await fs.lookup(ROOT_INO, "pipeline")).ino
        ns = (await fs.mkdir(tree, "p1")).ino
        fh, attr, _ = await fs.create(ns, "f.txt", os.O_WRONLY | os.O_CREAT)
        assert await fs.write(fh, 0, b"hello") == 5
        with pytest.raises(NotFound):  # written to the staged file only: durable at close
            backend.head("pipeline/p1/f.txt")
        await fs.flush(fh)
        assert backend.get_range("pipeline/p1/f.txt", 0) == b"hello"
        await fs.release(fh)
        fh, keep, _ = await fs.open(attr.ino, os.O_RDONLY)
        assert await fs.read(fh, 1, 3) == b"ell"
        await fs.release(fh)
        dfh = await fs.opendir(ns)
        assert [n for n, _ in await fs.readdir(dfh)] == ["f.txt"]
        fs.releasedir(dfh)
        await fs.rename(ns, "f.txt", ns, "g.txt", 0)
        assert backend.get_range("pipeline/p1/g.txt", 0) == b"hello"
        with pytest.raises(FSError) as e:
            await fs.rmdir(tree, "p1")
        assert e.value.errno == errno.ENOTEMPTY
        with pytest.raises(InvalidName) as e:
            await fs.mkdir(tree, "bad/name")
        assert errno_for(e.value, "mkdir", "/pipeline/bad/name") == errno.EINVAL
        await fs.unlink(ns, "g.txt")
        await fs.rmdir(tree, "p1")
        assert [e.key for e in backend.list("pipeline/")] == ["pipeline/"]  # the tree dir itself
        assert fs.status()["pending_uploads"] == []

    run_with_nursery(body)


@pytest.mark.expected_log("staged files that were never closed", "from a previous run")
def test_recovery_uploads_journaled_and_drops_unclosed(tmp_path):
    backend = DiskBackend(tmp_path / "be")

    async def main():
        cache = Cache(tmp_path / "cache")
        journaled = StagedFile(cache)
        os.pwrite(journaled.fd, b"closed but not uploaded", 0)
        cache.journal(journaled, "pipeline/p/pending")
        unclosed = StagedFile(cache)
        os.pwrite(unclosed.fd, b"never closed", 0)
        cache.close()  # the daemon "crashed"

        cache = Cache(tmp_path / "cache")
        fs = Filesystem(backend, cache)
        await fs.uploader.recover()
        assert backend.get_range("pipeline/p/pending", 0) == b"closed but not uploaded"
        assert list(cache.staged_dir.iterdir()) == [] and list(cache.pending_dir.iterdir()) == []
        cache.close()

    trio.run(main)


def test_cache_dir_is_exclusive(tmp_path):
    from fsdriver.staging import CacheLocked

    first = Cache(tmp_path / "c")
    with pytest.raises(CacheLocked, match="in use"):
        Cache(tmp_path / "c")
    first.close()


@pytest.mark.parametrize("exc,code", [
    (NameTooLong("x"), errno.ENAMETOOLONG), (InvalidName("x"), errno.EINVAL),
    (NotFound("x"), errno.ENOENT), (Unavailable("x"), errno.EIO),
    (FSError(errno.EXDEV, "x"), errno.EXDEV), (OSError(errno.ENOSPC, "full"), errno.ENOSPC),
    (RuntimeError("bug"), errno.EIO),
])
@pytest.mark.expected_log("op '/some/path': ")
def test_errno_boundary(exc, code, caplog):
    assert errno_for(exc, "op", "/some/path") == code
    if isinstance(exc, RuntimeError):
        assert "unexpected error" in caplog.text and "RuntimeError: bug" in caplog.text
