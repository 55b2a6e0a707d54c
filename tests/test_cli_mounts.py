"""Which mount `mountctl exec`, `umount` and `flush` act on when none is named (user trial
findings): the only stashfs mount, else the one at the configured mount point; with several and
none there they refuse rather than guess.  `exec --pipeline` claims the pipeline on the mount it
uses, or does not run the command.  And what `umount` and `flush` say of another user's mount."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fsdriver import owners
from fsdriver.access import login_name
from fsdriver.backend.disk import DiskBackend
from mountctl import mounts

from .mounting import force_unmount, make_mount, mountctl, require_fuse
from .namespaces import PrivateNamespace, open_namespace

TIMEOUT = 60
NOBODY = (65534, 65534)


def clean_env(tmp_path: Path, **extra) -> dict:
    """No stashfs settings of the machine; secrets, access log and config in the test's directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STASHFS_")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "no-config"), "XDG_STATE_HOME": str(tmp_path / "state"),
            "STASHFS_ORG_SECRETS_DIR": str(tmp_path / "org"), **extra}


def several(found: list, tail: str, configured: str = "/mnt/stashfs") -> str:
    return (f"mountctl: {len(found)} stashfs mounts on this machine ({', '.join(map(str, found))}), none at the "
            f"configured mount point {configured}: {tail}\n")


class PrivateMounts(PrivateNamespace):
    """A private mount namespace without the machine's stashfs mounts (other tests', other users'):
    there mountctl sees exactly the mounts the test makes.  Commands run in it through nsenter; its
    mounts are invisible outside."""

    def __init__(self):
        super().__init__()
        for mp in self.stashfs_mounts():  # copies of the machine's mounts: detached here only
            self.run("umount", "-l", mp)

    def mountctl(self, *args, env) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "mountctl", *args, env=env)

    def stashfs_mounts(self) -> list[str]:
        with open(self.mountinfo) as f:
            return sorted({mounts._unescape(line.split()[4]) for line in f
                           if line.partition(" - ")[2].split()[:1] == [mounts.FSTYPE]})

    def close(self) -> None:
        try:
            for mp in self.stashfs_mounts():
                self.run("fusermount3", "-u", "-z", mp)
        finally:
            super().close()


@pytest.fixture
def private_mounts():
    ns = open_namespace(PrivateMounts)
    try:
        assert ns.stashfs_mounts() == []
        yield ns
    finally:
        ns.close()


SHOW = 'echo "${STASHFS_PIPELINE_DIR-unset}" "${STASHFS_USER_DIR-unset}"; test -d "${STASHFS_PIPELINE_DIR-/}"'


