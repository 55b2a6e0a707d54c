"""Directory markers where the backend keeps no empty directories (S3): a directory whose last
entry was deleted keeps an empty ``dir/`` object, so it stays as on disk and in the mount.

Used by the writers that delete without a mount's bookkeeping: the data API, fsspec,
`fsdriver.kv` and the expiry of records (`fsdriver.kvexpiry`, also run by the mount); see
`fsdriver.treeshape` for the rest of the rules those writers keep.
"""

from __future__ import annotations

from .backend import Backend
from .errors import PreconditionFailed

NAMESPACE_DEPTH = 2  # pipeline/<id>, user/<name>, kv/<store>


def keep_directory(backend: Backend, directory: str) -> None:
    """After a delete below ``directory`` (a namespace or a directory in one): on S3, give it a
    marker if nothing is left below it, so it stays as on disk and in the mount.  Never over a
    marker made meanwhile (it may hold the directory's attributes and index)."""
    if backend.keeps_empty_dirs or directory.count("/") < NAMESPACE_DEPTH - 1:
        return
    if has_entries(backend, directory):
        return
    try:
        backend.put_bytes(directory + "/", b"", if_none_match=True)
    except PreconditionFailed:
        pass


def has_entries(backend: Backend, directory: str) -> bool:
    """Whether any key (a marker included) starts with ``directory/``: one LIST of one key."""
    return next(iter(backend.list(directory + "/", max_keys=1)), None) is not None
