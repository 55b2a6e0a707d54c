"""A differential POSIX conformance harness: the same syscall scenarios on two directories.

A `Scenario` is a list of `Step`s; each step is one syscall made as a given user (`Cred`: uid,
gid, supplementary groups) with a given umask, with its current directory in the scenario's own
fresh directory (as pjdfstest runs).  Steps go to a small fork server (`Actor`, `serve`): root's
steps run in it, other users' in a child forked for the step, which chdirs as root and then drops
to the user; the result (a value, or the errno's name) comes back as JSON.  Before the first step
and after every step the test process (root) `lstat`s every path the scenario names (and their
parents, and the scenario's directory ``.``) and records per path: type, permission bits (all 12),
uid, gid, nlink (of directories only where the scenario asks: one difference there would show in
every scenario), size (not of directories: ext4 shows 4096), rdev of devices, an inode *label* (the
same label while one object lives: a rename keeps it, a hard link shares it; the numbers themselves
are not compared) and whether mtime and ctime moved since the observation before the step, compared
on the same object wherever it is (``+``, ``=``, ``-``, or ``new`` for an object not seen before).
atime is left out (the mount is documented as ``noatime``); the ``times`` op reads atime and mtime
values where a scenario set them explicitly.  After the last step the entries of every observed
directory are recorded too (`listings`); `state` is the same view with exact times, to compare a
mount with itself across a remount.

`run_pair` runs one scenario on two directories in lockstep (step k on one, step k on the other)
and returns both records: ordered ``{key: value}`` dicts, one key per assertion.  `diff` lists the
keys whose values differ.  Time changes are reliable without sleeping because each step comes
after an `lstat` of every observed path: Linux (6.13+) then stamps the next change of those
inodes with a fine-grained time (multigrain timestamps); on older kernels `run_pair` waits for the
coarse clock to pass the newest observed time (`_after_newest`), a wait on a condition.
"""

import ctypes
import errno
import json
import os
import platform
import select
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Cred:
    name: str
    uid: int
    gid: int
    groups: tuple


@dataclass(frozen=True)
class Step:
    cred: Cred
    op: str
    args: tuple
    umask: int = 0o022

    def __str__(self):
        shown = [oct(a) if isinstance(a, int) and self.op in _MODE_OPS and i == _MODE_OPS[self.op] else
                 short(a) if isinstance(a, str) else a for i, a in enumerate(self.args)]
        return f"{self.cred.name} {self.op} {' '.join(map(str, shown))}"


def short(text: str) -> str:
    """A long name or path as its ends and its length."""
    return text if len(text) < 40 else f"{text[:8]}...{text[-8:]}({len(text)})"


_MODE_OPS = {"create": 1, "mkdir": 1, "mkfifo": 1, "chmod": 1, "open": 2, "mknod": 2, "create_write": 1}


@dataclass
class Scenario:
    name: str
    steps: list
    hard_links: bool = False  # needs hard links: EPERM by design where the backend has none
    dir_nlink: bool = False  # record the link count of directories (2 + subdirectories on ext4)
    paths: list = field(default_factory=list)

    def __post_init__(self):
        if not self.paths:
            self.paths = observed_paths(self.steps)


# Which arguments of each op are paths inside the scenario (symlink's first is its target text).
PATH_ARGS = {
    "create": (0,), "open": (0,), "write": (0,), "read": (0,), "mkdir": (0,), "rmdir": (0,),
    "unlink": (0,), "link": (0, 1), "symlink": (1,), "readlink": (0,), "rename": (0, 1),
    "chmod": (0,), "chown": (0,), "lchown": (0,), "truncate": (0,), "mkfifo": (0,), "mknod": (0,),
    "bind": (0,), "utimens": (0,), "stat": (0,), "times": (0,), "unlink_open": (0,), "list": (0,),
    "create_write": (0,), "during_write": (0,),
}


def _paths_of(op: str, args: tuple) -> list:
    if op == "during_write":
        return [args[0]] + _paths_of(args[2], args[3:])
    return [args[i] for i in PATH_ARGS[op]]


def observed_paths(steps) -> list:
    """``.``, then every path the steps name (and its parents), in order of first mention."""
    out = ["."]
    for s in steps:
        for p in _paths_of(s.op, s.args):
            parts = p.split("/")
            for n in range(1, len(parts) + 1):
                q = "/".join(parts[:n])
                if q not in out and q not in (".", "..") and not q.endswith(("/.", "/..")) and len(parts[n - 1]) <= 255:
                    out.append(q)
    return out


