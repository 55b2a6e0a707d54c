"""Everyday file operations through a real mount, checked on the backend."""

import errno
import os
import stat
import subprocess

import pytest

from .conftest import backend_env
from .mounting import mounted

MiB = 1 << 20


def test_tree_and_namespaces(mount):
    root = mount.path
    assert sorted(os.listdir(root)) == ["kv", "pipeline", "user"]
    os.mkdir(root / "pipeline" / "p1")
    os.mkdir(root / "user" / "alice")
    assert os.listdir(root / "pipeline") == ["p1"]
    assert os.listdir(root / "kv") == []
    with pytest.raises(OSError) as e:
        os.mkdir(root / "pipeline" / "bad id")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        open(root / "pipeline" / "file-at-tree-level", "w")
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        os.mkdir(root / "other")
    assert e.value.errno == errno.EPERM
    assert mount.backend.head("pipeline/p1/").size == 0  # the namespace marker


def test_shell_tools(mount):
    d = mount.path / "pipeline" / "p1"
    env = dict(os.environ)
    run = lambda cmd: subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, cwd=mount.path, env=env, timeout=60)
    run("mkdir -p pipeline/p1/a/b && echo hello > pipeline/p1/a/b/f.txt")
    assert run("cat pipeline/p1/a/b/f.txt").stdout == "hello\n"
    run("cp pipeline/p1/a/b/f.txt pipeline/p1/copy.txt && mv pipeline/p1/copy.txt pipeline/p1/moved.txt")
    assert sorted(os.listdir(d)) == ["a", "moved.txt"]
    listing = run("ls -l pipeline/p1/a/b").stdout
    assert "f.txt" in listing and " 6 " in listing
    run("rm pipeline/p1/moved.txt && rm -r pipeline/p1/a")
    assert os.listdir(d) == []
    assert [e.key for e in mount.backend.list("pipeline/p1/") if not e.key.endswith("/")] == []
    run("rmdir pipeline/p1")
    assert os.listdir(mount.path / "pipeline") == []


def test_write_close_is_durable(mount):
    d = mount.path / "user" / "alice"
    d.mkdir()
    data = os.urandom(3 * 1024 * 1024 + 17)
    with open(d / "blob", "wb") as f:
        f.write(data)
    # close() returned: the object is in the backend, complete.
    assert mount.backend.get_range("user/alice/blob", 0) == data
    assert (d / "blob").read_bytes() == data
    assert os.stat(d / "blob").st_size == len(data)


def test_fsync_is_durable_before_close(mount):
    d = mount.path / "pipeline" / "p"
    d.mkdir()
    with open(d / "log", "wb") as f:
        f.write(b"first")
        f.flush()
        os.fsync(f.fileno())
        assert mount.backend.get_range("pipeline/p/log", 0) == b"first"
        f.write(b" second")
    assert mount.backend.get_range("pipeline/p/log", 0) == b"first second"


def test_append_truncate_overwrite(mount):
    d = mount.path / "pipeline" / "p"
    d.mkdir()
    f = d / "f"
    f.write_bytes(b"0123456789")
    with open(f, "ab") as h:
        h.write(b"abc")
    assert f.read_bytes() == b"0123456789abc"
    with open(f, "r+b") as h:
        h.seek(3)
        h.write(b"XY")
    assert f.read_bytes() == b"012XY56789abc"
    os.truncate(f, 5)
    assert mount.backend.get_range("pipeline/p/f", 0) == b"012XY"
    os.truncate(f, 8)
    assert f.read_bytes() == b"012XY\0\0\0"
    with open(f, "r+b") as h:
        h.truncate(2)
    assert mount.backend.get_range("pipeline/p/f", 0) == b"01"
    with open(f, "wb") as h:
        h.write(b"new")
    assert mount.backend.get_range("pipeline/p/f", 0) == b"new"


