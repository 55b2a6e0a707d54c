"""Removing for the ``stashfs://`` filesystem: ``rm_file``, ``rmdir``, ``rm`` (and what a move copied).

`Removal` is a part of `fsdriver.fsspec_fs.StashFileSystem`.  Like the mount, a directory on S3
keeps a marker when its last entry is removed (`_keep`), an empty pipeline loses its owner
record, and removing a record drops its TTL markers.
"""

from __future__ import annotations

import errno
from glob import has_magic

from . import kvexpiry, kvnames, owners, treeshape
from .fsspec_errors import os_errors
from .fsspec_listing import dir_entry
from .fsspec_paths import Place, resolve


class Removal:
    """The removing side of `StashFileSystem`."""

    def rmdir(self, path) -> None:
        place = resolve(self._strip_protocol(path))
        if place.depth < 2:
            raise PermissionError(errno.EPERM, f"{place.path or '/'}: the top of the tree is fixed", place.path)
        if self.info(place.path)["type"] != "directory":
            raise NotADirectoryError(errno.ENOTDIR, f"{place.path} is not a directory", place.path)
        found, entries = self._list(place)
        if entries:
            raise OSError(errno.ENOTEMPTY, f"{place.path} is not empty", place.path)
        self._remove_dir(place)
        self._keep_parent(place)

    def _remove_dir(self, place: Place, content: bool = False) -> None:
        """Remove a directory's marker (with ``content``: everything below it too)."""
        try:
            with os_errors(place.path):
                if content:
                    self.backend.delete_prefix(place.prefix)
                elif place.tree == "kv" and place.depth == 2:
                    self.backend.delete_prefix(place.prefix + kvnames.EXPIRES)
                self.backend.delete(place.prefix)
                if place.tree == "pipeline" and place.depth == 2:  # an empty pipeline is gone for good
                    owners.remove(self.backend, place.parts[1])
        finally:
            treeshape.recent_writes(self.backend).removed(place.key)  # the data API's memory too
            self.known.forget(place.path, tree=True)
            self.known.removed(place.path)

    def _remove_file(self, place: Place) -> None:
        try:
            with os_errors(place.path):
                self.backend.delete(place.key)
                if place.tree == "kv":
                    kvexpiry.drop_markers(self.backend, place.parent().prefix, place.parts[2])
        finally:
            treeshape.recent_writes(self.backend).removed(place.key)  # the data API's memory too
            self.known.forget(place.path)
            self.known.removed(place.path)

    def rm_file(self, path) -> None:
        place = resolve(self._strip_protocol(path))
        if place.depth < 3 or self.info(place.path)["type"] == "directory":
            raise IsADirectoryError(errno.EISDIR, f"{place.path or '/'} is a directory", place.path)
        self._remove_file(place)
        self._keep_parent(place)

    def _rm(self, path) -> None:
        self.rm_file(path)

    def rm(self, path, recursive=False, maxdepth=None) -> None:
        if isinstance(path, str) and recursive and maxdepth is None and not has_magic(path):
            place = resolve(self._strip_protocol(path))
            if place.depth >= 2 and self.info(place.path)["type"] == "directory":
                self._remove_dir(place, content=True)  # one listing and batch deletes on S3
                self._keep_parent(place)
                return
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for named in self._strip_protocol(path if isinstance(path, list) else [path]):
            if not has_magic(named):
                self.info(named)  # a missing path is FileNotFoundError before anything goes, as os.remove
        self._remove_each(paths)

    def _remove_each(self, paths, keep_full: bool = False) -> None:
        """Remove each of ``paths`` (files, and directories emptied by removing the others), then
        keep their parents; a directory still holding something is IsADirectoryError, or is kept
        with ``keep_full`` (what a move did not copy)."""
        removed, parents = set(), set()
        for p in sorted(paths, reverse=True):  # children before their directories
            place = resolve(p)
            try:
                info = self.info(place.path)
            except FileNotFoundError:
                removed.add(place.path)  # a directory on S3 that vanished with its last entry
                self.known.removed(place.path)
                continue
            if info["type"] == "file":
                self._remove_file(place)
            elif place.depth >= 2:
                if self._list(place)[1]:
                    if keep_full:
                        continue
                    raise IsADirectoryError(errno.EISDIR, f"{place.path} is a directory (recursive=True "
                                                          "removes it with its content)", place.path)
                self._remove_dir(place)
            else:
                raise PermissionError(errno.EPERM, f"{place.path or '/'}: the top of the tree is fixed", p)
            removed.add(place.path)
            parents.add(place.parent().path)
        for parent in sorted(parents - removed):
            self._keep(resolve(parent))

    def _keep_parent(self, place: Place) -> None:
        self._keep(place.parent())

    def _keep(self, directory: Place) -> None:
        """On S3 a directory whose last entry went away would vanish: give it a marker, as the
        mount does (a namespace and the directories below it stay until removed themselves)."""
        if not self._remote or directory.depth < 2:
            return
        with os_errors(directory.path):
            treeshape.keep_directory(self.backend, directory.key)  # as the data API does
        self.known.put(dir_entry(directory.path))
