"""Scopes through real mounts: a root mount with --allow-other, used by users this module creates.

Each probe runs as one of those users (setpriv with their groups) and reports the errno of every
operation, so the assertions are on what the kernel and the daemon together answered.  The core's
own checks are tested without the kernel too (test_*_core), because with ``default_permissions``
the kernel refuses most requests before the daemon sees them.
"""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import trio

from fsdriver import owners
from fsdriver.access import Caller, Policy
from fsdriver.backend.disk import DiskBackend
from fsdriver.core import Filesystem, Options
from fsdriver.errno_boundary import FSError
from fsdriver.staging import Cache

from .conftest import backend_env
from .mounting import force_unmount, make_mount, require_fuse

UMASK = os.umask(0o022)  # what the probes inherit: new files are 0o666 & ~UMASK
os.umask(UMASK)
SYSTEM_PYTHON = "/usr/bin/python3"  # the test interpreter may live where other users cannot go

PROBE = r"""
import json, os, sys
out = []
for op, path, *rest in json.loads(sys.argv[1]):
    try:
        if op == "list":
            os.listdir(path)
        elif op == "read":
            with open(path, "rb") as f:
                f.read()
        elif op == "write":
            with open(path, "wb") as f:
                f.write(rest[0].encode())
        elif op == "mkdir":
            os.mkdir(path)
        elif op == "unlink":
            os.unlink(path)
        elif op == "rmdir":
            os.rmdir(path)
        elif op == "rename":
            os.rename(path, rest[0])
        elif op == "chmod":
            os.chmod(path, rest[0])
        elif op == "truncate":
            os.truncate(path, 0)
        elif op == "xattr":
            os.getxattr(path, rest[0])
        elif op == "stat":
            st = os.stat(path)
            out.append([st.st_uid, st.st_gid, st.st_mode & 0o7777])
            continue
        out.append(0)
    except OSError as e:
        out.append(e.errno)
print(json.dumps(out))
"""


