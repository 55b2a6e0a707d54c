"""A POSIX reference check: the same random operations, as root, on a tree inside a stashfs mount
and on a tree in a plain local directory (ext4 or tmpfs: the reference), compared after each step.

Operations (`Side`): create (``O_CREAT|O_EXCL`` with a mode and umask), write (truncating,
appending, at an offset), chmod (all 12 bits), chown and lchown (to users and groups that exist,
or -1), utimensat (atime and mtime each a nanosecond value, ``UTIME_NOW`` or ``UTIME_OMIT``),
symlink (relative targets, dangling ones too), rename, unlink, mkdir (mode and umask), rmdir.
Each example starts from a small tree (`PosixMachine.seed`); paths are names ``a``, ``b``, ``c``
up to three deep, mostly existing ones, new ones, and ones through symlinks (``c/a`` when ``c`` is
a link), so errors and symlink resolution are exercised as well as success.

**Held descriptors**: up to `MAX_HELD` descriptors stay open across steps, in slots, the same slot
on both sides: open (``O_RDONLY``, ``O_WRONLY`` or ``O_RDWR``, each of ``O_APPEND``, ``O_TRUNC``
and ``O_CREAT`` or not; a mode and umask), fd_read (``pread`` at an offset, after
``POSIX_FADV_DONTNEED`` so that the mount's daemon answers, not the kernel's page cache),
fd_write (``pwrite``; ``write`` on an ``O_APPEND`` one), fd_truncate (``ftruncate``), fd_fsync,
fd_fstat and close. The seed opens up to two; while some are open, one path in four that a step
names is the file of one (so files are unlinked, renamed and renamed over under their
descriptors). All are closed, each a step, at the end of an example.

Compared after every step, for every path below the two roots (walked without following symlinks):

- the set of paths; the file type and all 12 mode bits (``st_mode``), ``st_uid``, ``st_gid``,
  the size of files and symlinks (not of directories), the target of symlinks and the content
  of files;
- the errno of the operation (0 for success): the mount fails exactly when, and with the errno
  with which, the reference fails; and what it returned: the bytes of a read, the count of a
  write, fstat's file type, size (of a regular file) and whether ``st_nlink`` is 0 (unlinked);
- for every held descriptor, fstat's fields as above and its whole content read through it (past
  the page cache): a descriptor keeps its file through an unlink, a rename or a rename over it;
  the content read by path is compared too while descriptors are open for writing
  (read-your-writes on one mount);
- times, against a small model (`effects_of`), on each side on its own, because a time the system
  stamps ("now") cannot be equal on two filesystems:
  * a time set explicitly (utimensat with a value) is exact to the nanosecond;
  * a time the operation stamps lies within the step: between clock reads before and after the
    operation, less two ticks of the kernel's coarse clock (which ext4 stamps with);
  * any other mtime is unchanged (and moves with its object through a rename);
  * on the mount, which stamps with a fine clock, a stamped mtime or ctime also differs from the
    one before the step (ext4 may stamp the same coarse tick twice, so not on the reference).
  The model is ext4's rule, which the reference side checks with every step: create, mkdir and
  symlink stamp the new entry's atime/mtime/ctime and their directory's mtime/ctime; a write
  stamps the file's mtime/ctime; chmod and chown stamp ctime; utimensat sets what it is given and
  stamps ctime (not when both times are ``UTIME_OMIT``); unlink and rmdir stamp the directory's
  mtime/ctime; rename stamps both directories' mtime/ctime and the moved object's ctime only
  (a directory moved elsewhere keeps its mtime); open with ``O_CREAT`` of a new name is a create,
  with ``O_TRUNC`` (whatever the access mode: Linux truncates an ``O_RDONLY|O_TRUNC`` open too) it
  stamps the file's mtime/ctime; a write and an ``ftruncate`` (even to the same size) through a
  held descriptor stamp the mtime/ctime of its file, wherever it now is; read, fsync, fstat and
  close stamp nothing (so a close that uploads keeps the time of the last write).
  **ctime** is strict on the reference side; on the mount it is checked in the weak sense: where
  the model stamps it, it lies within the step (except for ``chown(-1, -1)``, which asks the
  filesystem for nothing), and otherwise it never goes backwards.
  **atime** is compared only in the step that sets it or creates the entry, before anything reads
  the file (the mount may follow the noatime or relatime convention).
- Not compared: ``st_ino``, ``st_nlink`` (but 0 or not through a held descriptor), ``st_dev``,
  ``st_blocks``, directory sizes.

A run on a mount also remembers each example's final tree, after its descriptors are closed
(content written through one is durable at its close); `check_after_remount` compares them
again (everything but atime and ctime) once the mount has been mounted afresh: attributes are
durable and come from the backend, not from a cache.
"""

