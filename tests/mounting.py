"""Mounting stashfs for tests: through `mountctl`, always unmounted in teardown."""

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fsdriver.configured import open_backend


def fuse_unusable_reason() -> str | None:
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse is not usable: {e.strerror}"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def require_fuse() -> None:
    reason = fuse_unusable_reason()
    if reason:
        if os.environ.get("STASHFS_REQUIRE_FUSE") == "1":
            pytest.fail(f"STASHFS_REQUIRE_FUSE=1 but {reason}")
        pytest.skip(reason)


def mountctl(*args, env=None, check=True, timeout=120) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "mountctl", *args], env=env, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"mountctl {' '.join(args)} -> {p.returncode}: {p.stderr}")
    return p


@dataclass
class Mount:
    path: Path
    url: str
    env: dict
    cache_dir: Path
    log_file: Path
    extra: list = field(default_factory=list)
    mounted: bool = False

    @functools.cached_property
    def backend(self):
        """The mount's backend, opened directly (to check and change objects behind its back)."""
        return open_backend(self.url, **({"endpoint_url": self.env["AWS_ENDPOINT_URL"]}
                                          if self.url.startswith("s3://") else {}))

    def mount(self) -> None:
        mountctl("mount", str(self.path), "--backend", self.url, "--cache-dir", str(self.cache_dir),
                 "--log-file", str(self.log_file), "--log-level", "DEBUG", *self.extra, env=self.env)
        self.mounted = True

    def status(self) -> dict:
        import json

        return json.loads(os.getxattr(self.path / ".stashfs-control", "user.stashfs.status"))

    def umount(self) -> subprocess.CompletedProcess:
        p = mountctl("umount", str(self.path), env=self.env, check=False)
        self.mounted = False
        return p

    def kill_daemon(self) -> None:
        """kill -9 the daemon and wait (bounded) for it to be gone; the dead mount stays."""
        pid = self.status()["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)  # waiting for a process to exit

    def kill9(self) -> None:
        self.kill_daemon()
        force_unmount(self.path)
        self.mounted = False

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


def status_section(stdout: str, mountpoint: Path) -> str:
    """The lines `mountctl status` prints for the mount at ``mountpoint``: its heading and the
    indented lines under it.  The command lists every stashfs mount on the machine (those of
    other tests running at the same time, other users' too), so a test reads its own."""
    lines, mine = [], False
    for line in stdout.splitlines():
        if not line.startswith(" "):
            mine = line.startswith(f"{mountpoint}: ")
        if mine:
            lines.append(line)
    assert lines, f"no status of {mountpoint} in:\n{stdout}"
    return "\n".join(lines) + "\n"


def force_unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30)


MADE: list = []  # mounts made during the current test: their logs are checked (tests/logguard.py)


def make_mount(tmp_path: Path, url: str, env: dict, name: str = "mnt", extra=()) -> Mount:
    path = tmp_path / name
    path.mkdir()
    if "://" not in url or url.startswith("file://"):
        # mountctl refuses a local backend directory that does not exist (a mistyped path): the
        # test's store exists, as a real one would.
        Path(url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    m = Mount(path, url, env, tmp_path / f"{name}-cache", tmp_path / f"{name}.log", list(extra))
    MADE.append(m)
    return m


@contextmanager
def mounted(tmp_path: Path, url: str, env: dict, name: str = "mnt", extra=()):
    """A real mount through the kernel (skipped where FUSE is unusable) for the ``with`` block:
    unmounted after it, lazily if need be, whatever happened in it."""
    require_fuse()
    m = make_mount(tmp_path, url, env, name, extra)
    m.mount()
    try:
        yield m
    finally:
        if m.mounted:
            m.umount()
        force_unmount(m.path)
