"""Which upload failures may pass (retry them) and which never will (report them, queue nothing).

A failure is *permanent* when repeating the same request cannot succeed: the backend cannot hold
the key (a name too long for the disk backend, an invalid request), refuses it (access denied),
or the bucket or object it needs is gone.  Everything else — the backend unreachable, timeouts,
5xx, a full backend disk, this daemon out of descriptors — may pass and is retried.
"""

import errno
from typing import Optional

from .errors import InvalidRequest, NotFound, PermissionDenied

# errno values of a local OSError that retrying the same key can never cure
_PERMANENT_OS = {errno.ENAMETOOLONG, errno.EINVAL, errno.ENOTDIR, errno.EISDIR, errno.ELOOP,
                 errno.EPERM, errno.EACCES, errno.EFBIG}
_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def permanent_errno(e: BaseException) -> Optional[int]:
    """The errno to report at once if ``e`` can never pass, else None (worth retrying)."""
    if isinstance(e, PermissionDenied):
        return errno.EACCES
    if isinstance(e, InvalidRequest):
        return errno.EINVAL
    if isinstance(e, NotFound):  # the bucket, or an upload the backend no longer knows
        return errno.ENOENT
    if isinstance(e, OSError) and e.errno in _PERMANENT_OS:
        return e.errno
    return None


def transient_errno(e: BaseException) -> int:
    """The errno for a failure that may pass: its own for a lack of descriptors, else EIO."""
    code = getattr(e, "errno", None)
    return code if code in _DESCRIPTORS else errno.EIO
