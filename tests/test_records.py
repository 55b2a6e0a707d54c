"""When a record handle commits (fsdriver.records), driven through the core without the kernel."""

import errno
import os

import pytest
import trio
import trio.testing

from fsdriver.errors import NotFound, Unavailable
from fsdriver.errno_boundary import FSError
from fsdriver.inodes import ROOT_INO
from fsdriver.memory import MemoryBudget
from fsdriver.strictjson import MAX_RECORD_BYTES

from .test_core_races import entered, run


async def _store(fs, be, value=b'{"a": 1}'):
    """The store /kv/s with record r.json holding ``value``; returns (store ino, record ino)."""
    kv = (await fs.lookup(ROOT_INO, "kv")).ino
    store = (await fs.mkdir(kv, "s")).ino
    be.put_bytes("kv/s/r.json", value)
    fs.inodes[store].listing = None
    return store, (await fs.lookup(store, "r.json")).ino


class WatchedBudget(MemoryBudget):
    """The daemon's memory budget, telling the test when somebody has to wait for memory."""

    def __init__(self, limit):
        super().__init__(limit)
        self.someone_waits = trio.Event()
        self.wanted = 0

    async def acquire(self, n):
        if self.used + n > self.limit and self.used > 0:
            self.wanted = n
            self.someone_waits.set()
        await super().acquire(n)


def _staged_files(fs):
    return list(fs.cache.staged_dir.iterdir())


def test_flush_commits_only_what_was_written(tmp_path):
    """bash's `echo bad > r.json`: open(O_TRUNC), close of the first descriptor, write, close."""
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.flush(fh)  # nothing written yet: the old value must stay
        assert be.get_range("kv/s/r.json", 0) == b'{"a": 1}'
        await fs.write(fh, 0, b"bad\n")
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EINVAL and "not valid JSON" in str(e.value)
        await fs.release(fh)  # a refused handle never commits, not even ""
        assert be.get_range("kv/s/r.json", 0) == b'{"a": 1}'
        assert _staged_files(fs) == []

    run(tmp_path, body)


def test_a_valid_write_commits_at_close(tmp_path):
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.flush(fh)
        await fs.write(fh, 0, b'{"b": 2}')
        await fs.flush(fh)
        assert be.get_range("kv/s/r.json", 0) == b'{"b": 2}'
        await fs.release(fh)
        assert be.get_range("kv/s/r.json", 0) == b'{"b": 2}'
        assert (await fs.getattr(ino)).size == 8

    run(tmp_path, body)


def test_truncated_only_content_commits_at_release(tmp_path):
    """`: > r.json`, and a new record created and never written (touch)."""
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.flush(fh)
        assert be.get_range("kv/s/r.json", 0) == b'{"a": 1}'
        await fs.release(fh)
        assert be.get_range("kv/s/r.json", 0) == b'""'
        fh, attr, _ = await fs.create(store, "new.json", os.O_WRONLY | os.O_CREAT)
        await fs.flush(fh)
        with pytest.raises(NotFound):
            be.head("kv/s/new.json")
        await fs.release(fh)
        assert be.get_range("kv/s/new.json", 0) == b'""'
        dfh = await fs.opendir(store)
        assert [n for n, _ in await fs.readdir(dfh)] == ["new.json", "r.json"]
        fs.releasedir(dfh)

    run(tmp_path, body)


