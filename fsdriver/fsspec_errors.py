"""The backend's errors as the OSErrors fsspec callers expect, for the ``stashfs://`` filesystem
(`fsdriver.fsspec_fs`) and its files (`fsdriver.fsspec_file`).

A request the backend refuses as malformed (`InvalidRequest`) is EINVAL, as in the mount
(`fsdriver.errno_boundary`): the cases that deserve another errno are refused before the request
is made (a file where a directory is: EISDIR; below a file: ENOTDIR; a key too long for the
backend: `NameTooLong`; a copy onto itself does nothing), so what still reaches here has no more
precise meaning.  A lost condition is ESTALE; an open file words its own (`fsspec_file`).
"""

from __future__ import annotations

import contextlib
import errno

from .errors import (BucketNotFound, InvalidRequest, NotFound, OutOfDescriptors, PermissionDenied,
                     PreconditionFailed, Unavailable)


@contextlib.contextmanager
def os_errors(path: str):
    """The backend's vocabulary as the OSErrors fsspec callers expect (FileNotFoundError above all)."""
    try:
        yield
    except BucketNotFound as e:
        raise OSError(errno.ENXIO, str(e), path) from None
    except NotFound as e:
        raise FileNotFoundError(errno.ENOENT, str(e), path) from None
    except PermissionDenied as e:
        raise PermissionError(errno.EACCES, str(e), path) from None
    except PreconditionFailed as e:
        raise OSError(errno.ESTALE, str(e), path) from None
    except OutOfDescriptors as e:
        raise OSError(e.errno, str(e), path) from None
    except Unavailable as e:
        raise OSError(errno.EIO, str(e), path) from None
    except InvalidRequest as e:
        raise OSError(errno.EINVAL, str(e), path) from None
