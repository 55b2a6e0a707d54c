"""The POSIX attributes of files (mode, owner, times, in the object's user metadata) through
stashfs://: a rewrite keeps them as the mount does, and touch sets the modification time."""

import os
import stat
import time

import pytest

pytest.importorskip("fsspec")

from fsdriver import kvexpiry, posixattrs  # noqa: E402
from fsdriver.fsspec_fs import StashFileSystem  # noqa: E402
from fsdriver.kv import DataStore  # noqa: E402

from .test_fsspec import RecordingBackend  # noqa: E402

OLD = 1_000_000_000.0  # 2001: a time no write of this test makes


@pytest.fixture
def fs(backend):
    return StashFileSystem(backend=backend, skip_instance_cache=True)


def attributes(backend, key):
    info = backend.head(key)
    return posixattrs.from_headers(info.meta, info.mtime, is_dir=False)


def give_attributes(backend, key, mode=0o640):
    """What a chmod and a `touch -d 2001-09-09` through the mount leave on the object."""
    meta = posixattrs.Meta(stat.S_IFREG | mode, 1234, 5678, OLD, OLD, OLD)
    backend.set_meta(key, posixattrs.to_headers(meta))


@pytest.mark.fuse
def test_a_rewrite_keeps_what_the_mount_set_and_touch_shows_in_the_mount(mount):
    f = mount.path / "pipeline" / "p1" / "f.csv"
    f.parent.mkdir()
    f.write_bytes(b"old")
    os.chmod(f, 0o640)
    (f.parent / "link").symlink_to("f.csv")
    fs = StashFileSystem(backend=mount.backend, skip_instance_cache=True)
    fs.pipe_file("pipeline/p1/f.csv", b"new")  # was: no metadata left, the mount's default mode again
    assert stat.S_IMODE(attributes(mount.backend, "pipeline/p1/f.csv").mode) == 0o640
    fs.pipe_file("pipeline/p1/link", b"data")  # a write replaces a symlink with a regular file
    os.utime(f, (OLD, OLD))
    fs.touch("pipeline/p1/f.csv", truncate=False)
    mount.umount()
    mount.mount()  # a fresh mount: nothing remembered, the objects tell
    st = os.stat(f)
    assert (stat.S_IMODE(st.st_mode), f.read_bytes()) == (0o640, b"new")
    assert abs(st.st_mtime - time.time()) < 60
    link = f.parent / "link"
    assert not link.is_symlink() and link.read_bytes() == b"data"


def test_every_kind_of_rewrite_keeps_the_attributes(fs, backend, tmp_path):
    key = "user/alice/f.bin"
    fs.pipe_file(key, b"0")
    give_attributes(backend, key, 0o4750)
    local = tmp_path / "local.bin"
    local.write_bytes(b"3")
    writes = [lambda: fs.pipe_file(key, b"1"), lambda: fs.put_file(str(local), key),
              lambda: fs.write_bytes(key, b"2" * (3 << 20)), lambda: fs.cp_file("user/alice/g", key),
              lambda: fs.touch(key)]
    fs.pipe_file("user/alice/g", b"g")
    for write in writes:
        before = time.time()
        write()
        after = attributes(backend, key)
        assert after is not None, write
        writer_keeps_setuid = os.getuid() == 0  # Linux clears setuid when someone else writes
        assert stat.S_IMODE(after.mode) == (0o4750 if writer_keeps_setuid else 0o750)
        assert (after.uid, after.gid) == (1234, 5678)
        assert after.mtime >= before - 1 and after.ctime >= before - 1
        give_attributes(backend, key, 0o4750)
    fs.pipe_file("user/alice/new", b"n")  # a new file gets none: the mount's defaults
    assert attributes(backend, "user/alice/new") is None