def test_open_and_getattr_wait_for_a_commit_at_release(tmp_path):
    """RELEASE is sent after close() returned: what comes next must see its commit."""
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.flush(fh)
        uploading, go_on = be.gate("put_file")
        nursery.start_soon(fs.release, fh)
        await entered(uploading)  # the release commit is in flight
        seen = {}

        async def stat():
            seen["size"] = (await fs.getattr(ino)).size

        async def read():
            rfh, _, _ = await fs.open(ino, os.O_RDONLY)
            seen["data"] = await fs.read(rfh, 0, 100)
            await fs.release(rfh)

        async def listdir():
            dfh = await fs.opendir(store)
            seen["names"] = [n for n, _ in await fs.readdir(dfh)]
            fs.releasedir(dfh)

        async with trio.open_nursery() as readers:
            for fn in (stat, read, listdir):
                readers.start_soon(fn)
            await trio.testing.wait_all_tasks_blocked()
            assert seen == {}  # all three wait for the commit
            go_on.set()
        assert seen == {"size": 2, "data": b'""', "names": ["r.json"]}

    run(tmp_path, body)


def test_a_write_past_the_limit_is_efbig_at_once_and_nothing_is_stored(tmp_path):
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.write(fh, 0, b"1" + b" " * (MAX_RECORD_BYTES - 1))  # exactly the limit
        with pytest.raises(FSError) as e:
            await fs.write(fh, MAX_RECORD_BYTES, b" ")
        assert e.value.errno == errno.EFBIG
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EFBIG
        await fs.release(fh)
        assert be.get_range("kv/s/r.json", 0) == b'{"a": 1}'
        assert _staged_files(fs) == []
        fh, _, _ = await fs.open(ino, os.O_WRONLY)
        with pytest.raises(FSError) as e:
            await fs.setattr(ino, size=MAX_RECORD_BYTES + 1, fh=fh)
        assert e.value.errno == errno.EFBIG
        await fs.release(fh)
        assert be.get_range("kv/s/r.json", 0) == b'{"a": 1}'

    run(tmp_path, body)


def test_checking_a_record_waits_for_memory(tmp_path):
    """A commit reserves the record's bytes and the parser's memory from the daemon's budget."""
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        value = b"[" + b"{}," * 100_000 + b"{}]"
        await fs.write(fh, 0, value)
        fs.budget = fs.uploader.budget = budget = WatchedBudget(16 << 20)
        await budget.acquire(budget.limit)  # somebody else holds all of it
        done = trio.Event()

        async def close():
            await fs.flush(fh)
            done.set()

        nursery.start_soon(close)
        await budget.someone_waits.wait()
        assert not done.is_set()
        assert be.get_range("kv/s/r.json", 0) == b'{"a": 1}'
        budget.release(budget.limit)
        await done.wait()
        assert be.get_range("kv/s/r.json", 0) == value
        assert budget.used == 0 and budget.wanted > len(value)
        await fs.release(fh)

    run(tmp_path, body)


def test_a_scratch_file_that_is_not_json_cannot_become_a_record(tmp_path):
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.create(store, "tmp", os.O_WRONLY | os.O_CREAT)
        await fs.write(fh, 0, b"[NaN]")
        await fs.flush(fh)
        await fs.release(fh)
        with pytest.raises(FSError) as e:
            await fs.rename(store, "tmp", store, "r.json", 0)
        assert e.value.errno == errno.EBADMSG  # not EINVAL: mv would say "subdirectory of itself"
        assert "/kv/s/r.json" in str(e.value) and "not valid JSON: NaN is not a JSON value" in str(e.value)
        assert be.get_range("kv/s/r.json", 0) == b'{"a": 1}'
        fh, _, _ = await fs.open((await fs.lookup(store, "tmp")).ino, os.O_RDONLY)
        assert await fs.read(fh, 0, 100) == b"[NaN]"
        await fs.release(fh)

    run(tmp_path, body)


