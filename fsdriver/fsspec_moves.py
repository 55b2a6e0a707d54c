"""Moving for the ``stashfs://`` filesystem: ``mv``.

`Moving` is a part of `fsdriver.fsspec_fs.StashFileSystem`.  A move is a copy, then the removal of
what was copied (S3 has no rename).  fsspec's generic ``mv`` removes the whole source afterwards,
whatever the copy made of it: a directory moved into itself (``mv("d", "d/sub")``) was copied
below itself and then removed with the copy, and a file moved onto itself under another spelling
(``"/a"``, ``"stashfs://a"``) was removed.  Here the (source, destination) pairs are worked out
first, on normalised paths, by fsspec's own expansion (that of ``AbstractFileSystem.copy``):

- a pair whose destination is its source is left alone, as ``os.rename(a, a)`` does;
- a destination that is a moved source, or lies below one, refuses the move before anything is
  copied: EINVAL below a directory (rename(2)'s answer), ENOTDIR below a file;
- only what was copied is removed, name by name (one DELETE per file on S3, as each was one
  COPY): a file another writer adds to the tree during the move stays where it was written.
"""

from __future__ import annotations

import errno
from glob import has_magic

from fsspec.implementations.local import trailing_sep
from fsspec.utils import other_paths

from .fsspec_paths import resolve


class Moving:
    """The moving side of `StashFileSystem`."""

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs) -> None:
        for path in list(path1) if isinstance(path1, (list, tuple)) else [path1]:
            if not has_magic(self._strip_protocol(path)):
                self._check_movable(self._norm(path))
        if isinstance(path1, str) and isinstance(path2, str) and not has_magic(path1):
            if self._norm(path1) == self._norm(path2):
                self.info(path1)  # moving a missing path is FileNotFoundError, even onto itself
                return
        pairs = self._copy_pairs(path1, path2, recursive, maxdepth)
        moves = [(src, dst) for src, dst in pairs if src != dst]
        for src, _ in moves:  # what a glob matched too
            self._check_movable(src)
        self._check_moves(moves)
        for src, dst in moves:
            self._copy(resolve(src), resolve(dst), moving=True)
        # Only what was copied, one name at a time: a file another writer added to the tree meanwhile
        # is not removed with it (a removal of the whole prefix would lose it).
        self._remove_each([src for src, _ in moves], keep_full=True)

    @staticmethod
    def _check_movable(path: str) -> None:
        """As the mount's rename: a namespace has an owner and is not moved, nor is a tree."""
        if resolve(path).depth in (1, 2):
            raise PermissionError(errno.EPERM, f"{path}: namespaces and trees cannot be moved; move their "
                                  "content instead", path)

    def _norm(self, path) -> str:
        return resolve(self._strip_protocol(path)).path

    def _copy_pairs(self, path1, path2, recursive, maxdepth) -> list[tuple[str, str]]:
        """(source, destination) of each path ``copy(path1, path2, recursive, maxdepth)`` copies,
        normalised; a directory named without ``recursive`` is IsADirectoryError (the generic
        ``mv`` copied nothing of it and then removed it if it was empty)."""
        if isinstance(path1, list) and isinstance(path2, list):
            return [(self._norm(src), self._norm(dst)) for src, dst in zip(path1, path2)]
        source_is_str = isinstance(path1, str)
        paths1 = self.expand_path(path1, recursive=recursive, maxdepth=maxdepth)
        if source_is_str and (not recursive or maxdepth is not None):
            paths1 = [p for p in paths1 if not (trailing_sep(p) or self.isdir(p))]
            if not paths1:
                if recursive:
                    return []
                raise IsADirectoryError(errno.EISDIR, f"{self._norm(path1)} is a directory (recursive=True moves "
                                        "it with its content)", path1)
        dest_is_dir = isinstance(path2, str) and (trailing_sep(path2) or self.isdir(path2))
        exists = source_is_str and ((has_magic(path1) and len(paths1) == 1)
                                    or (not has_magic(path1) and dest_is_dir and not trailing_sep(path1)))
        paths2 = other_paths(paths1, path2, exists=exists, flatten=not source_is_str)
        return [(self._norm(src), self._norm(dst)) for src, dst in zip(paths1, paths2)]

    def _check_moves(self, moves: list[tuple[str, str]]) -> None:
        """Refuse a move whose destination is, or is below, a source it removes afterwards."""
        sources = {src for src, _ in moves}
        for src, dst in moves:
            inside = dst
            while inside:
                if inside in sources:
                    if inside != dst and not self.isdir(inside):
                        raise NotADirectoryError(errno.ENOTDIR, f"cannot move {src} to {dst}: {inside} is a "
                                                 "file, not a directory", dst)
                    what = "into itself" if inside == src else f"into {inside}, which this move removes"
                    raise OSError(errno.EINVAL, f"cannot move {src} {what} ({dst})", dst)
                inside = inside.rpartition("/")[0]