def test_overwrite_middle_of_large_object(mount):
    """Only the blocks a write touches are fetched; the rest is filled in at upload."""
    size = 5 * 1024 * 1024 + 123
    data = bytearray(os.urandom(size))
    mount.backend.put_bytes("pipeline/p/big", bytes(data))
    f = mount.path / "pipeline" / "p" / "big"
    with open(f, "r+b") as h:
        h.seek(2 * 1024 * 1024 - 2)
        h.write(b"HELLO")
    data[2 * 1024 * 1024 - 2 : 2 * 1024 * 1024 + 3] = b"HELLO"
    assert mount.backend.get_range("pipeline/p/big", 0) == bytes(data)
    assert f.read_bytes() == bytes(data)


def test_rename_file_and_directory(mount):
    d = mount.path / "pipeline" / "p"
    (d / "dir" / "sub").mkdir(parents=True)
    (d / "dir" / "a").write_bytes(b"A")
    (d / "dir" / "sub" / "b").write_bytes(b"B")
    os.rename(d / "dir" / "a", d / "a2")
    assert (d / "a2").read_bytes() == b"A"
    os.rename(d / "dir", d / "moved")
    assert sorted(os.listdir(d)) == ["a2", "moved"]
    assert (d / "moved" / "sub" / "b").read_bytes() == b"B"
    keys = sorted(e.key for e in mount.backend.list("pipeline/p/") if not e.key.endswith("/"))
    assert keys == ["pipeline/p/a2", "pipeline/p/moved/sub/b"]
    (d / "x").write_bytes(b"x")
    os.replace(d / "x", d / "a2")  # over an existing file
    assert (d / "a2").read_bytes() == b"x" and not (d / "x").exists()
    with pytest.raises(OSError) as e:
        os.rename(d / "a2", d / "moved")
    assert e.value.errno == errno.EISDIR
    with pytest.raises(OSError) as e:
        os.rename(d / "moved", d / "moved" / "sub" / "inside")
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("mode", ["a", "r+"])
def test_a_log_rotated_under_its_writer_keeps_the_writers_lines(mount, mode):
    """logrotate's pattern: a program holds its log open, the log is renamed, the program writes
    again.  On ext4 the line lands in the renamed file.  A descriptor that had not written before
    the rename used to fetch the file's old content from its old key: ENOENT, the line lost."""
    d = mount.path / "pipeline" / "rot"
    d.mkdir(parents=True)
    (d / "app.log").write_text("first\n")
    with open(d / "app.log", mode) as log:
        os.rename(d / "app.log", d / "app.log.1")
        if mode == "r+":
            log.seek(0, os.SEEK_END)
        log.write("second\n")
    assert (d / "app.log.1").read_text() == "first\nsecond\n"
    assert mount.backend.get_range("pipeline/rot/app.log.1", 0) == b"first\nsecond\n"
    assert not (d / "app.log").exists()


@pytest.mark.parametrize("how", ["unlinked", "renamed over"])
def test_descriptors_keep_a_removed_files_content(mount, how):
    """ext4 keeps a file's content for the descriptors still open on it when its name goes (an
    unlink; a rename over it, as atomic-replace writers do): they read it, write it and read their
    writes back until they close.  Here, a descriptor that had not yet read or written the part it
    asked for fetched it from the object: gone (ENOENT), or replaced (the new file's bytes,
    ESTALE).  The name is gone or replaced at once; nothing of the old file reaches the backend."""
    d = mount.path / "pipeline" / "rm"
    d.mkdir(parents=True)
    old = os.urandom(3 * MiB + 123)
    (d / "f").write_bytes(old)
    reader = os.open(d / "f", os.O_RDONLY)
    writer = os.open(d / "f", os.O_RDWR)
    try:
        assert os.pread(reader, 10, 0) == old[:10]  # a reader that has started
        os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_DONTNEED)  # later reads reach the daemon
        if how == "unlinked":
            os.unlink(d / "f")
            assert not (d / "f").exists()
        else:
            (d / "new").write_bytes(b"the new file")
            os.rename(d / "new", d / "f")
            assert (d / "f").read_bytes() == b"the new file"
        assert os.pread(reader, len(old), 0) == old
        os.pwrite(writer, b"WRITTEN", 2 * MiB + 5)  # a partial block: the rest of it was never fetched
        want = old[:2 * MiB + 5] + b"WRITTEN" + old[2 * MiB + 12:]
        assert os.pread(writer, len(old) + 1, 0) == want
        os.fsync(writer)  # nothing to store: the file has no name
        assert os.fstat(writer).st_nlink == 0 and os.fstat(writer).st_size == len(old)
    finally:
        os.close(reader)
        os.close(writer)
    keys = sorted(e.key for e in mount.backend.list("pipeline/rm/") if not e.key.endswith("/"))
    assert keys == ([] if how == "unlinked" else ["pipeline/rm/f"])
    if how == "renamed over":
        assert mount.backend.get_range("pipeline/rm/f", 0) == b"the new file"
    assert sorted(os.listdir(d)) == ([] if how == "unlinked" else ["f"])


