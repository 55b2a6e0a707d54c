"""Who owns each namespace, and who may use it: the daemon's side of docs/permissions.md.

`fsdriver.access` holds the rules (`Policy`); this module applies them to the tree: it knows the
owner of every namespace (`/user/<name>` from the user database, `/pipeline/<id>` from its owner
record in the backend, re-read after `OWNER_TTL` and kept through an outage, `/kv` from the mount's
settings) and answers EACCES/EPERM with the kernel's errnos.  User-database lookups may go to
LDAP/SSSD and run in worker threads, never on the trio thread.
"""

import errno
import logging
from typing import Optional

import trio

from . import owners
from .access import Caller, Owner, Policy
from .backend.aio import AsyncBackend
from .errors import BackendError
from .errno_boundary import FSError
from .inodes import Node

log = logging.getLogger("stashfs.fs")

OWNER_TTL = 30.0  # seconds a pipeline's owner record is reused before it is read again
OWNER_RETRY = 5.0  # seconds until an owner record that could not be read is tried again


class Namespaces:
    def __init__(self, policy: Policy, backend: AsyncBackend, mount_caller: Caller, clock):
        self.policy = policy
        self.backend = backend
        self.mount_caller = mount_caller
        self.clock = clock
        self.pipeline_owners: dict[str, tuple[Owner, float]] = {}  # id -> (owner, when read)

    def known_owner(self, ns: tuple) -> Owner:
        """The owner of a namespace without backend work (a pipeline's as last read)."""
        tree, name = ns
        if tree == "user":
            return self.policy.user(name)
        if tree == "kv":
            return self.policy.store()
        hit = self.pipeline_owners.get(name)
        return hit[0] if hit is not None else self.policy.pipeline(None)

    def owner_of(self, node: Node) -> Owner:
        """The owner that ``node``'s attributes show (the root, a tree, or its namespace's)."""
        if node.depth == 0:
            return self.policy.root()
        if node.depth == 1:
            return self.policy.tree(node.path[0])
        return self.known_owner(node.path[:2])

    async def owner(self, ns: tuple) -> Owner:
        """The owner of a namespace; a pipeline's record is read again after OWNER_TTL."""
        tree, name = ns
        if tree == "user" and not self.policy.users.known(name):
            # The user database may be remote (LDAP, SSSD): never ask it on the trio thread.
            await trio.to_thread.run_sync(self.policy.users.by_name, name)
        if tree != "pipeline":
            return self.known_owner(ns)
        hit = self.pipeline_owners.get(name)
        if hit is None or self.clock() - hit[1] > OWNER_TTL:
            when = self.clock()
            try:
                record = await self.backend.run(owners.get, self.backend.sync, name)
            except BackendError as e:
                if hit is None:
                    raise
                # An outage must not break files already in use: keep the owner known, retry soon.
                log.warning("/pipeline/%s: cannot read its owner record (%s); using the one read before", name, e)
                self.pipeline_owners[name] = (hit[0], when - OWNER_TTL + OWNER_RETRY)
                return hit[0]
            hit = (self.policy.pipeline(record.owner if record else None), when)
            self.pipeline_owners[name] = hit
        return hit[0]

    async def load_owners(self, tree: Node, names) -> None:
        """Learn the owners of many namespaces at once (``ls -l /pipeline``, ``ls -l /user``)."""
        if tree.path not in (("pipeline",), ("user",)):
            return

        async def load(name):
            try:
                await self.owner((tree.path[0], name))
            except BackendError as e:  # that entry shows as unowned; using it reads the record again
                log.info("/pipeline/%s: cannot read its owner record (%s)", name, e)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(load, name)

    @staticmethod
    def checked(path: tuple) -> bool:
        """Whether using ``path`` needs `enter`: anything in a namespace, and /kv itself."""
        return len(path) >= 2 or path == ("kv",)

    async def enter(self, caller: Optional[Caller], path: tuple) -> None:
        """EACCES unless ``caller`` may use the namespace ``path`` is in (or /kv, for ``("kv",)``)."""
        caller = caller or self.mount_caller
        owner = self.policy.store() if path[0] == "kv" else await self.owner(path[:2])
        if not self.policy.may_use(caller, owner):
            raise FSError(errno.EACCES, f"/{'/'.join(path[:2])}: {self._whose(path[:2], owner)}; "
                          f"denied to uid {caller.uid}", logging.INFO)

    def _whose(self, ns: tuple, owner: Owner) -> str:
        if ns[0] == "user":
            return f"private to user {ns[1]}"
        if ns[0] == "kv":
            return f"key/value stores are shared with group {owner.gid} only"
        shared = f" and group {owner.gid}" if owner.mode & 0o070 else ""
        return f"pipeline owned by {owner.name or f'uid {owner.uid}'}{shared}"

    async def create(self, caller: Optional[Caller], tree: str, name: str, exists: bool) -> None:
        """May ``caller`` create /tree/name?  Creating a pipeline records its owner (claims it);
        one that exists keeps its owner, or stays without one (only `mountctl pipeline chown`
        gives it one), and the mkdir fails with EEXIST."""
        caller = caller or self.mount_caller
        if tree == "user":
            if caller.uid != 0 and await trio.to_thread.run_sync(self.policy.users.name_of, caller.uid) != name:
                raise FSError(errno.EACCES, f"/user/{name}: only user {name} (or root) may create it; "
                              f"denied to uid {caller.uid}", logging.INFO)
        elif tree == "kv":
            await self.enter(caller, ("kv", name))
        elif not exists:
            who = await trio.to_thread.run_sync(self.policy.users.name_of, caller.uid)
            if who is None:
                raise FSError(errno.EACCES, f"/pipeline/{name}: uid {caller.uid} has no user name on this node, "
                              "so it cannot own a pipeline", logging.INFO)
            record = await self.backend.run(owners.claim, self.backend.sync, name, who, caller.uid)
            self.pipeline_owners[name] = (self.policy.pipeline(record.owner), self.clock())
            await self.enter(caller, ("pipeline", name))

    async def may_remove(self, caller: Optional[Caller], node: Node) -> None:
        """Stores: whoever may use /kv (EACCES).  User trees and pipelines: the sticky-bit rule of
        /user and /pipeline, with the kernel's errno for it (EPERM)."""
        caller = caller or self.mount_caller
        owner = await self.owner(node.path)
        if node.path[0] == "kv":
            if not self.policy.may_use(caller, owner):
                raise FSError(errno.EACCES, f"{node.display}: {self._whose(node.path, owner)}; "
                              f"denied to uid {caller.uid}", logging.INFO)
        elif not self.policy.may_remove(caller, owner):
            raise FSError(errno.EPERM, f"{node.display}: only its owner (uid {owner.uid}), the mount owner or root "
                          f"may remove it; denied to uid {caller.uid}", logging.INFO)

    def forget_pipeline(self, name: str) -> None:
        """An empty pipeline was removed: its owner is read again if it comes back."""
        self.pipeline_owners.pop(name, None)
