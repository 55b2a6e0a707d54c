"""POSIX permissions inside a shared pipeline, through real mounts (disk and S3), as three users
and root, with the exact errno of every refusal (issue 11, docs/permissions.md).

The users are those of tests/test_permissions.py (its `users` fixture: a, b outside the
organisation group, c in it) with **a** added to the group, so that here:

- ``OWNER`` (a) creates the pipeline and the files; it is in the organisation group ORG;
- ``MEMBER`` (c) is in ORG too: the pipeline (``0770 a:ORG``) lets it in, and inside, the POSIX
  rules apply to it as to anyone;
- ``OUTSIDER`` (b) is not in ORG: the namespace gate refuses it everything inside the pipeline
  (EACCES), whatever a file's own mode says;
- root passes every check but executing a file without any ``x`` bit.

The *other* class of a file's mode cannot be reached by a user outside the group (the gate stays,
and /kv records keep their store's mode), so it is tested with the member on files whose group is
the owner's own group (a's primary group, which c is not in): for those files c is "other".  The
pipeline is not setgid, so what is created in it gets its creator's uid and gid (POSIX); the owner
gives the files of the "group" class to ORG with a chgrp (itself one of the checked rules).  Only
in a directory a user made setgid does a new entry take the directory's group
(`test_new_entries_belong_to_their_creator`, `test_setgid_directory`).

The same tests run on a plain local directory made like the pipeline (``plain``): the reference,
which keeps the expectations honest.

Each probe runs as one user (setpriv with its groups, the system's stdlib-only interpreter) and
reports the errno of every operation (0 for success).
"""

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from .test_permissions import SYSTEM_PYTHON, _shared_mount, open_dir, users  # noqa: F401 (fixtures)

OWNER, MEMBER, OUTSIDER = "a", "c", "b"
MODES = (0o600, 0o640, 0o660, 0o644, 0o755)
SCRIPT = "#!/bin/sh\nexit 0\n"
T1, T2 = 1_600_000_000_123_456_789, 1_500_000_000_987_654_321  # explicit times (ns)

PROBE = r"""
import json, os, subprocess, sys
out = []
for op, path, *rest in json.loads(sys.argv[1]):
    try:
        if op == "read":
            with open(path, "rb") as f:
                f.read()
        elif op == "write":  # no truncation: the same bytes again leave the content as it was
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, rest[0].encode())
            finally:
                os.close(fd)
        elif op == "exec":
            rc = subprocess.run([path], cwd="/", capture_output=True).returncode
            out.append(0 if rc == 0 else 1000 + rc)
            continue
        elif op == "create":  # mode, umask
            os.umask(rest[1])
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, rest[0]))
        elif op == "mkdir":  # mode, umask
            os.umask(rest[1])
            os.mkdir(path, rest[0])
        elif op == "unlink":
            os.unlink(path)
        elif op == "rename":
            os.rename(path, rest[0])
        elif op == "chmod":
            os.chmod(path, rest[0])
        elif op == "chown":
            os.chown(path, rest[0], rest[1])
        elif op == "touch_now":
            os.utime(path, None)
        elif op == "touch_at":
            os.utime(path, ns=(rest[0], rest[0]))
        elif op == "stat":
            st = os.stat(path)
            out.append([st.st_uid, st.st_gid, st.st_mode & 0o7777])
            continue
        elif op == "times":
            st = os.stat(path)
            out.append([st.st_atime_ns, st.st_mtime_ns])
            continue
        else:
            raise ValueError(op)
        out.append(0)
    except OSError as e:
        out.append(e.errno)
print(json.dumps(out))
"""


