"""The Python data API (fsdriver.data): identical semantics on disk and S3."""

import os

import pytest

from fsdriver import data
from fsdriver.errors import InvalidName


@pytest.fixture
def store(backend):
    return data.pipeline("p1", backend=backend)


def test_puts_gets_size_exists(store):
    store.puts("a/b.txt", b"hello world")
    assert store.gets("a/b.txt") == b"hello world"
    assert store.size("a/b.txt") == 11
    assert store.exists("a/b.txt")
    assert not store.exists("a")  # a prefix is not an object
    assert not store.exists("a/b")
    assert store.backend.get_range("pipeline/p1/a/b.txt", 0) == b"hello world"


@pytest.mark.parametrize("rng,want", [
    ([0, 5], b"hello"), ([6, 11], b"world"), ([6, 100], b"world"), ([11, 20], b""),
    ([50, 60], b""), ([3, 3], b""), ([0, None], b"hello world"), ((4, 7), b"o w"),
])
def test_gets_byte_range(store, rng, want):
    store.puts("r", b"hello world")
    assert store.gets("r", byte_range=rng) == want


@pytest.mark.parametrize("rng", [[-1, 3], [5, 4], [1], [0, 1, 2], ["a", 3]])
def test_gets_bad_byte_range(store, rng):
    store.puts("r", b"hello world")
    with pytest.raises(ValueError):
        store.gets("r", byte_range=rng)


def test_missing_raises_file_not_found(store, tmp_path):
    for call in (lambda: store.gets("nope"), lambda: store.size("nope"),
                 lambda: store.get("nope", tmp_path / "out"), lambda: store.delete("nope"),
                 lambda: store.delete("nope", recursive=True),
                 lambda: store.gets("nope", byte_range=[2, 2])):
        with pytest.raises(FileNotFoundError):
            call()
    assert not (tmp_path / "out").exists()


def test_put_get_files(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    store.put("bin/x", src)
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    store.get("bin/x", out)
    assert out.read_bytes() == src.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".stashfs")] == []
    with pytest.raises(FileNotFoundError):
        store.put("y", tmp_path / "no-such-local-file")


def test_list_tree_is_path_aware_and_sorted(store):
    for name in ["a/b", "a/b/c", "a/b/d/e", "a/bc", "a/a", "z", "a/b.txt"]:
        try:
            store.puts(name, name.encode())
        except NotADirectoryError:
            assert store.backend.url.startswith("file://")  # disk: a/b is a file, a/b/c cannot be
    names = store.list_tree("a/b")
    assert "a/bc" not in names and "a/b.txt" not in names
    assert all(n == "a/b" or n.startswith("a/b/") for n in names)
    assert names == sorted(names) and names
    assert store.list_tree("a/b/") == names
    assert store.list_tree() == sorted(store.list_tree())
    assert "z" in store.list_tree() and "a/bc" in store.list_tree("a")
    assert store.list_tree("nothing") == []


def test_list_gives_names_that_start_with_the_prefix(store):
    """Conducto's list(prefix): "names of objects that start with prefix", not a directory."""
    for name in ["stage1/rows.csv", "stage2/x/y", "stage", "stages.txt", "other/stage1"]:
        store.puts(name, b"1")
    assert store.list("stage") == ["stage", "stage1/rows.csv", "stage2/x/y", "stages.txt"]
    assert store.list("stage1") == ["stage1/rows.csv"]
    assert store.list("stage2/x/") == ["stage2/x/y"]
    assert store.list("other/st") == ["other/stage1"]
    assert store.list("") == sorted(store.list("")) and len(store.list("")) == 5
    assert store.list("nothing") == []
    assert [i.key for i in store.list_info("stages")] == ["stages.txt"]
    with pytest.raises(ValueError):
        store.list("a//b")
    with pytest.raises(ValueError):
        store.list("../x")


def test_list_skips_directory_markers_and_other_stores(store):
    store.puts("x/y", b"1")
    store.backend.put_bytes("pipeline/p1/emptydir/", b"")
    store.backend.put_bytes("pipeline/p10/x/y", b"other pipeline")
    assert store.list() == ["x/y"]
    infos = store.list_info()
    assert infos[0].key == "x/y" and infos[0].size == 1


def test_delete_recursive_never_touches_siblings(store):
    for name in ["d/one", "d/sub/two", "dfoo/three", "d.txt"]:
        store.puts(name, b"x")
    with pytest.raises(FileNotFoundError):
        store.delete("d")  # not an object, and not recursive
    store.delete("d", recursive=True)
    assert store.list() == ["d.txt", "dfoo/three"]
    store.delete("d.txt")
    assert store.list() == ["dfoo/three"]


def test_pipeline_and_user_scoping(backend, monkeypatch):
    monkeypatch.setenv("STASHFS_PIPELINE_ID", "envpipe")
    monkeypatch.setenv("STASHFS_USER", "alice")
    data.pipeline(backend=backend).puts("f", b"p")
    data.user(backend=backend).puts("f", b"u")
    data.user("bob", backend=backend).puts("f", b"b")
    assert backend.get_range("pipeline/envpipe/f", 0) == b"p"
    assert backend.get_range("user/alice/f", 0) == b"u"
    assert backend.get_range("user/bob/f", 0) == b"b"
    assert data.pipeline(id="envpipe", backend=backend).gets("f") == b"p"


def test_module_level_stores_use_environment(tmp_path, monkeypatch):
    (tmp_path / "be").mkdir()  # a named backend directory must exist
    monkeypatch.setenv("STASHFS_BACKEND", str(tmp_path / "be"))
    monkeypatch.setenv("STASHFS_PIPELINE_ID", "pp")
    data.pipeline.puts("k", b"v")
    assert (tmp_path / "be" / "pipeline" / "pp" / "k").read_bytes() == b"v"
    assert data.pipeline.list() == ["k"]
    monkeypatch.delenv("STASHFS_PIPELINE_ID")
    with pytest.raises(RuntimeError, match="STASHFS_PIPELINE_ID"):
        data.pipeline.gets("k")


@pytest.mark.parametrize("name", ["..", "a/../b", "a\0b", "x" * 256, "/abs", "a//b"])
def test_bad_names_rejected_before_any_io(store, name):
    with pytest.raises(InvalidName):
        store.puts(name, b"x")
    assert store.list() == []


@pytest.mark.parametrize("pid", ["../x", "", "a/b", ".x", "x" * 129])
def test_bad_pipeline_ids(backend, pid):
    with pytest.raises(InvalidName):
        data.pipeline(pid or "-", backend=backend).puts("f", b"x")


def test_puts_requires_bytes(store):
    with pytest.raises(TypeError, match="str"):
        store.puts("f", "text")
