"""The inode table: which inode number names which path, and what we know about it.

Paths are tuples of names from the mount root: ``()`` is the root, ``("pipeline",)`` a tree,
``("pipeline", "p1")`` a namespace, deeper paths are files and directories inside it.
The kernel's lookup count is kept per node (lookup, create, mkdir and every accepted readdir entry
add one; forget subtracts); a node is dropped when the kernel has forgotten it and no handle has it
open.  Everything here runs on the trio thread and never awaits, so each method is atomic.
"""

import itertools
import time
from dataclasses import dataclass, field
from typing import Optional

from . import kvnames

ROOT_INO = 1  # FUSE's root inode number
CONTROL_INO = ROOT_INO + 1


@dataclass
class Listing:
    """A directory's children as last listed: name -> (is_dir, info or None).

    ``time`` is when the listing completed; it answers lookups for ``valid`` seconds: the metadata
    TTL, or for a directory that took long to list, five times as long as listing it took (so
    ``ls -l`` of a huge directory is served by its listing, not by one request per entry).
    """

    entries: dict
    time: float = field(default_factory=time.monotonic)
    valid: float = 0.0
    seq: int = 0  # InodeTable.seq when the listing started: its entries are as old as that


@dataclass(eq=False)
class Node:
    ino: int
    path: tuple
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    etag: Optional[str] = None
    attr_time: float = 0.0  # monotonic time the attributes were last fetched (0: never)
    lookups: int = 0
    open_count: int = 0  # open file handles, and directory handles (opendir)
    staged: object = None  # staging.StagedFile while the file has local data
    cache_etag: Optional[str] = None  # etag of the content the kernel page cache holds
    has_marker: Optional[bool] = None  # directories: a marker object is known to exist
    listing: Optional[Listing] = None  # directories: last listing, for lookups
    absent: dict = field(default_factory=dict)  # directories: name -> when a lookup found nothing
    # directories: changes made through this mount while a listing is in flight (name -> entry or
    # None), applied on top of that listing, whose entries are as old as its start
    edits: Optional[dict] = None
    listings_in_flight: int = 0
    unlinked: bool = False
    # InodeTable.seq when this mount last changed the object (upload, truncate, rename): what the
    # backend said in a request that started before that is older than what we know (see `observed`)
    changed: int = 0
    pins: int = 0  # directory handles whose snapshot lists this node (not yet sent to the kernel)
    mtime_wanted: Optional[float] = None  # utimens on a file being written: applied after upload
    # POSIX attributes of a file or directory inside a namespace (fsdriver.posixattrs.Meta), None
    # where the object carries none (defaults apply); ``meta_known``: read from an answer that
    # carries metadata (a HEAD, a disk listing, the directory index) or set here
    meta: object = None
    meta_known: bool = False
    nlink: int = 1  # hard links (disk backend); 0 once unlinked
    target: Optional[bytes] = None  # symbolic links: the target, once read or written
    index: object = None  # directories on S3: their index as last read (fsdriver.dirindex.Index)
    attrs_pending: bool = False  # directories: times or index rows changed here, not stored yet (kept until then)
    # directories: a listing of it or below it that found something proves it exists until then
    # (its name is looked up again without a request while that listing is in use)
    exists_until: float = 0.0
    # directories: when this mount last created, removed or renamed an entry in it (its clock)
    changed_entries: float = 0.0

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def is_store(self) -> bool:
        """A key/value store (/kv/<store>)."""
        return len(self.path) == 2 and self.path[0] == "kv"

    @property
    def in_store(self) -> bool:
        """A file directly inside a key/value store (/kv/<store>/<name>)."""
        return len(self.path) == 3 and self.path[0] == "kv" and not self.is_dir

    @property
    def is_scratch(self) -> bool:
        """A file in a store that is not a record: kept by this daemon only, never uploaded."""
        return self.in_store and kvnames.is_scratch(self.path[-1])

    @property
    def is_record(self) -> bool:
        return self.in_store and not kvnames.is_scratch(self.path[-1])

    @property
    def key(self) -> str:
        return "/".join(self.path)

    @property
    def prefix(self) -> str:
        return "/".join(self.path) + "/" if self.path else ""

    @property
    def display(self) -> str:
        return "/" + "/".join(self.path)


