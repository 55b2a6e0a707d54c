"""Failures: a backend outage, a killed daemon, and mountctl's refusals."""

import errno
import json
import os
import subprocess

import boto3
import pytest

from .mounting import force_unmount, make_mount, mountctl, mounted, require_fuse, status_section
from .servers import MotoServer

BUCKET = "outage-bucket"


@pytest.fixture
def own_server(tmp_path):
    """A moto server this test may stop and start (its objects are lost on restart).  Its bucket is
    there whenever it answers: an outage does not delete a bucket, and a daemon retrying its
    pending upload the moment the server is back (before a create_bucket of the test's) would
    be told the bucket does not exist, and give the upload up."""
    server = MotoServer(tmp_path, buckets=(BUCKET,))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_mount(own_server, tmp_path):
    env = dict(os.environ, AWS_ENDPOINT_URL=own_server.url)
    with mounted(tmp_path, f"s3://{BUCKET}", env) as m:
        yield m


def _client(server):
    return boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")


@pytest.mark.expected_log("upload failed, kept as a pending upload", "pending uploads? wait for the next try")
def test_upload_failure_gives_eio_and_data_survives(s3_mount, own_server):
    d = s3_mount.path / "pipeline" / "p"
    d.mkdir()
    f = open(d / "precious", "wb")  # created while S3 is up: the lookup must not be what fails
    own_server.stop()
    f.write(b"do not lose me")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EIO
    log = s3_mount.log()
    assert "/pipeline/p/precious" in log and "pending upload" in log
    pending = s3_mount.status()["pending_uploads"]
    assert [p["key"] for p in pending] == ["pipeline/p/precious"]
    assert (d / "precious").read_bytes() == b"do not lose me"  # still readable locally
    p = mountctl("status", env=s3_mount.env)
    assert "pending: pipeline/p/precious" in status_section(p.stdout, s3_mount.path), p.stdout
    own_server.start()
    mountctl("flush", str(s3_mount.path), env=s3_mount.env)
    body = _client(own_server).get_object(Bucket=BUCKET, Key="pipeline/p/precious")["Body"].read()
    assert body == b"do not lose me"
    assert s3_mount.status()["pending_uploads"] == []


@pytest.mark.expected_log("upload failed, kept as a pending upload", "pending uploads? wait for the next try", "from a previous run")
def test_pending_upload_survives_kill9(s3_mount, own_server):
    d = s3_mount.path / "pipeline" / "p"
    d.mkdir()
    f = open(d / "kept", "wb")  # created while S3 is up: the upload at close is what fails
    own_server.stop()
    f.write(b"journaled")
    with pytest.raises(OSError):
        f.close()
    s3_mount.kill9()
    own_server.start()
    s3_mount.mount()  # same cache dir: uploads what is pending before serving
    body = _client(own_server).get_object(Bucket=BUCKET, Key="pipeline/p/kept")["Body"].read()
    assert body == b"journaled"
    assert (d / "kept").read_bytes() == b"journaled"


@pytest.mark.expected_log("upload failed, kept as a pending upload", "pending uploads? wait for the next try", "uploads still pending")
def test_umount_reports_what_it_could_not_upload(s3_mount, own_server):
    d = s3_mount.path / "pipeline" / "p"
    d.mkdir()
    f = open(d / "stuck", "wb")
    own_server.stop()
    f.write(b"x")
    with pytest.raises(OSError):
        f.close()
    p = s3_mount.umount()
    assert p.returncode == 1
    assert "pipeline/p/stuck" in p.stderr and "still pending" in p.stderr
    assert not os.path.ismount(s3_mount.path)
    staged = list((s3_mount.cache_dir / "pending").glob("*.json"))
    assert [json.loads(j.read_text())["key"] for j in staged] == ["pipeline/p/stuck"]


@pytest.mark.expected_log("staged files that were never closed before a restart")
def test_fsync_then_kill9(mount):
    d = mount.path / "pipeline" / "p"
    d.mkdir()
    fd = os.open(d / "synced", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"acknowledged")
    os.fsync(fd)
    mount.kill9()  # with the file still open: fsync's answer is all that counts
    try:
        os.close(fd)
    except OSError:
        pass
    assert mount.backend.get_range("pipeline/p/synced", 0) == b"acknowledged"
    mount.mount()
    assert (d / "synced").read_bytes() == b"acknowledged"


