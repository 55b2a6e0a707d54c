"""The disk backend's read and create paths: what a reader returns at every size and page-cache
state, when it needs a worker thread, and that a put stays atomic and durable (the temp file is
fsynced before its rename, the directory after it)."""

import errno
import os
import random

import pytest
import trio

from bench.scenarios import drop_file_cache
from fsdriver import handles
from fsdriver.backend.disk import DiskBackend
from fsdriver.errors import InvalidRequest, PreconditionFailed
from fsdriver.handles import LocalReader

from .conftest import backend_env
from .mounting import mounted

MiB = 1 << 20
SIZE = 3 * MiB + 12345  # not a multiple of a page or of any read size below


@pytest.fixture
def backing(tmp_path):
    """A file of SIZE bytes, every offset distinguishable; fsynced (clean pages can be dropped)."""
    data = random.Random(3).randbytes(SIZE)
    path = tmp_path / "backing.bin"
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path, data


def _nowait_works(path) -> bool:
    """Whether this filesystem serves preadv(RWF_NOWAIT) (the reader falls back to threads otherwise)."""
    if handles._RWF_NOWAIT is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 4096, 0)
        os.preadv(fd, [bytearray(4096)], 0, handles._RWF_NOWAIT)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _read_all(path, plan):
    """Run ``plan`` [(off, size)] through one LocalReader; returns the results and the reader."""

    async def main():
        reader, st = await LocalReader.open(path, trio.CapacityLimiter(2))
        try:
            return [bytes(await reader.read(off, size)) for off, size in plan], reader
        finally:
            reader.close()

    return trio.run(main)


