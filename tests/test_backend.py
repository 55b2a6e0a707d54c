"""The backend protocol, run against disk and against S3 over HTTP (moto's server)."""

import os
import threading

import pytest

from fsdriver.backend import ObjectInfo
from fsdriver.configured import open_backend
from fsdriver.backend.disk import DiskBackend
from fsdriver.errors import InvalidRequest, NotFound, PreconditionFailed

DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable


def test_put_head_get(backend):
    info = backend.put_bytes("a/b.bin", DATA)
    assert info.size == len(DATA)
    head = backend.head("a/b.bin")
    assert head.size == len(DATA)
    assert head.etag == info.etag
    assert head.mtime > 0
    assert backend.get_range("a/b.bin", 0) == DATA
    assert b"".join(backend.read_stream("a/b.bin", chunk_size=1000)) == DATA


@pytest.mark.parametrize(
    "start,end",
    [(0, 1), (0, 10240), (1, 2), (10239, 10240), (10239, 20000), (100, None), (5000, 5000),
     (10240, 10241), (10240, None), (20000, 30000), (0, 0)],
)
def test_ranges_at_edges(backend, start, end):
    backend.put_bytes("r", DATA)
    assert backend.get_range("r", start, end) == DATA[start:end]


def test_range_of_empty_object(backend):
    backend.put_bytes("empty", b"")
    assert backend.get_range("empty", 0) == b""
    assert backend.get_range("empty", 0, 10) == b""
    assert backend.head("empty").size == 0


def test_missing_object(backend):
    with pytest.raises(NotFound):
        backend.head("nope")
    with pytest.raises(NotFound):
        backend.get_range("nope", 0, 10)
    with pytest.raises(NotFound):
        backend.get_range("nope", 3, 3)
    with pytest.raises(NotFound):
        backend.read_stream("nope")
    backend.delete("nope")  # deleting a missing key is not an error


def test_bad_range(backend):
    backend.put_bytes("r", DATA)
    with pytest.raises(InvalidRequest):
        backend.get_range("r", -1, 5)
    with pytest.raises(InvalidRequest):
        backend.get_range("r", 5, 4)


def test_etag_changes_with_content(backend):
    e1 = backend.put_bytes("k", b"one").etag
    e2 = backend.put_bytes("k", b"two").etag
    e3 = backend.put_bytes("k", b"two").etag
    assert e1 != e2
    assert backend.head("k").etag == e3
    if isinstance(backend, DiskBackend):
        assert e2 != e3  # disk etags identify the write, not only the content


def test_conditional_put(backend):
    etag = backend.put_bytes("c", b"v1", if_none_match=True).etag
    with pytest.raises(PreconditionFailed):
        backend.put_bytes("c", b"v2", if_none_match=True)
    new = backend.put_bytes("c", b"v2", if_match=etag).etag
    with pytest.raises(PreconditionFailed):
        backend.put_bytes("c", b"v3", if_match=etag)  # stale etag
    assert backend.get_range("c", 0) == b"v2"
    assert backend.head("c").etag == new
    with pytest.raises(PreconditionFailed):
        backend.put_bytes("missing", b"x", if_match=etag)
    with pytest.raises(NotFound):
        backend.head("missing")


def test_conditional_put_file(backend, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"file v1")
    etag = backend.put_file("f", src, if_none_match=True).etag
    with pytest.raises(PreconditionFailed):
        backend.put_file("f", src, if_none_match=True)
    src.write_bytes(b"file v2")
    backend.put_file("f", src, if_match=etag)
    assert backend.get_range("f", 0) == b"file v2"


def test_large_multipart_object(backend, tmp_path):
    """40 MiB through put_file: S3 uploads parallel parts (5 MiB in these tests)."""
    src = tmp_path / "big"
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for i in range(40):
            f.write(bytes([i]) + block[1:])
    info = backend.put_file("big", src)
    assert info.size == 40 << 20
    assert backend.head("big").size == 40 << 20
    for off in (0, (5 << 20) - 3, (17 << 20) + 12345, (40 << 20) - 100):
        want = src.read_bytes()[off : off + 200]
        assert backend.get_range("big", off, off + 200) == want
    out = tmp_path / "out"
    with open(out, "wb") as f:
        assert backend.get_to_file("big", f) == 40 << 20
    assert out.read_bytes() == src.read_bytes()


def test_large_put_bytes_conditional(backend):
    data = os.urandom(11 << 20)
    etag = backend.put_bytes("mp", data, if_none_match=True).etag
    with pytest.raises(PreconditionFailed):
        backend.put_bytes("mp", data, if_none_match=True)
    backend.put_bytes("mp", data[::-1], if_match=etag)
    assert backend.get_range("mp", 0, 100) == data[::-1][:100]


