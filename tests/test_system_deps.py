"""scripts/ensure-system-deps.sh (the first step of `make mount` and `make test`): it installs only
what is missing, and when another apt holds the dpkg lock (unattended-upgrades on a fresh machine)
it waits for it, bounded, instead of failing at once.

apt-get itself is replaced by a recorder on PATH: the test must not install anything; what it
checks is that every apt-get call carries the lock wait, and that nothing runs when nothing is
missing."""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ensure-system-deps.sh"


def run(tmp_path, packages, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    fake = bin_dir / "apt-get"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    p = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
                                STASHFS_DEB_PACKAGES=packages, **env))
    return p, (calls.read_text().splitlines() if calls.exists() else [])


def test_apt_waits_for_the_dpkg_lock(tmp_path):
    p, calls = run(tmp_path, "stashfs-no-such-package-xyz", APT_LOCK_TIMEOUT="7")
    assert p.returncode == 0, p.stderr
    assert len(calls) == 2 and calls[0].split()[-2:] == ["update", "-qq"]
    assert all("-o DPkg::Lock::Timeout=7" in c for c in calls), calls
    assert "stashfs-no-such-package-xyz" in calls[1]


def test_nothing_runs_when_nothing_is_missing(tmp_path):
    p, calls = run(tmp_path, "dpkg")  # always installed on Debian
    assert p.returncode == 0 and calls == [] and p.stdout == ""


def test_default_packages_include_the_tools_the_real_tools_tests_run(tmp_path):
    """tests/test_mount_tools.py runs rsync and git through the mount: `make test` installs them.
    dpkg-query is replaced as well (it reports nothing installed), so the whole default list shows."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name, body in (("apt-get", f'echo "$*" >> {calls}'), ("dpkg-query", "exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "STASHFS_DEB_PACKAGES"}
    p = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                       env=dict(env, PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert p.returncode == 0, p.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and {"rsync", "git"} <= set(lines[1].split()), lines
