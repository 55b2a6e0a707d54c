"""The kernel's read-ahead of this mount, as the kernel has it now: how far ahead of each other a
sequential reader's FUSE reads can arrive (`fsdriver.prefetch` widens a stream's reach to it).

The setting is the mount's backing device's ``read_ahead_kb`` in sysfs: set by the daemon at
mount (``--readahead``, root only) or by an admin at any time, so it is read again, at most once a
`REFRESH` seconds.  Until the daemon found its device (right after the mount) it is 0: a stream's
reach is then only how far its reads have got.
"""

import logging
import time

log = logging.getLogger("stashfs.readahead")

REFRESH = 1.0


class KernelReadahead:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.path: str | None = None  # /sys/class/bdi/<major>:<minor>/read_ahead_kb of the mount
        self._value = 0
        self._read_at = float("-inf")

    def found(self, path: str) -> None:
        """The mount's device is known: read its setting from now on."""
        self.path, self._read_at = path, float("-inf")

    def __call__(self) -> int:
        """The read-ahead in bytes (0 while unknown or unreadable)."""
        now = self.clock()
        if self.path is not None and now - self._read_at >= REFRESH:
            self._read_at = now
            try:  # a sysfs attribute: answered by the kernel at once, never by this daemon
                with open(self.path) as f:
                    self._value = int(f.read()) * 1024
            except (OSError, ValueError) as e:
                log.debug("read-ahead of the mount not read from %s: %s", self.path, e)
                self._value = 0
        return self._value
