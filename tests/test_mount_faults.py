"""Faults through real mounts: a black-holed or refusing endpoint (bounded hangs, a daemon that
exits after unmount), hundreds of pending uploads in the status, names that try to forge log
lines, and the modes of what the daemon creates."""

import errno
import json
import os
import stat
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from .blackhole import SwitchableProxy
from .mounting import force_unmount, make_mount, mountctl, require_fuse, status_section

BUCKET = "faults-bucket"
FORGED = "2099-01-01 00:00:00,000 ERROR stashfs.fs: FORGED LINE"
# What an outage makes the daemon log (tests/logguard.py fails a test on anything else).
OUTAGE = pytest.mark.expected_log(
    r"upload failed, kept as a pending upload", r"S3 request failed|cannot reach S3|did not answer within",
    r"uploads? (are )?still pending", r"pending upload", r"exiting with \d+ backend calls abandoned")


def _wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` (a state in another process) until true, failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)  # polling another process's state: there is nothing to wait on


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def proxied(tmp_path, moto_server):
    """make(timeout) -> (mount, proxy): an S3 mount whose endpoint is a switchable proxy, with the
    daemon's backend-call bound set to ``timeout`` seconds."""
    require_fuse()
    made = []

    def make(timeout: float, name: str = "mnt"):
        proxy = SwitchableProxy(moto_server.port)
        bucket = f"{BUCKET}-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1").create_bucket(Bucket=bucket)
        env = dict(os.environ, AWS_ENDPOINT_URL=proxy.url, STASHFS_BACKEND_TIMEOUT=str(timeout))
        m = make_mount(tmp_path, f"s3://{bucket}/{name}", env, name=name)
        made.append((m, proxy))
        m.mount()
        return m, proxy

    yield make
    for m, proxy in made:
        proxy.set_mode("forward")
        if m.mounted:
            m.umount()
        force_unmount(m.path)
        proxy.close()


@OUTAGE
def test_blackholed_endpoint_gives_eio_within_the_bound(proxied):
    m, proxy = proxied(timeout=3)
    d = m.path / "pipeline" / "p"
    d.mkdir()
    f = open(d / "new", "wb")  # created while the endpoint answers
    proxy.set_mode("blackhole")

    started = time.monotonic()
    f.write(b"data")
    with pytest.raises(OSError) as e:
        f.close()  # the upload
    assert e.value.errno == errno.EIO
    assert time.monotonic() - started < 20

    started = time.monotonic()
    with pytest.raises(OSError) as e:
        os.stat(d / "never-looked-up")  # a lookup: a LIST
    assert e.value.errno == errno.EIO
    assert time.monotonic() - started < 20

    started = time.monotonic()
    p = mountctl("flush", str(m.path), env=m.env, check=False, timeout=60)
    assert p.returncode == 1 and "still pending" in p.stderr, p.stderr
    assert time.monotonic() - started < 20

    proxy.set_mode("forward")
    mountctl("flush", str(m.path), env=m.env)
    assert m.backend.get_range("pipeline/p/new", 0) == b"data"


@OUTAGE
def test_mount_against_a_blackholed_endpoint_fails_within_the_bound(tmp_path, moto_server):
    require_fuse()
    proxy = SwitchableProxy(moto_server.port)
    try:
        proxy.set_mode("blackhole")
        (tmp_path / "mp").mkdir()
        env = dict(os.environ, AWS_ENDPOINT_URL=proxy.url, STASHFS_BACKEND_TIMEOUT="3")
        started = time.monotonic()
        p = mountctl("mount", str(tmp_path / "mp"), "--backend", f"s3://{BUCKET}", "--cache-dir",
                     str(tmp_path / "cache"), env=env, check=False, timeout=120)
        elapsed = time.monotonic() - started
        assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
        assert f"s3://{BUCKET}" in p.stderr
        assert elapsed < 20, f"took {elapsed:.0f}s: {p.stderr}"
        assert not os.path.ismount(tmp_path / "mp")
    finally:
        force_unmount(tmp_path / "mp")
        proxy.close()


@OUTAGE
def test_daemon_exits_after_unmount_while_a_backend_call_hangs(proxied):
    # A long bound: only abandoning the hung call at shutdown can explain a prompt exit.
    m, proxy = proxied(timeout=60)
    d = m.path / "pipeline" / "p"
    d.mkdir()
    pid = m.status()["pid"]
    f = open(d / "stuck", "wb")
    proxy.set_mode("refuse")  # a quick failure: the close returns EIO and the retry loop takes over
    f.write(b"kept")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EIO
    held = proxy.held_count()
    proxy.set_mode("blackhole")
    _wait_for(lambda: proxy.held_count() > held, 30, "the retry loop to reach the black hole")

    p = subprocess.run(["fusermount3", "-u", str(m.path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    m.mounted = False
    started = time.monotonic()
    _wait_for(lambda: not _alive(pid), 20, "the daemon to exit after fusermount3 -u")
    assert time.monotonic() - started < 20
    # The upload's outcome is unknown: it stays journaled for the next mount.
    journal = list((m.cache_dir / "pending").glob("*.json"))
    assert [json.loads(j.read_text())["key"] for j in journal] == ["pipeline/p/stuck"]
    assert "Traceback" not in m.log()


@OUTAGE
def test_status_and_umount_with_300_pending_uploads(proxied):
    m, proxy = proxied(timeout=3)
    d = m.path / "pipeline" / "p"
    d.mkdir()
    names = [f"pending-upload-with-a-rather-long-name-{i:04d}.bin" for i in range(300)]
    files = [open(d / n, "wb") for n in names]  # created while the endpoint answers
    proxy.set_mode("refuse")

    def close(f):
        f.write(b"x" * 10)
        try:
            f.close()
        except OSError as e:
            return e.errno
        return 0

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(close, files)) == {errno.EIO}

    st = m.status()  # one xattr: a summary under the 64 KiB xattr limit
    assert st["pending"]["count"] == 300 and st["pending"]["bytes"] == 3000
    assert 0 < len(st["pending_uploads"]) < 300

    p = mountctl("status", env=m.env)
    assert "pending uploads 300" in status_section(p.stdout, m.path), p.stdout
    p = mountctl("status", "--all", env=m.env)  # every mount on the machine: this one's lines
    shown = {line.split("pending: ")[1].split(" ")[0] for line in status_section(p.stdout, m.path).splitlines()
             if "pending: " in line}
    assert shown == {f"pipeline/p/{n}" for n in names}

    proxy.set_mode("forward")
    p = m.umount()
    assert p.returncode == 0, p.stderr
    assert not os.path.ismount(m.path)
    for n in names[::50]:
        assert m.backend.get_range(f"pipeline/p/{n}", 0) == b"x" * 10


@OUTAGE
def test_umount_lists_every_pending_upload(proxied):
    m, proxy = proxied(timeout=3)
    d = m.path / "pipeline" / "p"
    d.mkdir()
    files = [open(d / f"f{i:03d}", "wb") for i in range(40)]
    proxy.set_mode("refuse")
    for f in files:
        f.write(b"y")
        with pytest.raises(OSError):
            f.close()
    p = m.umount()
    assert p.returncode == 1 and "40 uploads are still pending" in p.stderr, p.stderr
    assert all(f"pipeline/p/f{i:03d}" in p.stderr for i in range(40))


@pytest.mark.expected_log(r"FORGED LINE': not uploaded")  # s3: moto cannot store the name
def test_names_cannot_forge_log_lines(mount):
    d = mount.path / "pipeline" / "p"
    d.mkdir()
    evil = "x\n" + FORGED
    try:
        (d / evil).write_bytes(b"evil name")
    except OSError:  # moto cannot store a key with a newline: a failing op on such a name
        assert mount.kind == "s3"
    else:
        assert (d / evil).read_bytes() == b"evil name"
    with pytest.raises(OSError) as e:  # refused and logged with the name
        os.rename(d / evil, mount.path / "pipeline" / "q")
    assert e.value.errno == errno.EPERM
    with pytest.raises(FileNotFoundError):
        os.stat(d / ("missing\n" + FORGED))
    with pytest.raises(OSError) as e:
        os.mkdir(mount.path / "pipeline" / ("bad name\n" + FORGED))
    assert e.value.errno == errno.EINVAL
    log = mount.log()
    assert "namespaces cannot be renamed" in log and "FORGED LINE" in log  # logged, but quoted
    assert not [line for line in log.splitlines() if line.startswith("2099-")]
    assert "\r" not in log


def test_private_modes(mount):
    d = mount.path / "pipeline" / "p"
    d.mkdir()
    f = open(d / "open-file", "wb")
    try:
        f.write(b"staged" * 20000)  # past fsdriver.staging.IN_MEMORY_MAX: in a staged file now
        f.flush()
        assert stat.S_IMODE(os.stat(mount.log_file).st_mode) == 0o600
        for sub in ("", "staged", "pending"):
            assert stat.S_IMODE(os.stat(mount.cache_dir / sub).st_mode) == 0o700, sub
        staged = list((mount.cache_dir / "staged").iterdir())
        assert staged and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in staged)
    finally:
        f.close()


def test_a_backend_dir_the_mount_creates_is_private(tmp_path):
    """Item 17: a local backend directory made by the mount (`--create`) is 0700 (it names and
    holds private data), whatever the umask."""
    require_fuse()
    (tmp_path / "mnt").mkdir()
    backend = tmp_path / "new" / "store"
    old = os.umask(0o022)
    try:
        mountctl("mount", str(tmp_path / "mnt"), "--backend", str(backend), "--create",
                 "--cache-dir", str(tmp_path / "cache"), "--log-file", str(tmp_path / "mnt.log"))
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(backend).st_mode) == 0o700
    finally:
        mountctl("umount", str(tmp_path / "mnt"), check=False)
        force_unmount(tmp_path / "mnt")
