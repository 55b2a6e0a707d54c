"""Storage backends: one protocol (`base.Backend`), a disk and an S3 implementation.

`open_backend(url)` picks one from a URL:

- ``s3://bucket[/prefix]``         S3 or any S3-compatible endpoint
- ``file:///abs/path`` or a path   local disk
- nothing                          ``$STASHFS_BACKEND``, else ``backend`` in ``[mount]`` of the
                                   config file (`fsdriver.config`), else the embedded default,
                                   ``$XDG_DATA_HOME/stashfs`` (``~/.local/share/stashfs``)

An S3 endpoint not given as an option comes from ``endpoint_url`` in ``[mount]``, else boto3's own
``$AWS_ENDPOINT_URL``: the mount, the Python API and ``mountctl`` reach the same bucket.
"""

import os
from pathlib import Path
from urllib.parse import urlparse

from .base import Backend, CommonPrefix, ListEntry, ObjectInfo

__all__ = ["Backend", "CommonPrefix", "ListEntry", "ObjectInfo", "open_backend", "default_url", "resolve_url"]


def default_url() -> str:
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return "file://" + os.path.join(os.path.abspath(data_home), "stashfs")


def resolve_url(url: str | None = None) -> str:
    """The backend URL in force: the argument, else ``$STASHFS_BACKEND``, else the configured
    one, else the default."""
    from .. import config

    return url or os.environ.get("STASHFS_BACKEND") or config.mount_settings()["backend"] or default_url()


def open_backend(url: str | None = None, **options) -> Backend:
    """Open the backend named by ``url`` (see the module docstring).

    ``options`` go to the backend's constructor (for S3: ``endpoint_url``, ``max_connections``,
    timeouts, part sizes).
    """
    url = resolve_url(url)
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from .. import config
        from .s3 import S3Backend

        if options.get("endpoint_url") is None:
            options["endpoint_url"] = config.mount_settings()["endpoint_url"]
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

    os.makedirs(path, mode=0o700, exist_ok=True)  # created here: private to its user
    return DiskBackend(path)
