"""The backend's errors as the OSErrors fsspec callers expect, for the ``stashfs://`` filesystem
(`fsdriver.fsspec_fs`) and its files (`fsdriver.fsspec_file`)."""

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
        raise OSError(errno.ESTALE, f"{e} (it changed while open)", path) from None
    except OutOfDescriptors as e:
        raise OSError(e.errno, str(e), path) from None
    except Unavailable as e:
        raise OSError(errno.EIO, str(e), path) from None
    except InvalidRequest as e:
        raise NotADirectoryError(errno.ENOTDIR, str(e), path) from None