import ctypes
import errno
import os
import stat
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

NAMES = ("a", "b", "c")
MAX_PARENT_DEPTH = 2  # new names go at most three deep (renames may carry a tree deeper)
TARGETS = ("a", "b", "a/b", "../t/a", "b/../a", ".", "nowhere", "../x")  # both roots are named "t"
UIDS = (0, 1, 65534, -1)  # root, daemon, nobody (Debian's users), unchanged
GIDS = (0, 1, 65534, -1)  # root, daemon, nogroup
UMASKS = (0o022, 0o077, 0o002, 0o027, 0)
TIMES = st.one_of(st.sampled_from(["now", "omit"]), st.integers(0, 4 * 10**18))
ACCESS = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_RDWR")  # O_RDWR twice: it reads and writes
OPEN_EXTRAS = ("O_APPEND", "O_TRUNC", "O_CREAT")
MAX_HELD = 4  # descriptors held open across steps at a time, per side (the same slots on both)
HELD_READ = 4096  # more than any file here holds
CREATED = ("atime", "mtime", "ctime")
CHANGED = ("mtime", "ctime")

_coarse = getattr(time, "CLOCK_REALTIME_COARSE", None)
TICK_NS = max(int((time.clock_getres(_coarse) if _coarse is not None else 0.01) * 1e9), 1_000_000)
SLACK_BELOW = 2 * TICK_NS  # a coarse timestamp lags the precise clock by up to a tick
SLACK_ABOVE = 1_000_000  # float rounding of a daemon's clock read


# -- utimensat with UTIME_NOW / UTIME_OMIT (os.utime has neither) --------------------------------

UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _timespec(t) -> _Timespec:
    if t == "now":
        return _Timespec(0, UTIME_NOW)
    if t == "omit":
        return _Timespec(0, UTIME_OMIT)
    return _Timespec(*divmod(t, 10**9))


def utimensat(path, atime, mtime, follow: bool = True) -> None:
    """utimensat(2) of ``path``: each time a nanosecond count, ``"now"`` or ``"omit"``."""
    times = (_Timespec * 2)(_timespec(atime), _timespec(mtime))
    flags = 0 if follow else 0x100  # AT_SYMLINK_NOFOLLOW
    if _libc.utimensat(-100, os.fsencode(path), times, flags) != 0:  # -100: AT_FDCWD
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))


# -- what a tree looks like ----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    kind: str  # "file", "dir", "link" (nothing else is created)
    mode: int
    uid: int
    gid: int
    size: int | None  # None for directories
    target: str | None
    atime: int
    mtime: int
    ctime: int
    ino: int = 0  # not compared: which path a held descriptor's file has on its own side

    def shape(self) -> tuple:
        """Everything compared between the two sides."""
        return (self.kind, oct(self.mode), self.uid, self.gid, self.size, self.target)


def entry(path: Path) -> Entry:
    s = os.lstat(path)
    kind = "dir" if stat.S_ISDIR(s.st_mode) else "link" if stat.S_ISLNK(s.st_mode) else "file"
    return Entry(kind, s.st_mode, s.st_uid, s.st_gid, None if kind == "dir" else s.st_size,
                 os.readlink(path) if kind == "link" else None, s.st_atime_ns, s.st_mtime_ns, s.st_ctime_ns,
                 s.st_ino)


def snapshot(root: Path) -> dict:
    """``relative path -> Entry`` of ``root`` ("") and everything below it, symlinks not followed."""
    out = {"": entry(root)}

    def walk(rel):
        with os.scandir(root / rel if rel else root) as it:
            names = sorted(e.name for e in it)
        for name in names:
            p = f"{rel}/{name}" if rel else name
            out[p] = entry(root / p)
            if out[p].kind == "dir":
                walk(p)

    walk("")
    return out


def contents(root: Path, snap: dict) -> dict:
    return {p: (root / p).read_bytes() for p, e in snap.items() if e.kind == "file"}


def parent_of(p: str) -> str:
    return p.rpartition("/")[0]