@pytest.fixture
def ctl_env(tmp_path):
    require_fuse()
    return dict(os.environ)


def test_mountctl_refusals(tmp_path, ctl_env, moto_server):
    def fails(*args, env=ctl_env):
        p = mountctl(*args, env=env, check=False)
        assert p.returncode != 0 and p.stderr.count("\n") == 1, p.stderr
        return p.stderr
    (tmp_path / "file").write_text("x")
    (tmp_path / "mp").mkdir()
    assert "does not exist" in fails("mount", str(tmp_path / "missing"))
    assert "not a directory" in fails("mount", str(tmp_path / "file"))
    s3env = dict(ctl_env, AWS_ENDPOINT_URL=moto_server.url)
    assert "bucket 'no-such-bucket' does not exist" in fails(
        "mount", str(tmp_path / "mp"), "--backend", "s3://no-such-bucket", env=s3env)
    assert "cannot reach S3" in fails(
        "mount", str(tmp_path / "mp"), "--backend", "s3://b", "--endpoint-url", "http://127.0.0.1:9", env=s3env)
    assert "fusermount3 not found" in fails(
        "mount", str(tmp_path / "mp"), env=dict(ctl_env, PATH="/nonexistent"))
    assert "is not a stashfs mount" in fails("umount", str(tmp_path / "mp"))
    assert not os.path.ismount(tmp_path / "mp")


def test_mountctl_rejected_credentials(tmp_path, ctl_env):
    server = MotoServer(tmp_path, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # moto then checks keys
    server.start()
    try:
        (tmp_path / "mp").mkdir()
        env = dict(ctl_env, AWS_ENDPOINT_URL=server.url)
        p = mountctl("mount", str(tmp_path / "mp"), "--backend", "s3://any-bucket", env=env, check=False)
        assert p.returncode == 1 and "access denied" in p.stderr, p.stderr
    finally:
        server.stop()


def test_already_mounted(mount):
    p = mountctl("mount", str(mount.path), "--backend", mount.url, env=mount.env, check=False)
    assert p.returncode == 1 and "already mounted" in p.stderr


def test_status_json(mount):
    (mount.path / "pipeline" / "s").mkdir()
    out = json.loads(mountctl("status", "--json", env=mount.env).stdout)
    mine = [m for m in out if m["mountpoint"] == str(mount.path)]
    assert len(mine) == 1
    assert mine[0]["requests"]["mkdir"] == 1 and mine[0]["pid"] > 0
    assert mine[0]["backend"].startswith("s3://" if mount.kind == "s3" else "file://")


@pytest.mark.expected_log("cache disk full", "No space left on device")
def test_full_cache_disk_gives_enospc_and_keeps_old_object(tmp_path):
    require_fuse()
    cache = tmp_path / "small-cache"
    cache.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(cache)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the cache dir: {p.stderr.strip()}")
    try:
        m = make_mount(tmp_path, str(tmp_path / "be"), dict(os.environ))
        m.cache_dir = cache
        m.mount()
        try:
            d = m.path / "pipeline" / "p"
            d.mkdir()
            (d / "f").write_bytes(b"old content")
            f = open(d / "f", "wb")
            with pytest.raises(OSError) as e:
                for _ in range(8):
                    f.write(os.urandom(1 << 20))
                    f.flush()
            assert e.value.errno == errno.ENOSPC
            with pytest.raises(OSError) as e:
                f.close()
            assert e.value.errno == errno.ENOSPC
            assert m.backend.get_range("pipeline/p/f", 0) == b"old content"
            assert "cache disk full" in m.log()
            (d / "g").write_bytes(b"small files still work")  # the failed file's space is freed
            assert m.backend.get_range("pipeline/p/g", 0) == b"small files still work"
        finally:
            m.umount()
            force_unmount(m.path)
    finally:
        subprocess.run(["umount", "-l", str(cache)], capture_output=True)


@pytest.mark.expected_log("cannot reach S3")
def test_reads_fail_with_eio_when_s3_is_down(s3_mount, own_server):
    d = s3_mount.path / "pipeline" / "p"
    d.mkdir()
    (d / "f").write_bytes(b"remote bytes")
    own_server.stop()
    with pytest.raises(OSError) as e:
        (d / "f").read_bytes()  # never read before: not in the page cache
    assert e.value.errno == errno.EIO
    assert "cannot reach S3" in s3_mount.log()