def run(team, who: str, *ops) -> list:
    """Run ``ops`` as user ``who`` (its groups as the system says now) or as ``"root"``."""
    as_user = [] if who == "root" else [
        "setpriv", f"--reuid={team.names[who]}", f"--regid={team.gid(who)}", "--init-groups"]
    batch = [[op, str(path), *(str(r) if isinstance(r, Path) else r for r in rest)] for op, path, *rest in ops]
    p = subprocess.run(as_user + [SYSTEM_PYTHON, "-c", PROBE, json.dumps(batch)],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def team(users):
    """``users`` with the owner in the organisation group too (the member is in it already)."""
    subprocess.run(["usermod", "-a", "-G", users.org, users.names[OWNER]], check=True, capture_output=True, timeout=30)
    return users


class _Plain:
    """The reference: a local directory made like a pipeline (``0770 owner:ORG``: for someone
    outside ORG its mode refuses everything inside, as the namespace gate does), and nothing to
    remount.  Every expectation of this module holds there, as on ext4."""

    def umount(self):
        pass

    def mount(self):
        pass


@pytest.fixture(params=["disk", "s3", "plain"])
def pipe(request, open_dir, team):  # noqa: F811
    """A mount with --allow-other and ORG, and the pipeline ``shared`` the owner created."""
    if request.param == "plain":
        p = open_dir / "shared"
        p.mkdir()
        os.chown(p, team.uid(OWNER), team.org_gid())
        p.chmod(0o770)
        yield _Plain(), p
        return
    m, _ = _shared_mount(request, open_dir, team, kind=request.param)
    p = m.path / "pipeline" / "shared"
    assert run(team, OWNER, ("mkdir", p, 0o777, 0o022), ("stat", p)) == [
        0, [team.uid(OWNER), team.org_gid(), 0o770]]
    yield m, p
    m.umount()
    assert "Traceback" not in m.log()


def owner_file(team, path, mode: int, group: int | None = None):
    """A file of the owner's with ``SCRIPT`` in it, ``mode`` and (when given) ``group``."""
    ops = [("create", path, 0o600, 0), ("write", path, SCRIPT)]
    if group is not None:
        ops.append(("chown", path, -1, group))
    ops.append(("chmod", path, mode))
    assert run(team, OWNER, *ops) == [0] * len(ops), f"the owner could not make {path} ({mode:04o})"


def allowed(mode: int, cls: str, op: str) -> bool:
    """Linux's answer for a caller of class ``cls`` (owner, group, other, root)."""
    bit = {"read": 4, "write": 2, "exec": 1}[op]
    if cls == "root":
        return op != "exec" or bool(mode & 0o111)  # root executes only what has some x bit
    return bool(mode >> {"owner": 6, "group": 3, "other": 0}[cls] & bit)


def test_new_entries_belong_to_their_creator(pipe, team):
    m, p = pipe
    org, a, c = team.org_gid(), team.uid(OWNER), team.uid(MEMBER)
    ga, gc = team.gid(OWNER), team.gid(MEMBER)
    # in the pipeline (0770, not setgid): the creator's own uid and gid, new directories not setgid
    assert run(team, OWNER, ("create", p / "fa", 0o666, 0o022), ("stat", p / "fa")) == [0, [a, ga, 0o644]]
    assert run(team, MEMBER, ("create", p / "fc", 0o666, 0o027), ("mkdir", p / "dc", 0o777, 0o002),
               ("create", p / "dc" / "x", 0o750, 0o077), ("stat", p / "fc"), ("stat", p / "dc"),
               ("stat", p / "dc" / "x")) == [0, 0, 0, [c, gc, 0o640], [c, gc, 0o775], [c, gc, 0o700]]
    assert run(team, "root", ("create", p / "fr", 0o640, 0), ("stat", p / "fr")) == [0, [0, 0, 0o640]]
    # in a directory the owner made setgid (chgrp ORG, 2770): the directory's group, new directories setgid
    d = p / "sg"
    assert run(team, OWNER, ("mkdir", d, 0o777, 0), ("chown", d, -1, org), ("chmod", d, 0o2770), ("stat", d)) == [
        0, 0, 0, [a, org, 0o2770]]
    assert run(team, MEMBER, ("create", d / "fc", 0o666, 0o022), ("mkdir", d / "dc", 0o777, 0o022),
               ("create", d / "dc" / "x", 0o750, 0o077), ("stat", d / "fc"), ("stat", d / "dc"),
               ("stat", d / "dc" / "x")) == [0, 0, 0, [c, org, 0o644], [c, org, 0o2755], [c, org, 0o700]]
    assert run(team, "root", ("create", d / "fr", 0o600, 0), ("stat", d / "fr")) == [0, [0, org, 0o600]]
    names = ("fa", "fc", "dc", "dc/x", "fr", "sg", "sg/fc", "sg/dc", "sg/dc/x", "sg/fr")
    shown = {n: run(team, "root", ("stat", p / n))[0] for n in names}
    m.umount()
    m.mount()
    assert {n: run(team, "root", ("stat", p / n))[0] for n in names} == shown  # kept in the backend


def test_file_modes_decide_who_reads_writes_and_runs(pipe, team):
    _, p = pipe
    files = {}
    for mode in MODES:
        for cls, group in (("group", team.org_gid()), ("other", team.gid(OWNER))):
            path = p / f"{mode:o}-{cls}"
            owner_file(team, path, mode, group)
            files[path] = (mode, cls)
    ops = ("read", "write", "exec")
    for path, (mode, member_cls) in files.items():
        args = lambda op: (op, path, SCRIPT) if op == "write" else (op, path)  # noqa: E731
        for who, cls in ((OWNER, "owner"), (MEMBER, member_cls), ("root", "root")):
            want = [0 if allowed(mode, cls, op) else errno.EACCES for op in ops]
            assert run(team, who, *(args(op) for op in ops)) == want, f"{who} ({cls}) on {path.name}"
        # the gate: whatever the mode, someone outside the organisation group gets nothing
        assert run(team, OUTSIDER, ("stat", path), *(args(op) for op in ops)) == [errno.EACCES] * 4
        gid = team.org_gid() if member_cls == "group" else team.gid(OWNER)
        assert run(team, MEMBER, ("stat", path)) == [[team.uid(OWNER), gid, mode]]
        assert (path.read_bytes(), os.stat(path).st_mode & 0o7777) == (SCRIPT.encode(), mode)


def test_a_directorys_own_mode_decides_who_creates_and_removes(pipe, team):
    _, p = pipe
    owner_file(team, p / "f", 0o600)
    owner_file(team, p / "g", 0o600)
    # the pipeline (0770 a:ORG) lets the member remove and rename the owner's files, whatever their mode
    assert run(team, MEMBER, ("unlink", p / "f"), ("rename", p / "g", p / "g2")) == [0, 0]
    assert run(team, OUTSIDER, ("unlink", p / "g2")) == [errno.EACCES]
    # a directory of the owner's own group (its gid by default, in the non-setgid pipeline), 0755:
    # the member is "other" there (r-x)
    d = p / "private"
    assert run(team, OWNER, ("mkdir", d, 0o777, 0o022), ("chmod", d, 0o755), ("stat", d),
               ("create", d / "x", 0o644, 0o022)) == [0, 0, [team.uid(OWNER), team.gid(OWNER), 0o755], 0]
    assert run(team, MEMBER, ("read", d / "x"), ("create", d / "y", 0o644, 0), ("unlink", d / "x"),
               ("rename", d / "x", p / "x"), ("mkdir", d / "sub", 0o777, 0)) == [0] + [errno.EACCES] * 4
    assert run(team, OWNER, ("chmod", d, 0o700)) == [0]
    assert run(team, MEMBER, ("read", d / "x"), ("stat", d / "x")) == [errno.EACCES] * 2
    assert run(team, "root", ("read", d / "x"), ("create", d / "r", 0o600, 0)) == [0, 0]
    assert sorted(os.listdir(d)) == ["r", "x"]


def test_chmod_and_chown_rules(pipe, team):
    _, p = pipe
    f = p / "f"
    org, own, outsiders = team.org_gid(), team.gid(OWNER), team.gid(OUTSIDER)
    owner_file(team, f, 0o660, org)
    assert run(team, MEMBER, ("chmod", f, 0o666), ("chmod", f, 0o660)) == [errno.EPERM] * 2  # not the owner
    assert run(team, OUTSIDER, ("chmod", f, 0o666)) == [errno.EACCES]  # the gate first
    assert run(team, OWNER, ("chmod", f, 0o640), ("stat", f)) == [0, [team.uid(OWNER), org, 0o640]]
    assert run(team, "root", ("chmod", f, 0o664)) == [0]
    # chown: only root gives a file away; the owner may "give" it to itself
    assert run(team, OWNER, ("chown", f, team.uid(MEMBER), -1), ("chown", f, team.uid(OWNER), -1)) == [errno.EPERM, 0]
    assert run(team, MEMBER, ("chown", f, team.uid(MEMBER), -1)) == [errno.EPERM]
    # chgrp: the owner, to a group it belongs to
    assert run(team, OWNER, ("chown", f, -1, outsiders), ("chown", f, -1, own), ("stat", f)) == [
        errno.EPERM, 0, [team.uid(OWNER), own, 0o664]]
    assert run(team, MEMBER, ("chown", f, -1, org)) == [errno.EPERM]  # a member of ORG, but not the owner
    assert run(team, OWNER, ("chown", f, -1, org)) == [0]
    assert run(team, "root", ("chown", f, team.uid(MEMBER), team.gid(MEMBER)), ("stat", f)) == [
        0, [team.uid(MEMBER), team.gid(MEMBER), 0o664]]
    assert run(team, MEMBER, ("chmod", f, 0o600)) == [0]  # now it is the member's
    assert run(team, OWNER, ("chmod", f, 0o666), ("read", f)) == [errno.EPERM, errno.EACCES]
    assert os.stat(f).st_mode & 0o7777 == 0o600 and f.read_bytes() == SCRIPT.encode()


def test_who_may_set_times(pipe, team):
    _, p = pipe
    writable, readonly = p / "w", p / "r"
    owner_file(team, writable, 0o660, team.org_gid())
    owner_file(team, readonly, 0o640, team.org_gid())
    # explicit times: the owner or root only (EPERM), even for who may write the file
    assert run(team, MEMBER, ("touch_at", writable, T1), ("touch_at", readonly, T1)) == [errno.EPERM] * 2
    assert run(team, OWNER, ("touch_at", writable, T1), ("times", writable)) == [0, [T1, T1]]
    assert run(team, "root", ("touch_at", readonly, T2), ("times", readonly)) == [0, [T2, T2]]
    # the current time (touch without -d): also whoever may write it
    before = time.time_ns()
    assert run(team, MEMBER, ("touch_now", writable), ("touch_now", readonly)) == [0, errno.EACCES]
    after = time.time_ns()
    atime, mtime = run(team, OWNER, ("times", writable))[0]
    assert before - 10**7 <= mtime <= after and before - 10**7 <= atime <= after, (before, mtime, after)
    assert run(team, OWNER, ("times", readonly)) == [[T2, T2]]
    assert run(team, OUTSIDER, ("touch_now", writable), ("touch_at", writable, T1)) == [errno.EACCES] * 2


def test_sticky_directory(pipe, team):
    _, p = pipe
    tmp = p / "tmp"
    assert run(team, OWNER, ("mkdir", tmp, 0o777, 0), ("chmod", tmp, 0o1777), ("create", tmp / "fa", 0o666, 0),
               ("stat", tmp)) == [0, 0, 0, [team.uid(OWNER), team.gid(OWNER), 0o1777]]
    assert run(team, MEMBER, ("create", tmp / "fc", 0o666, 0), ("create", tmp / "fc2", 0o666, 0),
               ("create", tmp / "fc3", 0o666, 0)) == [0, 0, 0]
    # the member may write the owner's 0666 file, but not remove, rename or replace it
    assert run(team, MEMBER, ("write", tmp / "fa", "x"), ("unlink", tmp / "fa"), ("rename", tmp / "fa", tmp / "moved"),
               ("rename", tmp / "fc", tmp / "fa")) == [0, errno.EPERM, errno.EPERM, errno.EPERM]
    assert run(team, MEMBER, ("unlink", tmp / "fc")) == [0]  # its own
    assert run(team, OWNER, ("unlink", tmp / "fc2")) == [0]  # the directory's owner
    assert run(team, "root", ("unlink", tmp / "fc3")) == [0]
    assert sorted(os.listdir(tmp)) == ["fa"]


def test_setgid_directory(pipe, team):
    _, p = pipe
    sg, org = p / "sg", team.org_gid()
    assert run(team, OWNER, ("mkdir", sg, 0o777, 0o022), ("chown", sg, -1, org), ("chmod", sg, 0o2770),
               ("stat", sg)) == [0, 0, 0, [team.uid(OWNER), org, 0o2770]]
    c = team.uid(MEMBER)
    assert run(team, MEMBER, ("create", sg / "f", 0o666, 0o022), ("mkdir", sg / "d", 0o777, 0o022),
               ("create", sg / "d" / "g", 0o640, 0), ("stat", sg / "f"), ("stat", sg / "d"),
               ("stat", sg / "d" / "g")) == [0, 0, 0, [c, org, 0o644], [c, org, 0o2755], [c, org, 0o640]]
    assert run(team, "root", ("create", sg / "r", 0o600, 0), ("stat", sg / "r")) == [0, [0, org, 0o600]]


def test_setuid_and_setgid_are_cleared(pipe, team):
    _, p = pipe
    f, org = p / "f", team.org_gid()
    owner_file(team, f, 0o6770, org)
    assert run(team, OWNER, ("stat", f)) == [[team.uid(OWNER), org, 0o6770]]
    assert run(team, MEMBER, ("write", f, SCRIPT), ("stat", f)) == [0, [team.uid(OWNER), org, 0o770]]
    assert run(team, OWNER, ("chmod", f, 0o6770), ("write", f, SCRIPT), ("stat", f)) == [
        0, 0, [team.uid(OWNER), org, 0o770]]
    # root's writes keep them
    assert run(team, OWNER, ("chmod", f, 0o6770)) == [0]
    assert run(team, "root", ("write", f, SCRIPT), ("stat", f)) == [0, [team.uid(OWNER), org, 0o6770]]
    # setgid without group x (no setgid program) survives a write; setuid does not
    assert run(team, OWNER, ("chmod", f, 0o6760)) == [0]
    assert run(team, MEMBER, ("write", f, SCRIPT), ("stat", f)) == [0, [team.uid(OWNER), org, 0o2760]]
    # a chown by the owner clears them too
    assert run(team, OWNER, ("chmod", f, 0o6770), ("chown", f, -1, team.gid(OWNER)), ("stat", f)) == [
        0, 0, [team.uid(OWNER), team.gid(OWNER), 0o770]]
    # setting setgid on a file of a group the owner is not in: the bit is dropped
    assert run(team, "root", ("chown", f, -1, team.gid(OUTSIDER))) == [0]
    assert run(team, OWNER, ("chmod", f, 0o2770), ("stat", f)) == [0, [team.uid(OWNER), team.gid(OUTSIDER), 0o770]]
    assert f.read_bytes() == SCRIPT.encode()