# ---- the child: one syscall as one user -------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
AT_FDCWD, AT_SYMLINK_NOFOLLOW = -100, 0x100


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _timespec(v) -> _Timespec:
    if v == "now":
        return _Timespec(0, UTIME_NOW)
    if v == "omit":
        return _Timespec(0, UTIME_OMIT)
    return _Timespec(v // 1_000_000_000, v % 1_000_000_000)


def _utimens(path, atime, mtime, follow=True):
    """utimensat(2) with UTIME_NOW/UTIME_OMIT ("now"/"omit"); atime None: times=NULL."""
    times = None if atime is None else (_Timespec * 2)(_timespec(atime), _timespec(mtime))
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0 if follow else AT_SYMLINK_NOFOLLOW) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _flags(text: str) -> int:
    out = 0
    for name in text.split("|"):
        out |= getattr(os, name)
    return out


def _open(path, flags, mode=0o644):
    os.close(os.open(path, _flags(flags), mode))


def _write(path, data="x", flags="O_WRONLY"):
    fd = os.open(path, _flags(flags))
    try:
        return os.write(fd, data.encode())
    finally:
        os.close(fd)


def _create_write(path, mode, data):
    """open(O_CREAT|O_EXCL|O_RDWR, mode) and write through that descriptor: it is writable
    whatever ``mode`` says (the creator asked for it)."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
    try:
        return os.write(fd, data.encode())
    finally:
        os.close(fd)


def _during_write(path, data, op, *args):
    """open(O_WRONLY|O_CREAT), write, then ``op`` (by path) while the descriptor is open, then
    close: the result of ``op``.  Attributes changed while a file is being written must survive
    its close (on a mount, its upload)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data.encode())
        try:
            value = OPS[op](*args)
            return 0 if value is None else value
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        os.close(fd)


def _read(path):
    with open(path, "rb") as f:
        return f.read().hex()


def _mknod(path, kind, mode, major=0, minor=0):
    kinds = {"fifo": stat.S_IFIFO, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "reg": stat.S_IFREG,
             "sock": stat.S_IFSOCK}
    os.mknod(path, kinds[kind] | mode, os.makedev(major, minor))


def _bind(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
    finally:
        s.close()


def _stat(path):
    st = os.stat(path)
    return [oct(st.st_mode), st.st_uid, st.st_gid]


def _times(path, which="am"):
    """atime and/or mtime in ns (lstat); "recent" for a time within a minute of now."""
    st = os.lstat(path)
    now = time.time_ns()
    return ["recent" if abs(t - now) < 60_000_000_000 else t
            for t in [st.st_atime_ns] * ("a" in which) + [st.st_mtime_ns] * ("m" in which)]


def _unlink_open(path):
    """unlink a file while it is open; st_nlink of the open descriptor afterwards."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        return os.fstat(fd).st_nlink
    finally:
        os.close(fd)


OPS = {
    "create": lambda p, mode: _open(p, "O_CREAT|O_WRONLY", mode),
    "open": _open,
    "write": _write,
    "create_write": _create_write,
    "during_write": _during_write,
    "read": _read,
    "mkdir": os.mkdir,
    "rmdir": os.rmdir,
    "unlink": os.unlink,
    "link": lambda a, b: os.link(a, b, follow_symlinks=False),  # link(2) does not follow
    "symlink": os.symlink,
    "readlink": os.readlink,
    "rename": os.rename,
    "chmod": os.chmod,
    "chown": os.chown,
    "lchown": os.lchown,
    "truncate": os.truncate,
    "mkfifo": os.mkfifo,
    "mknod": _mknod,
    "bind": _bind,
    "utimens": _utimens,
    "stat": _stat,
    "times": _times,
    "unlink_open": _unlink_open,
    "list": lambda p: sorted(os.listdir(p)),
}


def _child(wfd: int, request: dict) -> None:
    """In a forked child: become the request's user, make its one syscall, report, exit."""
    code = 1
    try:
        os.chdir(request["base"])  # as root: the path above the scenario is never checked as the user
        uid, gid, groups = request["cred"]
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        os.umask(request["umask"])
        try:
            value = OPS[request["op"]](*request["args"])
            out = {"ok": 0 if value is None else value}
        except OSError as e:
            out = {"ok": errno.errorcode.get(e.errno, str(e.errno))}
        os.write(wfd, json.dumps(out).encode())
        code = 0
    except BaseException as e:  # reported to the parent; a child never returns into the server
        try:
            os.write(wfd, json.dumps({"harness": repr(e)}).encode())
        except BaseException:
            pass
    finally:
        os._exit(code)


def _fork_one(request: dict) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(w, request)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while chunk := f.read():
            chunks.append(chunk)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"harness": "the child died without an answer"}')


