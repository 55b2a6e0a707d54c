"""What the data API (fsdriver.data) writes, as a mount shows it: the same tree on disk and S3.

Each test writes through the API before the mount has looked at the namespace, so the mount's
first lookup asks the backend: what it shows is what the API left there."""

import errno
import os

import pytest

from fsdriver import data


def test_a_refused_put_leaves_a_file_a_file(mount):
    store = data.pipeline(id="p4", backend=mount.backend)
    store.puts("visible.txt", b"I am visible")
    store.puts("stage1/rows.csv", b"a,b\n")
    with pytest.raises(NotADirectoryError):
        store.puts("visible.txt/child", b"c")
    with pytest.raises(IsADirectoryError):
        store.puts("stage1", b"over a directory")
    d = mount.path / "pipeline" / "p4"
    assert (d / "visible.txt").read_bytes() == b"I am visible"
    assert sorted(os.listdir(d)) == ["stage1", "visible.txt"]
    assert os.listdir(d / "stage1") == ["rows.csv"]
    with pytest.raises(OSError) as e:
        (d / "visible.txt" / "child").stat()
    assert e.value.errno == errno.ENOTDIR


def test_a_directory_whose_last_file_the_api_deleted_stays(mount):
    store = data.pipeline(id="p5", backend=mount.backend)
    store.puts("only/one", b"1")
    store.puts("keep", b"2")
    store.delete("only/one")
    d = mount.path / "pipeline" / "p5"
    assert sorted(os.listdir(d)) == ["keep", "only"]
    assert (d / "only").is_dir() and os.listdir(d / "only") == []
