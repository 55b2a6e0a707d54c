"""stashfs:// through fsspec: the mount's keys, names and rules, on disk and S3, without a mount."""

import errno
import os
import subprocess
import sys
import time
from pathlib import PurePosixPath

import pytest

fsspec = pytest.importorskip("fsspec")

from fsdriver import data  # noqa: E402
from fsdriver.backend.base import Backend  # noqa: E402
from fsdriver.backend.disk import DiskBackend  # noqa: E402
from fsdriver.backend.s3 import S3Backend  # noqa: E402
from fsdriver.errors import NotFound  # noqa: E402
from fsdriver.fsspec_fs import StashFileSystem  # noqa: E402
from fsdriver.kv import DataStore  # noqa: E402


class RecordingBackend(Backend):
    """The real backend, with a record of the ranges it was asked for (a spy, not a stand-in)."""

    def __init__(self, inner):
        self.inner, self.url, self.ranges = inner, inner.url, []

    def get_range(self, key, start, end=None, *, if_match=None):
        self.ranges.append((key, start, end))
        return self.inner.get_range(key, start, end, if_match=if_match)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    for _name in ("check", "head", "read_stream", "put_bytes", "put_file", "list", "delete", "delete_many",
                  "delete_prefix", "copy", "lookup", "get_to_file"):
        locals()[_name] = (lambda n: lambda self, *a, **k: getattr(self.inner, n)(*a, **k))(_name)


@pytest.fixture
def fs(backend):
    return StashFileSystem(backend=backend, skip_instance_cache=True)


def test_registered_through_the_entry_point_without_fuse_or_trio(tmp_path):
    (tmp_path / "b").mkdir()  # a named backend directory must exist
    code = (
        "import sys, fsspec\n"
        f"fs = fsspec.filesystem('stashfs', backend={str(tmp_path / 'b')!r})\n"
        "fs.pipe('stashfs://pipeline/p1/x', b'1')\n"
        "with fsspec.open('stashfs://pipeline/p1/x', 'rb', backend=fs.backend) as f: assert f.read() == b'1'\n"
        "print(type(fs).__module__, sorted({'trio', 'pyfuse3'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fsdriver.fsspec_fs", "[]"]


def test_same_objects_as_the_api(fs, backend):
    fs.pipe("stashfs://pipeline/p1/stage/rows.csv", b"a,b\n1,2\n")
    store = data.pipeline("p1", backend=backend)
    assert store.gets("stage/rows.csv") == b"a,b\n1,2\n"
    store.puts("from-api.bin", b"xyz")
    assert fs.cat("pipeline/p1/from-api.bin") == b"xyz"
    info = fs.info("stashfs://pipeline/p1/stage/rows.csv")
    head = backend.head("pipeline/p1/stage/rows.csv")
    assert (info["type"], info["size"], info["etag"]) == ("file", 8, head.etag)
    assert info["mtime"] == pytest.approx(head.mtime, abs=1)  # S3 lists whole seconds
    assert [(e["name"], e["type"]) for e in fs.ls("pipeline/p1")] == [
        ("pipeline/p1/from-api.bin", "file"), ("pipeline/p1/stage", "directory")]
    assert fs.ls("", detail=False) == ["pipeline", "user", "kv"]
    assert fs.ls("pipeline", detail=False) == ["pipeline/p1"]
    assert fs.modified("pipeline/p1/from-api.bin").timestamp() == pytest.approx(backend.head(
        "pipeline/p1/from-api.bin").mtime, abs=1)


def test_ranged_reads_fetch_only_what_is_asked(backend):
    spy = RecordingBackend(backend)
    fs = StashFileSystem(backend=spy, skip_instance_cache=True)
    blob = bytes(range(256)) * 4096  # 1 MiB
    fs.pipe("pipeline/p1/blob", blob)
    assert fs.cat_file("pipeline/p1/blob", 1000, 1010) == blob[1000:1010]
    assert fs.cat_file("pipeline/p1/blob", -5) == blob[-5:]
    assert fs.cat_ranges(["pipeline/p1/blob"] * 2, [10, 500_000], [20, 500_004]) == [blob[10:20],
                                                                                   blob[500_000:500_004]]
    with fs.open("pipeline/p1/blob", "rb", block_size=4096, cache_type="bytes") as f:
        f.seek(700_000)
        assert f.read(100) == blob[700_000:700_100]
    ranges = [r for r in spy.ranges if r[0] == "pipeline/p1/blob"]
    assert (1000, 1010) in [r[1:] for r in ranges]
    assert sum((e if e is not None else len(blob)) - s for _, s, e in ranges) < 64 * 1024