def _as_root(request: dict) -> dict:
    """A root step in the server itself (it is root): its groups and umask for the one call."""
    os.chdir(request["base"])
    os.setgroups(request["cred"][2])
    old = os.umask(request["umask"])
    try:
        value = OPS[request["op"]](*request["args"])
        return {"ok": 0 if value is None else value}
    except OSError as e:
        return {"ok": errno.errorcode.get(e.errno, str(e.errno))}
    except Exception as e:
        return {"harness": repr(e)}
    finally:
        os.umask(old)
        os.chdir("/")


def serve() -> None:
    """The fork server: one JSON request per line on stdin, one JSON answer per line on stdout.
    Root's steps run in the server; others' in a child forked for the step.  A small process
    forks in about a millisecond; the test process, with pytest, boto3 and trio loaded, takes
    ten times longer, which is why steps are not forked from it."""
    for line in sys.stdin:
        request = json.loads(line)
        root = request["cred"][:2] == [0, 0]
        sys.stdout.write(json.dumps(_as_root(request) if root else _fork_one(request)) + "\n")
        sys.stdout.flush()


STEP_TIMEOUT = 60  # seconds: a step that hangs fails the test instead of stopping the run


class Actor:
    """Runs steps as other users through a fork server (`serve`) started as a child process."""

    def __init__(self, extra_groups: tuple = ()):
        self.extra_groups = extra_groups
        self.proc = subprocess.Popen([sys.executable, "-S", "-I", __file__, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd="/")

    def run(self, base: Path, step: Step):
        """The result of ``step`` run in ``base``: 0, a value, or an errno name."""
        groups = list(dict.fromkeys(step.cred.groups + self.extra_groups))
        request = {"base": str(base), "cred": [step.cred.uid, step.cred.gid, groups], "umask": step.umask,
                   "op": step.op, "args": list(step.args)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], STEP_TIMEOUT)[0]:
            self.proc.kill()
            raise RuntimeError(f"{step}: no answer within {STEP_TIMEOUT} s (a syscall hangs)")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{step}: the fork server exited ({self.proc.wait()})")
        out = json.loads(line)
        if "harness" in out:
            raise RuntimeError(f"{step}: the harness failed in the child: {out['harness']}")
        return out["ok"]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:  # the server was killed after a hang
            pass
        self.proc.wait(timeout=30)
        self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- observing ----------------------------------------------------------------------------------

_TYPES = {stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFLNK: "lnk", stat.S_IFIFO: "fifo",
          stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFSOCK: "sock"}


class Observer:
    """lstat of a scenario's paths after each step, with inode labels and time changes."""

    def __init__(self, base: Path, paths: list, dir_nlink: bool = False):
        self.base, self.paths, self.dir_nlink = base, paths, dir_nlink
        self.labels: dict[int, str] = {}
        self.made = 0
        self.before_ino: dict[int, os.stat_result] = {}  # the same by inode (for renamed objects)
        self.newest = 0

    def observe(self, tag) -> dict:
        now: dict[str, os.stat_result] = {}
        out = {}
        for p in self.paths:
            try:
                st = _lstat_in(self.base, p)
            except FileNotFoundError:
                out[f"{tag} {short(p)}"] = "absent"
                continue
            except OSError as e:
                out[f"{tag} {short(p)}"] = f"absent ({errno.errorcode.get(e.errno, e.errno)})"
                continue
            now[p] = st
            out.update((f"{tag} {short(p)}:{k}", v) for k, v in self._fields(short(p), st).items())
        self.last = now
        live = {st.st_ino for st in now.values()}
        # an inode number no longer used by any observed path may come back as another object
        self.labels = {ino: lab for ino, lab in self.labels.items() if ino in live}
        self.before_ino = {st.st_ino: st for st in now.values()}
        recent = time.time_ns() + 1_000_000_000
        self.newest = max([self.newest] + [t for st in now.values() for t in (st.st_mtime_ns, st.st_ctime_ns)
                                          if t < recent])
        return out

    def _fields(self, p: str, st: os.stat_result) -> dict:
        kind = _TYPES.get(stat.S_IFMT(st.st_mode), oct(stat.S_IFMT(st.st_mode)))
        f = {"type": kind, "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid}
        if kind != "dir" or self.dir_nlink:
            f["nlink"] = st.st_nlink
        if kind != "dir":
            f["size"] = st.st_size
        if kind in ("chr", "blk"):
            f["rdev"] = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
        # times are compared with the same object's before the step (wherever it was: a renamed
        # object too), never with another object's that the path showed before
        old = self.before_ino.get(st.st_ino) if st.st_ino in self.labels else None
        if st.st_ino not in self.labels:
            self.made += 1
            self.labels[st.st_ino] = f"#{self.made}:{p}"
        f["ino"] = self.labels[st.st_ino]
        for name in ("mtime", "ctime"):
            if old is None:
                f[name] = "new"
            else:
                a, b = getattr(old, f"st_{name}_ns"), getattr(st, f"st_{name}_ns")
                f[name] = "+" if b > a else "=" if b == a else "-"
        return f


def _after_newest(newest_ns: int) -> None:
    """Wait until the kernel's coarse clock (what ext4 stamps without multigrain timestamps) is
    past every observed time, so that a change made now is seen as one."""
    coarse = getattr(time, "CLOCK_REALTIME_COARSE", 5)
    while time.clock_gettime_ns(coarse) <= newest_ns:
        time.sleep(0.0005)


def _lstat_in(base: Path, p: str) -> os.stat_result:
    """lstat of ``p`` relative to ``base`` (paths up to PATH_MAX long, whatever ``base``'s length)."""
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY)
    try:
        return os.lstat(p, dir_fd=fd)
    finally:
        os.close(fd)