def errname(code: int) -> str:
    return "0 (success)" if code == 0 else f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"


# -- one side: the operations as os.* calls --------------------------------------------------------


def open_flags(flags: str) -> int:
    """``"O_RDWR|O_APPEND"`` as the number."""
    out = 0
    for name in flags.split("|"):
        out |= getattr(os, name)
    return out


class Side:
    """A tree at ``root`` (created by `make`); `apply` answers 0 or the errno of an operation, and
    what it returned. ``fds`` holds the descriptors kept open across steps, by slot."""

    def __init__(self, root: Path, label: str):
        self.root, self.label = root, label
        self.fds: dict[int, int] = {}

    def make(self) -> None:
        """The root, root's and 0755 whatever its parent (a namespace's rules) would give it."""
        os.mkdir(self.root, 0o755)
        os.chown(self.root, 0, 0)
        os.chmod(self.root, 0o755)

    def path(self, p: str) -> Path:
        return self.root / p if p else self.root

    def apply(self, op: str, args: tuple) -> tuple[int, object]:
        try:
            return 0, getattr(self, f"_{op}")(*args)
        except OSError as e:
            return e.errno, None

    def close_all(self) -> None:
        """Close every held descriptor, errors ignored (the end of an example that failed)."""
        while self.fds:
            try:
                os.close(self.fds.popitem()[1])
            except OSError:
                pass

    def _create(self, p, mode):
        os.close(os.open(self.path(p), os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))

    def _write(self, p, data, how, off):
        flags = {"trunc": os.O_WRONLY | os.O_TRUNC, "append": os.O_WRONLY | os.O_APPEND, "at": os.O_WRONLY}[how]
        fd = os.open(self.path(p), flags)
        try:
            n = os.pwrite(fd, data, off) if how == "at" else os.write(fd, data)
            assert n == len(data), f"{self.label}: short write {n} of {len(data)}"
        finally:
            os.close(fd)

    def _chmod(self, p, mode):
        os.chmod(self.path(p), mode)

    def _chown(self, p, uid, gid, follow):
        os.chown(self.path(p), uid, gid, follow_symlinks=follow)

    def _utime(self, p, atime, mtime):
        utimensat(self.path(p), atime, mtime)

    def _symlink(self, target, p):
        os.symlink(target, self.path(p))

    def _rename(self, src, dst):
        os.rename(self.path(src), self.path(dst))

    def _unlink(self, p):
        os.unlink(self.path(p))

    def _mkdir(self, p, mode):
        os.mkdir(self.path(p), mode)

    def _rmdir(self, p):
        os.rmdir(self.path(p))

    # held descriptors: ``slot`` names the same one on both sides

    def _open(self, slot, p, flags, mode):
        assert slot not in self.fds
        self.fds[slot] = os.open(self.path(p), open_flags(flags), mode)

    def _fd_read(self, slot, off, n):
        fd = self.fds[slot]
        try:  # the read reaches the daemon, not pages the kernel kept (harmless on the reference)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        return os.pread(fd, n, off)

    def _fd_write(self, slot, data, off, append):
        fd = self.fds[slot]
        return os.write(fd, data) if append else os.pwrite(fd, data, off)

    def _fd_truncate(self, slot, size):
        os.ftruncate(self.fds[slot], size)

    def _fd_fsync(self, slot):
        os.fsync(self.fds[slot])

    def _fd_fstat(self, slot):
        s = os.fstat(self.fds[slot])
        return (stat.filemode(stat.S_IFMT(s.st_mode))[0], s.st_size if stat.S_ISREG(s.st_mode) else None,
                "unlinked" if s.st_nlink == 0 else "linked")

    def held_view(self, slot) -> tuple:
        """What the held descriptor in ``slot`` shows: fstat's fields and the whole content (read
        past the page cache), each with its errno (EBADF for a read of an O_WRONLY one)."""
        return self.apply("fd_fstat", (slot,)), self.apply("fd_read", (slot, 0, HELD_READ))

    def _close(self, slot):
        os.close(self.fds.pop(slot))  # released whatever close() answers


# -- the time model ------------------------------------------------------------------------------


