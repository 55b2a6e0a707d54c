"""The everyday tools of a pipeline, run unchanged through a real mount on each backend (issue 11):
tar, rsync, cp, shutil, pip, venv, git, chmod, ln -s, touch, mkfifo.

Each scenario asserts what a local filesystem (ext4) gives: exit 0 and no complaint on stderr,
then every mode bit, owner, mtime (to the second), symlink target, size and byte as in the source;
and again after an unmount and a mount of the same backend (nothing is served from memory).
`test_on_a_local_directory` runs the same scenarios on a plain local directory, so an expectation
that a local filesystem does not meet is a bug of the test, not of the mount.
"""

import calendar
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from .toolsupport import Place, assert_same_tree, build_tree, build_wheel, ok, run, snapshot

def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def mode_of(path: Path) -> int:
    return os.lstat(path).st_mode


# --- scenarios: each gets the Place to work in and a local scratch directory -------------------


def tar_xzf(place: Place, tmp: Path) -> None:
    """`tar xzf` (as root: owners, modes, mtimes, symlinks restored), then `tar d` finds no
    difference."""
    need("tar", "gzip")
    src = build_tree(tmp / "pkg")
    archive = tmp / "pkg.tar.gz"
    ok(["tar", "czf", archive, "-C", tmp, "pkg"])
    expected = snapshot(src)
    dst = place.dir / "pkg"

    def check():
        assert_same_tree(expected, dst)
        assert ok([dst / "bin" / "run.sh", "x"]).stdout == "ran x\n"
        assert ok(["tar", "dzf", archive, "-C", place.dir]).stdout == ""  # compare: no difference

    ok(["tar", "xzf", archive, "-C", place.dir])
    check()
    place.remount()
    check()


def rsync_a(place: Place, tmp: Path) -> None:
    """`rsync -a`, then a second run with --itemize-changes has nothing to transfer."""
    need("rsync")
    src = build_tree(tmp / "src")
    expected = snapshot(src)
    dst = place.dir / "dst"

    def check():
        assert_same_tree(expected, dst)
        again = ok(["rsync", "-a", "--itemize-changes", f"{src}/", f"{dst}/"])
        assert again.stdout == "", f"a second rsync -a transferred or changed:\n{again.stdout}"

    ok(["rsync", "-a", f"{src}/", f"{dst}/"])
    check()
    place.remount()
    check()


def rsync_aax(place: Place, tmp: Path) -> None:
    """`rsync -aAX` (ACLs and xattrs, as backups run it) into the mount and back out: exit 0 with
    nothing on stderr, and the mount's own read-only xattrs (user.stashfs.*) are not carried onto
    the copy outside it."""
    need("rsync")
    src = build_tree(tmp / "src")
    expected = snapshot(src)
    dst = place.dir / "ax"
    ok(["rsync", "-aAX", f"{src}/", f"{dst}/"])
    assert_same_tree(expected, dst)
    back = tmp / "back"
    ok(["rsync", "-aAX", f"{dst}/", f"{back}/"])
    assert_same_tree(expected, back)
    carried = [(p, n) for p in back.rglob("*") if not p.is_symlink()
               for n in os.listxattr(p) if n.startswith("user.stashfs.")]
    assert carried == []


def cp_a(place: Place, tmp: Path) -> None:
    """`cp -a` into the mount, within it, and back out."""
    need("cp")
    src = build_tree(tmp / "src")
    expected = snapshot(src)
    ok(["cp", "-a", src, place.dir / "in"])
    assert_same_tree(expected, place.dir / "in")
    place.remount()
    assert_same_tree(expected, place.dir / "in")
    ok(["cp", "-a", place.dir / "in", place.dir / "in2"])
    assert_same_tree(expected, place.dir / "in2")
    ok(["cp", "-a", place.dir / "in", tmp / "out"])
    assert_same_tree(expected, tmp / "out")


def shutil_copy(place: Place, tmp: Path) -> None:
    """Python's shutil in this process: copytree(symlinks=True) and copy2 keep modes and mtimes,
    copy keeps the mode (owners are not copied by shutil)."""
    src = build_tree(tmp / "src")
    expected = snapshot(src, owners=False)
    d = place.dir
    shutil.copytree(src, d / "tree", symlinks=True)
    shutil.copy2(src / "bin" / "run.sh", d / "run.sh")
    shutil.copy(src / "secret", d / "secret")
    script_time = int(os.lstat(src / "bin" / "run.sh").st_mtime)

    def check():
        assert_same_tree(expected, d / "tree", owners=False)
        st = os.lstat(d / "run.sh")
        assert (oct(st.st_mode), int(st.st_mtime)) == (oct(0o100755), script_time)
        assert oct(mode_of(d / "secret")) == oct(0o100600)
        assert (d / "secret").read_bytes() == (src / "secret").read_bytes()

    check()
    place.remount()
    check()
    shutil.copytree(d / "tree", tmp / "out", symlinks=True)
    assert_same_tree(expected, tmp / "out", owners=False)


