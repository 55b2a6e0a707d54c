"""The Python data API (fsdriver.data): identical semantics on disk and S3."""

import errno
import os

import pytest

from fsdriver import data, treeshape
from fsdriver.backend.s3 import S3Backend
from fsdriver.errors import BucketNotFound, InvalidName, NotFound, Unavailable


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
    for name in ["a/b", "a/bc", "a/a", "z", "a/b.txt"]:
        store.puts(name, name.encode())
    below = []
    if not store.backend.keeps_empty_dirs:  # S3: another tool may write both a/b and a/b/...
        below = ["a/b/c", "a/b/d/e"]
        for name in below:
            store.backend.put_bytes(store.root + name, name.encode())
    names = store.list_tree("a/b")
    assert names == ["a/b", *below]
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
    with pytest.raises(IsADirectoryError):
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


def test_a_directory_where_a_file_is_meant_is_isadirectoryerror(store, tmp_path):
    """Trial finding: ``delete("d")`` of a directory said "no object 'd'", and ``put`` of a local
    directory raised an IsADirectoryError naming nothing (disk)."""
    store.puts("d/f", b"1")
    with pytest.raises(IsADirectoryError) as e:
        store.delete("d")
    assert e.value.filename == "d" and "recursive=True" in str(e.value)
    assert store.gets("d/f") == b"1"
    with pytest.raises(IsADirectoryError) as e:
        store.put("x", tmp_path)
    assert e.value.filename == str(tmp_path) and not store.exists("x")
    with pytest.raises(FileNotFoundError):
        store.delete("nothing")


def test_puts_requires_bytes(store):
    with pytest.raises(TypeError, match="str"):
        store.puts("f", "text")


# -- the tree's shape (fsdriver.treeshape): the same refusals on disk and S3, as fsspec and the mount


def test_no_file_below_a_file_nor_where_a_directory_is(store, tmp_path):
    store.puts("visible.txt", b"I am visible")
    store.puts("stage1/rows.csv", b"a,b\n")
    src = tmp_path / "src"
    src.write_bytes(b"from a file")
    for call, name in [(lambda: store.puts("visible.txt/child", b"c"), "visible.txt/child"),
                       (lambda: store.put("visible.txt/deeper/child", src), "visible.txt/deeper/child"),
                       (lambda: store.puts("stage1/rows.csv/x", b"c"), "stage1/rows.csv/x")]:
        with pytest.raises(NotADirectoryError) as e:
            call()
        assert (e.value.errno, e.value.filename) == (errno.ENOTDIR, name)
    for call in (lambda: store.puts("stage1", b"over a directory"), lambda: store.put("stage1", src)):
        with pytest.raises(IsADirectoryError) as e:
            call()
        assert (e.value.errno, e.value.filename) == (errno.EISDIR, "stage1")
    keys = [e.key for e in store.backend.list("pipeline/p1/") if not e.key.endswith("/")]
    assert keys == ["pipeline/p1/stage1/rows.csv", "pipeline/p1/visible.txt"]  # nothing half-made
    assert store.gets("visible.txt") == b"I am visible" and store.gets("stage1/rows.csv") == b"a,b\n"
    store.puts("visible.txt", b"replaced")  # replacing a file stays allowed
    store.puts("stage1/more/deep.csv", b"1")  # and so does a new file below a directory
    assert store.list() == ["stage1/more/deep.csv", "stage1/rows.csv", "visible.txt"]


def test_the_checks_of_a_put_cost_a_list_and_a_head_per_level_unseen(s3_backend, monkeypatch):
    """S3: the first put below new directories asks whether the name is a directory (a LIST) and
    whether each directory above it is a file (a HEAD); a put next to it within the TTL asks
    only the LIST, as fsspec within its metadata TTL."""
    monkeypatch.setattr(treeshape.RecentWrites, "TTL", 600.0)  # no expiry during the test, however slow
    s3_backend.check()  # the bucket is there: asked once per backend, at its first HEAD that finds nothing
    calls = []
    s3_backend.client.meta.events.register("before-call.s3", lambda model, **kw: calls.append(model.name))
    store = data.user("alice", backend=s3_backend)  # a user store: no pipeline owner record
    store.puts("d/e/one", b"1")
    assert calls == ["ListObjectsV2", "HeadObject", "HeadObject", "PutObject"]
    calls.clear()
    store.puts("d/e/two", b"2")
    assert calls == ["ListObjectsV2", "PutObject"]
    calls.clear()
    store.puts("d/e/two", b"again")  # a file it just wrote: not a directory
    assert calls == ["PutObject"]


# -- a directory whose last entry is deleted stays (S3: a marker), as on disk and in the mount