def listings(base: Path, paths: list) -> dict:
    """The sorted entries of each observed directory (a name shown by lookup but not by readdir,
    or the other way round, shows here)."""
    out = {}
    base_fd = os.open(base, os.O_PATH | os.O_DIRECTORY)
    try:
        for p in paths:
            try:
                fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=base_fd)
            except OSError:
                continue
            try:
                out[short(p)] = [short(n) for n in sorted(os.listdir(fd))]
            except OSError as e:
                out[short(p)] = errno.errorcode.get(e.errno, str(e.errno))
            finally:
                os.close(fd)
    finally:
        os.close(base_fd)
    return out


def state(base: Path, paths: list) -> dict:
    """What a scenario left, to compare across a remount: per path its attributes and times."""
    found = {}
    for p in paths:
        try:
            found[p] = _lstat_in(base, p)
        except OSError:
            continue
    return state_of(found)


def state_of(stats: dict) -> dict:
    return {short(p): {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink,
                       "size": None if stat.S_ISDIR(st.st_mode) else st.st_size, "rdev": st.st_rdev,
                       "atime": st.st_atime_ns, "mtime": st.st_mtime_ns, "ctime": st.st_ctime_ns}
            for p, st in stats.items()}


# ---- running and comparing ----------------------------------------------------------------------

def prepare(base: Path) -> None:
    """A scenario's own directory: root:root 0755 (pjdfstest's ``mkdir n 0755`` as root), also
    where the parent is setgid (a pipeline directory is: its group would be inherited)."""
    base.mkdir()
    os.chown(base, 0, 0)
    os.chmod(base, 0o755)


def _multigrain() -> bool:
    """Linux 6.13 and later stamp a change after an observed time with a finer time."""
    try:
        return tuple(int(x) for x in platform.release().split(".")[:2]) >= (6, 13)
    except ValueError:
        return False


def run_pair(actor: Actor, scenario: Scenario, base_a: Path, base_b: Path,
             coarse_wait: bool = not _multigrain()) -> tuple[dict, dict, dict]:
    """Run ``scenario`` on both directories in lockstep; the two records (`diff` compares them),
    each ending with the entries of the scenario's directories, and the `state` of ``base_b``
    as its last observation saw it."""
    recs = ({}, {})
    obs = []
    for base, rec in zip((base_a, base_b), recs):
        prepare(base)
        o = Observer(base, scenario.paths, scenario.dir_nlink)
        rec.update(o.observe(0))
        obs.append(o)
    for i, step in enumerate(scenario.steps, 1):
        if coarse_wait:
            _after_newest(max(o.newest for o in obs))
        for base, rec, o in zip((base_a, base_b), recs, obs):
            rec[f"{i} {step} ->"] = actor.run(base, step)
            rec.update(o.observe(i))
    for base, rec in zip((base_a, base_b), recs):
        rec.update((f"end {p}:entries", names) for p, names in listings(base, scenario.paths).items())
    return recs[0], recs[1], state_of(obs[1].last)


def diff(a: dict, b: dict) -> list[tuple]:
    """(key, value in a, value in b) of every key whose values differ, in order."""
    keys = list(dict.fromkeys(list(a) + list(b)))
    return [(k, a.get(k, "-"), b.get(k, "-")) for k in keys if a.get(k, "-") != b.get(k, "-")]


def compared(a: dict, b: dict) -> int:
    return len(set(a) | set(b))


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
