"""Where an fsspec path of the stashfs tree lives in the backend, and what may be written there.

A path is the mount's path without the leading "/": ``""`` (the root), ``pipeline`` (a tree),
``pipeline/<id>`` (a namespace), ``pipeline/<id>/a/b.csv`` (an object), ``kv/<store>/<key>.json``
(a record).  Names are validated with the mount's rules (`fsdriver.layout`, `fsdriver.kvnames`):
a bad one raises `InvalidName` (a ``ValueError``) naming the bad part before anything is read or
written.  Pure and synchronous: nothing here touches a backend.
"""

import errno
from dataclasses import dataclass

from . import kvnames, layout
from .errors import InvalidName


@dataclass(frozen=True)
class Place:
    """One path of the tree.  ``key`` is the backend key (a namespace's ends in "/")."""

    path: str
    parts: tuple

    @property
    def depth(self) -> int:
        return len(self.parts)

    @property
    def tree(self) -> str | None:
        return self.parts[0] if self.parts else None

    @property
    def key(self) -> str:
        return "/".join(self.parts)

    @property
    def prefix(self) -> str:
        """The key prefix of everything below this place ("" for the root)."""
        return self.key + "/" if self.parts else ""

    @property
    def is_record(self) -> bool:
        return self.tree == "kv" and self.depth == 3

    def parent(self) -> "Place":
        return Place("/".join(self.parts[:-1]), self.parts[:-1])


def resolve(path: str) -> Place:
    """The place of a path (without the protocol; leading and trailing "/" are ignored)."""
    if not isinstance(path, str):
        raise InvalidName(f"invalid path {path!r}: not a string")
    path = path.strip("/")
    if path == "":
        return Place("", ())
    parts = path.split("/")
    if "" in parts:  # (split_path would call the rest a leading "/")
        raise InvalidName(f"invalid path {path!r}: empty segment (a doubled '/')")
    layout.check_tree(parts[0])
    if len(parts) >= 2:
        layout.root_prefix(parts[0], parts[1])  # validates the pipeline id, user or store name
    if len(parts) >= 3:
        layout.split_path("/".join(parts[2:]))
    return Place(path, tuple(parts))


def check_writable(place: Place) -> None:
    """Refuse, as the mount does, a file where only directories may be: OSError or InvalidName."""
    if place.depth == 2:
        raise PermissionError(errno.EPERM, f"{place.path} is a namespace (a directory): files go inside it",
                              place.path)
    if place.depth < 3:
        where = "/" + place.parent().path if place.depth else "/"
        raise PermissionError(errno.EPERM, f"only namespace directories can be created in {where}", place.path)
    if place.tree == "kv":
        if place.depth > 3:
            raise PermissionError(errno.EPERM, "a store holds records (<key>.json files), not directories",
                                  place.path)
        check_record_name(place)


def check_record_name(place: Place) -> str:
    """The key of a record path; InvalidName for a name that is not ``<encoded key>.json``."""
    name = place.parts[-1]
    if kvnames.is_scratch(name):
        raise InvalidName(f"{place.path}: not a record name: files in a store are <key>.json records "
                          "(scratch files exist only in a mount)")
    return kvnames.key_of(name)


def is_listable_name(name: str) -> bool:
    """Whether a backend name can be shown as a file name (the mount hides the others)."""
    try:
        layout.check_segment(name)
    except InvalidName:
        return False
    return True
