"""A POSIX reference check: the same random operations, as root, on a tree inside a stashfs mount
and on a tree in a plain local directory (ext4 or tmpfs: the reference), compared after each step.

Operations (`Side`): create (``O_CREAT|O_EXCL`` with a mode and umask), write (truncating,
appending, at an offset), chmod (all 12 bits), chown and lchown (to users and groups that exist,
or -1), utimensat (atime and mtime each a nanosecond value, ``UTIME_NOW`` or ``UTIME_OMIT``),
symlink (relative targets, dangling ones too), rename, unlink, mkdir (mode and umask), rmdir.
Each example starts from a small tree (`PosixMachine.seed`); paths are names ``a``, ``b``, ``c``
up to three deep, mostly existing ones, new ones, and ones through symlinks (``c/a`` when ``c`` is
a link), so errors and symlink resolution are exercised as well as success.

Compared after every step, for every path below the two roots (walked without following symlinks):

- the set of paths; the file type and all 12 mode bits (``st_mode``), ``st_uid``, ``st_gid``,
  the size of files and symlinks (not of directories), the target of symlinks and the content
  of files;
- the errno of the operation (0 for success): the mount fails exactly when, and with the errno
  with which, the reference fails;
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
  (a directory moved elsewhere keeps its mtime).
  **ctime** is strict on the reference side; on the mount it is checked in the weak sense: where
  the model stamps it, it lies within the step (except for ``chown(-1, -1)``, which asks the
  filesystem for nothing), and otherwise it never goes backwards.
  **atime** is compared only in the step that sets it or creates the entry, before anything reads
  the file (the mount may follow the noatime or relatime convention).
- Not compared: ``st_ino``, ``st_nlink``, ``st_dev``, ``st_blocks``, directory sizes.

A run on a mount also remembers each example's final tree; `check_after_remount` compares them
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
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

NAMES = ("a", "b", "c")
MAX_PARENT_DEPTH = 2  # new names go at most three deep (renames may carry a tree deeper)
TARGETS = ("a", "b", "a/b", "../t/a", "b/../a", ".", "nowhere", "../x")  # both roots are named "t"
UIDS = (0, 1, 65534, -1)  # root, daemon, nobody (Debian's users), unchanged
GIDS = (0, 1, 65534, -1)  # root, daemon, nogroup
UMASKS = (0o022, 0o077, 0o002, 0o027, 0)
TIMES = st.one_of(st.sampled_from(["now", "omit"]), st.integers(0, 4 * 10**18))
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

    def shape(self) -> tuple:
        """Everything compared between the two sides."""
        return (self.kind, oct(self.mode), self.uid, self.gid, self.size, self.target)


def entry(path: Path) -> Entry:
    s = os.lstat(path)
    kind = "dir" if stat.S_ISDIR(s.st_mode) else "link" if stat.S_ISLNK(s.st_mode) else "file"
    return Entry(kind, s.st_mode, s.st_uid, s.st_gid, None if kind == "dir" else s.st_size,
                 os.readlink(path) if kind == "link" else None, s.st_atime_ns, s.st_mtime_ns, s.st_ctime_ns)


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


class Side:
    """A tree at ``root`` (created by `make`); `apply` answers 0 or the errno of an operation."""

    def __init__(self, root: Path, label: str):
        self.root, self.label = root, label

    def make(self) -> None:
        """The root, root's and 0755 whatever its parent (a namespace's rules) would give it."""
        os.mkdir(self.root, 0o755)
        os.chown(self.root, 0, 0)
        os.chmod(self.root, 0o755)

    def path(self, p: str) -> Path:
        return self.root / p if p else self.root

    def apply(self, op: str, args: tuple) -> int:
        try:
            getattr(self, f"_{op}")(*args)
            return 0
        except OSError as e:
            return e.errno

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


def effects_of(op: str, args: tuple, canon) -> Effects:
    """The time effects of ``op`` if it succeeds; ``canon(p, follow)`` is the path (relative to
    the root, symlinks resolved, None outside the tree) of the entry ``p`` names, before the op."""
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
        self.ok = False
        self.prev = self._check_trees()
        self.ok = True

    def teardown(self):
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

    def pick(self, data, label: str, existing: bool = True) -> str:
        """A path: with ``existing``, nine times in ten one that exists; otherwise any existing
        one, a new name in an existing directory (or through a symlink), or one in a missing
        directory."""
        snap = self.prev[0]
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
        self.ok = False
        eff = effects_of(op, args, self.canon)
        saved = os.umask(umask) if umask is not None else None
        try:
            lo_r = time.time_ns()
            rc_r = self.ref.apply(op, args)
            hi_r = lo_s = time.time_ns()
            rc_s = self.sut.apply(op, args)
            hi_s = time.time_ns()
        finally:
            if saved is not None:
                os.umask(saved)
        self.history.append(f"{op}{args}{'' if umask is None else f' umask {umask:04o}'} -> {errname(rc_r)}")
        try:
            assert rc_s == rc_r, f"{op}{args}: {self.ref.label} {errname(rc_r)}, {self.sut.label} {errname(rc_s)}"
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
        except AssertionError as e:
            # A real mount's caches make some failures depend on timing, and hypothesis then
            # reports its replay as flaky without the steps: name them here.
            raise AssertionError(f"{e}\n  the steps of this example:\n    " + "\n    ".join(self.history)) from None
        self.prev = snaps
        self.ok = True

    # -- rules ---------------------------------------------------------------------------------

    @initialize()
    def seed(self):
        """A small tree to start from (each step checked like any other)."""
        self.step("mkdir", ("a", 0o755), 0o022)
        self.step("create", ("b", 0o644), 0o022)
        self.step("write", ("b", b"#!/bin/sh\n", "trunc", 0))
        self.step("create", ("a/c", 0o600), 0o022)
        self.step("symlink", ("b", "c"))

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
