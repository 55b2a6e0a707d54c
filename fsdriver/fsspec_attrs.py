"""The POSIX attributes a file of the mount keeps in its object's user metadata (mode, owner,
times: `fsdriver.posixattrs`), as the ``stashfs://`` filesystem treats them.

- A write that replaces a file keeps its attributes, with the write's mtime and ctime
  (`kept_attributes`), as a write through the mount does: a file made 0640 through the mount stays
  0640 when a pipeline rewrites it through fsspec.  It costs a HEAD of the file being replaced
  (a local stat on disk); a new file, which `_check_target` saw missing, costs nothing more.

Only files inside ``/pipeline/<id>`` and ``/user/<name>`` carry attributes (records and
namespaces show their namespace's).  Other user metadata is not kept, as in the mount.
"""

from __future__ import annotations

import os
import stat

from . import posixattrs
from .access import Caller
from .backend import Backend
from .errors import NotFound
from .fsspec_paths import Place


def has_attributes(place: Place) -> bool:
    return place.depth >= 3 and place.tree != "kv"


def kept_attributes(backend: Backend, place: Place) -> dict | None:
    """The user metadata a write replacing the file at ``place`` stores: the file's attributes
    as a write leaves them (mtime and ctime now, setuid/setgid cleared as Linux clears them for
    a writer who is not root); None when there is no file, or it carries none.  A symbolic link
    or special file is replaced by a regular file, which takes none of its attributes."""
    if not has_attributes(place):
        return None
    try:
        info = backend.head(place.key)
    except NotFound:
        return None
    old = posixattrs.from_headers(info.meta, info.mtime, is_dir=False)
    if old is None or not stat.S_ISREG(old.mode):
        return None
    new = old.touched(data=True)
    writer = Caller(os.getuid(), os.getgid(), os.getpid())
    return posixattrs.to_headers(new.with_(mode=posixattrs.mode_after_write(new.mode, new.gid, writer)))
