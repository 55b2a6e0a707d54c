"""Uploads that tell the truth under faults, through real mounts (items 11-14, 18 of issue 10)."""

import errno
import filecmp
import json
import os
import subprocess
import sys
from contextlib import contextmanager

import boto3
import pytest

from .faultproxy import FaultProxy
from .mounting import force_unmount, make_mount, mountctl, require_fuse
from .test_mount_failures import BUCKET
from .test_mount_failures import own_server  # noqa: F401  (a fixture: a moto server of the test's own)

MiB = 1 << 20


def _client(url):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def _unmount(m):
    if m.mounted:
        m.umount()
    force_unmount(m.path)


@pytest.fixture
def small_cache(tmp_path):
    """A 4 MiB tmpfs for the cache dir (the cache disk can be filled)."""
    require_fuse()
    cache = tmp_path / "small-cache"
    cache.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(cache)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the cache dir: {p.stderr.strip()}")
    yield cache
    subprocess.run(["umount", "-l", str(cache)], capture_output=True)


def _fill(path):
    """Fill the filesystem of ``path`` up to the last byte."""
    with open(path, "wb", buffering=0) as f:
        for size in (MiB, 64 << 10, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC


def test_an_ambiguous_complete_that_landed_is_a_success(own_server, tmp_path):
    """Item 11: CompleteMultipartUpload carried out but answered 500: close() checks what the
    bucket holds, finds its upload there, and succeeds; nothing stays pending."""
    require_fuse()
    with FaultProxy(own_server.url) as proxy:
        m = make_mount(tmp_path, f"s3://{BUCKET}", dict(os.environ, AWS_ENDPOINT_URL=proxy.url))
        m.mount()
        try:
            d = m.path / "pipeline" / "p"
            d.mkdir()
            data = os.urandom(8 * MiB + 1)  # over the daemon's multipart threshold
            proxy.rule = lambda method, path: method == "POST" and "uploadId=" in path
            (d / "big").write_bytes(data)
            proxy.rule = None
            assert proxy.hits >= 1
            body = _client(own_server.url).get_object(Bucket=BUCKET, Key="pipeline/p/big")["Body"].read()
            assert body == data
            assert m.status()["pending_uploads"] == []
            (d / "big").unlink()
            d.rmdir()
            assert "Contents" not in _client(own_server.url).list_objects_v2(Bucket=BUCKET, Prefix="pipeline/p/")
        finally:
            _unmount(m)


@contextmanager
def _a_close_landed_unheard(own_server, tmp_path, content: bytes):
    """An S3 mount through a fault proxy; ``pipeline/p/f`` holds OLD, then a close of ``content``
    is carried out but its answer is lost, and so is the HEAD that would have told (an outage
    that held the requests): close() says EIO, the upload is pending.  Yields (mount, dir, proxy)."""
    require_fuse()
    with FaultProxy(own_server.url) as proxy:
        m = make_mount(tmp_path, f"s3://{BUCKET}", dict(os.environ, AWS_ENDPOINT_URL=proxy.url))
        m.mount()
        try:
            d = m.path / "pipeline" / "p"
            d.mkdir()
            (d / "f").write_bytes(b"OLD")
            proxy.rule = lambda method, path: method in ("PUT", "HEAD") and path.split("?")[0].endswith("/pipeline/p/f")
            with pytest.raises(OSError) as e:
                with open(d / "f", "wb") as f:
                    f.write(content)
            assert e.value.errno == errno.EIO
            yield m, d, proxy
        finally:
            _unmount(m)


def _stored(own_server) -> bytes:
    return _client(own_server.url).get_object(Bucket=BUCKET, Key="pipeline/p/f")["Body"].read()


@pytest.mark.expected_log("upload failed, kept as a pending upload")
def test_a_retry_whose_earlier_upload_landed_after_all_is_done(own_server, tmp_path):
    """The retry, conditional on the version the failed close replaced, finds that close's own
    content there (the same size and attributes): done, not "another writer's version stays"."""
    with _a_close_landed_unheard(own_server, tmp_path, b"MINE, LANDED") as (m, d, proxy):
        proxy.rule = None
        assert _stored(own_server) == b"MINE, LANDED"  # it did land
        mountctl("flush", str(m.path), env=m.env)
        assert m.status()["pending_uploads"] == []
        assert (d / "f").read_bytes() == b"MINE, LANDED"
        log = m.log()
        assert "had landed already" in log and "pending upload not stored" not in log


@pytest.mark.expected_log("upload failed, kept as a pending upload")
def test_a_retry_replaces_an_earlier_upload_of_its_own_that_landed(own_server, tmp_path):
    """After a close whose upload landed unheard, the file is appended to and closed again while
    the backend refuses (EIO, "kept").  The retry finds the first close's own upload there and
    replaces it with the newer content (it used to give that content up as "another writer's",
    although its close had said it was kept)."""
    with _a_close_landed_unheard(own_server, tmp_path, b"FIRST CLOSE") as (m, d, proxy):
        proxy.refusal = (503, "SlowDown")  # not carried out this time
        with pytest.raises(OSError) as e:
            with open(d / "f", "ab") as f:
                f.write(b", APPENDED")
        assert e.value.errno == errno.EIO
        # (read past the proxy, before it lets the retry loop's next try through)
        assert _stored(own_server) == b"FIRST CLOSE"  # the first close landed
        proxy.rule = proxy.refusal = None
        mountctl("flush", str(m.path), env=m.env)
        assert m.status()["pending_uploads"] == []
        assert _stored(own_server) == b"FIRST CLOSE, APPENDED"
        assert (d / "f").read_bytes() == b"FIRST CLOSE, APPENDED"
        assert "pending upload not stored" not in m.log()


def test_rename_of_a_multipart_file_then_read(own_server, tmp_path):
    """Item 12: the copy gives a multipart object a new etag; reads after the rename use it."""
    require_fuse()
    m = make_mount(tmp_path, f"s3://{BUCKET}", dict(os.environ, AWS_ENDPOINT_URL=own_server.url))
    m.mount()
    try:
        d = m.path / "pipeline" / "p"
        d.mkdir()
        src = tmp_path / "big"
        src.write_bytes(os.urandom(8 * MiB + 1))
        (d / "f").write_bytes(src.read_bytes())
        os.rename(d / "f", d / "g")
        assert filecmp.cmp(src, d / "g", shallow=False)
    finally:
        _unmount(m)


@pytest.mark.expected_log(r"File name too long|cannot succeed|not uploaded")
def test_a_path_over_path_max_in_the_backend_is_enametoolong(tmp_path):
    """Item 13: a key the disk backend cannot store is ENAMETOOLONG, at create (its length is
    checked before anything is written: PATH_MAX with the backend's root), nothing is left pending,
    and umount succeeds."""
    require_fuse()
    m = make_mount(tmp_path, str(tmp_path / "be"), dict(os.environ))
    m.mount()
    try:
        (m.path / "pipeline" / "p").mkdir()
        fd = os.open(m.path / "pipeline" / "p", os.O_RDONLY | os.O_DIRECTORY)
        backend_len = len(str(tmp_path / "be" / "pipeline" / "p"))
        try:
            while backend_len < 3900:  # directories the backend can still create
                name = "d" * min(200, 3900 - backend_len - 1)
                os.mkdir(name, dir_fd=fd)
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd, backend_len = sub, backend_len + 1 + len(name)
            with pytest.raises(OSError) as e:
                os.open("f" * 255, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            assert e.value.errno == errno.ENAMETOOLONG
        finally:
            os.close(fd)
        assert m.status()["pending_uploads"] == []
        assert "longer than the backend's keys may be" in m.log()
        p = m.umount()
        assert p.returncode == 0, p.stderr
    finally:
        _unmount(m)


@pytest.mark.expected_log(r"is full|cannot reserve|upload failed|pending upload|previous run")
def test_a_pending_upload_is_journaled_on_a_full_cache_disk(own_server, small_cache, tmp_path):
    """Item 14: S3 down and the cache disk full at close: the journal entry still gets written
    (from the reserve), so the data survives kill -9."""
    m = make_mount(tmp_path, f"s3://{BUCKET}", dict(os.environ, AWS_ENDPOINT_URL=own_server.url))
    m.cache_dir = small_cache
    m.mount()
    try:
        d = m.path / "pipeline" / "p"
        d.mkdir()
        f = open(d / "kept", "wb")
        f.write(b"journaled although the disk is full")
        f.flush()
        _fill(small_cache / "filler")
        own_server.stop()
        with pytest.raises(OSError) as e:
            f.close()
        assert e.value.errno == errno.EIO
        assert "kept as a pending upload" in m.log()
        m.kill9()
        (small_cache / "filler").unlink()
        own_server.start()
        m.mount()
        body = _client(own_server.url).get_object(Bucket=BUCKET, Key="pipeline/p/kept")["Body"].read()
        assert body == b"journaled although the disk is full"
    finally:
        _unmount(m)


@pytest.mark.expected_log(r"cache disk full|No space left|an earlier write failed")
def test_create_again_after_a_failed_write(small_cache, tmp_path):
    """Item 18: after a write failed with ENOSPC, open(O_CREAT) of the same name works at once."""
    m = make_mount(tmp_path, str(tmp_path / "be"), dict(os.environ))
    m.cache_dir = small_cache
    m.mount()
    try:
        d = m.path / "pipeline" / "p"
        d.mkdir()
        f = open(d / "n", "wb")
        with pytest.raises(OSError) as e:
            for _ in range(8):
                f.write(os.urandom(MiB))
                f.flush()
        assert e.value.errno == errno.ENOSPC
        with pytest.raises(OSError):
            f.close()
        fd = os.open(d / "n", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"second try")
        os.close(fd)
        assert m.backend.get_range("pipeline/p/n", 0) == b"second try"
    finally:
        _unmount(m)


@pytest.mark.expected_log(r"upload failed|unreachable|discarded|pending")
def test_flush_discard_drops_a_pending_upload(own_server, tmp_path):
    """Item 13: a pending upload can be listed and discarded; umount says what happens to the rest."""
    require_fuse()
    m = make_mount(tmp_path, f"s3://{BUCKET}", dict(os.environ, AWS_ENDPOINT_URL=own_server.url))
    m.mount()
    try:
        d = m.path / "pipeline" / "p"
        d.mkdir()
        files = [open(d / name, "wb") for name in ("a", "b")]  # looked up while S3 is up
        own_server.stop()
        for f in files:
            f.write(b"x")
            with pytest.raises(OSError):
                f.close()
        assert sorted(p["key"] for p in m.status()["pending_uploads"]) == ["pipeline/p/a", "pipeline/p/b"]
        p = mountctl("flush", str(m.path), "--discard", "pipeline/p/nope", env=m.env, check=False)
        assert p.returncode == 1 and "no pending upload" in p.stderr, p.stderr
        p = mountctl("flush", str(m.path), "--discard", str(d / "a"), env=m.env, check=False)
        assert p.returncode == 0 and "discarded pipeline/p/a" in p.stderr, p.stderr
        assert [p["key"] for p in m.status()["pending_uploads"]] == ["pipeline/p/b"]
        p = m.umount()
        assert p.returncode == 1 and "--discard" in p.stderr and "next mount" in p.stderr, p.stderr
        assert [json.loads(j.read_text())["key"] for j in (m.cache_dir / "pending").glob("*.json")] == ["pipeline/p/b"]
        own_server.start()
        m.mount()  # uploads what is left before serving
        keys = [o["Key"] for o in _client(own_server.url).list_objects_v2(Bucket=BUCKET)["Contents"]]
        assert "pipeline/p/b" in keys and "pipeline/p/a" not in keys
    finally:
        _unmount(m)


def test_the_daemon_raises_its_descriptor_limit(tmp_path):
    """Item 14: the soft RLIMIT_NOFILE is raised to the hard limit at start."""
    require_fuse()
    m = make_mount(tmp_path, str(tmp_path / "be"), dict(os.environ))
    # The daemon inherits mountctl's limits: start it with a low soft limit.
    p = subprocess.run(["prlimit", "--nofile=256:", sys.executable, "-m", "mountctl", "mount", str(m.path),
                        "--backend", m.url, "--cache-dir", str(m.cache_dir), "--log-file", str(m.log_file)],
                       env=m.env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    m.mounted = True
    try:
        pid = m.status()["pid"]
        with open(f"/proc/{pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        assert soft == hard and int(soft) > 256, line
    finally:
        _unmount(m)
