"""A private mount namespace for a test: mounts made in it are invisible outside, and the
machine's own mounts (other tests', other users') can be detached in it without touching them.

A holder process (`unshare --mount --propagation private`) keeps the namespace alive; commands run
in it through `nsenter`; paths inside it are reached from outside through the holder's root."""

import os
import select
import shutil
import subprocess
from pathlib import Path

import pytest

from .mounting import require_fuse

TIMEOUT = 60


class PrivateNamespace:
    """``setup``: shell commands run in the namespace before it is ready (``$1``... from ``args``)."""

    def __init__(self, setup: str = "", args: tuple = ()):
        script = f"{setup} && echo ready && exec cat" if setup else "echo ready && exec cat"
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                                        "sh", *map(str, args)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([self.holder.stdout], [], [], TIMEOUT)
        if not ready or self.holder.stdout.readline() != b"ready\n":
            self.close()
            raise RuntimeError("no private mount namespace")

    def run(self, *cmd, env=None) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--target={self.holder.pid}", "--mount", *map(str, cmd)],
                              env=env, capture_output=True, text=True, timeout=TIMEOUT)

    def path(self, p: Path) -> Path:
        """``p`` as seen inside the namespace (through its root)."""
        return Path(f"/proc/{self.holder.pid}/root{p}")

    @property
    def mountinfo(self) -> str:
        return f"/proc/{self.holder.pid}/mountinfo"

    def close(self) -> None:
        self.holder.stdin.close()
        try:
            self.holder.wait(TIMEOUT)
        finally:
            if self.holder.poll() is None:
                self.holder.kill()


def open_namespace(cls, *args):
    """``cls(*args)``, a `PrivateNamespace`, or the test skipped where there can be none."""
    require_fuse()
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs root, unshare and nsenter for a private mount namespace")
    try:
        return cls(*args)
    except RuntimeError as e:
        pytest.skip(str(e))
