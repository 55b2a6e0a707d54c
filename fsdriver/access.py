"""Who may use which namespace: owners, modes and the check on the caller's uid.

A *namespace* (``/user/<name>``, ``/pipeline/<id>``, ``/kv/<store>``) is the outer gate: whoever may
not use it is refused everything inside it.  Inside, files and directories carry their own POSIX
attributes, checked by `fsdriver.posixattrs`.  The modes the mount reports say the same thing, so
the kernel's ``default_permissions`` checks and the daemon's own checks (`may_use`, on the uid and
groups of the calling process) agree::

    /                       0755  mount owner
    /pipeline, /user        1777  mount owner         anyone may create (sticky: only the owner
                                                      of an entry, the mount owner or root removes it)
    /kv                     0770  mount owner:ORG     (0777 without an organisation group)
    /user/<name>            0700  <name>:<name's group>           files 0600, directories 0700
    /pipeline/<id>          0770  <owner>:ORG  (0700 <owner>:<owner's group> without ORG)
                                                      files 0660 (0600), directories as the namespace
                                                      (the defaults of objects without attributes)
    /kv/<store>             0770  mount owner:ORG  (0777)         records 0660 (0666)

Root may use everything.  A user tree whose name is not a user of this node, a pipeline whose
owner is not, and a damaged owner record all belong to root.  A pipeline without an owner record
(written by other tools) belongs to the mount owner.  A read-only mount clears every write bit.
Users are resolved through the system's user database (`pwd`, `grp`), so every node with the same
directory service agrees; see docs/permissions.md.
"""

import getpass
import grp
import os
import pwd
import stat
import time
from dataclasses import dataclass, field
from typing import Optional

NAME_TTL = 60.0  # seconds a user-database answer is reused


@dataclass(frozen=True)
class Owner:
    """The owner and mode of a namespace (the directory's mode; files get it without x bits)."""

    uid: int
    gid: int
    mode: int
    name: str = ""


@dataclass
class Caller:
    """The process a request comes from (FUSE's request context)."""

    uid: int
    gid: int
    pid: int = 0
    _groups: Optional[frozenset] = field(default=None, repr=False)

    def groups(self) -> frozenset:
        """The caller's groups as the kernel sees them: its gid and supplementary groups."""
        if self._groups is None:
            found = _proc_groups(self.pid) if self.pid > 0 else None
            if found is None:  # the process is gone: fall back to the user database
                try:
                    found = set(os.getgrouplist(pwd.getpwuid(self.uid).pw_name, self.gid))
                except (KeyError, OSError):
                    found = set()
            self._groups = frozenset(found | {self.gid})
        return self._groups


def _proc_groups(pid: int) -> Optional[set]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        return None
    return None


class Users:
    """Name <-> uid through the user database, answers reused for NAME_TTL seconds."""

    def __init__(self):
        self._by_name: dict[str, tuple] = {}
        self._by_uid: dict[int, tuple] = {}

    def known(self, name: str) -> bool:
        """Whether ``by_name`` answers from memory (the daemon asks the database off its loop)."""
        hit = self._by_name.get(name)
        return hit is not None and time.monotonic() - hit[1] <= NAME_TTL

    def by_name(self, name: str) -> Optional[tuple]:
        """``(uid, primary gid)`` of a user name, or None if there is no such user."""
        hit = self._by_name.get(name)
        if hit is None or time.monotonic() - hit[1] > NAME_TTL:
            try:
                pw = pwd.getpwnam(name)
                hit = ((pw.pw_uid, pw.pw_gid), time.monotonic())
            except KeyError:
                hit = (None, time.monotonic())
            self._by_name[name] = hit
        return hit[0]

    def name_of(self, uid: int) -> Optional[str]:
        hit = self._by_uid.get(uid)
        if hit is None or time.monotonic() - hit[1] > NAME_TTL:
            try:
                hit = (pwd.getpwuid(uid).pw_name, time.monotonic())
            except KeyError:
                hit = (None, time.monotonic())
            self._by_uid[uid] = hit
        return hit[0]


def group_id(name: str) -> int:
    """The gid of a group name (KeyError if there is none); numeric names are taken as gids."""
    if name.isdigit():
        return int(name)
    return grp.getgrnam(name).gr_gid


class Policy:
    """The ownership rules of one mount (see the module docstring)."""

    def __init__(self, mount_uid: int, mount_gid: int, org_gid: Optional[int] = None,
                 read_only: bool = False, users: Optional[Users] = None):
        self.mount_uid, self.mount_gid, self.org_gid = mount_uid, mount_gid, org_gid
        self.read_only = read_only
        self.users = users or Users()

    def _ro(self, mode: int) -> int:
        return mode & ~0o222 if self.read_only else mode

    # -- attributes --------------------------------------------------------------------------

    def root(self) -> Owner:
        return Owner(self.mount_uid, self.mount_gid, self._ro(0o755))

    def tree(self, tree: str) -> Owner:
        if tree == "kv":
            return self.store()
        return Owner(self.mount_uid, self.mount_gid, self._ro(0o1777))

    def store(self) -> Owner:
        """/kv and every store in it: shared by the organisation group (everyone without one)."""
        if self.org_gid is None:
            return Owner(self.mount_uid, self.mount_gid, self._ro(0o777))
        return Owner(self.mount_uid, self.org_gid, self._ro(0o770))

    def user(self, name: str) -> Owner:
        ids = self.users.by_name(name)
        uid, gid = ids if ids is not None else (0, 0)
        return Owner(uid, gid, self._ro(0o700), name if ids is not None else "root")

    def pipeline(self, owner_name: Optional[str]) -> Owner:
        """A pipeline owned by ``owner_name`` ("" for a damaged record, None for no record)."""
        if owner_name is None:
            uid, gid, name = self.mount_uid, self.mount_gid, ""
        else:
            ids = self.users.by_name(owner_name) if owner_name else None
            uid, gid = ids if ids is not None else (0, 0)
            name = owner_name if ids is not None else "root"
        if self.org_gid is None:
            return Owner(uid, gid, self._ro(0o700), name)
        return Owner(uid, self.org_gid, self._ro(0o770), name)

    @staticmethod
    def file_mode(owner: Owner) -> int:
        return stat.S_IFREG | (owner.mode & 0o666)

    @staticmethod
    def dir_mode(owner: Owner) -> int:
        return stat.S_IFDIR | owner.mode

    # -- decisions ---------------------------------------------------------------------------

    @staticmethod
    def may_use(caller: Caller, owner: Owner) -> bool:
        """May ``caller`` read, write and list inside a namespace with this owner?"""
        if caller.uid == 0 or caller.uid == owner.uid:
            return True
        if owner.mode & 0o007:
            return True
        return bool(owner.mode & 0o070) and owner.gid in caller.groups()

    def may_remove(self, caller: Caller, owner: Owner) -> bool:
        """May ``caller`` remove a namespace directory (the sticky-bit rule of /user, /pipeline)?"""
        return caller.uid in (0, owner.uid, self.mount_uid)


def login_name() -> str:
    """This process's user name, from its real uid (not from the environment): the identity the
    mount enforces, so it is also the one recorded as a pipeline's owner and checked by mountctl."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def current_user() -> str:
    """The user whose data and secrets a command means by default: ``$STASHFS_USER``, else the
    login name.  A default only, which the environment may change; what the mount enforces and
    records as an owner is `login_name`."""
    return os.environ.get("STASHFS_USER") or getpass.getuser()
