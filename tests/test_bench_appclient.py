"""`make bench`'s application side (bench/appclient.py): the S3 rows run what an application does
in a process of its own, as their references do; each operation does what its row says."""

import os

import pytest

from bench import appclient

from .benchenv import env  # noqa: F401  (the fixture)


def test_write_then_read_in_processes_of_their_own(env):
    src = env.root / "src.bin"
    data = os.urandom(3 * appclient.MiB + 123)  # several 1 MiB writes and a short last one
    src.write_bytes(data)
    dst = env.root / "dst.bin"
    dst.write_bytes(b"old content, longer than nothing")  # truncated by the write's open
    w = appclient.run(env, "write", dst, src)
    assert dst.read_bytes() == data
    assert w["bytes"] == len(data) and w["seconds"] > 0 and w["cpu_s"] >= 0
    assert 0 <= w["fsync_s"] <= w["seconds"] and 0 <= w["close_s"] <= w["seconds"]
    r = appclient.run(env, "read", dst, len(data))
    assert r["bytes"] == len(data) and r["seconds"] > 0
    with pytest.raises(RuntimeError, match="read 3145851 bytes of 5"):
        appclient.run(env, "read", dst, 5)  # a short or long read is an error, not a figure


def test_creates_make_new_files_and_never_overwrite(env):
    d = env.root / "creates"
    d.mkdir()
    r = appclient.run(env, "creates", d, 7, 4096, "fsync")
    assert sorted(os.listdir(d)) == [f"s{i:05d}.dat" for i in range(7)]
    assert {(d / n).stat().st_size for n in os.listdir(d)} == {4096}
    assert r["bytes"] == 7 * 4096 and r["seconds"] > 0
    with pytest.raises(RuntimeError, match="FileExistsError"):
        appclient.run(env, "creates", d, 1, 10)  # O_EXCL: the files are new ones
    assert (d / "s00000.dat").stat().st_size == 4096