class Effects:
    """What a successful operation does to times: fields stamped "now", fields set to a value,
    and a move (src -> dst, tree and all) whose entries keep their times."""

    def __init__(self):
        self.stamped: dict = defaultdict(set)
        self.explicit: dict = defaultdict(dict)
        self.moved: tuple | None = None
        self.ctime_optional: set = set()  # the mount may leave these ctimes (chown -1:-1)

    def stamp(self, p, *fields):
        if p is not None:
            self.stamped[p].update(fields)

    def origin(self, p: str) -> str:
        if self.moved:
            src, dst = self.moved
            if p == dst or p.startswith(dst + "/"):
                return src + p[len(dst):]
        return p


def effects_of(op: str, args: tuple, canon, exists=lambda p: True, held=lambda slot: None) -> Effects:
    """The time effects of ``op`` if it succeeds; ``canon(p, follow)`` is the path (relative to
    the root, symlinks resolved, None outside the tree) of the entry ``p`` names, before the op;
    ``exists(p)`` whether such a path is there, ``held(slot)`` the path of a held descriptor's
    file (None when it has none in the tree: unlinked, or outside)."""
    eff = Effects()
    if op in ("create", "mkdir", "symlink"):
        p = canon(args[1] if op == "symlink" else args[0], False)
        eff.stamp(p, *CREATED)
        eff.stamp(None if p is None else parent_of(p), *CHANGED)
    elif op == "write":
        eff.stamp(canon(args[0], True), *CHANGED)
    elif op == "chmod":
        eff.stamp(canon(args[0], True), "ctime")
    elif op == "chown":
        p, uid, gid, follow = args
        p = canon(p, follow)
        eff.stamp(p, "ctime")
        if uid == gid == -1 and p is not None:
            eff.ctime_optional.add(p)
    elif op == "utime":
        p, atime, mtime = args
        p = canon(p, True)
        if p is not None and (atime, mtime) != ("omit", "omit"):
            eff.stamp(p, "ctime")
            for field, t in (("atime", atime), ("mtime", mtime)):
                if t == "now":
                    eff.stamp(p, field)
                elif t != "omit":
                    eff.explicit[p][field] = t
    elif op == "rename":
        src, dst = canon(args[0], False), canon(args[1], False)
        if src is not None and dst is not None and src != dst:  # the same entry: nothing happens
            eff.moved = (src, dst)
            eff.stamp(parent_of(src), *CHANGED)
            eff.stamp(parent_of(dst), *CHANGED)
            eff.stamp(dst, "ctime")
    elif op in ("unlink", "rmdir"):
        p = canon(args[0], False)
        eff.stamp(None if p is None else parent_of(p), *CHANGED)
    elif op == "open":  # open(O_CREAT) of a new name creates; O_TRUNC stamps whatever it truncates
        _slot, p, flags, _mode = args
        p = canon(p, True)
        if p is not None and "O_CREAT" in flags and not exists(p):
            eff.stamp(p, *CREATED)
            eff.stamp(parent_of(p), *CHANGED)
        elif "O_TRUNC" in flags:  # also O_RDONLY|O_TRUNC: Linux truncates (given write permission)
            eff.stamp(p, *CHANGED)
    elif op in ("fd_write", "fd_truncate"):  # ftruncate stamps even to the same size
        eff.stamp(held(args[0]), *CHANGED)
    return eff


def check_times(label: str, before: dict, after: dict, eff: Effects, lo: int, hi: int, strict: bool, fine: bool):
    """``strict``: ctime as mtime (else the weak sense); ``fine``: the side stamps mtime and ctime
    with a fine clock, so a stamp always differs from the time before (ext4 before Linux 6.13 may
    stamp the same coarse tick twice; atime stays coarse on ext4)."""
    lo, hi = lo - SLACK_BELOW, hi + SLACK_ABOVE
    for p, e in after.items():
        old = before.get(eff.origin(p))
        for field in ("mtime", "ctime", "atime"):
            v = getattr(e, field)
            where = f"{label}: {p or '<root>'} {field} {v}"
            if field in eff.explicit.get(p, {}):
                assert v == eff.explicit[p][field], f"{where}, set to {eff.explicit[p][field]}"
            elif field in eff.stamped.get(p, ()) and (strict or field != "ctime" or p not in eff.ctime_optional):
                assert lo <= v <= hi and not (fine and old and field != "atime" and v == getattr(old, field)), (
                    f"{where}: not stamped by this step ({lo}..{hi}; before: {old})")
            elif field == "atime":
                continue
            elif old is None:
                raise AssertionError(f"{where}: the entry appeared, but the operation made nothing there")
            elif field == "ctime" and not strict:
                assert v >= old.ctime, f"{where}: went back from {old.ctime}"
            else:
                assert v == getattr(old, field), (
                    f"{where}: changed from {getattr(old, field)} by an operation that keeps it")


