"""Parts of a large file uploaded while it is written, through a real S3 mount (moto behind a
counting, fault-injecting proxy): parts go up before close, rewrites and truncates land right, a
failed part or a crash never costs data, no multipart upload is left open, a streamed file copied
for its attributes reads back whole through boto3, and it shows its stored times from its close."""

import os
import time
from contextlib import contextmanager

import boto3
import pytest

from .faultproxy import FaultProxy
from .mounting import force_unmount, make_mount, mounted, require_fuse
from .test_mount_failures import BUCKET
from .test_mount_failures import own_server  # noqa: F401  (a fixture: a moto server of the test's own)

MiB = 1 << 20
SIZE = 40 * MiB  # five 8 MiB parts (the daemon's part size)


def _client(url):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


@contextmanager
def _proxied(server, tmp_path, **env):
    """(mount, proxy): an S3 mount (``env`` added to its environment) whose requests pass the
    proxy; unmounted at the end."""
    require_fuse()
    with FaultProxy(server.url) as proxy:
        m = make_mount(tmp_path, f"s3://{BUCKET}", dict(os.environ, AWS_ENDPOINT_URL=proxy.url, **env))
        m.mount()
        try:
            yield m, proxy
        finally:
            if m.mounted:
                m.umount()
            force_unmount(m.path)


@pytest.fixture
def proxied(own_server, tmp_path):
    """(mount, proxy, server): an S3 mount whose requests pass the proxy; unmounted at the end."""
    with _proxied(own_server, tmp_path) as (m, proxy):
        yield m, proxy, own_server


def _parts_sent(proxy) -> int:
    return proxy.snapshot()["requests"].get("PUT part", 0)


def _wait_for_parts(proxy, n: int, timeout: float = 60) -> None:
    """Until the proxy has forwarded ``n`` UploadPart requests (bounded: the parts go up in the
    background while the file stays open)."""
    deadline = time.monotonic() + timeout
    while _parts_sent(proxy) < n:
        assert time.monotonic() < deadline, f"only {_parts_sent(proxy)} of {n} parts were uploaded before close"
        time.sleep(0.05)  # polling an observable count, bounded


def _open_uploads(server) -> list:
    return _client(server.url).list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def _no_open_uploads(server, timeout: float = 60) -> None:
    """Until no multipart upload is open (an abandoned stream is aborted in the background)."""
    deadline = time.monotonic() + timeout
    while _open_uploads(server):
        assert time.monotonic() < deadline, f"multipart uploads still open: {_open_uploads(server)}"
        time.sleep(0.05)  # polling an observable state, bounded


def _stored(server, key) -> bytes:
    return _client(server.url).get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_parts_go_up_before_close_and_close_completes(proxied):
    m, proxy, server = proxied
    d = m.path / "pipeline" / "p"
    d.mkdir()
    data = os.urandom(SIZE + 12345)
    fd = os.open(d / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(data), MiB):
            os.write(fd, data[off:off + MiB])
        _wait_for_parts(proxy, 5)  # every full part, while the file is still open
        assert "Contents" not in _client(server.url).list_objects_v2(Bucket=BUCKET, Prefix="pipeline/p/big")
    finally:
        os.close(fd)
    assert _parts_sent(proxy) == 6  # close sent only the tail
    assert _stored(server, "pipeline/p/big") == data
    assert (d / "big").read_bytes() == data
    _no_open_uploads(server)
    assert m.status()["pending_uploads"] == []


def test_rewriting_an_uploaded_part_and_truncating_land_right(proxied):
    m, proxy, server = proxied
    d = m.path / "pipeline" / "p"
    d.mkdir()
    data = bytearray(os.urandom(SIZE))
    fd = os.open(d / "big", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(data), MiB):
            os.write(fd, data[off:off + MiB])
        _wait_for_parts(proxy, 4)
        os.pwrite(fd, b"rewritten", 3)  # into part 1, uploaded already
        data[3:12] = b"rewritten"
        os.ftruncate(fd, 20 * MiB + 7)  # into part 3: parts 4 and 5 go
        del data[20 * MiB + 7:]
        os.pwrite(fd, b"tail", 20 * MiB + 7)
        data.extend(b"tail")
    finally:
        os.close(fd)
    assert _stored(server, "pipeline/p/big") == bytes(data)
    assert (d / "big").read_bytes() == bytes(data)
    _no_open_uploads(server)


