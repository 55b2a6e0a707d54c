"""The filesystem's errno boundary: the one place where exceptions become errno values.

`fsdriver.errors` is what goes wrong (the storage and naming exceptions every layer raises); this
module is how the mount answers it.  Core code raises `FSError` (an errno, a message naming the
path, a log level) or lets backend exceptions through; `errno_for` maps everything to an errno and
logs it once.  Anything unexpected is logged with its traceback and becomes EIO, so one bad request
never takes the mount down.
"""

import errno
import logging

from .errors import (
    InvalidName,
    InvalidRequest,
    NameTooLong,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)

log = logging.getLogger("stashfs.fs")


class FSError(Exception):
    def __init__(self, errno_: int, message: str = "", level: int = logging.DEBUG):
        super().__init__(message or errno.errorcode.get(errno_, str(errno_)))
        self.errno = errno_
        self.level = level


# (exception type, errno, log level) — first match wins, so subclasses come first.
_MAP = [
    (NameTooLong, errno.ENAMETOOLONG, logging.INFO),
    (InvalidName, errno.EINVAL, logging.INFO),
    (NotFound, errno.ENOENT, logging.DEBUG),
    (PermissionDenied, errno.EACCES, logging.WARNING),
    (PreconditionFailed, errno.ESTALE, logging.WARNING),
    (Unavailable, errno.EIO, logging.ERROR),
    (InvalidRequest, errno.EINVAL, logging.WARNING),
]


def errno_for(exc: BaseException, op: str, what: str) -> int:
    """The errno for ``exc`` raised by operation ``op`` on ``what`` (a path); logs the reason."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # one failure from a nursery of concurrent backend calls
    if isinstance(exc, FSError):
        log.log(exc.level, "%s %r: %s", op, what, exc)
        return exc.errno
    for cls, code, level in _MAP:
        if isinstance(exc, cls):
            log.log(level, "%s %r: %s", op, what, exc)
            return getattr(exc, "errno", None) or code  # OutOfDescriptors: EMFILE or ENFILE
    if isinstance(exc, OSError) and exc.errno:
        level = logging.ERROR if exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT) else logging.INFO
        log.log(level, "%s %r: %s", op, what, exc)
        return exc.errno
    log.error("%s %r: unexpected error", op, what, exc_info=exc)
    return errno.EIO