def pip_env(tmp: Path) -> dict:
    return dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1",
                PIP_NO_INPUT="1", PIP_ROOT_USER_ACTION="ignore", HOME=str(tmp))


def pip_install_target(place: Place, tmp: Path) -> None:
    """`pip install --target DIR` of a local wheel (no index, no network); the package imports
    and its console script runs with PYTHONPATH=DIR."""
    wheel = build_wheel(tmp / "wheels")
    target = place.dir / "site"
    env = pip_env(tmp)
    ok([sys.executable, "-m", "pip", "install", "--no-index", "--target", target, wheel],
       env=env, timeout=120)
    with_path = dict(env, PYTHONPATH=str(target))

    def check():
        p = ok([sys.executable, "-c", "import stashfs_demo, pathlib; print(stashfs_demo.VALUE, "
                "pathlib.Path(stashfs_demo.__file__).with_name('data.txt').read_text().strip())"],
               env=with_path, cwd=tmp)
        assert p.stdout == "42 package data\n"
        assert mode_of(target / "bin" / "stashfs-demo") & 0o111 == 0o111
        assert ok([target / "bin" / "stashfs-demo"], env=with_path, cwd=tmp).stdout == "demo 42\n"

    check()
    place.remount()
    check()


def venv(place: Place, tmp: Path) -> None:
    """`python -m venv --without-pip DIR` (symlinks: bin/python, lib64 -> lib): its python runs
    from the mount, pip installs a package into it (`pip --python DIR/bin/python`), and the
    package's console script (shebang DIR/bin/python) runs.  The venv is made without ensurepip:
    that one writes ~1,650 files and took 18-33 s on disk and 95-130 s on moto."""
    v = place.dir / "venv"
    env = pip_env(tmp)
    ok([sys.executable, "-m", "venv", "--without-pip", v], env=env)
    ok([sys.executable, "-m", "pip", "--python", v / "bin" / "python", "install", "--no-index",
        build_wheel(tmp / "wheels")], env=env, timeout=120)

    def check():
        assert os.readlink(v / "lib64") == "lib" and stat.S_ISLNK(mode_of(v / "bin" / "python"))
        p = ok([v / "bin" / "python", "-c", "import sys, stashfs_demo; print(sys.prefix, stashfs_demo.__file__)"],
               env=env, cwd=tmp)
        site = v / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        assert p.stdout == f"{v} {site}/stashfs_demo/__init__.py\n"
        assert ok([v / "bin" / "stashfs-demo"], env=env, cwd=tmp).stdout == "demo 42\n"

    check()
    place.remount()
    check()