# -- the machine ---------------------------------------------------------------------------------


class PosixMachine(RuleBasedStateMachine):
    """Subclasses set ``make_sides`` (returning the reference `Side` and the tested one, whose
    roots do not exist yet), ``strict_ctime`` and ``fine_clock`` (`check_times`, for the tested
    side) and ``finished`` (called with the tested side's root, final snapshot and contents of an
    example whose every step passed)."""

    make_sides = None
    strict_ctime = False
    fine_clock = True
    finished = None

    def __init__(self):
        super().__init__()
        self.saved_umask = os.umask(0o022)
        self.ref, self.sut = type(self).make_sides()
        for side in (self.ref, self.sut):
            side.make()
        self.base = os.path.realpath(self.ref.root)
        self.history: list = []
        self.flags: dict[int, str] = {}  # slot -> the flags its descriptors were opened with
        self.ok = False
        self.prev = self._check_trees()
        self.ok = True

    def teardown(self):
        """Close the held descriptors, each a step (content written through one is durable at its
        close: `finished` sees the tree after them); then whatever is left, unchecked."""
        try:
            if self.ok:
                for slot in sorted(self.ref.fds):
                    self.step("close", (slot,))
        finally:
            for side in (self.ref, self.sut):
                side.close_all()
            os.umask(self.saved_umask)
        if self.ok and type(self).finished is not None:
            snap = self.prev[1]
            type(self).finished(self.sut.root, snap, contents(self.sut.root, snap))

    # -- helpers -------------------------------------------------------------------------------

    def canon(self, p: str, follow: bool) -> str | None:
        """The reference's own path of the entry ``p`` names (symlinks in it resolved)."""
        full = self.ref.path(p)
        real = os.path.realpath(full) if follow else os.path.join(os.path.realpath(full.parent), full.name)
        if real == self.base:
            return ""
        return real[len(self.base) + 1:] if real.startswith(self.base + "/") else None

    def held_path(self, slot: int) -> str | None:
        """The reference's path of the file its descriptor in ``slot`` has open (None: unlinked,
        or outside the tree)."""
        ino = os.fstat(self.ref.fds[slot]).st_ino
        return next((p for p, e in self.prev[0].items() if e.ino == ino), None)

    def slot(self, data) -> int:
        return data.draw(st.sampled_from(sorted(self.ref.fds)), label="slot")

    def pick(self, data, label: str, existing: bool = True) -> str:
        """A path: with ``existing``, nine times in ten one that exists; otherwise any existing
        one, a new name in an existing directory (or through a symlink), or one in a missing
        directory."""
        snap = self.prev[0]
        held = sorted({self.held_path(slot) for slot in self.ref.fds} - {None, ""})
        if held and data.draw(st.integers(0, 3), label=f"{label} is held") == 0:
            # one time in four, the file of a held descriptor (unlinked or renamed over under it)
            return data.draw(st.sampled_from(held), label=label)
        there = sorted(p for p in snap if p)
        if existing and there and data.draw(st.integers(0, 9), label=f"{label} exists") > 0:
            return data.draw(st.sampled_from(there), label=label)
        pool = set(there)
        for d, e in snap.items():
            if e.kind in ("dir", "link") and (d.count("/") + 1 if d else 0) <= MAX_PARENT_DEPTH:
                pool.update(f"{d}/{n}" if d else n for n in NAMES)
        pool.add("nowhere/a")
        return data.draw(st.sampled_from(sorted(pool)), label=label)

    def _check_trees(self) -> tuple:
        snaps = snapshot(self.ref.root), snapshot(self.sut.root)
        ref = {p: e.shape() for p, e in snaps[0].items()}
        sut = {p: e.shape() for p, e in snaps[1].items()}
        assert sorted(sut) == sorted(ref), f"paths: {self.sut.label} {sorted(sut)}, {self.ref.label} {sorted(ref)}"
        for p in ref:
            assert sut[p] == ref[p], (f"{p or '<root>'}: {self.sut.label} (kind, mode, uid, gid, size, target) "
                                      f"{sut[p]}, {self.ref.label} {ref[p]}")
        return snaps

    def step(self, op: str, args: tuple, umask: int | None = None) -> None:
        """Apply ``op`` to both sides: the same errno and the same result (bytes read, bytes
        written, fstat's fields), then the same trees, and times by `effects_of`."""
        self.ok = False
        eff = effects_of(op, args, self.canon, exists=self.prev[0].__contains__, held=self.held_path)
        saved = os.umask(umask) if umask is not None else None
        try:
            lo_r = time.time_ns()
            rc_r, got_r = self.ref.apply(op, args)
            hi_r = lo_s = time.time_ns()
            rc_s, got_s = self.sut.apply(op, args)
            hi_s = time.time_ns()
        finally:
            if saved is not None:
                os.umask(saved)
        self.history.append(f"{op}{args}{'' if umask is None else f' umask {umask:04o}'} -> {errname(rc_r)}"
                            f"{'' if got_r is None else f' {got_r!r}'}")
        try:
            assert rc_s == rc_r, f"{op}{args}: {self.ref.label} {errname(rc_r)}, {self.sut.label} {errname(rc_s)}"
            assert got_s == got_r, f"{op}{args}: {self.ref.label} answered {got_r!r}, {self.sut.label} {got_s!r}"
            if rc_r:
                eff = Effects()  # a failed operation changes nothing
            snaps = self._check_trees()
            check_times(self.ref.label, self.prev[0], snaps[0], eff, lo_r, hi_r, strict=True, fine=False)
            check_times(self.sut.label, self.prev[1], snaps[1], eff, lo_s, hi_s, strict=type(self).strict_ctime,
                        fine=type(self).fine_clock)
            ref_data, sut_data = contents(self.ref.root, snaps[0]), contents(self.sut.root, snaps[1])
            for p in ref_data:
                assert sut_data[p] == ref_data[p], (
                    f"{p}: {self.sut.label} holds {sut_data[p]!r}, {self.ref.label} {ref_data[p]!r}")
            for slot in sorted(self.ref.fds):  # every held descriptor: what fstat and a read of it show
                ref_view, sut_view = self.ref.held_view(slot), self.sut.held_view(slot)
                assert sut_view == ref_view, (f"held descriptor {slot} ({self.flags[slot]}): (fstat, read) "
                                              f"{self.sut.label} {sut_view}, {self.ref.label} {ref_view}")
        except AssertionError as e:
            # A real mount's caches make some failures depend on timing, and hypothesis then
            # reports its replay as flaky without the steps: name them here.
            raise AssertionError(f"{e}\n  the steps of this example:\n    " + "\n    ".join(self.history)) from None
        self.prev = snaps
        self.ok = True

    # -- rules ---------------------------------------------------------------------------------

    @initialize(data=st.data(), opens=st.integers(0, 2))
    def seed(self, data, opens):
        """A small tree to start from (each step checked like any other), and up to two
        descriptors held open on it (so that the steps after find some to use)."""
        self.step("mkdir", ("a", 0o755), 0o022)
        self.step("create", ("b", 0o644), 0o022)
        self.step("write", ("b", b"#!/bin/sh\n", "trunc", 0))
        self.step("create", ("a/c", 0o600), 0o022)
        self.step("symlink", ("b", "c"))
        for _ in range(opens):
            self.open_drawn(data)

    @rule(data=st.data(), mode=st.integers(0, 0o7777), umask=st.sampled_from(UMASKS))
    def create(self, data, mode, umask):
        self.step("create", (self.pick(data, "path", existing=False), mode), umask)

    @rule(data=st.data(), payload=st.binary(min_size=1, max_size=16),
          how=st.sampled_from(["trunc", "append", "at"]), off=st.integers(0, 20))
    def write(self, data, payload, how, off):
        self.step("write", (self.pick(data, "path"), payload, how, off))

    @rule(data=st.data(), mode=st.integers(0, 0o7777))
    def chmod(self, data, mode):
        self.step("chmod", (self.pick(data, "path"), mode))

    @rule(data=st.data(), uid=st.sampled_from(UIDS), gid=st.sampled_from(GIDS), follow=st.booleans())
    def chown(self, data, uid, gid, follow):
        self.step("chown", (self.pick(data, "path"), uid, gid, follow))

    @rule(data=st.data(), atime=TIMES, mtime=TIMES)
    def utime(self, data, atime, mtime):
        self.step("utime", (self.pick(data, "path"), atime, mtime))

    @rule(data=st.data(), to=st.sampled_from(TARGETS))  # ("target" is taken by hypothesis)
    def symlink(self, data, to):
        self.step("symlink", (to, self.pick(data, "path", existing=False)))

    @rule(data=st.data())
    def rename(self, data):
        self.step("rename", (self.pick(data, "src"), self.pick(data, "dst", existing=False)))

    @rule(data=st.data())
    def unlink(self, data):
        self.step("unlink", (self.pick(data, "path"),))

    @rule(data=st.data(), mode=st.sampled_from([0o755, 0o700, 0o777, 0o1777, 0o2775, 0o0]),
          umask=st.sampled_from(UMASKS))
    def mkdir(self, data, mode, umask):
        self.step("mkdir", (self.pick(data, "path", existing=False), mode), umask)

    @rule(data=st.data())
    def rmdir(self, data):
        self.step("rmdir", (self.pick(data, "path"),))

    # -- descriptors held across steps ----------------------------------------------------------

    @precondition(lambda self: len(self.ref.fds) < MAX_HELD)
    @rule(data=st.data())
    def open(self, data):
        self.open_drawn(data)

    def open_drawn(self, data):
        """open() into the first free slot: any access mode, with or without each of O_APPEND,
        O_TRUNC and O_CREAT (then a mode and a umask, and more often a new name)."""
        slot = min(set(range(MAX_HELD)) - set(self.ref.fds))
        access = data.draw(st.sampled_from(ACCESS), label="access")
        extras = data.draw(st.sets(st.sampled_from(OPEN_EXTRAS)), label="flags")
        mode = data.draw(st.sampled_from([0o644, 0o600, 0o755, 0o0]), label="mode")
        umask = data.draw(st.sampled_from(UMASKS), label="umask")
        flags = "|".join((access, *sorted(extras)))
        self.flags[slot] = flags
        self.step("open", (slot, self.pick(data, "path", existing="O_CREAT" not in extras), flags, mode), umask)

    @precondition(lambda self: self.ref.fds)
    @rule(data=st.data(), off=st.integers(0, 24), n=st.integers(0, 32))
    def fd_read(self, data, off, n):
        self.step("fd_read", (self.slot(data), off, n))

    @precondition(lambda self: self.ref.fds)
    @rule(data=st.data(), payload=st.binary(min_size=1, max_size=16), off=st.integers(0, 20))
    def fd_write(self, data, payload, off):
        slot = self.slot(data)
        append = "O_APPEND" in self.flags[slot]  # (pwrite of an O_APPEND descriptor appends on Linux)
        self.step("fd_write", (slot, payload, None if append else off, append))

    @precondition(lambda self: self.ref.fds)
    @rule(data=st.data(), size=st.integers(0, 24))
    def fd_truncate(self, data, size):
        self.step("fd_truncate", (self.slot(data), size))

    @precondition(lambda self: self.ref.fds)
    @rule(data=st.data())
    def fd_fsync(self, data):
        self.step("fd_fsync", (self.slot(data),))

    @precondition(lambda self: self.ref.fds)
    @rule(data=st.data())
    def fd_fstat(self, data):
        self.step("fd_fstat", (self.slot(data),))

    @precondition(lambda self: self.ref.fds)
    @rule(data=st.data())
    def close(self, data):
        self.step("close", (self.slot(data),))


def run(make_sides, config, strict_ctime: bool = False, fine_clock: bool = True, finished=None) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    machine = type("Posix", (PosixMachine,), {"make_sides": staticmethod(make_sides), "strict_ctime": strict_ctime,
                                              "fine_clock": fine_clock,
                                              "finished": None if finished is None else staticmethod(finished)})
    run_state_machine_as_test(machine, settings=config)


def check_after_remount(root: Path, snap: dict, data: dict) -> None:
    """``root`` shows ``snap`` and ``data`` again, times but atime and ctime included."""
    again = snapshot(root)
    assert sorted(again) == sorted(snap), f"{root}: after the remount {sorted(again)}, before {sorted(snap)}"
    for p, e in snap.items():
        got = again[p]
        assert (got.shape(), got.mtime) == (e.shape(), e.mtime), f"{root}/{p}: after the remount {got}, before {e}"
    assert contents(root, again) == data, f"{root}: contents differ after the remount"