def test_exec_umount_and_flush_take_the_only_mount_and_never_guess(private_mounts, tmp_path):
    """With no mount, one, two: the trial's "exec picked someone else's mount" and "--pipeline set
    STASHFS_PIPELINE_DIR to a directory that does not exist" and "umount: /mnt/stashfs is not a
    stashfs mount" (with several mounts), each with its exact line."""
    ns, env = private_mounts, clean_env(tmp_path)
    ran = tmp_path / "ran"
    me = login_name()
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    for d in (m1, m2, tmp_path / "be1", tmp_path / "be2"):
        d.mkdir()

    # No stashfs mount: --pipeline cannot claim anything, and CMD does not run.
    p = ns.mountctl("exec", "--pipeline", "p9", "--", "touch", ran, env=env)
    assert (p.returncode, p.stderr) == (1, "mountctl: no stashfs mount to claim pipeline p9 on, and none made: no "
                                           "backend configured ([mount] backend or $STASHFS_BACKEND)\n")
    assert not ran.exists()
    p = ns.mountctl("exec", "--", "sh", "-c", SHOW, env=env)  # secrets only: nothing to point at
    assert (p.returncode, p.stdout, p.stderr) == (0, "unset unset\n", "")
    for command, verb in (("umount", "unmount"), ("flush", "flush")):
        p = ns.mountctl(command, env=env)
        assert (p.returncode, p.stderr) == (1, f"mountctl: no stashfs mount on this machine: nothing to {verb}\n")

    # One mount: exec uses it, and --pipeline claims the pipeline on it (no backend configured).
    p = ns.mountctl("mount", m1, "--backend", tmp_path / "be1", "--cache-dir", tmp_path / "c1", env=env)
    assert p.returncode == 0, p.stderr
    p = ns.mountctl("exec", "--pipeline", "p9", "--", "sh", "-c", SHOW, env=env)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"{m1}/pipeline/p9 {m1}/user/{me}\n", ""), p.stderr
    assert owners.get(DiskBackend(tmp_path / "be1"), "p9").owner == me  # claimed: the daemon recorded its owner

    # Two mounts, none at the configured mount point: no guessing, one line, CMD does not run.
    p = ns.mountctl("mount", m2, "--backend", tmp_path / "be2", "--cache-dir", tmp_path / "c2", env=env)
    assert p.returncode == 0, p.stderr
    p = ns.mountctl("exec", "--", "touch", ran, env=env)
    assert (p.returncode, p.stdout, p.stderr) == (
        2, "", several([m1, m2], "name one with --mount MOUNTPOINT (or --no-mount to run with secrets only)"))
    p = ns.mountctl("exec", "--pipeline", "p10", "--", "touch", ran, env=env)
    assert (p.returncode, p.stderr) == (2, several([m1, m2], "name the one to claim pipeline p10 on with --mount "
                                                             "MOUNTPOINT"))
    assert not ran.exists() and os.listdir(ns.path(m1 / "pipeline")) == ["p9"]
    assert os.listdir(ns.path(m2 / "pipeline")) == []
    for command, verb in (("umount", "unmount"), ("flush", "flush")):
        p = ns.mountctl(command, env=env)
        assert (p.returncode, p.stderr) == (2, several([m1, m2], f"name the one to {verb} (mountctl {command} "
                                                                 "MOUNTPOINT)"))
    assert ns.stashfs_mounts() == [str(m1), str(m2)]

    # Named, or configured: that one.
    p = ns.mountctl("exec", "--no-mount", "--", "sh", "-c", SHOW, env=env)
    assert (p.returncode, p.stdout, p.stderr) == (0, "unset unset\n", "")
    p = ns.mountctl("exec", "--mount", m2, "--pipeline", "p10", "--", "sh", "-c", SHOW, env=env)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"{m2}/pipeline/p10 {m2}/user/{me}\n", "")
    configured = dict(env, STASHFS_MOUNTPOINT=str(m2))
    p = ns.mountctl("exec", "--pipeline", "p11", "--", "sh", "-c", SHOW, env=configured)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"{m2}/pipeline/p11 {m2}/user/{me}\n", "")
    p = ns.mountctl("umount", env=configured)
    assert (p.returncode, p.stderr) == (0, "") and ns.stashfs_mounts() == [str(m1)]
    p = ns.mountctl("exec", "--", "sh", "-c", SHOW, env=configured)  # the only mount again
    assert (p.returncode, p.stdout) == (0, f"unset {m1}/user/{me}\n")
    for command in ("flush", "umount"):
        p = ns.mountctl(command, env=env)
        assert (p.returncode, p.stderr) == (0, "")
    assert ns.stashfs_mounts() == []