@pytest.mark.parametrize("op", ["unlink", "rename"])
def test_rm_or_mv_after_a_truncation_waits_for_its_commit(tmp_path, op):
    """`: > r.json; rm r.json` (or mv): the commit at release, which close() did not wait for, must
    not land after the rm and bring the record back, nor leave the old value behind the mv."""
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.flush(fh)
        uploading, go_on = be.gate("put_file")
        nursery.start_soon(fs.release, fh)
        await entered(uploading)  # the release commit is in flight
        async with trio.open_nursery() as inner:
            if op == "unlink":
                inner.start_soon(fs.unlink, store, "r.json")
            else:
                inner.start_soon(fs.rename, store, "r.json", store, "s.json", 0)
            await trio.testing.wait_all_tasks_blocked()
            go_on.set()
        keys = sorted(e.key for e in be.list("kv/s/") if e.key.endswith(".json"))
        if op == "unlink":
            assert keys == []
        else:
            assert keys == ["kv/s/s.json"] and be.get_range("kv/s/s.json", 0) == b'""'

    run(tmp_path, body)


def test_a_refusal_at_an_intermediate_close_does_not_refuse_the_rest(tmp_path):
    """`{ echo -n '{"a":'; echo '1}'; } > r.json`: the first child's exit closes its descriptor
    with half a value (refused, EINVAL); the second completes it and its close commits it."""
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.write(fh, 0, b'{"a":')
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EINVAL
        assert be.get_range("kv/s/r.json", 0) == b'{"a": 1}'
        await fs.write(fh, 5, b"1}\n")
        await fs.flush(fh)
        assert be.get_range("kv/s/r.json", 0) == b'{"a":1}\n'
        await fs.release(fh)
        assert be.get_range("kv/s/r.json", 0) == b'{"a":1}\n'

    run(tmp_path, body)


def test_a_record_whose_check_needs_most_of_the_memory_is_refused(tmp_path):
    """Review finding: a 4 MiB record of empty arrays prices its check over 100 MB; with a small
    --memory-limit it waited for all of it and then held it (every reader waiting meanwhile)."""
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.write(fh, 0, b"[" + b"[]," * 200_000 + b"[]]")
        fs.budget = fs.uploader.budget = budget = WatchedBudget(8 << 20)
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EFBIG and "memory" in str(e.value)
        assert budget.used == 0 and budget.wanted == 0
        await fs.release(fh)
        assert be.get_range("kv/s/r.json", 0) == b'{"a": 1}'

    run(tmp_path, body)


@pytest.mark.expected_log(r"upload failed|cannot be asked")
def test_a_pending_record_is_shown_and_an_unlink_wins_over_its_retry(tmp_path):
    """Review findings: a record whose commit became a pending upload (close() said EIO) read back
    with its old value, and an rm did not stop the retry loop from bringing it back."""
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.write(fh, 0, b'{"a": 2}')
        be.fail["put_file"] = Unavailable("down")
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EIO
        await fs.release(fh)
        rfh, _, _ = await fs.open(ino, os.O_RDONLY)  # read-your-writes: the pending value
        assert await fs.read(rfh, 0, 100) == b'{"a": 2}'
        await fs.release(rfh)
        assert (await fs.getattr(ino)).size == 8
        del be.fail["put_file"]
        await fs.unlink(store, "r.json")
        assert await fs.uploader.flush_all() == []
        assert [e.key for e in be.list("kv/s/") if e.key.endswith(".json")] == []
        assert _staged_files(fs) == []

    run(tmp_path, body)


@pytest.mark.expected_log(r"upload failed")
def test_a_pending_record_lands_when_the_backend_is_back(tmp_path):
    async def body(fs, be, ns, nursery):
        store, ino = await _store(fs, be)
        fh, _, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.write(fh, 0, b'{"a": 3}')
        be.fail["put_file"] = Unavailable("down")
        with pytest.raises(FSError):
            await fs.flush(fh)
        await fs.release(fh)
        del be.fail["put_file"]
        assert await fs.uploader.flush_all() == []
        assert be.get_range("kv/s/r.json", 0) == b'{"a": 3}'
        assert fs.inodes.get(ino).staged is None and _staged_files(fs) == []
        rfh, _, _ = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(rfh, 0, 100) == b'{"a": 3}'
        await fs.release(rfh)

    run(tmp_path, body)
