"""Renames against the operations that name things by path, in one mount.

A rename moves a name and, for a directory, every path below it; the kernel lets other
operations run meanwhile on names below the moved directory (a lookup of ``a/d/f`` holds only
``a/d``'s lock while ``mv a b`` runs).  An operation of this mount that computed a path before an
await and used it after would act on the old place: a lookup racing ``mv a b`` found ``a/d/f``,
then gave the kernel a node at that old path, whose writes went to the old key (the old directory
came back in the backend, and ``b/d/f`` kept its old content); one that did not find it any more
answered ENOENT for ``b/d/f``.

`TreeLock` orders them:

- An operation *uses* the paths it names (`using`: a lookup ``parent/name``, a getattr the
  node's path, a readdir the directory's): it waits while a rename moves one of them or a
  directory above them, and holds them until it returns.
- A rename *moves* its source and its target, each with what is below it (`moving`): from the
  moment it asks, operations below those paths wait, and it waits for the ones under way there
  (and for an overlapping rename) to end.  So a rename never waits behind a stream of new
  lookups, and an operation never sees a half-moved tree.
- Operations elsewhere, and those on the moved name's parent (a listing of it shows the move as
  this mount's own change, `fsdriver.dircache`), go on meanwhile.  So do reads, writes and closes
  of open files: they name nothing (the staged file's lock orders an upload with the rename,
  `fsdriver.renames`).

A task that uses paths already may use them (or paths below them) again without waiting (an open
with O_TRUNC truncates): a rename waiting for its first use must not make its second one wait for
that rename.  Paths are computed again after each wait (a rename may have moved the parent
meanwhile).  Both blocks give the seconds they waited (a request's backend calls get them back:
`AsyncBackend`'s deadline is for the backend's answers, not for a rename's copies).

While a rename runs, the operations below what it moves wait in pyfuse3's request tasks; the daemon
allows enough of them (`fsdriver.daemon`) that requests elsewhere are still read meanwhile.
"""

from collections import Counter
from contextlib import asynccontextmanager
from typing import Callable, Iterable

import trio

Path = tuple


def _below(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it."""
    return path[:len(root)] == root


class TreeLock:
    def __init__(self):
        self._using: Counter = Counter()  # path -> operations under way that use it
        self._moving: list[Path] = []  # roots of the subtrees renames move (or wait to move)
        self._holders: dict = {}  # task -> the paths it uses (a list: nested uses add to it)
        self._wake = trio.Event()
        self._waiting = 0  # tasks waiting for a change (none: an operation's end wakes nobody)

    @property
    def moving_roots(self) -> list:
        """The subtrees renames move or wait to move now (for tests)."""
        return list(self._moving)

    @asynccontextmanager
    async def using(self, paths_of: Callable[[], Iterable[Path]]):
        """Hold the paths ``paths_of()`` gives (computed again after each wait) for the block;
        gives the seconds it waited."""
        task = trio.lowlevel.current_task()
        held = self._holders.get(task, [])
        started = trio.current_time()
        while True:
            paths = [p for p in paths_of() if p]
            if not any(_below(p, r) for p in paths for r in self._moving):
                break
            if all(any(_below(p, h) for h in held) for p in paths):
                break  # a nested use of what this task holds already: the rename waits for it
            await self._wait()
        waited = trio.current_time() - started
        self._using.update(paths)
        self._holders[task] = held + paths
        try:
            yield waited
        finally:
            self._using.subtract(paths)
            self._using += Counter()  # (drops the paths no longer used)
            if held:
                self._holders[task] = held
            else:
                self._holders.pop(task, None)
            self._notify()

    @asynccontextmanager
    async def moving(self, roots_of: Callable[[], Iterable[Path]]):
        """Hold the subtrees at ``roots_of()`` for a rename: no operation uses a path in them
        meanwhile (those under way are waited for, new ones wait); gives the seconds it waited."""
        started = trio.current_time()
        while True:
            roots = [r for r in roots_of() if r]
            if not any(_below(r, m) or _below(m, r) for r in roots for m in self._moving):
                break
            await self._wait()  # an overlapping rename first
        self._moving.extend(roots)  # from now on new operations below them wait
        try:
            while any(_below(p, r) for p in self._using for r in roots):
                await self._wait()
            yield trio.current_time() - started
        finally:
            for r in roots:
                self._moving.remove(r)
            self._notify()

    async def _wait(self) -> None:
        self._waiting += 1
        try:
            await self._wake.wait()
        finally:
            self._waiting -= 1

    def _notify(self) -> None:
        if self._waiting:
            self._wake.set()
            self._wake = trio.Event()