class Users:
    """Two users without the organisation group (a, b), one with it (c), and the group."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.org = f"stforg{tag}"
        self.names = {k: f"stf{k}{tag}" for k in "abc"}
        self.created = []

    def create(self):
        subprocess.run(["groupadd", self.org], check=True, capture_output=True, timeout=30)
        for k, name in self.names.items():
            cmd = ["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", name]
            if k == "c":
                cmd[1:1] = ["-G", self.org]
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)
            self.created.append(name)

    def remove(self):
        for name in self.created:
            # userdel refuses a user with processes (a daemon still exiting): end them first.
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, timeout=30)
            deadline = time.monotonic() + 30
            while subprocess.run(["userdel", name], capture_output=True, timeout=30).returncode == 8:
                if time.monotonic() > deadline:  # 8: "user currently logged in" (has processes)
                    break
                time.sleep(0.1)  # waiting for killed processes to be reaped: no event to wait on
        subprocess.run(["groupdel", self.org], capture_output=True, timeout=30)

    def uid(self, k: str) -> int:
        import pwd

        return pwd.getpwnam(self.names[k]).pw_uid

    def gid(self, k: str) -> int:
        import pwd

        return pwd.getpwnam(self.names[k]).pw_gid

    def org_gid(self) -> int:
        import grp

        return grp.getgrnam(self.org).gr_gid

    def run(self, k: str, *ops) -> list:
        """Run ``ops`` as user ``k`` (with its groups); the errno (0 for success) of each."""
        name = self.names[k]
        p = subprocess.run(
            ["setpriv", f"--reuid={name}", f"--regid={self.gid(k)}", "--init-groups",
             SYSTEM_PYTHON, "-c", PROBE, json.dumps([[op, str(path), *(str(r) if isinstance(r, Path) else r for r in rest)]
                                              for op, path, *rest in ops])],
            capture_output=True, text=True, timeout=60, cwd="/")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)


@pytest.fixture(scope="module")
def users():
    if os.geteuid() != 0:
        pytest.skip("creating users and acting as them needs root")
    for tool in ("useradd", "groupadd", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed, so the test cannot create users and act as them")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is needed to run probes as other users")
    u = Users()
    try:
        u.create()
    except subprocess.CalledProcessError as e:
        u.remove()
        pytest.skip(f"cannot create test users here: {e.stderr.decode(errors='replace').strip()}")
    yield u
    u.remove()


@pytest.fixture
def open_dir():
    """A directory every user can traverse (pytest's own tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="stashfs-perm-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _shared_mount(request, open_dir, users, kind="disk", name="mnt", url_env=None, org=True):
    require_fuse()
    url, env = url_env or backend_env(kind, request, open_dir)
    extra = ["--allow-other"] + (["--org-group", users.org] if org else [])
    m = make_mount(open_dir, url, env, name=name, extra=extra)
    m.path.chmod(0o755)
    request.addfinalizer(lambda: force_unmount(m.path))
    m.mount()
    return m, (url, env)


@pytest.fixture
def shared(request, open_dir, users):
    m, _ = _shared_mount(request, open_dir, users)
    yield m
    m.umount()
    assert "Traceback" not in m.log()


def test_user_tree_is_private(shared, users):
    a, c = users.names["a"], users.names["c"]
    home = shared.path / "user" / a
    assert users.run("a", ("mkdir", home), ("write", home / "f", "mine"), ("mkdir", home / "d"),
                     ("write", home / "d" / "g", "deep")) == [0, 0, 0, 0]
    st = users.run("a", ("stat", home), ("stat", home / "f"), ("stat", home / "d"))
    # the tree has its namespace's mode; what a creates inside is a's, with a's umask (POSIX)
    assert st == [[users.uid("a"), users.gid("a"), 0o700], [users.uid("a"), users.gid("a"), 0o666 & ~UMASK],
                  [users.uid("a"), users.gid("a"), 0o777 & ~UMASK]]
    # b (and c, whatever its groups) can do nothing inside, whatever the files' own modes say
    for k in "bc":
        assert users.run(
            k, ("list", home), ("read", home / "f"), ("write", home / "f", "theirs"),
            ("write", home / "new", "x"), ("unlink", home / "f"), ("rmdir", home / "d"),
            ("mkdir", home / "e"), ("rename", home / "f", home / "f2"), ("list", home / "d"),
            ("read", home / "d" / "g"),
        ) == [errno.EACCES] * 10
    # nobody creates another user's tree; everyone may create their own
    assert users.run("b", ("mkdir", shared.path / "user" / c)) == [errno.EACCES]
    assert users.run("c", ("mkdir", shared.path / "user" / c)) == [0]
    # inside the tree a file's owner sets its mode; the namespace's own mode stays as it is
    assert users.run("a", ("chmod", home / "f", 0o640), ("stat", home / "f")) == [
        0, [users.uid("a"), users.gid("a"), 0o640]]
    # a chmod of the namespace that would open it at least as wide (what tar -x of "./", cp -a
    # src/. and rsync -a src/ do) succeeds and changes nothing; one that takes a permission away, or
    # by someone else, is EPERM
    assert users.run("a", ("chmod", home, 0o755), ("stat", home), ("chmod", home, 0o600)) == [
        0, [users.uid("a"), users.gid("a"), 0o700], errno.EPERM]
    assert users.run("b", ("chmod", home, 0o777)) == [errno.EPERM]
    assert shared.backend.get_range(f"user/{a}/f", 0) == b"mine"
    assert shared.backend.get_range(f"user/{a}/d/g", 0) == b"deep"
    # root manages every tree
    assert (home / "f").read_bytes() == b"mine"
    assert sorted(os.listdir(home)) == ["d", "f"]
    # the owner removes its own things
    assert users.run("a", ("unlink", home / "d" / "g"), ("rmdir", home / "d")) == [0, 0]


def test_pipeline_owner_group_and_others(shared, users):
    p = shared.path / "pipeline" / "p1"
    assert users.run("a", ("mkdir", p), ("write", p / "out.csv", "a,b"), ("mkdir", p / "stage")) == [0, 0, 0]
    org = users.org_gid()
    # the pipeline has its namespace's owner and mode; what a creates in it is a's (POSIX)
    assert users.run("a", ("stat", p), ("stat", p / "out.csv"), ("stat", p / "stage")) == [
        [users.uid("a"), org, 0o770], [users.uid("a"), users.gid("a"), 0o666 & ~UMASK],
        [users.uid("a"), users.gid("a"), 0o777 & ~UMASK]]
    record = owners.get(shared.backend, "p1")
    assert record.owner == users.names["a"] and record.uid == users.uid("a")
    # b is neither the owner nor in the group
    assert users.run("b", ("list", p), ("read", p / "out.csv"), ("write", p / "out.csv", "x"),
                     ("write", p / "b.txt", "x"), ("unlink", p / "out.csv"), ("rmdir", p / "stage")) == [errno.EACCES] * 6
    assert users.run("b", ("truncate", p / "out.csv"), ("rename", p / "out.csv", p / "moved")) == [errno.EACCES] * 2
    # nothing moves between namespaces of different owners, in either direction
    pb = shared.path / "pipeline" / "pb"
    assert users.run("b", ("mkdir", pb), ("write", pb / "mine", "b"), ("rename", pb / "mine", p / "mine")) == [
        0, 0, errno.EACCES]
    assert users.run("a", ("rename", p / "out.csv", pb / "out.csv")) == [errno.EACCES]
    # c is in the organisation group: enters the pipeline (0770) and works by the files' own modes
    assert users.run("c", ("list", p), ("read", p / "out.csv"), ("write", p / "c.txt", "from c"),
                     ("unlink", p / "c.txt")) == [0, 0, 0, 0]
    assert users.run("c", ("write", p / "stage" / "x", "1")) == [errno.EACCES]  # a's 0755 directory
    assert users.run("a", ("chmod", p / "stage", 0o777)) == [0]  # a lets others write there
    assert users.run("c", ("write", p / "stage" / "x", "1")) == [0]
    assert shared.backend.get_range("pipeline/p1/stage/x", 0) == b"1"
    # the owner of an existing pipeline stays the owner
    assert owners.get(shared.backend, "p1").owner == users.names["a"]
    assert shared.backend.get_range("pipeline/p1/out.csv", 0) == b"a,b"
    # an empty pipeline is removed by its owner only (the sticky bit of /pipeline), record and all
    empty = shared.path / "pipeline" / "empty"
    assert users.run("a", ("mkdir", empty)) == [0]
    assert users.run("b", ("rmdir", empty)) == [errno.EPERM]
    assert users.run("c", ("rmdir", empty)) == [errno.EPERM]  # the group uses it, but does not own it
    assert owners.get(shared.backend, "empty").owner == users.names["a"]
    assert users.run("a", ("rmdir", empty)) == [0]
    assert owners.get(shared.backend, "empty") is None


def test_control_file_is_the_mount_owners(shared, users):
    control = shared.path / ".stashfs-control"
    assert users.run("a", ("xattr", control, "user.stashfs.status")) == [errno.EACCES]
    assert json.loads(os.getxattr(control, "user.stashfs.status"))["pid"] > 0


def test_pipeline_without_group_is_owner_only(request, open_dir, users):
    m, _ = _shared_mount(request, open_dir, users, org=False)
    p = m.path / "pipeline" / "solo"
    assert users.run("c", ("mkdir", p), ("write", p / "f", "x")) == [0, 0]
    assert users.run("c", ("stat", p)) == [[users.uid("c"), users.gid("c"), 0o700]]
    assert users.run("a", ("list", p), ("read", p / "f")) == [errno.EACCES, errno.EACCES]
    # without an organisation group, key/value stores are shared by every user of the mount
    assert users.run("a", ("mkdir", m.path / "kv" / "open"), ("write", m.path / "kv" / "open" / "k.json", "1")) == [0, 0]
    assert users.run("b", ("read", m.path / "kv" / "open" / "k.json")) == [0]
    m.umount()


def test_kv_stores_are_the_groups(shared, users):
    kv = shared.path / "kv"
    assert users.run("c", ("mkdir", kv / "counters"), ("write", kv / "counters" / "n.json", "1")) == [0, 0]
    assert users.run("c", ("stat", kv / "counters"), ("stat", kv / "counters" / "n.json")) == [
        [0, users.org_gid(), 0o770], [0, users.org_gid(), 0o660]]
    assert users.run("a", ("list", kv), ("read", kv / "counters" / "n.json"), ("mkdir", kv / "mine"),
                     ("write", kv / "counters" / "n.json", "2")) == [errno.EACCES] * 4
    assert shared.backend.get_range("kv/counters/n.json", 0) == b"1"


def test_every_node_agrees_on_the_owner(request, open_dir, users):
    """Two mounts of one bucket (two nodes): the owner recorded through one is enforced by the other."""
    one, url_env = _shared_mount(request, open_dir, users, kind="s3", name="node1")
    two, _ = _shared_mount(request, open_dir, users, kind="s3", name="node2", url_env=url_env)
    assert users.run("a", ("mkdir", one.path / "pipeline" / "shared"),
                     ("write", one.path / "pipeline" / "shared" / "f", "data")) == [0, 0]
    p = two.path / "pipeline" / "shared"
    assert users.run("b", ("stat", p), ("list", p), ("read", p / "f")) == [
        [users.uid("a"), users.org_gid(), 0o770], errno.EACCES, errno.EACCES]
    assert users.run("a", ("read", p / "f"), ("write", p / "g", "from node 2")) == [0, 0]
    assert users.run("b", ("mkdir", two.path / "pipeline" / "shared"), ("write", p / "h", "x")) == [
        errno.EEXIST, errno.EACCES]
    assert owners.get(one.backend, "shared").owner == users.names["a"]
    two.umount()
    one.umount()


def test_ordinary_users_mount_serves_that_user_only(request, open_dir, users):
    """A mount by user a without --allow-other: a uses it, b and root are refused by the kernel."""
    require_fuse()
    store, mnt, cache = open_dir / "a-store", open_dir / "a-mnt", open_dir / "a-cache"
    for d in (store, mnt, cache):
        d.mkdir()
        os.chown(d, users.uid("a"), users.gid("a"))
    env = {"PATH": os.environ["PATH"], "HOME": str(open_dir),
           "PYTHONPATH": f"{Path(__file__).parents[1]}:{Path(sys.prefix) / 'lib/python3.11/site-packages'}"}
    as_a = ["setpriv", f"--reuid={users.names['a']}", f"--regid={users.gid('a')}", "--init-groups"]
    fuse_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    if fuse_mode & 0o006 != 0o006:
        # Debian's /dev/fuse is 0666; a container's may be root's only: open it up for this test.
        os.chmod("/dev/fuse", fuse_mode | 0o006)
        request.addfinalizer(lambda: os.chmod("/dev/fuse", fuse_mode))
    p = subprocess.run(as_a + [SYSTEM_PYTHON, "-m", "mountctl", "mount", str(mnt), "--backend", str(store),
                               "--cache-dir", str(cache)], env=env, capture_output=True, text=True,
                       timeout=120, cwd="/")
    if p.returncode != 0 and "No module named" in p.stderr:
        pytest.skip(f"the venv's packages do not load in {SYSTEM_PYTHON}: {p.stderr.strip()[-200:]}")
    try:
        assert p.returncode == 0, p.stderr
        a = users.names["a"]
        assert users.run("a", ("mkdir", mnt / "user" / a), ("write", mnt / "user" / a / "f", "x"),
                         ("mkdir", mnt / "pipeline" / "pa"), ("list", mnt / "pipeline" / "pa"),
                         ("mkdir", mnt / "user" / users.names["b"])) == [0, 0, 0, 0, errno.EACCES]
        assert users.run("b", ("list", mnt), ("read", mnt / "user" / a / "f")) == [errno.EACCES, errno.EACCES]
        with pytest.raises(PermissionError):
            os.listdir(mnt)  # not even root: the mount is a's alone
        assert (store / "user" / a / "f").read_bytes() == b"x"
    finally:  # a's own umount waits for a's daemon to exit (so the user can be removed)
        subprocess.run(as_a + [SYSTEM_PYTHON, "-m", "mountctl", "umount", str(mnt)], env=env,
                       capture_output=True, timeout=120, cwd="/")
        force_unmount(mnt)


# -- the daemon's own checks, without the kernel ----------------------------------------------


def _core(tmp_path, users, org=True):
    opts = Options(uid=0, gid=0, org_gid=users.org_gid() if org else None)
    return Filesystem(DiskBackend(tmp_path / "store"), Cache(tmp_path / "cache"), opts)


def _caller(users, k):
    return Caller(users.uid(k), users.gid(k), 0)


def test_daemon_checks_callers_itself(tmp_path, users):
    """What the kernel would refuse is refused by the daemon as well (a cached inode, a request
    that reaches it directly), with the same errno."""

    async def main():
        fs = _core(tmp_path, users)
        a, b, c = (_caller(users, k) for k in "abc")
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            user = fs.inodes.at(("user",)) or fs.inodes.node_for(("user",), True)
            pipe = fs.inodes.node_for(("pipeline",), True)
            home = await fs.mkdir(user.ino, users.names["a"], a)
            assert (home.uid, stat.S_IMODE(home.mode)) == (users.uid("a"), 0o700)
            fh, f, _ = await fs.create(home.ino, "f", os.O_WRONLY, a)
            await fs.write(fh, 0, b"secret")
            await fs.flush(fh)
            await fs.release(fh)
            for call in (lambda: fs.lookup(home.ino, "f", b), lambda: fs.opendir(home.ino, b),
                         lambda: fs.open(f.ino, os.O_RDONLY, b), lambda: fs.getattr(f.ino, b),
                         lambda: fs.create(home.ino, "g", os.O_WRONLY, b), lambda: fs.unlink(home.ino, "f", b),
                         lambda: fs.xattrs(f.ino, b), lambda: fs.mkdir(user.ino, users.names["c"], b)):
                with pytest.raises(FSError) as e:
                    await call()
                assert e.value.errno == errno.EACCES
            with pytest.raises(FSError) as e:  # the sticky bit of /user: the kernel's errno
                await fs.rmdir(user.ino, users.names["a"], b)
            assert e.value.errno == errno.EPERM
            p = await fs.mkdir(pipe.ino, "p", a)
            assert (p.uid, p.gid, stat.S_IMODE(p.mode)) == (users.uid("a"), users.org_gid(), 0o770)
            with pytest.raises(FSError) as e:
                await fs.opendir(p.ino, b)
            assert e.value.errno == errno.EACCES
            await fs.opendir(p.ino, c)  # the organisation group
            kv = fs.inodes.node_for(("kv",), True)
            with pytest.raises(FSError) as e:
                await fs.opendir(kv.ino, b)  # /kv itself is the group's
            assert e.value.errno == errno.EACCES
            await fs.opendir(kv.ino, c)
            with pytest.raises(FSError) as e:
                await fs.setattr(f.ino, mode=stat.S_IFREG | 0o644, caller=b)  # outside the gate
            assert e.value.errno == errno.EACCES
            with pytest.raises(FSError) as e:  # the namespace's own mode follows the namespace
                await fs.setattr(home.ino, mode=stat.S_IFDIR | 0o500, caller=a)
            assert e.value.errno == errno.EPERM
            before = (await fs.getattr(home.ino, a)).mode
            await fs.setattr(home.ino, mode=stat.S_IFDIR | 0o777, caller=a)  # wider: kept as it is
            assert (await fs.getattr(home.ino, a)).mode == before
            with pytest.raises(FSError) as e:  # ... unless it asks for a bit it cannot keep
                await fs.setattr(home.ino, mode=stat.S_IFDIR | 0o2777, caller=a)
            assert e.value.errno == errno.EPERM
            await fs.setattr(f.ino, mode=stat.S_IFREG | 0o640, caller=a)  # the owner's file: POSIX
            assert stat.S_IMODE((await fs.getattr(f.ino, a)).mode) == 0o640
            assert (await fs.getattr(f.ino, Caller(0, 0))).size == 6  # root manages everything
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_policy_modes_and_unknown_owners(users):
    pol = Policy(0, 0, users.org_gid())
    ghost = pol.user("no-such-user-here")
    assert (ghost.uid, ghost.mode) == (0, 0o700)  # a name that is no user here: root's
    p = pol.pipeline(None)
    assert (p.uid, p.gid, p.mode) == (0, users.org_gid(), 0o770)  # no record: the mount owner's
    damaged = pol.pipeline("")
    assert damaged.uid == 0
    assert Policy(0, 0, None, read_only=True).tree("user").mode == 0o1555
    a = _caller(users, "a")
    assert not pol.may_use(a, pol.user(users.names["b"]))
    assert pol.may_use(a, pol.user(users.names["a"]))
    assert pol.may_use(Caller(users.uid("c"), users.gid("c"), 0), pol.pipeline(users.names["a"]))


def test_existing_pipelines_are_not_claimed_by_mkdir(tmp_path, users):
    """Data written without an owner record stays the mount owner's: a mkdir by someone else is
    EEXIST and records nothing; `mountctl pipeline chown` gives it an owner."""

    async def main():
        backend = DiskBackend(tmp_path / "store")
        backend.put_bytes("pipeline/legacy/f", b"old")
        fs = Filesystem(backend, Cache(tmp_path / "cache"),
                        Options(uid=users.uid("b"), gid=users.gid("b"), org_gid=None))  # b's own mount
        a = _caller(users, "a")
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            pipe = fs.inodes.node_for(("pipeline",), True)
            legacy = await fs.lookup(pipe.ino, "legacy", a)
            assert legacy.uid == users.uid("b")  # no record: the mount owner's
            with pytest.raises(FSError) as e:
                await fs.mkdir(pipe.ino, "legacy", a)
            assert e.value.errno == errno.EEXIST
            assert owners.get(backend, "legacy") is None
            with pytest.raises(FSError) as e:
                await fs.opendir(legacy.ino, a)
            assert e.value.errno == errno.EACCES
            p = subprocess.run([sys.executable, "-m", "mountctl", "pipeline", "chown", "legacy", users.names["a"],
                                "--backend", str(tmp_path / "store")], capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stderr
            assert owners.get(backend, "legacy").owner == users.names["a"]
            fs.namespaces.pipeline_owners.clear()  # as after OWNER_TTL
            await fs.opendir(legacy.ino, a)
            assert (await fs.getattr(legacy.ino, a)).uid == users.uid("a")
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_chown_refuses_unknown_users(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mountctl", "pipeline", "chown", "p1", "no-such-user-zz",
                        "--backend", str(tmp_path / "store")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no user 'no-such-user-zz'" in p.stderr


def test_two_nodes_claim_one_pipeline(tmp_path, users):
    """Two daemons on one backend create the same pipeline at once: exactly one owner, and the
    other caller is refused."""

    async def main():
        backend = DiskBackend(tmp_path / "store")
        nodes = [Filesystem(backend, Cache(tmp_path / f"cache{i}"), Options(uid=0, gid=0)) for i in (1, 2)]
        callers = [_caller(users, "a"), _caller(users, "b")]
        outcomes = {}

        async def create(i):
            pipe = nodes[i].inodes.node_for(("pipeline",), True)
            try:
                await nodes[i].mkdir(pipe.ino, "race", callers[i])
                outcomes[i] = 0
            except FSError as e:
                outcomes[i] = e.errno

        async with trio.open_nursery() as nursery:
            for fs in nodes:
                await nursery.start(fs.run)
            async with trio.open_nursery() as racers:
                for i in (0, 1):
                    racers.start_soon(create, i)
            nursery.cancel_scope.cancel()
        winner = owners.get(backend, "race").owner
        assert winner in (users.names["a"], users.names["b"])
        won = 0 if winner == users.names["a"] else 1
        assert outcomes[won] == 0 and outcomes[1 - won] == errno.EACCES

    trio.run(main)


class _FlakyDisk(DiskBackend):
    """A disk backend whose owner records become unreadable on demand (an outage)."""

    down = False

    def get_range(self, key, start, end=None, *, if_match=None):
        from fsdriver.errors import Unavailable

        if self.down and key.startswith(owners.PREFIX):
            raise Unavailable("backend unreachable (test)", key)
        return super().get_range(key, start, end, if_match=if_match)


@pytest.mark.expected_log("cannot read its owner record")
def test_owner_read_before_stays_in_force_during_an_outage(tmp_path, users):
    async def main():
        backend = _FlakyDisk(tmp_path / "store")
        fs = Filesystem(backend, Cache(tmp_path / "cache"), Options(uid=0, gid=0))
        a = _caller(users, "a")
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            pipe = fs.inodes.node_for(("pipeline",), True)
            p = await fs.mkdir(pipe.ino, "p", a)
            fh, f, _ = await fs.create(p.ino, "f", os.O_WRONLY, a)
            backend.down = True
            owner, _ = fs.namespaces.pipeline_owners["p"]
            fs.namespaces.pipeline_owners["p"] = (owner, 0.0)  # expired: the next use reads the record again
            assert (await fs.getattr(f.ino, a)).uid == users.uid("a")  # the known owner stays
            await fs.write(fh, 0, b"kept")
            await fs.flush(fh)
            await fs.release(fh)
            fs.namespaces.pipeline_owners.clear()  # never read: refused while the record cannot be read
            with pytest.raises(Exception) as e:
                await fs.getattr(f.ino, a)
            assert "unreachable" in str(e.value)
            nursery.cancel_scope.cancel()
        assert backend.get_range("pipeline/p/f", 0) == b"kept"

    trio.run(main)


def test_policy_of_a_non_root_mount_owner(users):
    pol = Policy(users.uid("b"), users.gid("b"), None)
    assert pol.pipeline(None).uid == users.uid("b")  # no record: the mount owner's
    assert pol.pipeline("").uid == 0  # a damaged record: root's
    assert pol.pipeline("no-such-user-here").uid == 0
    assert pol.may_remove(_caller(users, "b"), pol.pipeline(users.names["a"]))  # sticky: the dir's owner
    assert not pol.may_remove(_caller(users, "c"), pol.pipeline(users.names["a"]))
