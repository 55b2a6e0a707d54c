"""POSIX attributes of files and directories, and the rules on who may do what with them.

`Meta` is what a file or directory inside a namespace carries of its own: the full ``st_mode``
(type and permission bits), owner, group, times and the device number of a device node.  It is
stored in the object's user metadata (``x-amz-meta-*`` on S3, one xattr on disk) under names
s3fs-fuse uses too (`to_headers`, `from_headers`), so a bucket written by either shows the same
attributes through the other.  An object without these names (written by boto3, the Python API)
has no `Meta`: it shows the defaults of the mount (`--uid`, `--gid`, `--file-mode`, `--dir-mode`,
else its namespace's owner and modes) and its upload time.

The rules (`may_access`, `check_chmod`, `check_chown`, `check_utimens`, `check_sticky`) are those
of Linux with ``default_permissions``: the kernel applies them to what the daemon reports, and the
daemon applies them again to the caller of each request (docs/permissions.md).  Only uid 0 is
root here (a process with CAP_DAC_OVERRIDE but another uid is refused by the daemon).
"""

import errno
import logging
import stat
import time
from dataclasses import dataclass, replace
from typing import Mapping, Optional

from .errno_boundary import FSError

R_OK, W_OK, X_OK = 4, 2, 1

# Names in the user metadata (s3fs-fuse's, plus the nanosecond parts, which s3fs ignores).
_TIMES = ("atime", "mtime", "ctime")


@dataclass(frozen=True)
class Meta:
    mode: int  # st_mode, type bits included
    uid: int
    gid: int
    mtime: float  # seconds since the epoch (float keeps microseconds; `*_ns` the exact value)
    ctime: float
    atime: float
    rdev: int = 0
    mtime_ns: Optional[int] = None  # exact nanoseconds when set by utimensat; else from mtime
    atime_ns: Optional[int] = None

    @property
    def type(self) -> int:
        return stat.S_IFMT(self.mode)

    def with_(self, **changes) -> "Meta":
        return replace(self, **changes)

    def touched(self, now: Optional[float] = None, *, data: bool = False) -> "Meta":
        """The attributes after a change of the inode (ctime), and of its data (mtime too)."""
        now = time.time() if now is None else now
        if data:
            return replace(self, ctime=now, mtime=now, mtime_ns=None)
        return replace(self, ctime=now)


def ns(t: float, exact: Optional[int]) -> int:
    return exact if exact is not None else int(round(t * 1e9))


def to_headers(meta: Meta) -> dict:
    """The user metadata that stores ``meta`` (names without the ``x-amz-meta-`` prefix)."""
    out = {"mode": str(meta.mode), "uid": str(meta.uid), "gid": str(meta.gid)}
    exact = {"mtime": ns(meta.mtime, meta.mtime_ns), "atime": ns(meta.atime, meta.atime_ns),
             "ctime": ns(meta.ctime, None)}
    for name in _TIMES:
        sec, nsec = divmod(exact[name], 1_000_000_000)
        out[name] = str(sec)
        out[name + "-nsec"] = str(nsec)
    if meta.rdev:
        out["rdev"] = str(meta.rdev)
    return out