def git_clone(place: Place, tmp: Path) -> None:
    """`git clone` of a local repository keeps the exec bit and the symlink: the clone is clean."""
    need("git")
    env = dict(os.environ, HOME=str(tmp), GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    repo = tmp / "repo"
    ok(["git", "-c", "init.defaultBranch=main", "init", "-q", repo], env=env)
    (repo / "lib").mkdir()
    (repo / "run.sh").write_text('#!/bin/sh\necho "script ran"\n')
    os.chmod(repo / "run.sh", 0o755)
    (repo / "lib" / "data.txt").write_text("data\n")
    os.symlink("lib/data.txt", repo / "latest")
    ok(["git", "-C", repo, "add", "-A"], env=env)
    ok(["git", "-C", repo, "commit", "-q", "-m", "init"], env=env)
    clone = place.dir / "clone"
    ok(["git", "clone", "-q", repo, clone], env=env)

    def check():
        status = ok(["git", "-C", clone, "status", "--porcelain"], env=env)
        assert status.stdout == "", f"the clone differs from its commit:\n{status.stdout}"
        assert oct(mode_of(clone / "run.sh")) == oct(0o100755)
        assert ok([clone / "run.sh"], env=env).stdout == "script ran\n"
        assert os.readlink(clone / "latest") == "lib/data.txt"
        assert (clone / "latest").read_text() == "data\n"

    check()
    place.remount()
    check()


def chmod_and_run(place: Place, tmp: Path) -> None:
    """`chmod +x run.sh && ./run.sh`, `chmod 640`, and the setuid/setgid/sticky bits."""
    d = place.dir
    p = ok("umask 022 && printf '#!/bin/sh\\necho \"hello $1\"\\n' > run.sh && chmod +x run.sh && "
           "./run.sh there && printf data > f && chmod 640 f && "
           "printf x > ids && chmod 6755 ids && mkdir shared && chmod 3777 shared", cwd=d)
    assert p.stdout == "hello there\n"

    def check():
        modes = {n: oct(mode_of(d / n)) for n in ("run.sh", "f", "ids", "shared")}
        assert modes == {"run.sh": oct(0o100755), "f": oct(0o100640), "ids": oct(0o106755),
                         "shared": oct(0o43777)}
        assert ok(["ls", "-l", "f"], cwd=d).stdout.startswith("-rw-r----- ")
        assert ok("./run.sh again", cwd=d).stdout == "hello again\n"
        assert (d / "f").read_bytes() == b"data"

    check()
    place.remount()
    check()
    ok("chmod -x run.sh", cwd=d)
    refused = run("./run.sh", cwd=d)
    assert refused.returncode == 126, (refused.returncode, refused.stderr)  # no x bit: even root may not
    ok("chmod u+x run.sh", cwd=d)
    assert oct(mode_of(d / "run.sh")) == oct(0o100744)
    assert ok("./run.sh last", cwd=d).stdout == "hello last\n"


def ln_s(place: Place, tmp: Path) -> None:
    """`ln -s`: relative links to a file and a directory, an absolute one, one with `..`, and a
    dangling one; the kernel follows them, `lstat` shows them."""
    d = place.dir
    (d / "target.txt").write_bytes(b"target bytes\n")
    (d / "sub").mkdir()
    (d / "sub" / "inner").write_bytes(b"inner")
    outside = tmp / "outside.txt"
    outside.write_bytes(b"outside\n")
    links = {"link": "target.txt", "dirlink": "sub", "dangling": "nowhere", "abs": str(outside),
             "sub/up": "../target.txt"}
    ok(" && ".join(f"ln -s '{t}' '{n}'" for n, t in links.items()), cwd=d)

    def check():
        for name, target in links.items():
            st = os.lstat(d / name)
            assert stat.S_ISLNK(st.st_mode), (name, oct(st.st_mode))
            assert (os.readlink(d / name), st.st_size) == (target, len(target.encode()))
        assert (d / "link").read_bytes() == b"target bytes\n"
        assert (d / "sub" / "up").read_bytes() == b"target bytes\n"
        assert (d / "abs").read_bytes() == b"outside\n"
        assert sorted(os.listdir(d / "dirlink")) == ["inner", "up"]
        assert (d / "dirlink" / "inner").read_bytes() == b"inner"
        assert not os.path.exists(d / "dangling")
        with pytest.raises(FileNotFoundError):
            os.stat(d / "dangling")
        assert " link -> target.txt\n" in ok(["ls", "-l"], cwd=d).stdout

    check()
    place.remount()
    check()
    (d / "dangling").write_bytes(b"made through the link")  # O_CREAT follows: creates the target
    assert (d / "nowhere").read_bytes() == b"made through the link"
    assert stat.S_ISLNK(mode_of(d / "dangling"))
    os.unlink(d / "link")
    assert (d / "target.txt").read_bytes() == b"target bytes\n"


def touch_d(place: Place, tmp: Path) -> None:
    """`touch -d` on a file and on a directory sets mtime; `touch -a -d` sets atime alone."""
    d = place.dir
    (d / "sub").mkdir()
    ok("touch f && touch -d 2021-05-06 f && touch -d '2020-01-02 03:04:05' sub && "
       "printf x > g && touch -m -d '2019-07-08 09:10:11' g && touch -a -d '2018-01-01 00:00:01' g",
       cwd=d, env=dict(os.environ, TZ="UTC"))
    f_time = calendar.timegm((2021, 5, 6, 0, 0, 0))
    sub_time = calendar.timegm((2020, 1, 2, 3, 4, 5))
    g_mtime, g_atime = calendar.timegm((2019, 7, 8, 9, 10, 11)), calendar.timegm((2018, 1, 1, 0, 0, 1))

    def check():
        assert os.stat(d / "f").st_mtime == f_time
        assert os.stat(d / "sub").st_mtime == sub_time
        st = os.stat(d / "g")
        assert (st.st_mtime, st.st_atime) == (g_mtime, g_atime)

    check()
    place.remount()
    check()


def mkfifo(place: Place, tmp: Path) -> None:
    """`mkfifo` makes a FIFO (with the requested mode) that works as a pipe."""
    need("mkfifo")
    d = place.dir
    ok("umask 022 && mkfifo fifo && mkfifo -m 0600 private", cwd=d)

    def check():
        assert oct(mode_of(d / "fifo")) == oct(stat.S_IFIFO | 0o644)
        assert oct(mode_of(d / "private")) == oct(stat.S_IFIFO | 0o600)
        r = os.open(d / "fifo", os.O_RDONLY | os.O_NONBLOCK)
        try:
            w = os.open(d / "fifo", os.O_WRONLY)
            try:
                os.write(w, b"through the pipe")
                assert os.read(r, 100) == b"through the pipe"
            finally:
                os.close(w)
        finally:
            os.close(r)
        assert os.lstat(d / "fifo").st_size == 0

    check()
    place.remount()
    check()


SCENARIOS = [tar_xzf, rsync_a, rsync_aax, cp_a, shutil_copy, pip_install_target, venv, git_clone,
             chmod_and_run, ln_s, touch_d, mkfifo]


# --- through the mount, on disk and S3 ---------------------------------------------------------


@pytest.fixture
def place(mount):
    """A fresh directory in a pipeline namespace of the mount; remount = unmount, mount again."""
    d = mount.path / "pipeline" / "tools"
    d.mkdir()

    def remount():
        p = mount.umount()
        assert p.returncode == 0, p.stderr
        mount.mount()

    return Place(d, remount, mount.kind)


@pytest.fixture
def scratch(tmp_path):
    """A local directory for the sources and what is copied back out."""
    (tmp_path / "local").mkdir()
    return tmp_path / "local"


def test_tar_xzf(place, scratch):
    tar_xzf(place, scratch)


def test_rsync_a(place, scratch):
    rsync_a(place, scratch)


def test_rsync_aax(place, scratch):
    rsync_aax(place, scratch)


def test_cp_a(place, scratch):
    cp_a(place, scratch)


def test_shutil_copy2_copytree(place, scratch):
    shutil_copy(place, scratch)


def test_pip_install_target(place, scratch):
    pip_install_target(place, scratch)


def test_venv(place, scratch):
    venv(place, scratch)


def test_git_clone_keeps_exec_bits(place, scratch):
    git_clone(place, scratch)


def test_chmod_and_run(place, scratch):
    chmod_and_run(place, scratch)


def test_ln_s(place, scratch):
    ln_s(place, scratch)


def test_touch_d(place, scratch):
    touch_d(place, scratch)


def test_mkfifo(place, scratch):
    mkfifo(place, scratch)


def test_tools_that_fill_a_namespace_root(mount, scratch):
    """`tar x` of an archive holding "./", `cp -a src/.` and `rsync -a src/` into a namespace's
    root copy the source directory's mode onto it: they succeed (exit 0, nothing on stderr), the
    namespace keeps its own mode (0700: it grants no more than they asked), and what is below it
    is the source's, attributes included.  A chmod that would take a permission away stays EPERM."""
    need("tar", "rsync")
    src = build_tree(scratch / "src")
    expected = {k: v for k, v in snapshot(src).items() if k != "."}
    ok(["tar", "cf", scratch / "t.tar", "-C", src, "."])
    runs = {
        "tar": lambda ns: ["tar", "xf", scratch / "t.tar", "-C", ns],
        "cp": lambda ns: ["cp", "-a", f"{src}/.", f"{ns}/"],
        "rsync": lambda ns: ["rsync", "-a", f"{src}/", f"{ns}/"],
    }
    for tool, args in runs.items():
        ns = mount.path / "pipeline" / f"fill-{tool}"
        ns.mkdir()
        ok(args(ns))
        assert stat.S_IMODE(os.stat(ns).st_mode) == 0o700, tool
        got = {k: v for k, v in snapshot(ns).items() if k != "."}
        assert got == expected, tool
    with pytest.raises(PermissionError):
        os.chmod(mount.path / "pipeline" / "fill-tar", 0o600)


# --- the reference: the same scenarios on a local directory ------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_on_a_local_directory(scenario, tmp_path):
    """The expectations hold on the machine's own filesystem (the tests' tmp directory)."""
    (tmp_path / "here").mkdir()
    (tmp_path / "local").mkdir()
    scenario(Place(tmp_path / "here", lambda: None), tmp_path / "local")