def test_list_with_and_without_delimiter(backend):
    for k in ["d/a", "d/b/c", "d/b/d", "d/bc", "d-x", "e"]:
        backend.put_bytes(k, k.encode())
    backend.put_bytes("d/empty/", b"")
    flat = [e.key for e in backend.list("d/") if not e.key.endswith("/")]
    assert flat == ["d/a", "d/b/c", "d/b/d", "d/bc"]
    delim = list(backend.list("d/", "/"))
    names = [(type(e).__name__, e.key) for e in delim if e.key != "d/"]
    assert names == [
        ("ObjectInfo", "d/a"),
        ("CommonPrefix", "d/b/"),
        ("ObjectInfo", "d/bc"),
        ("CommonPrefix", "d/empty/"),
    ]
    objs = {e.key: e for e in delim if isinstance(e, ObjectInfo)}
    assert objs["d/a"].size == 3 and objs["d/a"].etag == backend.head("d/a").etag
    # a prefix that is not a whole segment
    assert [e.key for e in backend.list("d/b", "/")] == ["d/b/", "d/bc"]
    assert [e.key for e in backend.list("d") if not e.key.endswith("/")][-1] == "d/bc"
    assert list(backend.list("nothing/")) == []


def test_list_paginates_past_1000(backend):
    keys = [f"many/{i:05d}" for i in range(1205)]
    for k in keys:
        backend.put_bytes(k, b"x")
    listed = [e.key for e in backend.list("many/") if not e.key.endswith("/")]
    assert listed == keys
    delimited = [e for e in backend.list("many/", "/") if e.key != "many/"]
    assert len(delimited) == 1205 and all(isinstance(e, ObjectInfo) for e in delimited)
    assert backend.delete_prefix("many/") == 1205
    assert list(backend.list("many/")) == []


def test_delete_and_delete_prefix(backend):
    for k in ["p/a", "p/b/c", "pq/x", "p"]:
        backend.put_bytes(k, b"1") if k != "p" or not isinstance(backend, DiskBackend) else None
    backend.delete("p/a")
    with pytest.raises(NotFound):
        backend.head("p/a")
    assert backend.delete_prefix("p/") == 1
    assert [e.key for e in backend.list("p/")] == []
    assert backend.head("pq/x").size == 1  # a sibling with a longer name is untouched


def test_a_conditional_delete_removes_only_the_version_it_names(backend):
    first = backend.put_bytes("r.json", b"1").etag
    second = backend.put_bytes("r.json", b"22").etag
    with pytest.raises(PreconditionFailed):
        backend.delete("r.json", if_match=first)  # replaced since: the new version stays
    assert backend.get_range("r.json", 0) == b"22"
    backend.delete("r.json", if_match=second)
    with pytest.raises(NotFound):
        backend.head("r.json")
    backend.delete("r.json", if_match=second)  # gone already: not an error, as without it


def test_copy(backend):
    backend.put_bytes("src", DATA)
    info = backend.copy("src", "dir/dst")
    assert info.size == len(DATA)
    assert backend.get_range("dir/dst", 0) == DATA
    with pytest.raises(NotFound):
        backend.copy("missing", "x")


def test_directory_marker(backend):
    backend.put_bytes("m/", b"")
    assert backend.head("m/").size == 0
    assert [e.key for e in backend.list("m/")] == ["m/"]
    backend.delete("m/")
    with pytest.raises(NotFound):
        backend.head("m/")


def test_concurrent_puts_never_tear(disk_backend):
    """Many writers and readers on one key: every read is one whole version."""
    versions = [bytes([i]) * (256 * 1024) for i in range(8)]
    disk_backend.put_bytes("k", versions[0])
    stop = threading.Event()
    torn = []

    def writer(v):
        for _ in range(15):
            disk_backend.put_bytes("k", v)

    def reader():
        while not stop.is_set():
            data = disk_backend.get_range("k", 0)
            if data not in versions:
                torn.append(len(data))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(v,)) for v in versions]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(60)
    stop.set()
    for t in readers:
        t.join(60)
    assert torn == []
    assert disk_backend.get_range("k", 0) in versions


def test_conditional_put_race_between_processes(tmp_path):
    """Two processes each try if_none_match on the same keys: exactly one wins each key."""
    import multiprocessing

    root = tmp_path / "store"
    DiskBackend(root)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_race_worker, [(str(root), "A"), (str(root), "B")])
    wins_a, wins_b = results
    assert sorted(wins_a + wins_b) == list(range(40))
    b = DiskBackend(root)
    for i in range(40):
        owner = b"A" if i in wins_a else b"B"
        assert b.get_range(f"race/{i}", 0) == owner


def _race_worker(root: str, tag: str) -> list[int]:
    b = DiskBackend(root)
    won = []
    for i in range(40):
        try:
            b.put_bytes(f"race/{i}", tag.encode(), if_none_match=True)
            won.append(i)
        except PreconditionFailed:
            pass
    return won


def test_disk_rejects_object_prefix_clash(disk_backend):
    disk_backend.put_bytes("f", b"file")
    with pytest.raises(InvalidRequest):
        disk_backend.put_bytes("f/child", b"x")
    disk_backend.put_bytes("d/child", b"x")
    with pytest.raises(InvalidRequest):
        disk_backend.put_bytes("d", b"x")
    assert disk_backend.get_range("f", 0) == b"file"


