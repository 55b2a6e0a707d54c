"""The backend's errors as the OSErrors fsspec callers expect, for the ``stashfs://`` filesystem
(`fsdriver.fsspec_fs`) and its files (`fsdriver.fsspec_file`): the Python APIs' mapping
(`fsdriver.apierrors`), so fsspec, `fsdriver.data` and `fsdriver.kv` raise the same errno for the
same failure (FileNotFoundError above all; a missing bucket ENXIO, an outage EIO, a lost
condition ESTALE; an open file words its own, `fsspec_file`).

A request the backend refuses as malformed (`InvalidRequest`) is EINVAL, as in the mount
(`fsdriver.errno_boundary`); a clash the disk backend refuses itself is EISDIR (`KeyIsPrefix`) or
ENOTDIR (`ParentIsObject`).  The other cases that deserve another errno are refused before the
request is made (a key too long for the backend: `NameTooLong`; a copy onto itself does nothing).
"""

from __future__ import annotations

from .apierrors import api_errors as os_errors

__all__ = ["os_errors"]
