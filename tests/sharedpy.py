"""An interpreter with the project and its packages that other users (nobody, test users) can run.

The test interpreter may live where other users cannot go (pyenv under /root, which is 0700), and
so may the checkout.  `build` assembles, in a world-readable temp dir, the interpreter binary,
its shared library, the standard library, the venv's site-packages and this checkout's packages
(hard links where possible, copies otherwise: seconds, not minutes), plus a ``python3`` wrapper
that finds the shared library.  When the interpreter is usable by others as it is, it is used.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fsdriver", "mountctl")
PYTHON: str | None = None  # set by the `other_user_python` fixture (tests/conftest.py)


def usable_by(python: str, uid: int = 65534, gid: int = 65534) -> bool:
    p = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", python, "-c",
                        "import fsdriver.core, mountctl.cli"], capture_output=True, timeout=120, cwd="/")
    return p.returncode == 0


def _place(src: str, dst: str) -> None:
    """A hard link if others may read ``src`` as it is, else a world-readable copy."""
    mode = os.stat(src).st_mode
    if mode & 0o004:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
    os.chmod(dst, 0o755 if mode & 0o100 else 0o644)


def _tree(src: Path, dst: Path, skip=()) -> None:
    def ignore(d, names):
        return [n for n in names if n in skip or n.startswith("__editable__")]

    shutil.copytree(src, dst, ignore=ignore, copy_function=_place, symlinks=True, dirs_exist_ok=True)
    for d, dirs, _ in os.walk(dst):
        os.chmod(d, 0o755)


def build() -> Path:
    """A world-readable interpreter tree; returns its ``bin/python3`` wrapper."""
    root = Path(tempfile.mkdtemp(prefix="stashfs-python-"))
    os.chmod(root, 0o755)
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix)
    (root / "bin").mkdir()
    real = os.path.realpath(Path(sys._base_executable))
    _place(real, str(root / "bin" / ver))
    libdir = root / "lib"
    libdir.mkdir()
    for f in (base / "lib").glob("libpython*.so*"):
        _place(str(f), str(libdir / f.name))
    _tree(base / "lib" / ver, libdir / ver, skip={"site-packages", "test", "idlelib", "tkinter"})
    site = libdir / ver / "site-packages"
    _tree(Path(sysconfig.get_paths()["purelib"]), site)
    for pkg in PACKAGES:  # this checkout, in place of the editable install's path hook
        _tree(REPO / pkg, site / pkg, skip={"__pycache__"})
    wrapper = root / "bin" / "python3"
    wrapper.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH="{libdir}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" '
                       f'exec "{root / "bin" / ver}" "$@"\n')
    os.chmod(wrapper, 0o755)
    return wrapper


def remove(wrapper: Path) -> None:
    root = wrapper.parents[1]
    if root.name.startswith("stashfs-python-"):
        shutil.rmtree(root, ignore_errors=True)