def test_an_object_replaced_while_open_is_estale(fs):
    fs.pipe("pipeline/p1/obj", b"a" * 100_000)
    with fs.open("pipeline/p1/obj", "rb", block_size=1000, cache_type="bytes") as f:
        assert f.read(10) == b"a" * 10
        fs.backend.put_bytes("pipeline/p1/obj", b"b" * 100_000)
        f.seek(50_000)
        with pytest.raises(OSError) as e:
            f.read(10)
        assert e.value.errno == errno.ESTALE


def test_writes_are_atomic_objects_at_close(fs):
    fs.pipe("pipeline/p1/out.bin", b"old")
    big = os.urandom(3 * 1024 * 1024 + 17)
    with fs.open("stashfs://pipeline/p1/out.bin", "wb", block_size=1024 * 1024) as f:
        f.write(big[:2_000_000])
        assert fs.backend.get_range("pipeline/p1/out.bin", 0) == b"old"  # nothing half-written shows
        f.write(big[2_000_000:])
    assert fs.cat("pipeline/p1/out.bin") == big
    with fs.open("pipeline/p1/out.bin", "ab") as f:
        f.write(b"tail")
    assert fs.cat("pipeline/p1/out.bin") == big + b"tail"
    with pytest.raises(FileExistsError):
        fs.open("pipeline/p1/out.bin", "xb")
    with pytest.raises(FileExistsError):
        fs.pipe_file("pipeline/p1/out.bin", b"x", mode="create")
    assert fs.cat("pipeline/p1/out.bin") == big + b"tail"


@pytest.mark.parametrize("path,exc", [
    ("pipeline/p1/a//b", ValueError),
    ("pipeline/p1//b", ValueError),
    ("pipeline/p1/../x", ValueError),
    ("pipeline/bad id/x", ValueError),
    ("pipeline/p1/" + "n" * 256, ValueError),
    ("nope/p1/x", ValueError),
    ("pipeline/x", PermissionError),
    ("kv/st/a/b.json", PermissionError),
    ("kv/st/notes.txt", ValueError),
    ("kv/st/a%41.json", ValueError),
])
def test_names_are_validated_as_in_the_mount(fs, path, exc):
    with pytest.raises(exc) as e:
        fs.pipe(path, b"{}")
    assert fs.find("pipeline") == [] and fs.find("kv/st") == []
    if "//" in path:  # trial finding: it was called a leading "/"
        assert "doubled '/'" in str(e.value)


def test_a_file_where_a_namespace_is_says_so(fs):
    """Trial finding: ``touch("pipeline/p1")`` of an existing namespace said "only namespace
    directories can be created in /pipeline" (it is one)."""
    fs.pipe("pipeline/p1/x", b"1")
    for call in (lambda: fs.touch("pipeline/p1"), lambda: fs.pipe("pipeline/p1", b"1")):
        with pytest.raises(PermissionError) as e:
            call()
        assert "pipeline/p1 is a namespace (a directory)" in str(e.value)


def test_file_and_directory_cannot_share_a_name(fs):
    fs.pipe("pipeline/p1/d/f", b"1")
    with pytest.raises(IsADirectoryError):
        fs.pipe("pipeline/p1/d", b"2")
    with pytest.raises(NotADirectoryError):
        fs.pipe("pipeline/p1/d/f/g", b"3")
    assert fs.find("pipeline/p1") == ["pipeline/p1/d/f"]


def test_directories_stay_when_emptied_and_rmdir_needs_empty(fs):
    fs.makedirs("pipeline/p1/a/b")
    fs.pipe("pipeline/p1/a/b/x", b"1")
    fs.rm("pipeline/p1/a/b/x")
    assert fs.isdir("pipeline/p1/a/b")  # as in the mount, also on S3
    with pytest.raises(OSError) as e:
        fs.rmdir("pipeline/p1/a")
    assert e.value.errno == errno.ENOTEMPTY
    fs.rm("pipeline/p1", recursive=True)
    assert not fs.exists("pipeline/p1")
    with pytest.raises(NotFound):
        fs.backend.head("owners/pipeline/p1.json")  # the removed pipeline's owner record went with it


def test_kv_records_are_json_files(fs, backend):
    ds = DataStore("crm", backend=backend)
    fs.pipe("stashfs://kv/crm/acme.json", b'{"plan": "pro"}')
    assert ds["acme"] == {"plan": "pro"}
    ds["users/42"] = [1, 2]
    assert fs.ls("kv/crm", detail=False) == ["kv/crm/acme.json", "kv/crm/users%2F42.json"]
    assert fs.cat("kv/crm/users%2F42.json") == b"[1, 2]"
    with pytest.raises(ValueError):
        fs.pipe("kv/crm/acme.json", b'{"plan": pro}')
    with pytest.raises(ValueError):
        fs.pipe("kv/crm/acme.json", b"NaN")
    assert ds["acme"] == {"plan": "pro"}  # a refused write leaves the record as it was
    fs.pipe("kv/crm/empty.json", b"")
    assert ds["empty"] == ""