def test_a_descriptor_of_a_removed_directory_still_answers_fstat(mount):
    """ext4: fstat of a descriptor open on a directory removed since gives S_IFDIR and st_nlink 0
    (the model test's held descriptors found ENOENT here)."""
    d = mount.path / "pipeline" / "p" / "d"
    d.mkdir(parents=True)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(d)
        st = os.fstat(fd)
        assert stat.S_ISDIR(st.st_mode) and st.st_nlink == 0
        assert not d.exists()
    finally:
        os.close(fd)
    assert os.listdir(d.parent) == []


@pytest.mark.system_wide  # drop_caches: other tests' mounts and files lose their cached pages too
def test_ls_a_lists_dot_and_dotdot(mount):
    """As on ext4, a directory lists "." (itself) and ".." (its parent) first; the kernel takes no
    lookup of them, so after it forgets every inode the tree still answers."""
    d = mount.path / "pipeline" / "dots"
    (d / "sub").mkdir(parents=True)
    (d / "f").write_text("x")

    def ls(*args):
        return subprocess.run(["ls", *args], capture_output=True, text=True, check=True).stdout.split()

    assert ls("-a1", str(d)) == [".", "..", "f", "sub"]
    numbers = dict(zip(ls("-ai1", str(d / "sub"))[1::2], ls("-ai1", str(d / "sub"))[::2]))
    assert numbers == {".": str(os.stat(d / "sub").st_ino), "..": str(os.stat(d).st_ino)}
    assert sorted(os.listdir(d)) == ["f", "sub"]
    for _ in range(2):
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")  # the kernel forgets the dentries and inodes it can
        assert ls("-a1", str(d / "sub")) == [".", ".."] and (d / "f").read_text() == "x"
    assert "Traceback" not in mount.log()


def test_directory_errors(mount):
    d = mount.path / "pipeline" / "p"
    (d / "full").mkdir(parents=True)
    (d / "full" / "f").write_bytes(b"1")
    with pytest.raises(OSError) as e:
        os.rmdir(d / "full")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as e:
        os.mkdir(d / "full")
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        os.unlink(d / "full")
    assert e.value.errno in (errno.EISDIR, errno.EPERM)
    os.unlink(d / "full" / "f")
    assert os.listdir(d / "full") == []  # an emptied directory stays
    os.rmdir(d / "full")
    with pytest.raises(FileNotFoundError):
        os.stat(d / "full")


def test_refused_operations(mount):
    """What stays refused: names over 255 bytes; hard links where the backend has none (S3);
    the modes of namespaces and records, which follow the namespace (docs/permissions.md)."""
    d = mount.path / "pipeline" / "p"
    d.mkdir()
    (d / "f").write_bytes(b"1")
    refused = [
        (lambda: open(d / ("x" * 256), "w"), errno.ENAMETOOLONG),
        (lambda: os.chmod(d, 0o600), errno.EPERM),  # the namespace's own mode (narrowed)
        (lambda: os.chmod(d, 0o1700), errno.EPERM),  # (a sticky bit it cannot keep)
    ]
    if mount.url.startswith("s3://"):
        refused.append((lambda: os.link(d / "f", d / "g"), errno.EPERM))
    for call, code in refused:
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == code, call
    os.chmod(d, 0o755)  # opening it wider (tar x of "./", cp -a src/.): succeeds, changes nothing
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    if mount.url.startswith("s3://"):
        assert "hard links are not supported" in mount.log()
    else:
        os.link(d / "f", d / "g")
        assert os.stat(d / "f").st_nlink == 2 and (d / "g").read_bytes() == b"1"


