"""Read-your-writes through the kernel: a program reads back what it wrote, on both backends.

The trees are put straight into the backend (as another node or an earlier mount would have left
them) and the mounts use a long metadata TTL, so the listing the mount takes of them, with every
file's size and etag, is still cached when the write happens: the state in which issue 10's stale
reads appeared (by chance, within one second, with the default TTL).
"""

import errno
import os
import subprocess
import time

import pytest

from .conftest import backend_env
from .mounting import mountctl, mounted
from .test_mount_failures import BUCKET as OUTAGE_BUCKET
from .test_mount_failures import own_server  # noqa: F401  (a fixture)


@pytest.fixture(params=["disk", "s3"])
def slow_ttl_mount(request, tmp_path):
    url, env = backend_env(request.param, request, tmp_path)
    with mounted(tmp_path, url, env, extra=["--metadata-ttl", "60"]) as m:
        m.kind = request.param
        yield m
    assert "Traceback" not in m.log()


def sh(script: str, cwd) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@e", HOME=str(cwd))
    p = subprocess.run(["bash", "-ec", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{script!r} -> {p.returncode}: {p.stderr}"
    return p.stdout


def upload_tree(mount, local, prefix: str) -> None:
    """Put every file under ``local`` into the mount's backend below ``prefix``, behind its back."""
    for root, _, files in os.walk(local):
        for name in files:
            path = os.path.join(root, name)
            mount.backend.put_file(prefix + os.path.relpath(path, local), path)


def test_git_commit_after_status_sees_the_change(slow_ttl_mount, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sh("git init -q; for i in $(seq 120); do echo \"file $i\" > f$i.txt; done; git add .; git commit -qm x", src)
    upload_tree(slow_ttl_mount, src, "pipeline/p1/")
    d = slow_ttl_mount.path / "pipeline" / "p1"
    assert sh("git status --porcelain", d) == ""
    out = sh("echo change >> f2.txt; git status --porcelain; stat -c %s f2.txt", d)
    assert out.split() == ["M", "f2.txt", str(len("file 2\nchange\n"))]
    sh("git commit -qam c", d)  # fails ("nothing to commit") when the change is not seen
    assert sh("git status --porcelain", d) == ""
    assert sh("git show HEAD:f2.txt", d) == "file 2\nchange\n"


def test_ls_append_ls_cat(slow_ttl_mount):
    for i in range(60):
        slow_ttl_mount.backend.put_bytes(f"pipeline/p1/d/f{i}.txt", f"file {i}\n".encode())
    d = slow_ttl_mount.path / "pipeline" / "p1" / "d"
    out = sh("ls -l d >/dev/null; echo more >> d/f1.txt; ls -l d >/dev/null; cat d/f1.txt; stat -c %s d/f1.txt",
             d.parent)
    assert out == "file 1\nmore\n12\n"
    # and what reached the backend
    assert slow_ttl_mount.backend.get_range("pipeline/p1/d/f1.txt", 0) == b"file 1\nmore\n"


@pytest.fixture
def slow_ttl_disk_mount(request, tmp_path):
    url, env = backend_env("disk", request, tmp_path)
    with mounted(tmp_path, url, env, extra=["--metadata-ttl", "60"]) as m:
        yield m
    assert "Traceback" not in m.log()


def test_a_file_grown_elsewhere_reads_whole_once_an_open_sees_it(slow_ttl_disk_mount):
    """The disk backend's open sees a file replaced behind the mount's back at once (it opens the
    backing file).  The kernel still held the old size, valid for the whole (long) TTL, and stopped
    reading there: a longer new version read cut short, every other time.  The open now drops the
    kernel's attributes when it finds the file changed.  (On S3 an open within the TTL reads the
    version the mount knows: docs/semantics.md.)"""
    m = slow_ttl_disk_mount
    path = m.path / "pipeline" / "p1" / "g.txt"
    m.backend.put_bytes("pipeline/p1/g.txt", b"<start>")
    for i, x in enumerate("ABCDEFGH"):
        assert path.read_bytes()  # the kernel holds this version's size now
        new = f"<{x * (5 * (i + 1))}>".encode()
        m.backend.put_bytes("pipeline/p1/g.txt", new)  # another writer, behind our back
        assert path.read_bytes() == new
        assert os.stat(path).st_size == len(new)


@pytest.fixture(params=["disk", "s3"])
def short_ttl_mount(request, tmp_path):
    url, env = backend_env(request.param, request, tmp_path)
    with mounted(tmp_path, url, env, extra=["--metadata-ttl", "0.2"]) as m:
        yield m
    assert "Traceback" not in m.log()


def test_a_file_held_open_for_writing_shows_another_nodes_new_version(short_ttl_mount):
    """A process here holds a file open for writing and writes nothing (sqlite holds its database
    O_RDWR, a daemon its log); another node replaces the file.  New opens here showed the old
    version (or ESTALE) for as long as that descriptor stayed open.  Now they show the new one
    once the TTL passed, as for any file, and so does the holder (as descriptors sharing an inode
    another process rewrote do on ext4): its write lands on the new version, and its close is the
    last one, which stores it."""
    m = short_ttl_mount
    path = m.path / "pipeline" / "p1" / "held.txt"
    v1, v2 = b"version one\n" * 100, b"version two, longer\n" * 200
    m.backend.put_bytes("pipeline/p1/held.txt", v1)
    holder = os.open(path, os.O_RDWR)
    try:
        assert path.read_bytes() == v1
        m.backend.put_bytes("pipeline/p1/held.txt", v2)  # another node
        deadline = time.monotonic() + 30
        while (seen := path.read_bytes()) != v2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the TTL (0.2 s) is what is waited for, not a race
        assert seen == v2
        assert os.stat(path).st_size == len(v2)
        assert os.pread(holder, 2 * len(v2), 0) == v2
        os.pwrite(holder, b"X", 5)
        mine = v2[:5] + b"X" + v2[6:]
        assert path.read_bytes() == mine  # read-your-writes: this mount's content
    finally:
        os.close(holder)
    assert m.backend.get_range("pipeline/p1/held.txt", 0) == mine
    assert path.read_bytes() == mine


def test_a_reader_of_a_file_replaced_by_a_shorter_one_reads_one_version_exactly(short_ttl_mount):
    """A descriptor that has read nothing yet, of a file another node then replaces with a shorter
    version: on S3 its first read re-pins it to the new version (docs/semantics.md), and used to
    return the new bytes followed by zeros up to the old size's read-ahead (the kernel kept the
    old size); on disk it reads the old inode.  Either way: one version, exactly."""
    m = short_ttl_mount
    path = m.path / "pipeline" / "p1" / "short.bin"
    old, new = os.urandom(3 << 20), b"hello world\n"
    m.backend.put_bytes("pipeline/p1/short.bin", old)
    fd = os.open(path, os.O_RDONLY)
    try:
        m.backend.put_bytes("pipeline/p1/short.bin", new)  # another node
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        assert data in (old, new), (len(data), data[:20])
    finally:
        os.close(fd)


def test_a_removed_file_held_open_keeps_its_content_when_a_new_one_takes_its_name(short_ttl_mount):
    """A descriptor holds a file open for writing (nothing written); the file is removed here and
    a new one written under its name.  Reopened through /proc after the TTL, the removed file is
    still itself: not the new file's content (an open refreshes a file held open by others)."""
    m = short_ttl_mount
    path = m.path / "pipeline" / "p1" / "gone.txt"
    old = b"the removed file\n" * 1000
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(old)
    fd = os.open(path, os.O_RDWR)
    try:
        os.unlink(path)
        path.write_bytes(b"a new file under the same name")
        time.sleep(0.5)  # not a synchronisation: the TTL (0.2 s) must pass, so an open asks again
        again = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        try:
            assert os.pread(again, 2 * len(old), 0) == old
        finally:
            os.close(again)
        assert os.pread(fd, 2 * len(old), 0) == old
    finally:
        os.close(fd)
    assert path.read_bytes() == b"a new file under the same name"


def test_rewrite_in_a_listed_directory_reads_back_whole(slow_ttl_mount):
    """A shorter-then-longer rewrite in a listed directory: never the old bytes, never cut."""
    for i in range(60):
        slow_ttl_mount.backend.put_bytes(f"pipeline/p1/f{i}", b"x" * 100)
    d = slow_ttl_mount.path / "pipeline" / "p1"
    for round_ in range(5):
        os.listdir(d)
        [os.stat(d / f"f{i}") for i in range(0, 60, 7)]
        data = os.urandom(100 + 37 * round_)
        (d / "f3").write_bytes(data)
        os.listdir(d)
        assert os.stat(d / "f3").st_size == len(data)
        assert (d / "f3").read_bytes() == data


@pytest.fixture
def short_ttl_s3_mount(own_server, tmp_path):
    env = dict(os.environ, AWS_ENDPOINT_URL=own_server.url)
    with mounted(tmp_path, f"s3://{OUTAGE_BUCKET}", env, extra=["--metadata-ttl", "0.2"]) as m:
        yield m


@pytest.mark.expected_log(r"upload failed|cannot reach|cannot read its owner record|pending|unreachable|flush")
def test_pending_upload_reads_back_after_the_ttl_during_an_outage(short_ttl_s3_mount, own_server):
    """Issue 10, item 6: once the TTL passed, the directories above a pending upload were looked
    up in the (unreachable) backend again and the file read gave EIO."""
    d = short_ttl_s3_mount.path / "pipeline" / "p" / "sub"
    d.mkdir(parents=True)
    f = open(d / "precious", "wb")
    own_server.stop()
    f.write(b"do not lose me")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EIO
    time.sleep(1.0)  # not a synchronisation: five metadata TTLs must pass, so every name is asked again
    assert (d / "precious").read_bytes() == b"do not lose me"
    assert os.stat(d / "precious").st_size == len(b"do not lose me")
    own_server.start()
    mountctl("flush", str(short_ttl_s3_mount.path), env=short_ttl_s3_mount.env)
    assert short_ttl_s3_mount.backend.get_range("pipeline/p/sub/precious", 0) == b"do not lose me"