@pytest.mark.parametrize("change", ["fchmod while open", "utime after close"])
def test_a_streamed_file_given_attributes_reads_back_whole_through_boto3(proxied, change):
    """cp -p, tar and rsync -a set the mode and times of what they write: on a streamed file that is
    a copy of its object (new metadata), at close or after it.  The copy asks for a CRC32 of the
    whole copy, so a whole-object GET that botocore validates (boto3, the data API) reads it."""
    m, proxy, server = proxied
    d = m.path / "pipeline" / "p"
    d.mkdir()
    data = os.urandom(SIZE)
    fd = os.open(d / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(data), MiB):
            os.write(fd, data[off:off + MiB])
        if change == "fchmod while open":
            _wait_for_parts(proxy, 4)  # streamed: its object's checksum is the parts'
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    if change == "utime after close":
        os.utime(d / "big", (1_600_000_000, 1_600_000_000))
    meta = _client(server.url).head_object(Bucket=BUCKET, Key="pipeline/p/big")["Metadata"]
    assert meta["mode"] == str(0o100600) if change == "fchmod while open" else meta["mtime"] == "1600000000"
    got = _client(server.url).get_object(Bucket=BUCKET, Key="pipeline/p/big", ChecksumMode="ENABLED")
    assert got["Body"].read() == data  # validated by botocore against the checksum the copy got
    assert (d / "big").read_bytes() == data


def test_a_streamed_file_shows_its_stored_times_from_its_close(own_server, tmp_path):
    """A streamed file's object keeps the times its upload started with when the last write came
    less than the allowed skew later (no copy at close; the skew is an hour here, so a slow run
    takes the same path).  From its close this mount shows those stored times, as every other
    mount does: not the exact ones until the kernel or the mount happen to ask again (an mtime
    that moved back up to the skew a second later)."""
    with _proxied(own_server, tmp_path, STASHFS_STREAM_TIME_SKEW="3600") as (m, proxy):
        d = m.path / "pipeline" / "p"
        d.mkdir()
        fd = os.open(d / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(9):
                os.write(fd, os.urandom(MiB))
            _wait_for_parts(proxy, 1)  # the stream started: its object keeps the times of then
            os.write(fd, b"last")
            written = os.fstat(fd)  # the exact times, now in the kernel's attribute cache
        finally:
            os.close(fd)
        shown = os.stat(d / "big")
        stored = _client(own_server.url).head_object(Bucket=BUCKET, Key="pipeline/p/big")["Metadata"]
        stored_ns = int(stored["mtime"]) * 10**9 + int(stored.get("mtime-nsec", 0))
        assert stored_ns < written.st_mtime_ns  # the stream's start: the case under test
        assert shown.st_mtime_ns == stored_ns and shown.st_size == 9 * MiB + 4
        env = dict(os.environ, AWS_ENDPOINT_URL=own_server.url)
        with mounted(tmp_path, f"s3://{BUCKET}", env, name="other") as other:
            assert os.stat(other.path / "pipeline" / "p" / "big").st_mtime_ns == stored_ns


def test_a_failed_part_costs_no_data(proxied):
    """One UploadPart refused (and not retried by the client): the stream is given up and close()
    uploads the whole file; the content is right and no upload stays open."""
    m, proxy, server = proxied
    d = m.path / "pipeline" / "p"
    d.mkdir()
    refused = []

    def once(method, path):
        if method == "PUT" and "partNumber=2&" in path + "&" and not refused:
            refused.append(path)
            return True
        return False

    proxy.refusal = (400, "InvalidPart")
    proxy.rule = once
    data = os.urandom(SIZE)
    with open(d / "big", "wb", buffering=0) as f:
        for off in range(0, len(data), MiB):
            f.write(data[off:off + MiB])
        deadline = time.monotonic() + 60
        while not refused:  # part 2 goes up in the background while the file is open
            assert time.monotonic() < deadline, "part 2 was never uploaded before close"
            time.sleep(0.05)  # polling an observable event, bounded
    proxy.rule = None
    assert _stored(server, "pipeline/p/big") == data
    assert m.status()["pending_uploads"] == []
    _no_open_uploads(server)


@pytest.mark.expected_log(r"previous run|never closed")
def test_a_crash_while_writing_leaves_no_open_upload_after_the_restart(proxied):
    m, proxy, server = proxied
    d = m.path / "pipeline" / "p"
    d.mkdir()
    f = open(d / "big", "wb", buffering=0)
    try:
        data = os.urandom(SIZE)
        for off in range(0, len(data), MiB):
            f.write(data[off:off + MiB])
        _wait_for_parts(proxy, 5)
        assert len(_open_uploads(server)) == 1
        m.kill9()
    finally:
        try:
            f.close()
        except OSError:
            pass  # the mount is gone
    m.mount()  # the next daemon aborts what the crash left open
    _no_open_uploads(server)
    assert not (d / "big").exists()  # never closed: nothing was acknowledged
