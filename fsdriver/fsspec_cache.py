"""What the fsspec filesystem learnt about paths lately: the mount's metadata TTL, for fsspec.

A bulk operation (copy, get, put, rm of a tree, a dask read of a directory) asks for the same
paths many times: after a listing, asking again within the TTL costs nothing.  The rules are the
mount's (docs/semantics.md): a change made elsewhere is seen at the latest one TTL later; a change
made through this filesystem is seen at once, because every change forgets what it touches.
What is missing is known only from a complete listing of its directory taken within the TTL
(and kept up to date by this filesystem's own writes and removals), as the mount does for the
create that follows a failed lookup.
"""

import time

MAX_ENTRIES = 100_000  # then everything is forgotten at once: the cache is an optimisation only


class MetaCache:
    def __init__(self, ttl: float = 1.0):
        self.ttl = ttl
        self._entries: dict[str, tuple[float, dict]] = {}
        self._listings: dict[str, tuple[float, set]] = {}  # directory -> (when, names in it)

    def get(self, path: str) -> dict | None:
        hit = self._entries.get(path)
        if hit is None or time.monotonic() - hit[0] >= self.ttl:
            return None
        return hit[1]

    def put(self, info: dict) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[info["name"]] = (time.monotonic(), info)

    def put_listing(self, directory: str, names) -> None:
        if self.ttl <= 0:
            return
        if len(self._listings) >= MAX_ENTRIES:
            self._listings.clear()
        self._listings[directory] = (time.monotonic(), set(names))

    def _names(self, directory: str) -> set | None:
        hit = self._listings.get(directory)
        if hit is None or time.monotonic() - hit[0] >= self.ttl:
            return None
        return hit[1]

    def absent(self, path: str) -> bool:
        """Whether a fresh listing of the parent shows that ``path`` does not exist."""
        parent, _, name = path.rpartition("/")
        names = self._names(parent)
        return names is not None and name not in names

    def added(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        names = self._names(parent)
        if names is not None:
            names.add(name)

    def removed(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        names = self._names(parent)
        if names is not None:
            names.discard(name)

    def clear(self) -> None:
        self._entries.clear()
        self._listings.clear()

    def forget(self, path: str, tree: bool = False, listing: bool = False) -> None:
        """``path`` and its ancestors (whose content changed); with ``tree``, also everything below
        it (a directory removed or replaced); with ``listing``, also the parent's listing (a change
        whose outcome is unknown)."""
        self._entries.pop(path, None)
        self._listings.pop(path, None)
        if tree:
            below = path + "/"
            for known in [k for k in self._entries if k.startswith(below)]:
                del self._entries[known]
            for known in [k for k in self._listings if k.startswith(below)]:
                del self._listings[known]
        if listing:
            self._listings.pop(path.rpartition("/")[0], None)
        while path:
            path = path.rpartition("/")[0]
            self._entries.pop(path, None)
