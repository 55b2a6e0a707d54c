"""pandas, pyarrow and dask through stashfs://, and the same files through a real mount."""

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
dd = pytest.importorskip("dask.dataframe")
import pyarrow.dataset as ds  # noqa: E402

from fsdriver.fsspec_fs import StashFileSystem  # noqa: E402

FRAME = pd.DataFrame({"day": ["mon", "mon", "tue", "wed"], "n": [1, 2, 3, 4], "x": [0.5, 1.5, 2.5, 3.5]})


def _sorted(df):
    df = df[["day", "n", "x"]].astype({"day": str})
    return df.sort_values("n").reset_index(drop=True)


def options(mount) -> dict:
    """storage_options reaching the mount's backend."""
    if mount.url.startswith("s3://"):
        return {"backend": mount.url, "endpoint_url": mount.env["AWS_ENDPOINT_URL"]}
    return {"backend": mount.url}


@pytest.fixture
def opts(backend, request):
    """storage_options naming ``backend`` by URL: dask pickles the filesystem to its workers."""
    if backend.url.startswith("s3://"):
        return {"backend": backend.url, "endpoint_url": request.getfixturevalue("moto_server").url}
    return {"backend": backend.url}


def test_parquet_partitions_and_csv_round_trip(backend, opts):
    FRAME.to_parquet("stashfs://pipeline/p1/table/", partition_cols=["day"], storage_options=opts)
    fs = StashFileSystem(backend=backend, skip_instance_cache=True)
    assert sorted(fs.ls("pipeline/p1/table", detail=False)) == [
        "pipeline/p1/table/day=mon", "pipeline/p1/table/day=tue", "pipeline/p1/table/day=wed"]
    assert _sorted(pd.read_parquet("stashfs://pipeline/p1/table/", storage_options=opts)).equals(_sorted(FRAME))
    table = ds.dataset("pipeline/p1/table", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert sorted(table.column("n").to_pylist()) == [1, 2, 3, 4]

    for day, part in FRAME.groupby("day"):
        part.to_csv(f"stashfs://user/alice/csv/{day}.csv", index=False, storage_options=opts)
    got = dd.read_csv("stashfs://user/alice/csv/*.csv", storage_options=opts).compute()
    assert _sorted(got).equals(_sorted(FRAME))


@pytest.mark.fuse
def test_written_through_fsspec_read_through_the_mount_and_back(mount):
    opts = options(mount)
    FRAME.to_parquet("stashfs://pipeline/p1/table/", partition_cols=["day"], storage_options=opts)
    FRAME.to_csv("stashfs://pipeline/p1/plain.csv", index=False, storage_options=opts)
    in_mount = mount.path / "pipeline" / "p1"
    assert _sorted(pd.read_parquet(in_mount / "table")).equals(_sorted(FRAME))
    assert _sorted(pd.read_csv(in_mount / "plain.csv")).equals(_sorted(FRAME))

    (mount.path / "user" / "bob").mkdir()
    FRAME.to_parquet(mount.path / "user" / "bob" / "t", partition_cols=["n"])
    FRAME.to_csv(mount.path / "user" / "bob" / "t.csv", index=False)
    back = pd.read_parquet("stashfs://user/bob/t", storage_options=opts)
    assert sorted(back["n"].astype(int).tolist()) == [1, 2, 3, 4]
    assert _sorted(pd.read_csv("stashfs://user/bob/t.csv", storage_options=opts)).equals(_sorted(FRAME))
    assert _sorted(dd.read_csv("stashfs://user/bob/*.csv", storage_options=opts).compute()).equals(_sorted(FRAME))