def test_kv_ttl(fs, backend):
    ds = DataStore("locks", backend=backend)
    ds.set("gone", 1, ttl=60)
    ds.set("kept", 1, ttl=60)
    name = "gone.json"
    markers = [e.key for e in backend.list("kv/locks/.expires/") if name in e.key]
    etag = backend.head("kv/locks/gone.json").etag
    for m in markers:  # move its expiry into the past: the record reads as missing
        backend.delete(m)
    backend.put_bytes(f"kv/locks/.expires/{name}@{int(time.time()) - 5}@{etag}", b"")
    fs.known.ttl = 0  # no remembered listing: ask the backend
    assert fs.ls("kv/locks", detail=False) == ["kv/locks/kept.json"]
    with pytest.raises(FileNotFoundError):
        fs.cat("kv/locks/gone.json")
    fs.pipe("kv/locks/kept.json", b"2")  # writing a record ends its TTL, as through the mount
    assert [e.key for e in backend.list("kv/locks/.expires/") if not e.key.endswith("/")] == []
    assert ds["kept"] == 2


def test_changes_made_elsewhere_show_within_the_ttl(backend):
    fs = StashFileSystem(backend=backend, metadata_ttl=0.3, skip_instance_cache=True)
    fs.pipe("user/alice/t.csv", b"1")
    assert fs.info("user/alice/t.csv")["size"] == 1
    data.user("alice", backend=backend).puts("t.csv", b"22")
    deadline = time.monotonic() + 10
    while fs.info("user/alice/t.csv")["size"] != 2:
        assert time.monotonic() < deadline, "another writer's change never showed"
        time.sleep(0.02)  # polling the TTL's end
    fs.pipe("user/alice/t.csv", b"333")  # our own write shows at once
    assert fs.info("user/alice/t.csv")["size"] == 3 and fs.cat("user/alice/t.csv") == b"333"


def test_an_outage_never_reads_as_an_empty_tree(moto_server, s3_backend):
    """Trial finding: on a missing bucket or an unreachable endpoint, ``glob("d/*.csv")``, ``walk``,
    ``find(maxdepth=1)``, ``isdir``, ``isfile`` and ``open_files`` answered "nothing there" (fsspec's
    walk omits every error, its isdir/isfile catch them): a stage processed zero inputs and
    succeeded.  They raise, as ``exists`` and ``ls`` do; what is missing is still empty/False."""
    nobucket = StashFileSystem(backend=S3Backend("nosuchbucket", "pfx", endpoint_url=moto_server.url),
                               skip_instance_cache=True)
    down = StashFileSystem(backend=S3Backend("b", "pfx", endpoint_url="http://127.0.0.1:9", connect_timeout=1,
                                             read_timeout=1, max_attempts=1), skip_instance_cache=True)
    calls = {
        "glob": lambda fs: fs.glob("pipeline/p1/*.csv"),
        "walk": lambda fs: list(fs.walk("pipeline/p1")),
        "find": lambda fs: fs.find("pipeline/p1", maxdepth=1),
        "isdir": lambda fs: fs.isdir("pipeline/p1"),
        "isfile": lambda fs: fs.isfile("pipeline/p1/a.csv"),
    }
    for fs, code in ((nobucket, errno.ENXIO), (down, errno.EIO)):
        for name, call in calls.items():
            with pytest.raises(OSError) as e:
                call(fs)
            assert e.value.errno == code, name
    healthy = StashFileSystem(backend=s3_backend, skip_instance_cache=True)
    assert [call(healthy) for call in calls.values()] == [[], [], [], False, False]


def test_invalidate_cache_and_refresh_see_other_writers_at_once(backend):
    """Trial finding: ``invalidate_cache()`` and ``info(refresh=True)`` did nothing; the old size,
    and a deleted file, showed until the metadata TTL ran out."""
    fs = StashFileSystem(backend=backend, metadata_ttl=600, skip_instance_cache=True)
    for name in ("a", "b", "c"):
        fs.pipe(f"pipeline/p1/d/{name}", b"1")
    assert fs.ls("pipeline/p1/d", detail=False) and fs.info("pipeline/p1/d/a")["size"] == 1
    backend.put_bytes("pipeline/p1/d/a", b"22")
    backend.put_bytes("pipeline/p1/d/b", b"22")
    backend.delete("pipeline/p1/d/c")
    assert fs.info("pipeline/p1/d/a")["size"] == 1  # trusted within the TTL
    assert fs.info("pipeline/p1/d/a", refresh=True)["size"] == 2
    fs.invalidate_cache("pipeline/p1/d")
    assert fs.info("pipeline/p1/d/b")["size"] == 2 and not fs.exists("pipeline/p1/d/c")
    backend.put_bytes("pipeline/p1/d/b", b"333")
    fs.invalidate_cache()
    assert fs.info("pipeline/p1/d/b")["size"] == 3
    for everything in ("", "/", "stashfs://", "pipeline//p1"):  # (review)
        backend.put_bytes("pipeline/p1/d/b", everything.encode() + b"4444")
        fs.invalidate_cache(everything)
        assert fs.info("pipeline/p1/d/b")["size"] == len(everything) + 4, everything