def test_disk_rejects_escaping_keys(disk_backend):
    for key in ["../x", "a/../../x", ".stashfs/tmp/x", "a//b", "a/./b"]:
        with pytest.raises(InvalidRequest):
            disk_backend.put_bytes(key, b"x")
    assert [e.key for e in disk_backend.list("")] == []


def test_disk_put_is_atomic_on_crash_leftovers(disk_backend):
    """Temp files live in the reserved area and never show up as objects."""
    disk_backend.put_bytes("x", b"1")
    (disk_backend.root / ".stashfs" / "tmp" / "put-leftover").write_bytes(b"half")
    assert [e.key for e in disk_backend.list("")] == ["x"]


def test_open_backend_urls(tmp_path, moto_server, monkeypatch):
    b = open_backend(str(tmp_path / "plain"), create=True)
    assert isinstance(b, DiskBackend) and b.root == (tmp_path / "plain").resolve()
    b = open_backend(f"file://{tmp_path}/viaurl", create=True)
    assert b.root == (tmp_path / "viaurl").resolve()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert open_backend().root == (tmp_path / "xdg" / "stashfs").resolve()
    monkeypatch.setenv("STASHFS_BACKEND", str(tmp_path / "env"))
    assert open_backend(create=True).root == (tmp_path / "env").resolve()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    s3 = open_backend("s3://stashfs-test/some/prefix")
    s3.put_bytes("k", b"v")
    assert s3.prefix == "some/prefix/"
    assert s3.client.head_object(Bucket="stashfs-test", Key="some/prefix/k")["ContentLength"] == 1
    with pytest.raises(ValueError, match="unknown scheme"):
        open_backend("ftp://x/y")


def test_s3_errors_are_mapped(moto_server):
    from fsdriver.backend.s3 import S3Backend
    from fsdriver.errors import Unavailable

    missing = S3Backend("no-such-bucket-here", endpoint_url=moto_server.url)
    from fsdriver.errors import BucketNotFound

    with pytest.raises(BucketNotFound, match="bucket 'no-such-bucket-here' does not exist"):
        missing.check()
    from fsdriver.errors import NoAnswer

    dead = S3Backend("b", endpoint_url="http://127.0.0.1:9", max_attempts=1, connect_timeout=1)
    with pytest.raises(Unavailable) as refused:
        dead.head("k")
    assert not isinstance(refused.value, NoAnswer)  # refused at once: an answer of sorts
    import socket

    with socket.socket() as hole:  # accepts connections (the kernel's backlog), never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        silent = S3Backend("b", endpoint_url=f"http://127.0.0.1:{hole.getsockname()[1]}", max_attempts=1,
                           connect_timeout=1, read_timeout=0.5)
        with pytest.raises(NoAnswer):
            silent.head("k")


def test_every_put_gets_a_new_etag(backend):
    """Same size, rapid succession: the disk's coarse timestamps and reused inodes must not matter."""
    etags = {backend.put_bytes("k", b"%03d" % i).etag for i in range(200)}
    assert len(etags) == 200


def test_s3_lookup_finds_the_directory_behind_many_siblings(s3_backend):
    """ListObjectsV2 pages count keys and prefixes: key/ may sort after a full page of siblings."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3_backend.put_bytes(f"ns/a-{i:04d}/x", b""), range(1001)))
    s3_backend.put_bytes("ns/a/inside", b"i")
    s3_backend.put_bytes("ns/a", b"file")
    info, is_dir = s3_backend.lookup("ns/a")
    assert is_dir and info is not None and info.size == 4
    assert s3_backend.lookup("ns/a-0005") == (None, True)
    assert s3_backend.lookup("ns/nothing") == (None, False)


def test_a_directory_rename_whose_keys_would_be_too_long_moves_nothing(s3_backend):
    """Found by a real-tools trial: ``mv top L/`` made keys over S3's 1,024 bytes (moto stores them,
    S3 refuses them half-way through the copies), which the mount could then not remove
    (ENAMETOOLONG).  The longest new key is checked before anything is copied."""
    from fsdriver.errors import NameTooLong

    long_name = "f" * 900
    s3_backend.put_bytes("top/", b"")
    s3_backend.put_bytes("top/" + long_name, b"x")
    s3_backend.put_bytes("top/short", b"y")
    dst = "L" * 130 + "/"
    with pytest.raises(NameTooLong):
        s3_backend.rename("top/", dst)
    assert sorted(e.key for e in s3_backend.list("top/")) == sorted(["top/", "top/" + long_name, "top/short"])
    assert list(s3_backend.list(dst)) == []
    s3_backend.rename("top/", "L/")  # within the limit: moved
    assert sorted(e.key for e in s3_backend.list("L/")) == sorted(["L/", "L/" + long_name, "L/short"])
