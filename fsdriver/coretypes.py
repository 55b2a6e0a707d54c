"""The plain values the filesystem core takes and returns: its options and a file's attributes."""

import os
from dataclasses import dataclass
from typing import Optional

from .backend.base import PART_SIZE
from .mountconfig import DEFAULTS


@dataclass
class Attr:
    """What stat(2) shows of one inode (``mode`` carries the file type bits)."""

    ino: int
    is_dir: bool
    size: int
    mtime: float
    mode: int
    uid: int
    gid: int
    ctime: Optional[float] = None  # None: the same as mtime
    atime: Optional[float] = None  # None: the same as mtime
    nlink: int = 1
    rdev: int = 0
    mtime_ns: Optional[int] = None  # exact, where set to the nanosecond (utimensat); else from mtime
    atime_ns: Optional[int] = None


@dataclass
class Options:
    """What the core needs of the mount's configuration (`fsdriver.mountconfig` declares each
    option once, with its default; the daemon builds this from it)."""

    metadata_ttl: float = DEFAULTS.metadata_ttl  # kernel entry/attr timeout and our own listing/HEAD cache
    memory_limit: int = DEFAULTS.memory_limit
    max_prefetch: int = DEFAULTS.max_prefetch
    part_size: int = PART_SIZE
    read_only: bool = False
    uid: int = os.getuid()
    gid: int = os.getgid()
    max_requests: int = 32  # backend calls in flight
    org_gid: Optional[int] = None  # the organisation group: shares pipelines and stores
    backend_timeout: Optional[float] = None  # seconds a caller waits for a backend call (fsdriver.backend.aio)
    # Shown for objects inside a namespace that carry no attributes of their own (written by other
    # tools): --uid, --gid, --file-mode, --dir-mode (permission bits only, no type bits).  None: the
    # namespace's owner and group, and its modes (files 0600/0660/0666, dirs 0700/0770/0777).
    default_uid: Optional[int] = None
    default_gid: Optional[int] = None
    file_mode: Optional[int] = None
    dir_mode: Optional[int] = None