def test_mv_of_a_namespace_is_eperm_as_in_the_mount(fs):
    """Trial finding: ``mv("pipeline/A", "pipeline/B", recursive=True)`` moved a namespace the mount
    refuses to rename, and left A's owner record behind on S3."""
    fs.pipe("pipeline/srcns/data.csv", b"a\n1\n")
    for src in ("pipeline/srcns", "stashfs://pipeline/srcns/", "pipeline"):
        with pytest.raises(PermissionError) as e:
            fs.mv(src, "pipeline/dstns", recursive=True)
        assert e.value.errno == errno.EPERM
    assert fs.ls("pipeline", detail=False) == ["pipeline/srcns"] and fs.cat("pipeline/srcns/data.csv") == b"a\n1\n"
    with pytest.raises(PermissionError):  # a glob that matches the namespace (review)
        fs.mv("pipeline/src*", "pipeline/q9/", recursive=True)
    assert fs.cat("pipeline/srcns/data.csv") == b"a\n1\n"
    fs.mv("pipeline/srcns/*", "pipeline/dstns/")  # its content moves
    assert fs.cat("pipeline/dstns/data.csv") == b"a\n1\n"
    fs.mv(PurePosixPath("pipeline/dstns/data.csv"), "pipeline/other/")  # any path-like (review)
    assert fs.cat("pipeline/other/data.csv") == b"a\n1\n"


def test_cat_file_of_a_directory_is_isadirectoryerror(fs):
    """Trial finding: it was FileNotFoundError ("no such object"), so ``cat(d, recursive=True)``
    failed at the first directory."""
    fs.pipe("pipeline/p1/d/sub/f", b"1")
    for d in ("pipeline/p1/d", "pipeline/p1/d/sub"):
        with pytest.raises(IsADirectoryError):
            fs.cat_file(d)
    with pytest.raises(FileNotFoundError):
        fs.cat_file("pipeline/p1/d/missing")
    assert fs.cat_file("pipeline/p1/d/sub/f", start=-1) == b"1"
    cold = StashFileSystem(backend=fs.backend, skip_instance_cache=True)
    remote = not isinstance(fs.backend, DiskBackend)
    # on S3 a name nothing listed yet costs no LIST to tell (zarr probes missing keys)
    with pytest.raises(FileNotFoundError if remote else IsADirectoryError):
        cold.cat_file("pipeline/p1/d")
    cold.ls("pipeline/p1")
    with pytest.raises(IsADirectoryError):
        cold.cat_file("pipeline/p1/d")


def test_exists_is_false_only_for_a_missing_path(moto_server, fs):
    """fsspec's own ``exists`` answered False to any error: a missing bucket or an outage read as
    "not there", and ``if not fs.exists("done"): recompute()`` took the wrong branch."""
    fs.pipe_file("pipeline/p1/done", b"1")
    assert fs.exists("pipeline/p1/done") and not fs.exists("pipeline/p1/missing")
    for impossible in ("pipeline/Bad Id!/x", "pipeline/p1/" + "a" * 300, "nosuchtop/x", "pipeline/p1/a//b"):
        assert not fs.exists(impossible)  # as os.path.exists answers for a name too long (review)
    nobucket = StashFileSystem(backend=S3Backend("nosuchbucket", "pfx", endpoint_url=moto_server.url),
                               skip_instance_cache=True)
    with pytest.raises(OSError) as e:
        nobucket.exists("pipeline/p1/done")
    assert e.value.errno == errno.ENXIO and "bucket 'nosuchbucket' does not exist" in str(e.value)
    down = StashFileSystem(backend=S3Backend("b", "pfx", endpoint_url="http://127.0.0.1:9", connect_timeout=1,
                                             read_timeout=1, max_attempts=1), skip_instance_cache=True)
    with pytest.raises(OSError) as e:
        down.exists("pipeline/p1/done")
    assert e.value.errno == errno.EIO
