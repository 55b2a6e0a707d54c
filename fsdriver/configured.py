"""The configured backend: which one the mount, the Python API and mountctl use when not told.

The backend rule (docs/storage-layout.md): the ``url`` argument, else ``$STASHFS_BACKEND``, else
``backend`` in ``[mount]`` of the config file (`fsdriver.config`), else the local default
``$XDG_DATA_HOME/stashfs`` (``~/.local/share/stashfs``).  An S3 endpoint not given as an option
comes from ``endpoint_url`` in ``[mount]``, else boto3's own ``$AWS_ENDPOINT_URL``.

A local backend directory that is named (by any of the first three) must exist, as for the
mount: the Python APIs and mountctl refuse a mistyped path (`fsdriver.errors.NoBackendDirectory`)
unless told to create it (``create=True``, mountctl's ``--create``).

This module applies the rule and keeps one backend per URL for the whole process
(`shared_backend`); the factory it calls, `fsdriver.backend.open_url`, takes everything as
arguments and reads no configuration.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urlparse

from . import config
from .backend import Backend, open_url

_backends: dict[str, Backend] = {}
_backends_lock = threading.Lock()


def default_url() -> str:
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return "file://" + os.path.join(os.path.abspath(data_home), "stashfs")


def named_url(url: str | None = None) -> str | None:
    """The backend URL that is named: the argument, else ``$STASHFS_BACKEND``, else the
    configured one; None when none is (the default location applies)."""
    return url or os.environ.get("STASHFS_BACKEND") or config.mount_settings()["backend"] or None


def resolve_url(url: str | None = None) -> str:
    """The backend URL in force: the named one (`named_url`), else the default."""
    return named_url(url) or default_url()


def open_backend(url: str | None = None, *, create: bool = False, **options) -> Backend:
    """Open the backend the rule names (a new one on every call; see `shared_backend`).

    A local directory that is named must exist, as for the mount (`NoBackendDirectory`, a
    FileNotFoundError, names it): a mistyped path would read as an empty store.  ``create=True``
    makes it (the mount's ``--create``); the default location is always made.
    ``options`` go to the backend's constructor (for S3: ``endpoint_url``, ``max_connections``,
    timeouts, part sizes); a missing or None ``endpoint_url`` is the configured one.
    """
    named = named_url(url)
    url = named or default_url()
    if urlparse(url).scheme == "s3" and options.get("endpoint_url") is None:
        options["endpoint_url"] = config.mount_settings()["endpoint_url"]
    return open_url(url, create=create or named is None, **options)


def shared_backend(url: str | None = None, *, create: bool = False) -> Backend:
    """One backend per URL for the whole process (an S3 client is costly to create); ``create``
    as for `open_backend`."""
    named = named_url(url)
    url = named or default_url()
    with _backends_lock:
        if url not in _backends:
            _backends[url] = open_backend(url, create=create or named is None)
        return _backends[url]
