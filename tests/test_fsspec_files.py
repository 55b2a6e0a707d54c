"""Open stashfs:// files: which version a read sees, and where an appending file starts."""

import errno

import pytest

fsspec = pytest.importorskip("fsspec")

from fsdriver.fsspec_fs import StashFileSystem  # noqa: E402

OLD = b"a,b\n1,2\n"
NEW = b"a,b\n1,2\n3,4\n5,6\n"


@pytest.fixture
def fs(backend):
    """A long metadata TTL: what exists/info learnt is still trusted when the file is opened."""
    return StashFileSystem(backend=backend, metadata_ttl=600, skip_instance_cache=True)


@pytest.mark.parametrize("cache_type", ["readahead", "bytes", "all", "none", "blockcache"])
@pytest.mark.parametrize("new", [NEW, b"a,b\n"], ids=["longer", "shorter"])
def test_a_file_replaced_before_it_was_opened_reads_the_new_version_whole(fs, backend, cache_type, new):
    fs.pipe_file("pipeline/p13/t.csv", OLD)
    assert fs.exists("pipeline/p13/t.csv") and fs.size("pipeline/p13/t.csv") == len(OLD)
    backend.put_bytes("pipeline/p13/t.csv", new)  # another process rewrites it
    with fs.open("pipeline/p13/t.csv", "rb", cache_type=cache_type) as f:  # was ESTALE at the read
        assert f.read() == new
        assert f.size == len(new) and f.tell() == len(new)
    assert fs.size("pipeline/p13/t.csv") == len(new)  # what the open learnt is what info tells now


@pytest.mark.parametrize("place", ["end", "footer"])
def test_a_first_read_placed_by_the_remembered_size_is_estale_not_other_bytes(fs, backend, place):
    """Review finding: the current version's bytes at a position the old size gave (the last 3
    bytes, a parquet footer) were returned without an error."""
    fs.pipe_file("pipeline/p13/t.csv", OLD)
    assert fs.exists("pipeline/p13/t.csv")
    backend.put_bytes("pipeline/p13/t.csv", NEW + b"longer than before\n")
    with fs.open("pipeline/p13/t.csv", "rb") as f:
        if place == "end":
            f.seek(-3, 2)
        else:
            f.seek(f.size - 4)
        with pytest.raises(OSError) as e:
            f.read()
    assert e.value.errno == errno.ESTALE


@pytest.mark.parametrize("new", [NEW, b"a,b\n"], ids=["longer", "shorter"])
@pytest.mark.parametrize("how", ["read(f.size)", "seek(0, 2), seek(0)"])
def test_a_first_read_sized_by_the_remembered_size_is_estale(fs, backend, how, new):
    """Trial finding: ``f.read(f.size)`` returned the first old-size bytes of the new version, and
    pyarrow (``seek(0, 2)``, ``tell()``, ``seek(0)``, then reads by that size) said the parquet file
    was corrupt.  A read of a part (``read(2)``) still takes the new version."""
    fs.pipe_file("pipeline/p13/t.csv", OLD)
    assert fs.exists("pipeline/p13/t.csv")
    backend.put_bytes("pipeline/p13/t.csv", new)
    with fs.open("pipeline/p13/t.csv", "rb") as f:
        with pytest.raises(OSError) as e:
            if how == "read(f.size)":
                f.read(f.size)
            else:
                f.seek(0, 2)
                size = f.tell()
                f.seek(0)
                f.read(size)
    assert e.value.errno == errno.ESTALE
    fs.pipe_file("pipeline/p13/t.csv", OLD)
    assert fs.exists("pipeline/p13/t.csv")
    backend.put_bytes("pipeline/p13/t.csv", new)
    with fs.open("pipeline/p13/t.csv", "rb") as f:
        assert f.read(2) == new[:2] and f.read() == new[2:]


def test_a_seek_from_the_end_then_a_first_read_takes_a_same_size_new_version(fs, backend):
    """Review: the size it was told is still right, so the position is too."""
    fs.pipe_file("pipeline/p13/t.csv", OLD)
    assert fs.exists("pipeline/p13/t.csv")
    backend.put_bytes("pipeline/p13/t.csv", OLD.upper())
    with fs.open("pipeline/p13/t.csv", "rb") as f:
        f.seek(0, 2)
        assert f.tell() == len(OLD)
        f.seek(0)
        assert f.read() == OLD.upper()
    with fs.open("pipeline/p13/w.csv", "wb") as f:  # review: seek of a writing file is fsspec's error
        f.write(b"x")
        with pytest.raises(OSError):
            f.seek(0, 2)


def test_pyarrow_reads_a_parquet_file_replaced_after_info_or_says_estale(backend):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    import io

    def parquet(n):
        buf = io.BytesIO()
        pd.DataFrame({"x": range(n)}).to_parquet(buf)
        return buf.getvalue()

    fs = StashFileSystem(backend=backend, metadata_ttl=600, skip_instance_cache=True)
    fs.pipe_file("pipeline/p13/t.parquet", parquet(1000))
    assert fs.info("pipeline/p13/t.parquet")["size"] > 0
    backend.put_bytes("pipeline/p13/t.parquet", parquet(3))
    with pytest.raises(OSError) as e:  # was ArrowInvalid "magic bytes not found ... corrupted"
        pd.read_parquet("pipeline/p13/t.parquet", filesystem=fs)
    assert e.value.errno == errno.ESTALE
    assert pd.read_parquet("pipeline/p13/t.parquet", filesystem=fs)["x"].tolist() == [0, 1, 2]  # a retry


def test_pandas_reads_a_file_replaced_after_exists(backend):
    pd = pytest.importorskip("pandas")
    opts = {"backend": backend, "metadata_ttl": 600}
    fs = fsspec.filesystem("stashfs", **opts)  # the instance pandas gets too: fsspec caches them
    try:
        fs.pipe_file("user/alice/t.csv", OLD)
        assert fs.exists("user/alice/t.csv")
        backend.put_bytes("user/alice/t.csv", NEW)
        df = pd.read_csv("stashfs://user/alice/t.csv", storage_options=opts)
        assert df["a"].tolist() == [1, 3, 5]
    finally:
        StashFileSystem.clear_instance_cache()


def test_a_file_replaced_while_open_after_a_read_is_estale_once_worded(fs, backend):
    fs.pipe_file("pipeline/p13/big", b"a" * 100_000)
    with fs.open("pipeline/p13/big", "rb", block_size=1000, cache_type="bytes") as f:
        assert f.read(10) == b"a" * 10
        backend.put_bytes("pipeline/p13/big", b"b" * 100_000)
        f.seek(50_000)
        with pytest.raises(OSError) as e:
            f.read(10)
    assert e.value.errno == errno.ESTALE
    assert e.value.strerror == "pipeline/p13/big: replaced by a new version while open"


@pytest.mark.parametrize("old", [b"", b"0123456789", bytes(3 * 1024 * 1024)], ids=["empty", "small", "spilled"])
def test_appending_starts_at_the_end(fs, backend, old):
    fs.pipe_file("pipeline/p13/log", old)
    with fs.open("pipeline/p13/log", "ab", block_size=1024 * 1024) as f:
        assert f.tell() == len(old)  # was 0: Python's open(..., "ab") and s3fs tell the size
        assert f.write(b"tail") == 4
        assert f.tell() == len(old) + 4 and f.loc == f.tell()
    assert backend.get_range("pipeline/p13/log", 0) == old + b"tail"
    with fs.open("pipeline/p13/new-log", "ab") as f:
        assert f.tell() == 0
        f.write(b"x")
    assert backend.get_range("pipeline/p13/new-log", 0) == b"x"