def test_a_move_takes_the_source_attributes(fs, backend):
    fs.pipe_file("user/alice/src", b"s")
    fs.pipe_file("user/alice/dst", b"d")
    give_attributes(backend, "user/alice/src", 0o600)
    give_attributes(backend, "user/alice/dst", 0o644)
    fs.mv("user/alice/src", "user/alice/dst")  # as rename(2): the file moved is the one shown
    assert stat.S_IMODE(attributes(backend, "user/alice/dst").mode) == 0o600
    assert fs.cat("user/alice/dst") == b"s"


def test_touch_without_truncate_sets_the_modification_time(fs, backend):
    fs.pipe_file("pipeline/p13/plain", b"content")
    fs.pipe_file("pipeline/p13/with-attrs", b"content")
    give_attributes(backend, "pipeline/p13/with-attrs")
    if backend.keeps_mtime:
        backend.set_mtime("pipeline/p13/plain", OLD)
        backend.set_mtime("pipeline/p13/with-attrs", OLD)
    fs.known.ttl = 0
    before = time.time()
    for name in ("plain", "with-attrs"):
        fs.touch(f"pipeline/p13/{name}", truncate=False)  # was NotImplementedError, empty message
        assert fs.cat(f"pipeline/p13/{name}") == b"content"
        assert fs.modified(f"pipeline/p13/{name}").timestamp() >= int(before)  # S3: whole seconds
    touched = attributes(backend, "pipeline/p13/with-attrs")
    assert touched.mtime >= before and stat.S_IMODE(touched.mode) == 0o640  # what the mount shows
    with pytest.raises(IsADirectoryError):
        fs.touch("pipeline/p13", truncate=False)
    fs.touch("pipeline/p13/missing", truncate=False)
    assert fs.cat("pipeline/p13/missing") == b""


def test_touching_a_record_keeps_its_ttl(fs, backend):
    ds = DataStore("st", backend=backend)
    ds.set("k", {"a": 1}, ttl=600)
    fs.touch("kv/st/k.json", truncate=False)
    etag = backend.head("kv/st/k.json").etag  # on disk a new one: the mtime is part of it
    assert [tag for _, tag, _ in kvexpiry.markers_of(backend, "kv/st/", "k.json")] == [etag]
    assert ds["k"] == {"a": 1}


class HeadCounting(RecordingBackend):
    """The real backend, with a record of the objects it was asked to HEAD."""

    def __init__(self, inner):
        super().__init__(inner)
        self.heads = []

    def head(self, key):
        self.heads.append(key)
        return self.inner.head(key)


def test_keeping_attributes_costs_one_head_per_file_replaced_and_none_per_new_file(s3_backend):
    spy = HeadCounting(s3_backend)
    fs = StashFileSystem(backend=spy, skip_instance_cache=True)
    fs.pipe_file("user/alice/new", b"1")
    with fs.open("user/alice/other", "wb") as f:
        f.write(b"1")
    assert spy.heads == []
    fs.pipe_file("user/alice/new", b"2")
    assert spy.heads == ["user/alice/new"]


@pytest.mark.fuse
def test_symlinks_and_special_files_are_plain_objects_as_documented(mount):
    d = mount.path / "pipeline" / "p1"
    d.mkdir()
    (d / "data.csv").write_bytes(b"a\n1\n")
    (d / "latest.csv").symlink_to("data.csv")
    os.mkfifo(d / "fifo")
    fs = StashFileSystem(backend=mount.backend, skip_instance_cache=True)
    assert [(e["name"], e["type"], e["size"]) for e in fs.ls("pipeline/p1")] == [
        ("pipeline/p1/data.csv", "file", 4), ("pipeline/p1/fifo", "file", 0), ("pipeline/p1/latest.csv", "file", 8)]
    assert fs.cat("pipeline/p1/latest.csv") == b"data.csv"  # the target, not followed (docs/python.md)
    assert fs.cat("pipeline/p1/fifo") == b""
    assert stat.S_ISLNK(attributes(mount.backend, "pipeline/p1/latest.csv").mode)  # what tells them apart
    assert stat.S_ISFIFO(attributes(mount.backend, "pipeline/p1/fifo").mode)
