"""The backend's failures as OSErrors, for the Python APIs (`fsdriver.data`, `fsdriver.kv`).

A caller of the APIs catches ``OSError`` (or one of its subclasses) for everything that goes wrong
with the storage, with ``errno`` set and ``filename`` naming the object or key, the same errno
values as the ``stashfs://`` filesystem (`fsdriver.fsspec_errors`).  Each class below is also the
backend exception it replaces, so ``except BucketNotFound`` (documented in docs/kv.md) and
``except Unavailable`` keep working:

=======================  ===============================  ===============================
backend exception        raised by the APIs as            errno
=======================  ===============================  ===============================
BucketNotFound           `BucketNotFoundError`            ENXIO
PermissionDenied         `AccessDeniedError`              EACCES (a PermissionError)
Unavailable              `UnavailableError`               EIO (EMFILE/ENFILE: out of fds)
PreconditionFailed       `ChangedError`                   ESTALE
KeyIsPrefix              IsADirectoryError                EISDIR
ParentIsObject           NotADirectoryError               ENOTDIR
InvalidRequest           `InvalidRequestError`            EINVAL
any other BackendError   `StorageError`                   EIO
NotFound                 FileNotFoundError                ENOENT
=======================  ===============================  ===============================

(the APIs turn an expected NotFound into their own message first: "no object 'a' in pipeline
'p1'", a missing key).
"""

from __future__ import annotations

import contextlib
import errno

from .errors import (BackendError, BucketNotFound, InvalidRequest, KeyIsPrefix, NotFound, OutOfDescriptors,
                     ParentIsObject, PermissionDenied, PreconditionFailed, Unavailable)


class _AsOSError:
    """Built like an OSError (``errno, strerror, filename``: it pickles), also a BackendError
    (``key`` is the filename)."""

    def __init__(self, *args):
        OSError.__init__(self, *args)
        self.key = self.filename


class BucketNotFoundError(_AsOSError, OSError, BucketNotFound):
    """The S3 bucket does not exist (ENXIO): a store in it never reads as empty."""


class AccessDeniedError(_AsOSError, PermissionError, PermissionDenied):
    """The backend refused the credentials or the operation (EACCES)."""


class UnavailableError(_AsOSError, OSError, Unavailable):
    """The backend could not be reached or kept failing after retries (EIO)."""


class ChangedError(_AsOSError, OSError, PreconditionFailed):
    """The object changed while it was being read or written (ESTALE)."""


class InvalidRequestError(_AsOSError, OSError, InvalidRequest):
    """The backend refused the request itself, e.g. a key it cannot store (EINVAL)."""


class StorageError(_AsOSError, OSError, BackendError):
    """Any other failure of the backend (EIO), e.g. some deletes of a batch refused."""


# (backend error, the OSError raised for it, its errno), most specific first; anything else is a
# StorageError (EIO).
_AS_OSERROR = (
    (BucketNotFound, BucketNotFoundError, errno.ENXIO),
    (NotFound, FileNotFoundError, errno.ENOENT),
    (PermissionDenied, AccessDeniedError, errno.EACCES),
    (Unavailable, UnavailableError, errno.EIO),
    (PreconditionFailed, ChangedError, errno.ESTALE),
    (KeyIsPrefix, IsADirectoryError, errno.EISDIR),
    (ParentIsObject, NotADirectoryError, errno.ENOTDIR),
    (InvalidRequest, InvalidRequestError, errno.EINVAL),
)


def as_oserror(e: BackendError, name: str) -> OSError:
    """``e`` as the OSError the APIs raise, ``name`` (what the caller passed) as its filename."""
    for kind, error, code in _AS_OSERROR:
        if isinstance(e, kind):
            if isinstance(e, OutOfDescriptors):
                code = e.errno  # EMFILE / ENFILE: the process's own limit, not the backend
            return error(code, str(e), name)
    return StorageError(errno.EIO, str(e), name)


@contextlib.contextmanager
def api_errors(name: str):
    """The backend exceptions raised inside as OSErrors naming ``name`` (once: an OSError passes)."""
    try:
        yield
    except BackendError as e:
        if isinstance(e, OSError):
            raise
        raise as_oserror(e, name) from None