class InodeTable:
    def __init__(self):
        self._next = itertools.count(CONTROL_INO + 1)
        root = Node(ROOT_INO, (), True, mtime=time.time())
        root.lookups = 1  # never forgotten
        self.by_ino: dict[int, Node] = {ROOT_INO: root}
        self.by_path: dict[tuple, Node] = {(): root}
        # The inode number a path had when its node was dropped (the kernel forgot it): reused for
        # the same path and kind while the object exists, so st_ino of a path is stable (tar,
        # rsync and find compare it).  Removing or renaming the object forgets it.
        self._numbers: dict[tuple, tuple[int, bool]] = {}
        # A counter of this mount's changes.  A backend answer carries the value read when its
        # request started; it describes a node only if no change of ours came after that.
        self.seq = 0

    def changed(self, node: Node) -> None:
        """This mount just changed ``node``'s object: older backend answers must not overwrite it."""
        self.seq += 1
        node.changed = self.seq

    @staticmethod
    def observed(node: Node, seq: int) -> bool:
        """Whether an answer to a request that started at ``seq`` is at least as new as what we know."""
        return seq >= node.changed

    def __getitem__(self, ino: int) -> Node:
        return self.by_ino[ino]

    def get(self, ino: int) -> Optional[Node]:
        return self.by_ino.get(ino)

    def at(self, path: tuple) -> Optional[Node]:
        return self.by_path.get(path)

    def node_for(self, path: tuple, is_dir: bool) -> Node:
        """The node at ``path``, created if needed; a type change gets a new inode number."""
        node = self.by_path.get(path)
        if node is not None and node.is_dir == is_dir:
            return node
        if node is not None:
            self._detach(node)
        number = self._numbers.pop(path, None)
        ino = number[0] if number is not None and number[1] == is_dir and number[0] not in self.by_ino \
            else next(self._next)
        node = Node(ino, path, is_dir)
        self.by_ino[node.ino] = node
        self.by_path[path] = node
        return node

    def _detach(self, node: Node) -> None:
        """The path no longer names this node; the inode lives on until forgotten and closed."""
        if self.by_path.get(node.path) is node:
            del self.by_path[node.path]
        self.release_unreferenced(node)

    def remove(self, node: Node) -> None:
        node.unlinked = True
        node.nlink = 0
        self._forget_numbers(node.path, node.is_dir)
        self._detach(node)

    def _forget_numbers(self, path: tuple, tree: bool) -> None:
        self._numbers.pop(path, None)
        if tree and self._numbers:
            n = len(path)
            for p in [p for p in self._numbers if p[:n] == path]:
                del self._numbers[p]

    def move(self, node: Node, new_path: tuple) -> None:
        """Rename ``node`` (and, for a directory, every known node below it) to ``new_path``."""
        old = node.path
        self._forget_numbers(old, node.is_dir)
        self._forget_numbers(new_path, node.is_dir)
        moved = [n for p, n in self.by_path.items() if p[: len(old)] == old]
        for n in moved:
            if self.by_path.get(n.path) is n:
                del self.by_path[n.path]
        for n in moved:
            n.path = new_path + n.path[len(old):]
            displaced = self.by_path.get(n.path)
            if displaced is not None and displaced is not n:
                displaced.unlinked = True
                self._detach(displaced)
            self.by_path[n.path] = n

    def forget(self, ino: int, nlookup: int) -> None:
        node = self.by_ino.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.lookups -= nlookup
        self.release_unreferenced(node)

    def release_unreferenced(self, node: Node) -> None:
        """Drop a node nobody refers to any more (not the kernel, a handle, a listing snapshot or
        local content)."""
        if (node.ino == ROOT_INO or node.lookups > 0 or node.open_count > 0 or node.pins > 0
                or node.staged is not None or node.attrs_pending):
            return
        if self.by_ino.get(node.ino) is node:  # (not a newer node of the same number)
            del self.by_ino[node.ino]
        if self.by_path.get(node.path) is node:
            del self.by_path[node.path]
            if not node.unlinked:
                if len(self._numbers) >= 200_000:  # bounded: the oldest half goes
                    for p in list(self._numbers)[:100_000]:
                        del self._numbers[p]
                self._numbers[node.path] = (node.ino, node.is_dir)

    def children(self, parent: Node) -> list[Node]:
        n = len(parent.path) + 1
        return [c for p, c in self.by_path.items() if len(p) == n and p[:-1] == parent.path]

    def below(self, parent: Node) -> list[Node]:
        n = len(parent.path)
        return [c for p, c in self.by_path.items() if len(p) > n and p[:n] == parent.path]