def _time(headers: Mapping, name: str) -> Optional[int]:
    """Nanoseconds of a time stored as s3fs does (integer or decimal seconds) plus our ``-nsec``."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        if "." in raw:
            sec_text, frac = raw.split(".", 1)
            sec, nsec = int(sec_text), int((frac + "000000000")[:9])
        else:
            sec, nsec = int(raw), 0
        extra = headers.get(name + "-nsec")
        if extra is not None:
            nsec = int(extra)
        if not 0 <= nsec < 1_000_000_000:
            return None
        return sec * 1_000_000_000 + nsec
    except ValueError:
        return None


def from_headers(headers: Optional[Mapping], fallback_time: float, is_dir: bool,
                 uid: int = 0, gid: int = 0) -> Optional[Meta]:
    """The `Meta` stored in an object's user metadata, or None if it carries none (or a mode that
    does not fit the object: a directory marker claiming to be a file is shown by its kind).
    ``uid``/``gid``: the owner shown where the metadata names none (the mount's defaults)."""
    if not headers or "mode" not in headers:
        return None
    try:
        mode = int(headers["mode"])
        uid = int(headers.get("uid", uid))
        gid = int(headers.get("gid", gid))
        rdev = int(headers.get("rdev", 0))
    except ValueError:
        return None
    if not 0 <= mode < (1 << 32) or uid < 0 or gid < 0:
        return None
    if stat.S_IFMT(mode) == 0:  # s3fs writes permission bits only for some objects
        mode |= stat.S_IFDIR if is_dir else stat.S_IFREG
    if stat.S_ISDIR(mode) != is_dir:
        return None
    fallback = int(fallback_time * 1e9)
    m = _time(headers, "mtime")
    c = _time(headers, "ctime")
    a = _time(headers, "atime")
    m = fallback if m is None else m
    c = m if c is None else c
    a = m if a is None else a
    return Meta(mode, uid, gid, m / 1e9, c / 1e9, a / 1e9, rdev, mtime_ns=m, atime_ns=a)


# -- the rules ------------------------------------------------------------------------------------

def in_group(caller, gid: int) -> bool:
    return caller.gid == gid or gid in caller.groups()


def may_access(caller, mode: int, uid: int, gid: int, want: int) -> bool:
    """Whether ``caller`` may read/write/search (``want``: R_OK|W_OK|X_OK bits) an inode."""
    if caller.uid == 0:
        # root passes every check but execute, which needs some x bit (directories: always)
        return not (want & X_OK) or stat.S_ISDIR(mode) or bool(mode & 0o111)
    if caller.uid == uid:
        bits = (mode >> 6) & 7
    elif in_group(caller, gid):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & want == want


def check_access(caller, mode: int, uid: int, gid: int, want: int, display: str) -> None:
    if not may_access(caller, mode, uid, gid, want):
        what = "".join(c for bit, c in ((R_OK, "r"), (W_OK, "w"), (X_OK, "x")) if want & bit)
        raise FSError(errno.EACCES, f"{display}: mode {stat.S_IMODE(mode):04o} owner {uid}:{gid} "
                      f"does not give {what} to uid {caller.uid}", logging.INFO)


def check_sticky(caller, dir_mode: int, dir_uid: int, file_uid: int, display: str) -> None:
    """In a sticky directory only the file's owner, the directory's owner or root removes it."""
    if dir_mode & stat.S_ISVTX and caller.uid not in (0, dir_uid, file_uid):
        raise FSError(errno.EPERM, f"{display}: the directory is sticky; only the file's owner "
                      f"(uid {file_uid}) may remove or replace it; denied to uid {caller.uid}", logging.INFO)


def check_chmod(caller, uid: int, gid: int, new_mode: int, display: str, old_mode: int = 0,
                writer: bool = False) -> int:
    """The permission bits a chmod by ``caller`` sets (setgid dropped for a non-member, as Linux
    does), or EPERM unless the caller owns the file or is root.  Clearing only setuid/setgid is
    what the kernel asks for when someone else writes the file (its "kill privileges" step): that
    needs no ownership."""
    new, old = stat.S_IMODE(new_mode), stat.S_IMODE(old_mode)
    killpriv = writer and new != old and (new ^ old) & ~(stat.S_ISUID | stat.S_ISGID) == 0 and new & ~old == 0
    if caller.uid not in (0, uid) and not killpriv:
        raise FSError(errno.EPERM, f"{display}: only its owner (uid {uid}) or root may chmod it; "
                      f"denied to uid {caller.uid}", logging.INFO)
    bits = stat.S_IMODE(new_mode)
    if caller.uid != 0 and bits & stat.S_ISGID and not in_group(caller, gid):
        bits &= ~stat.S_ISGID
    return bits


def check_chown(caller, uid: int, gid: int, new_uid: Optional[int], new_gid: Optional[int], display: str) -> None:
    """Root may give a file to anyone; its owner may only change its group, to one they are in."""
    if caller.uid == 0:
        return
    if new_uid is not None and not (caller.uid == uid and new_uid == uid):
        raise FSError(errno.EPERM, f"{display}: only root may give it to another user; denied to uid "
                      f"{caller.uid}", logging.INFO)
    if new_gid is not None and not (caller.uid == uid and (new_gid == gid or in_group(caller, new_gid))):
        raise FSError(errno.EPERM, f"{display}: only its owner may change its group, to a group they are "
                      f"in; denied to uid {caller.uid} for gid {new_gid}", logging.INFO)


def check_utimens(caller, meta_mode: int, uid: int, gid: int, explicit: bool, display: str) -> None:
    """Explicit times: the owner or root.  The current time (UTIME_NOW): also whoever may write."""
    if caller.uid in (0, uid):
        return
    if explicit:
        raise FSError(errno.EPERM, f"{display}: only its owner or root may set its times; denied to uid "
                      f"{caller.uid}", logging.INFO)
    check_access(caller, meta_mode, uid, gid, W_OK, display)


def mode_after_write(mode: int, gid: int, caller) -> int:
    """The mode after a write or truncate by ``caller`` (Linux 6): setuid goes unless root writes;
    setgid goes unless root writes, if the file is group-executable or the writer is not in its
    group.  (The kernel asks FUSE for the first part only, so the daemon applies the rule.)"""
    if caller is None or caller.uid == 0 or not mode & (stat.S_ISUID | stat.S_ISGID) or stat.S_ISDIR(mode):
        return mode
    mode &= ~stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not in_group(caller, gid)):
        mode &= ~stat.S_ISGID
    return mode