def test_a_directory_stays_when_its_last_entry_is_deleted(store):
    store.puts("only/one", b"1")
    store.puts("d/sub/x", b"2")
    store.puts("top", b"3")
    store.delete("only/one")
    store.delete("d/sub", recursive=True)
    assert [e.key for e in store.backend.list("pipeline/p1/only/")] == ["pipeline/p1/only/"]
    assert [e.key for e in store.backend.list("pipeline/p1/d/")] == ["pipeline/p1/d/"]
    store.delete("top")
    store.delete("only", recursive=True)
    store.delete("d", recursive=True)
    assert [e.key for e in store.backend.list("pipeline/p1/")] == ["pipeline/p1/"]  # the namespace too
    assert store.list() == []


def test_deleting_keeps_a_marker_that_is_there(s3_backend):
    """A directory's marker may hold its attributes (written by the mount): never replaced."""
    store = data.user("alice", backend=s3_backend)
    s3_backend.put_bytes("user/alice/d/", b"", meta={"stashfs-mode": "750"})
    store.puts("d/f", b"1")
    store.delete("d/f")
    assert s3_backend.head("user/alice/d/").meta == {"stashfs-mode": "750"}


# -- the backend's failures are OSErrors with errno (fsdriver.apierrors)


def test_a_missing_bucket_is_never_a_missing_object(moto_server, tmp_path):
    store = data.pipeline(id="p1", backend=S3Backend("nosuchbucket", "pfx", endpoint_url=moto_server.url))
    calls = {
        "gets": lambda: store.gets("a.txt"), "exists": lambda: store.exists("a.txt"),
        "size": lambda: store.size("a.txt"), "stat": lambda: store.stat("a.txt"),
        "get": lambda: store.get("a.txt", tmp_path / "out"), "list": lambda: store.list(),
        "list_tree": lambda: store.list_tree("a"), "puts": lambda: store.puts("a.txt", b"x"),
        "delete": lambda: store.delete("a.txt"),
    }
    for what, call in calls.items():
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.ENXIO, what
        assert isinstance(e.value, BucketNotFound), what  # `except BucketNotFound` still works
        assert "bucket 'nosuchbucket' does not exist" in str(e.value), what
    assert not (tmp_path / "out").exists()


def test_a_head_tells_a_missing_bucket_from_a_missing_key(moto_server, s3_backend):
    """S3 answers a HEAD in a missing bucket with a bare 404: the backend asks about the bucket once."""
    with pytest.raises(BucketNotFound):
        S3Backend("nosuchbucket", "", endpoint_url=moto_server.url).head("k")
    with pytest.raises(NotFound) as e:
        s3_backend.head("k")
    assert not isinstance(e.value, BucketNotFound)


def test_an_unreachable_backend_is_an_oserror(tmp_path):
    down = S3Backend("bucket", "", endpoint_url="http://127.0.0.1:9", max_attempts=1, connect_timeout=2)
    store = data.pipeline(id="p1", backend=down)
    for what, call in {"gets": lambda: store.gets("a"), "puts": lambda: store.puts("a", b"x"),
                       "list": lambda: store.list(), "exists": lambda: store.exists("a"),
                       "delete": lambda: store.delete("a")}.items():
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EIO and isinstance(e.value, Unavailable), what
        assert "cannot reach S3" in str(e.value), what


def test_a_key_the_endpoint_cannot_store_is_never_no_such_object(store):
    """moto answers a PUT of a key with a newline with 404: a put is refused as EINVAL naming the
    key, never "no such object"; on disk the name is stored."""
    if store.backend.keeps_empty_dirs:
        store.puts("new\nline", b"x")
        assert store.gets("new\nline") == b"x"
        return
    with pytest.raises(OSError) as e:
        store.puts("new\nline", b"x")
    assert (e.value.errno, e.value.filename) == (errno.EINVAL, "new\nline")
    assert "refused to store this key" in str(e.value) and "no such object" not in str(e.value)
    assert store.list() == []


def test_fsspec_changes_in_the_same_process_are_not_hidden_by_what_the_api_remembers(backend):
    """Review finding: the data API trusted its memory of its own recent puts for a second, and
    fsspec's writes and removals on the same backend did not touch it: a file fsspec wrote where
    the API had put a directory was then hidden by the API's next put below it."""
    from fsdriver.fsspec_fs import StashFileSystem

    fs = StashFileSystem(backend=backend, skip_instance_cache=True)
    p = data.pipeline("p1", backend=backend)
    p.puts("a/b", b"1")
    fs.rm("pipeline/p1/a", recursive=True)
    fs.pipe_file("pipeline/p1/a", b"file")
    with pytest.raises(NotADirectoryError):
        p.puts("a/c", b"2")
    assert fs.cat_file("pipeline/p1/a") == b"file"
    fs.makedirs("pipeline/p1/x/y")
    p.puts("z", b"3")
    fs.rm("pipeline/p1/z")
    fs.makedirs("pipeline/p1/z/sub")
    with pytest.raises(IsADirectoryError):
        p.puts("z", b"4")
    assert fs.info("pipeline/p1/z")["type"] == "directory"
