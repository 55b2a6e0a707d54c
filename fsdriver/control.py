"""The control file's protocol, named once: the daemon answers these extended attributes on
``<mountpoint>/.stashfs-control`` (fsdriver.fuse_ops) and mountctl sends them (mountctl.mounts).
Getting and setting them needs no socket and inherits the mount's permissions.

- ``user.stashfs.status`` (get): JSON of the daemon's counters, pending uploads summarised.
- ``user.stashfs.pending.<n>`` (get): page n of every pending upload (fsdriver.statuspages).
- ``user.stashfs.flush`` (set): upload what is pending now; EIO if some are still pending.
- ``user.stashfs.discard`` (set): ``{"keys": [...]}`` or ``{"all": true}``: drop pending uploads.
- ``user.stashfs.loglevel`` (set): the daemon's log level.
"""

CONTROL_NAME = ".stashfs-control"
PREFIX = "user.stashfs."
STATUS = PREFIX + "status"
PENDING_PAGE_PREFIX = PREFIX + "pending."
FLUSH = PREFIX + "flush"
DISCARD = PREFIX + "discard"
LOGLEVEL = PREFIX + "loglevel"