def test_among_the_machines_mounts_exec_and_umount_refuse_to_guess(tmp_path):
    """The trial's situation, on the shared machine itself: this test's two mounts among whatever
    else is mounted.  Nothing is chosen for the user; a named mount is used and claimed on."""
    require_fuse()
    configured = tmp_path / "not-mounted"
    env = clean_env(tmp_path, STASHFS_MOUNTPOINT=str(configured))
    made = [make_mount(tmp_path, str(tmp_path / f"be{i}"), dict(os.environ), name=f"m{i}") for i in (1, 2)]
    try:
        for m in made:
            m.mount()
        ran = tmp_path / "ran"
        listing = rf"mountctl: \d+ stashfs mounts on this machine \(.+\), none at the configured mount point " \
                  rf"{re.escape(str(configured))}: "
        p = mountctl("exec", "--", "touch", str(ran), env=env, check=False, timeout=TIMEOUT)
        assert p.returncode == 2 and re.fullmatch(
            listing + r"name one with --mount MOUNTPOINT \(or --no-mount to run with secrets only\)\n", p.stderr), \
            p.stderr
        p = mountctl("exec", "--pipeline", "p9", "--", "touch", str(ran), env=env, check=False, timeout=TIMEOUT)
        assert p.returncode == 2 and re.fullmatch(
            listing + r"name the one to claim pipeline p9 on with --mount MOUNTPOINT\n", p.stderr), p.stderr
        assert not ran.exists() and not any((m.path / "pipeline" / "p9").exists() for m in made)
        for command, verb in (("umount", "unmount"), ("flush", "flush")):
            p = mountctl(command, env=env, check=False, timeout=TIMEOUT)
            assert p.returncode == 2 and re.fullmatch(
                listing + rf"name the one to {verb} \(mountctl {command} MOUNTPOINT\)\n", p.stderr), p.stderr
        assert all(mounts.is_stashfs(str(m.path)) for m in made)
        p = mountctl("exec", "--mount", str(made[0].path), "--pipeline", "p9", "--", "sh", "-c", SHOW, env=env,
                     check=False, timeout=TIMEOUT)
        assert (p.returncode, p.stdout, p.stderr) == (
            0, f"{made[0].path}/pipeline/p9 {made[0].path}/user/{login_name()}\n", "")
    finally:
        for m in made:
            if m.mounted:
                m.umount()
            force_unmount(m.path)


def test_prometheus_of_another_users_mount_leaves_it_out(other_user_python):
    """Trial finding: user nobody's `status --prometheus` gave root's healthy mount `stashfs_up 0`
    (an alert for a working mount, from a collector run as another user)."""
    require_fuse()
    base = Path(tempfile.mkdtemp(prefix="stashfs-others-"))
    os.chmod(base, 0o755)
    m = make_mount(base, str(base / "be"), dict(os.environ))
    try:
        m.mount()
        env = dict(os.environ, HOME=str(base), XDG_CONFIG_HOME=str(base / "nobody-config"))
        p = subprocess.run(["setpriv", f"--reuid={NOBODY[0]}", f"--regid={NOBODY[1]}", "--clear-groups",
                            other_user_python, "-m", "mountctl", "status", "--prometheus"],
                           env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
        assert p.returncode == 0, p.stderr
        assert f'mountpoint="{m.path}"' not in p.stdout and "# TYPE stashfs_up gauge" in p.stdout
        assert str(m.path) in p.stderr and "owner and root only" in p.stderr
        p = mountctl("status", "--prometheus", env=m.env, timeout=TIMEOUT)  # its owner: up
        assert f'stashfs_up{{mountpoint="{m.path}",backend="file://{base / "be"}"}} 1' in p.stdout.splitlines()
    finally:
        if m.mounted:
            m.umount()
        force_unmount(m.path)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("allow_other", [True, False])
def test_umount_and_flush_of_another_users_mount_say_permission_denied(other_user_python, allow_other):
    """User trial: user nobody's `mountctl umount` of root's mount said "the daemon does not answer
    (Permission denied)" though the daemon was fine."""
    require_fuse()
    base = Path(tempfile.mkdtemp(prefix="stashfs-others-"))  # user nobody must reach the mount point
    os.chmod(base, 0o755)
    m = make_mount(base, str(base / "be"), dict(os.environ), extra=["--allow-other"] if allow_other else [])
    try:
        m.mount()
        pid = m.status()["pid"]
        env = dict(os.environ, HOME=str(base), XDG_CONFIG_HOME=str(base / "nobody-config"))
        for args, what in ((["umount"], "unmount"), (["flush"], "flush"),
                           (["flush", "--discard-all"], "discard pending uploads of")):
            p = subprocess.run(["setpriv", f"--reuid={NOBODY[0]}", f"--regid={NOBODY[1]}", "--clear-groups",
                                other_user_python, "-m", "mountctl", *args, str(m.path)],
                               env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
            assert (p.returncode, p.stderr) == (
                1, f"mountctl: cannot {what} {m.path}: permission denied (only the user who mounted it and root may)\n")
        assert os.path.ismount(m.path) and m.status()["pid"] == pid  # untouched
    finally:
        if m.mounted:
            m.umount()
        force_unmount(m.path)
        shutil.rmtree(base, ignore_errors=True)
