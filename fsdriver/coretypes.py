"""The plain values the filesystem core takes and returns: its options and a file's attributes."""

import os
from dataclasses import dataclass
from typing import Optional

from .backend.base import PART_SIZE
from .mountconfig import DEFAULTS


@dataclass
class Attr:
    ino: int
    is_dir: bool
    size: int
    mtime: float
    mode: int
    uid: int
    gid: int


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