def test_statfs(mount):
    st = os.statvfs(mount.path)
    assert st.f_namemax == 255 and st.f_bavail > 0


@pytest.mark.parametrize("kind", ["disk", "s3"])
def test_listing_has_attributes(kind, request, tmp_path):
    # A TTL longer than the test: a loaded machine's stall of more than the default second between
    # the listing and a stat would make the kernel ask GETATTR, and the mount a HEAD.
    url, env = backend_env(kind, request, tmp_path)
    with mounted(tmp_path, url, env, extra=["--metadata-ttl", "60"]) as mount:
        _listing_has_attributes(mount)


def _listing_has_attributes(mount):
    d = mount.path / "pipeline" / "p"
    for i in range(30):  # written behind the mount's back, before it looks
        mount.backend.put_bytes(f"pipeline/p/f{i:02d}", b"x" * i)
    before = mount.status()["backend_requests"]
    sizes = {e.name: e.stat().st_size for e in os.scandir(d)}
    after = mount.status()["backend_requests"]
    assert sizes == {f"f{i:02d}": i for i in range(30)}
    assert after.get("head", 0) == before.get("head", 0)  # attributes came from the listing
    assert after.get("list", 0) - before.get("list", 0) <= 2


def test_ls_l_asks_acls_and_labels_once(mount):
    """ACLs and security labels are namespaces the mount does not store: getxattr says EOPNOTSUPP
    (as the kernel does for a filesystem without their handler), so ``ls -l`` stops asking every
    entry after the first (two FUSE requests per entry otherwise); user.* names say ENODATA."""
    d = mount.path / "pipeline" / "p"
    d.mkdir()
    for i in range(40):
        (d / f"f{i:02d}").write_bytes(b"x")
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        with pytest.raises(OSError) as e:
            os.getxattr(d / "f00", name)
        assert e.value.errno == errno.EOPNOTSUPP, name
    with pytest.raises(OSError) as e:
        os.getxattr(d / "f00", "user.absent")
    assert e.value.errno == errno.ENODATA
    before = mount.status()["requests"].get("getxattr", 0)
    listing = subprocess.run(["ls", "-l", str(d)], capture_output=True, text=True, check=True).stdout
    asked = mount.status()["requests"].get("getxattr", 0) - before
    assert listing.count(" f") == 40 and "-rw-" in listing
    # (one of them is the status read above; ls asks the directory and its first file once each)
    assert asked <= 4, f"ls -l of 40 files sent {asked} getxattr requests"


def test_fallocate_is_refused_and_posix_fallocate_writes_zeros(mount):
    """pyfuse3 has no fallocate operation: fallocate(2) answers EOPNOTSUPP (from the kernel), and
    posix_fallocate(3) falls back to writing zeros, which lands like any write."""
    (mount.path / "pipeline" / "fa").mkdir()
    path = mount.path / "pipeline" / "fa" / "f"
    r = subprocess.run(["fallocate", "-l", "1M", str(path)], capture_output=True, text=True,
                       env=dict(os.environ, LC_ALL="C"))
    assert r.returncode != 0 and "not supported" in r.stderr
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"head")
        os.posix_fallocate(fd, 0, 1 << 20)
        assert os.fstat(fd).st_size == 1 << 20
    finally:
        os.close(fd)
    want = b"head" + bytes((1 << 20) - 4)
    assert path.read_bytes() == want and mount.backend.get_range("pipeline/fa/f", 0) == want