@pytest.mark.parametrize("cold", [False, True], ids=["cached", "cold"])
@pytest.mark.parametrize("size", [1, 4095, 4096, 128 * 1024, MiB, 5 * MiB])
def test_local_reader_returns_exact_bytes(backing, size, cold):
    """Sequential reads to the end, then reads across and beyond the end of the file."""
    path, data = backing
    if cold:
        drop_file_cache(path)
    plan = [(off, size) for off in range(0, SIZE, size)] if size >= 4095 else [(0, size), (1, size)]
    plan += [(SIZE - 10, size), (SIZE, size), (SIZE + 5, size), (SIZE // 2 + 1, size)]
    got, _ = _read_all(path, plan)
    for (off, n), chunk in zip(plan, got):
        assert chunk == data[off:off + n], (off, n)


def test_read_half_in_page_cache(backing):
    """The cached part comes from the trio thread, the rest from a worker: one correct result."""
    path, data = backing
    drop_file_cache(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, MiB, 0)  # the first MiB is cached now (and maybe some read-ahead)
    finally:
        os.close(fd)
    got, _ = _read_all(path, [(MiB // 2, 2 * MiB), (0, SIZE + 100)])
    assert got == [data[MiB // 2:MiB // 2 + 2 * MiB], data]


def test_cached_reads_need_no_worker_thread(backing, monkeypatch):
    path, data = backing
    if not _nowait_works(path):
        pytest.skip("this filesystem does not serve preadv(RWF_NOWAIT)")
    os.stat(path)
    with open(path, "rb") as f:
        f.read()  # all of it in the page cache
    calls = []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kw):
        calls.append(fn)
        return await real(fn, *args, **kw)

    async def main():
        reader, _ = await LocalReader.open(path, trio.CapacityLimiter(2))
        monkeypatch.setattr(trio.to_thread, "run_sync", counting)
        try:
            out, off = bytearray(), 0
            while chunk := await reader.read(off, 128 * 1024):
                out += chunk
                off += len(chunk)
            return bytes(out)
        finally:
            reader.close()

    assert trio.run(main) == data
    assert calls == []  # the short read at the end of the file too


def test_refused_nowait_falls_back_to_threads(backing, monkeypatch):
    path, data = backing

    def refuse(*args):
        raise OSError(errno.EOPNOTSUPP, "not here")

    monkeypatch.setattr(handles.os, "preadv", refuse)
    got, reader = _read_all(path, [(0, MiB), (MiB, 3 * MiB)])
    assert b"".join(got) == data
    assert not reader.nowait  # asked once, then never again


def test_sequential_reads_advise_sequential_readahead(backing, monkeypatch):
    path, _ = backing
    advice = []
    real = os.posix_fadvise
    monkeypatch.setattr(handles.os, "posix_fadvise", lambda fd, off, n, how: (advice.append(how), real(fd, off, n, how)))
    step = 256 * 1024
    _read_all(path, [(0, step), (step, step), (2 * step, step), (3 * step, step), (0, step), (10, step)])
    # Two reads that each start where the last ended: sequential; the jump back: normal again.
    assert advice == [os.POSIX_FADV_SEQUENTIAL, os.POSIX_FADV_NORMAL]


# -- puts: atomic (temp file + rename) and durable (file fsynced before the rename, directory after)


def _record_durability(monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        real_replace(src, dst, **kw)  # (one refused for a missing parent is not an event)
        events.append(("rename", os.fspath(src), os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.parametrize("how", ["put_bytes", "put_file", "copy"])
def test_put_is_fsynced_renamed_then_directory_fsynced(tmp_path, monkeypatch, how):
    b = DiskBackend(tmp_path / "store")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 5000)
    b.put_bytes("ns/orig", b"y" * 7000)
    events = _record_durability(monkeypatch)
    if how == "put_bytes":
        info = b.put_bytes("ns/new/deep/k", b"z" * 3000, meta={"a": "1"})
    elif how == "put_file":
        info = b.put_file("ns/new/deep/k", src, meta={"a": "1"})
    else:
        info = b.copy("ns/orig", "ns/new/deep/k")
    target = str(b.root / "ns/new/deep/k")
    (_, tmp), rename, dir_sync = events
    assert rename == ("rename", tmp, target)  # the fsynced temp file is what is renamed into place
    assert tmp.startswith(str(b.root / ".stashfs" / "tmp"))
    assert dir_sync == ("fsync", str(b.root / "ns/new/deep"))
    head = b.head("ns/new/deep/k")
    assert (head.etag, head.size, head.mtime) == (info.etag, info.size, info.mtime)
    assert head.meta == info.meta
    assert os.listdir(b.root / ".stashfs" / "tmp") == []


def test_put_file_from_another_filesystem(tmp_path):
    """copy_file_range cannot cross some filesystems: the copy goes through a buffer then."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    data = random.Random(5).randbytes(3 * MiB + 7)
    src = f"/dev/shm/stashfs-test-{os.getpid()}"
    with open(src, "wb") as f:
        f.write(data)
    try:
        b = DiskBackend(tmp_path / "store")
        info = b.put_file("a/big", src)
        assert info.size == len(data) and b.get_range("a/big", 0) == data
    finally:
        os.unlink(src)


def test_failed_puts_leave_no_temp_file(tmp_path):
    b = DiskBackend(tmp_path / "store")
    b.put_bytes("f", b"file")
    b.put_bytes("d/child", b"c")
    with pytest.raises(InvalidRequest):
        b.put_bytes("f/under", b"x")  # a parent is an object
    with pytest.raises(InvalidRequest):
        b.put_bytes("d", b"x")  # a directory is there
    with pytest.raises(PreconditionFailed):
        b.put_bytes("f", b"x", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        b.put_bytes("f", b"x", if_match="not-its-etag")
    with pytest.raises(PreconditionFailed):
        b.put_bytes("nothing/here", b"x", if_match="not-its-etag")
    assert os.listdir(b.root / ".stashfs" / "tmp") == []
    assert b.get_range("f", 0) == b"file" and b.get_range("d/child", 0) == b"c"
    assert not (b.root / "nothing").exists()


def test_put_over_a_symlink_to_a_directory_is_refused(tmp_path):
    b = DiskBackend(tmp_path / "store")
    b.put_bytes("d/child", b"c")
    os.symlink(b.root / "d", b.root / "link")
    with pytest.raises(InvalidRequest):
        b.put_bytes("link", b"x")
    assert os.path.islink(b.root / "link")


def test_put_to_a_hard_linked_key_still_writes_in_place(tmp_path):
    b = DiskBackend(tmp_path / "store")
    b.put_bytes("a", b"one")
    b.link("a", "b")
    info = b.put_bytes("a", b"two!")
    assert b.get_range("b", 0) == b"two!" and b.head("b").etag == info.etag == b.head("a").etag
    assert os.listdir(b.root / ".stashfs" / "tmp") == []


# -- through a disk mount ---------------------------------------------------------------------


@pytest.fixture
def disk_mount(request, tmp_path):
    url, env = backend_env("disk", request, tmp_path)
    with mounted(tmp_path, url, env) as m:
        yield m
    assert "Traceback" not in m.log()


def test_sequential_read_through_disk_mount(disk_mount):
    """Content is exact at every read size; with the kernel read-ahead raised (root), FUSE reads
    are 1 MiB, not 128 KiB."""
    data = random.Random(9).randbytes(16 * MiB + 4097)
    disk_mount.backend.put_bytes("pipeline/p/big", data)
    path = disk_mount.path / "pipeline" / "p" / "big"
    before = disk_mount.status()
    with open(path, "rb", buffering=0) as f:
        out = bytearray()
        while chunk := f.read(MiB):
            out += chunk
    assert out == data
    reads = disk_mount.status()["requests"].get("read", 0) - before["requests"].get("read", 0)
    if "kernel read-ahead of" in disk_mount.log() and "set to 1024 KiB" in disk_mount.log():
        assert reads <= len(data) // MiB + 3, reads  # about one FUSE read per MiB
    for size in (1, 4096, 100_000, 3 * MiB):
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in (0, 12345, len(data) - 50, len(data)):
                assert os.pread(fd, size, off) == data[off:off + size], (size, off)
        finally:
            os.close(fd)


def test_creates_through_disk_mount_are_durable_files(disk_mount):
    """Each file is in the backing directory, complete, when its close() returns."""
    d = disk_mount.path / "pipeline" / "c"
    d.mkdir(parents=True)
    store = disk_mount.backend.root / "pipeline" / "c"
    for i in range(20):
        payload = bytes([i]) * 4096
        with open(d / f"f{i}", "wb") as f:
            f.write(payload)
        assert (store / f"f{i}").read_bytes() == payload  # after close, before anything else
    assert os.listdir(disk_mount.backend.root / ".stashfs" / "tmp") == []
