"""Finding stashfs mounts and talking to their daemons through the control file."""

import json
import os
from dataclasses import dataclass
from typing import Callable

from fsdriver import control

CONTROL = control.CONTROL_NAME
FSTYPE = "fuse.stashfs"


@dataclass
class MountEntry:
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 1 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) >= 5 and len(rfields) >= 2:
                entries.append(MountEntry(_unescape(fields[4]), rfields[0], _unescape(rfields[1])))
    return entries


def find(mountpoint: str) -> MountEntry | None:
    mp = os.path.realpath(mountpoint) if os.path.exists(mountpoint) else os.path.abspath(mountpoint)
    for entry in reversed(mounts()):  # the last mount on a path is the visible one
        if entry.mountpoint == mp:
            return entry
    return None


def is_stashfs(mountpoint: str) -> bool:
    """Whether the mount visible at ``mountpoint`` is a stashfs mount."""
    entry = find(mountpoint)
    return entry is not None and entry.fstype == FSTYPE


def stashfs_mounts() -> list[MountEntry]:
    return [m for m in mounts() if m.fstype == FSTYPE]


class SeveralMounts(Exception):
    """More than one stashfs mount, and none of them at the configured mount point: which one a
    command means is not for mountctl to guess."""

    def __init__(self, found: list[str], configured: str | None):
        self.found, self.configured = found, configured
        shown = ", ".join(found[:MOUNTS_SHOWN]) + (f", ... ({len(found) - MOUNTS_SHOWN} more)"
                                                   if len(found) > MOUNTS_SHOWN else "")
        none_at = f", none at the configured mount point {configured}" if configured else ""
        super().__init__(f"{len(found)} stashfs mounts on this machine ({shown}){none_at}")


MOUNTS_SHOWN = 5


def the_mount(configured: Callable[[], str | None]) -> str | None:
    """The stashfs mount a command means when none is named: the only one on the machine, else
    the one at the configured mount point (``configured()``, asked only then); None when there is
    none.  SeveralMounts when there are several and none is at the configured mount point."""
    found = sorted({m.mountpoint for m in stashfs_mounts()})
    if len(found) <= 1:
        return found[0] if found else None
    mp = configured()
    if mp is not None and is_stashfs(mp):
        return mp
    raise SeveralMounts(found, mp)


def status(mountpoint: str) -> dict:
    return json.loads(os.getxattr(os.path.join(mountpoint, CONTROL), control.STATUS))


def pending(mountpoint: str) -> list[dict]:
    """Every pending upload, read page by page (the status xattr only carries the first ones)."""
    path = os.path.join(mountpoint, CONTROL)
    first = json.loads(os.getxattr(path, control.PENDING_PAGE_PREFIX + "0"))  # the daemon takes a snapshot
    entries = list(first["entries"])
    for n in range(1, first["pages"]):
        entries += json.loads(os.getxattr(path, f"{control.PENDING_PAGE_PREFIX}{n}"))["entries"]
    return entries


def flush(mountpoint: str) -> None:
    os.setxattr(os.path.join(mountpoint, CONTROL), control.FLUSH, b"1")


def discard(mountpoint: str, keys: list[str] | None) -> None:
    """Drop pending uploads (of ``keys``, or all) without uploading them."""
    value = {"all": True} if keys is None else {"keys": keys}
    os.setxattr(os.path.join(mountpoint, CONTROL), control.DISCARD, json.dumps(value).encode())
