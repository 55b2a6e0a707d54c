"""Creating files without a request per lookup, and without replacing another node's file (issue 12).

The kernel looks a name up before every create.  In a directory this mount listed or created, that
lookup is answered from the listing; once the TTL passed, a small directory is listed again (one
request that answers the following creates too) instead of being asked about each name.  A name
another node created after that listing is still never replaced by an ``O_CREAT`` without
``O_TRUNC``: the first upload of such a file is conditional (If-None-Match) and close() answers
EEXIST.  Kernel-free: the core with an injected clock, on the disk backend and on S3 (moto).
"""

import errno
import os

import pytest

from fsdriver.errno_boundary import FSError
from .test_core_freshness import read_all, run

CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def requests(fs) -> int:
    """Backend calls so far, of every kind."""
    return sum(fs.stats.backend.values())


async def kernel_create(fs, d, name, data, flags=CREATE):
    """What the kernel does for open(O_CREAT): look the name up (ENOENT), create, write, close."""
    with pytest.raises(FSError) as e:
        await fs.lookup(d, name)
    assert e.value.errno == errno.ENOENT
    fh, attr, _ = await fs.create(d, name, flags)
    await fs.write(fh, 0, data)
    await fs.flush(fh)
    await fs.release(fh)
    return attr.ino


def test_creates_cost_about_one_request_each_past_the_ttl(tmp_path, backend, monkeypatch):
    """200 creates spread over 20 TTLs: one upload each, plus about one listing per TTL.  (The
    directory's own writes, one per directory per second of real time, are held back: its index
    with its times on S3, its times alone on disk.  On a loaded machine the test's real time, and
    with it their count, has no bound.)"""
    from fsdriver import attributes, dirindex

    monkeypatch.setattr(dirindex, "WRITE_DELAY", 3600.0)
    monkeypatch.setattr(attributes, "DIR_TIMES_DELAY", 3600.0)

    async def body(fs, d, clock):
        before = requests(fs)
        for i in range(200):
            await kernel_create(fs, d, f"f{i:03d}", b"x" * 100)
            clock.now += 0.1
        spent = requests(fs) - before
        assert spent <= 1.15 * 200, dict(fs.stats.backend)
        names = {e.key for e in fs.sync_backend.list("pipeline/p1/d/") if not e.key.endswith("/")}
        assert len(names) == 200

    run(tmp_path, backend, body)


def test_create_without_o_trunc_never_replaces_a_file_made_elsewhere(tmp_path, backend):
    """The listing says the name is free; another node creates it before this close(): EEXIST, and
    the other node's content stays.  A second write of a file created here is a plain upload."""

    async def body(fs, d, clock):
        ino = await kernel_create(fs, d, "mine", b"one", flags=os.O_WRONLY | os.O_CREAT)
        fh, _, _ = await fs.open(ino, os.O_WRONLY)
        await fs.write(fh, 3, b" two")
        await fs.flush(fh)  # no longer create-only: the object is ours
        await fs.release(fh)
        assert fs.sync_backend.get_range("pipeline/p1/d/mine", 0) == b"one two"

        with pytest.raises(FSError):
            await fs.lookup(d, "theirs")
        fs.sync_backend.put_bytes("pipeline/p1/d/theirs", b"their content")  # another node, after
        fh, _, _ = await fs.create(d, "theirs", os.O_WRONLY | os.O_CREAT)
        await fs.write(fh, 0, b"would replace it")
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EEXIST
        await fs.release(fh)
        assert fs.sync_backend.get_range("pipeline/p1/d/theirs", 0) == b"their content"
        assert fs.uploader.describe_pending() == []  # refused for good, not retried
        clock.now += 5
        ino = (await fs.lookup(d, "theirs")).ino
        assert await read_all(fs, ino) == b"their content"

    run(tmp_path, backend, body)


def test_create_with_o_trunc_replaces_like_a_truncating_open(tmp_path, backend):
    """O_TRUNC: the same outcome as opening the other node's file with O_TRUNC (last close wins)."""

    async def body(fs, d, clock):
        with pytest.raises(FSError):
            await fs.lookup(d, "f")
        fs.sync_backend.put_bytes("pipeline/p1/d/f", b"their content")
        fh, _, _ = await fs.create(d, "f", CREATE)
        await fs.write(fh, 0, b"mine")
        await fs.flush(fh)
        await fs.release(fh)
        assert fs.sync_backend.get_range("pipeline/p1/d/f", 0) == b"mine"

    run(tmp_path, backend, body)


def test_a_directory_in_use_is_not_looked_up_again(tmp_path, backend):
    """A listing that took long (a huge directory) is in use for five times as long: the names of
    that directory and of the directories above it are answered without a request meanwhile, even
    past the TTL (`ls -l` of 20,000 entries walks the path once per entry)."""

    async def body(fs, d, clock):
        for i in range(30):
            fs.sync_backend.put_bytes(f"pipeline/p1/d/big/sub/f{i:02d}", b"x")
        sub = fs.sync_backend
        slow_list = sub.list

        def list_slowly(*args, **kwargs):  # the listing takes 4 s of the injected clock
            out = list(slow_list(*args, **kwargs))
            clock.now += 4
            return iter(out)

        clock.now += 5
        big = (await fs.lookup(d, "big")).ino
        sub_ino = (await fs.lookup(big, "sub")).ino
        sub.list = list_slowly
        try:
            fh = await fs.opendir(sub_ino)
            assert len(await fs.readdir(fh)) == 30
        finally:
            sub.list = slow_list
        before = dict(fs.stats.backend)
        clock.now += 10  # past the TTL (1 s), within 5 x 4 s
        assert (await fs.lookup(d, "big")).ino == big
        assert (await fs.lookup(big, "sub")).ino == sub_ino
        assert dict(fs.stats.backend) == before
        assert (await fs.lookup(sub_ino, "f07")).size == 1  # from the listing (S3: HEAD for its attributes)
        assert fs.stats.backend["list"] == before["list"]
        fs.releasedir(fh)
        clock.now += 30  # the listing is no longer in use: asked again
        await fs.lookup(big, "sub")
        assert requests(fs) > sum(before.values())

    run(tmp_path, backend, body)


def test_a_directorys_attributes_never_go_back_to_older_ones(tmp_path, backend):
    """A directory has no etag: a listing or index row that describes it as it was before a change
    made here (its times moved by a create, stored since) must not replace what this mount knows.
    Seen as a directory mtime moving backwards in the model test once lookups re-listed parents."""
    from fsdriver import posixattrs
    from fsdriver.backend import CommonPrefix

    async def body(fs, d, clock):
        await fs.setattr(d, mode=0o40755)  # the directory's own attributes, stored
        node = fs.inodes.get(d)
        before = posixattrs.to_headers(node.meta)
        await kernel_create(fs, d, "f", b"x")  # moves the directory's mtime and ctime
        await fs.flush_metadata()  # ... stored: nothing pending any more
        after = fs.attr(node)
        assert after.mtime > posixattrs.from_headers(before, 0, True, 0, 0).mtime
        fs.names.set_info(node, CommonPrefix(node.prefix, meta=before), clock(), fs.inodes.seq)
        assert fs.attr(node).mtime == after.mtime and fs.attr(node).ctime == after.ctime

    run(tmp_path, backend, body)
