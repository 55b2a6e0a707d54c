"""Storage backends: one protocol (`base.Backend`), a disk and an S3 implementation.

`open_url(url)` picks one from a URL:

- ``s3://bucket[/prefix]``         S3 or any S3-compatible endpoint
- ``file:///abs/path`` or a path   local disk

A local directory is opened only if it exists (`NoBackendDirectory`, a FileNotFoundError,
otherwise): a mistyped path would read as an empty store.  ``create=True`` makes it (0700).

It reads no configuration: everything comes from its arguments (and, for S3, boto3's own
environment).  Which backend to use when none is named — ``$STASHFS_BACKEND``, the config file,
the local default — is the application's rule, in `fsdriver.configured`.
"""

import errno
import os
from urllib.parse import urlparse

from ..errors import NoBackendDirectory
from .base import Backend, CommonPrefix, ListEntry, ObjectInfo

__all__ = ["Backend", "CommonPrefix", "ListEntry", "ObjectInfo", "open_url"]


def open_url(url: str, *, create: bool = False, **options) -> Backend:
    """Open the backend named by ``url`` (see the module docstring).

    ``create``: make a local directory that does not exist yet (else `NoBackendDirectory`).
    ``options`` go to the backend's constructor (for S3: ``endpoint_url``, ``max_connections``,
    timeouts, part sizes).
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"backend URL {url!r}: expected s3://..., file:///... or a path "
                         "(fsdriver.configured.open_backend applies the default)")
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from .s3 import S3Backend

        return S3Backend(parsed.netloc, parsed.path, **options)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"backend URL {url!r}: file:// URLs take an absolute path (file:///...)")
        path = parsed.path
    elif parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path
        path = url
    else:
        raise ValueError(f"backend URL {url!r}: unknown scheme {parsed.scheme!r} (use s3:// or file://)")
    from .disk import DiskBackend

    if not os.path.isdir(path):
        if os.path.exists(path):
            raise NotADirectoryError(errno.ENOTDIR, "backend path is not a directory", path)
        if not create:
            raise NoBackendDirectory(path)
        os.makedirs(path, mode=0o700, exist_ok=True)  # created here: private to its user
    return DiskBackend(path)
