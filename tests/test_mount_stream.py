"""Sequential reads through a real S3 mount: one streamed GET per sequential reader, exact ranged
GETs for seeks, and never two versions of an object in one open file."""

import errno
import os

import pytest

from .mounting import mounted

MiB = 1 << 20


@pytest.fixture
def s3_mount(moto_server, s3_url, tmp_path):
    with mounted(tmp_path, s3_url, dict(os.environ, AWS_ENDPOINT_URL=moto_server.url)) as m:
        yield m


def gets(before: dict, after: dict) -> dict:
    """GET requests the daemon made between two status snapshots, by kind."""
    b, a = before["backend_requests"], after["backend_requests"]
    return {k: a.get(k, 0) - b.get(k, 0) for k in ("open_range", "get_range")}


def behind(m) -> int:
    """Reads the daemon logged as exact GETs past which its stream goes on: behind it (pages the
    kernel read again after dropping them from its page cache), or beyond its reach within twice
    the kernel's read-ahead (a read-ahead read that arrived long before the reads between)."""
    return m.log().count("an exact ranged GET, the stream goes on")


def assert_one_stream(m, before: dict, after: dict, size: int, behind_before: int) -> None:
    """What a sequential read of ``size`` bytes made: one streamed GET, never ended and started
    again, and nothing downloaded twice but the reads the daemon logged as exact GETs past which
    the stream goes on (`behind`)."""
    made = gets(before, after)
    assert made["open_range"] == 1, made
    again = behind(m) - behind_before
    assert made["get_range"] == again == after["random_reads"] - before["random_reads"], made
    assert size <= after["bytes_down"] - before["bytes_down"] <= size + again * MiB


def read_sequentially(path, start: int = 0, size: int = MiB) -> bytes:
    """Like cat: read() calls of ``size`` from ``start`` to the end."""
    out = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, start, os.SEEK_SET)
        while chunk := os.read(fd, size):
            out += chunk
    finally:
        os.close(fd)
    return bytes(out)


def test_a_sequential_read_is_one_get(s3_mount):
    d = s3_mount.path / "pipeline" / "seq"
    big = os.urandom(48 * MiB + 5)
    files = {"big": big, "one-mib": big[:MiB], "small": big[:1000]}
    for name, data in files.items():
        s3_mount.backend.put_bytes(f"pipeline/seq/{name}", data)
    for name, data in files.items():
        os.stat(d / name)  # looked up first: only the read is counted
        before, was_behind = s3_mount.status(), behind(s3_mount)
        assert read_sequentially(d / name) == data
        assert_one_stream(s3_mount, before, s3_mount.status(), len(data), was_behind)


def test_a_sequential_read_over_https_is_one_get_of_the_right_bytes(moto_server, s3_url, tmp_path, monkeypatch):
    """S3 is HTTPS: through the kernel, the stream's body is read on the daemon's event loop
    from a TLS socket (`fsdriver.backend.s3_body`), with the kernel's read-ahead reads arriving
    concurrently; the bytes are the object's, from one GET."""
    from .faultproxy import FaultProxy
    from .pacedtls import self_signed

    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))  # (the daemon's and this test's clients)
    with FaultProxy(moto_server.url, tls=(cert, key)) as proxy:
        with mounted(tmp_path, s3_url, dict(os.environ, AWS_ENDPOINT_URL=proxy.url)) as m:
            data = os.urandom(40 * MiB + 12345)
            m.backend.put_bytes("pipeline/tls/big", data)
            path = m.path / "pipeline" / "tls" / "big"
            os.stat(path)
            before, was_behind = m.status(), behind(m)
            assert read_sequentially(path) == data
            assert_one_stream(m, before, m.status(), len(data), was_behind)
            m.umount()  # (before the proxy goes)


def test_a_seek_mid_stream_reads_the_right_bytes(s3_mount):
    data = os.urandom(64 * MiB)
    s3_mount.backend.put_bytes("pipeline/seq/obj", data)
    path = s3_mount.path / "pipeline" / "seq" / "obj"
    os.stat(path)
    before, was_behind = s3_mount.status(), behind(s3_mount)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.read(fd, MiB) + os.read(fd, MiB) == data[: 2 * MiB]
        assert os.pread(fd, 4096, 50 * MiB + 3) == data[50 * MiB + 3 : 50 * MiB + 4099]  # a seek
        rest = bytearray()
        while chunk := os.read(fd, MiB):  # on from 2 MiB, where the file position is
            rest += chunk
        assert bytes(rest) == data[2 * MiB :]
    finally:
        os.close(fd)
    made = gets(before, s3_mount.status())
    assert made["get_range"] >= 1  # the seek: exactly what it asked for (as the kernel asked it)
    # Not a request per window (62 windows of 1 MiB after the seek).  Usually 4 or 5: the seek, the
    # read at 2 MiB (not a stream yet) and a new stream; on a loaded machine the kernel's
    # read-ahead reads that arrive before the stream starts, out of order, are exact ranged GETs
    # too (9 seen once in CI-like runs); so are pages the kernel reads again behind the stream.
    assert sum(made.values()) - (behind(s3_mount) - was_behind) <= 12, made


@pytest.mark.expected_log(r"precondition failed")
def test_an_object_changed_mid_stream_gives_estale_never_mixed_bytes(s3_mount):
    old, new = os.urandom(64 * MiB), os.urandom(64 * MiB)
    s3_mount.backend.put_bytes("pipeline/seq/obj", old)
    path = s3_mount.path / "pipeline" / "seq" / "obj"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.read(fd, MiB) == old[:MiB]
        s3_mount.backend.put_bytes("pipeline/seq/obj", new)
        try:
            got = os.read(fd, 3 * MiB)  # the streamed body: the version the file was opened at
            assert got == old[MiB : MiB + len(got)] and got
        except OSError as e:  # unless the kernel dropped pages it read ahead and asks them again:
            # a new request (behind the stream), pinned to the old etag: never the new bytes
            assert e.errno == errno.ESTALE and behind(s3_mount), e
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 60 * MiB)  # a new request, pinned to the old etag
        assert e.value.errno == errno.ESTALE
    finally:
        os.close(fd)


@pytest.fixture
def s3_mount_16m_readahead(moto_server, s3_url, tmp_path):
    with mounted(tmp_path, s3_url, dict(os.environ, AWS_ENDPOINT_URL=moto_server.url),
                 extra=["--readahead", "16M"]) as m:
        yield m


def test_a_sequential_read_with_a_large_kernel_readahead_is_one_get(s3_mount_16m_readahead):
    """With ``--readahead 16M`` the kernel sends 1 MiB reads concurrently, out of order and up to
    twice 16 MiB ahead of the reads served: still one streamed GET, nothing downloaded twice but
    the exact GETs past which the daemon logged that the stream goes on."""
    if os.geteuid() != 0:
        pytest.skip("setting a mount's read-ahead needs root")
    m = s3_mount_16m_readahead
    st = os.stat(m.path)
    with open(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb") as f:
        assert int(f.read()) == 16 * 1024  # the mount's read-ahead was set
    assert m.status()["kernel_readahead"] == 16 * MiB  # and the daemon knows it (fsdriver.kernelra)
    data = os.urandom(64 * MiB)
    m.backend.put_bytes("pipeline/seq/obj", data)
    path = m.path / "pipeline" / "seq" / "obj"
    os.stat(path)
    before, was_behind = m.status(), behind(m)
    assert read_sequentially(path) == data
    # (A re-read behind the stream once in 24 runs under load: before, it ended the stream.)
    assert_one_stream(m, before, m.status(), len(data), was_behind)
