"""Helpers of the real-tools tests (tests/test_mount_tools.py): run a tool with a bounded timeout,
build a source tree with varied POSIX attributes, and compare two trees by `lstat`.

A tree's snapshot maps each relative path ("." for the root) to what a careful copy keeps: the
full st_mode (type and all 12 permission bits), uid and gid (optional), mtime to the second, and
for a regular file its size and a digest of its bytes, for a symlink its target (readlink).
"""

import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Owner of some entries of the source tree when the tests run as root: ids that need not exist in
# /etc/passwd, so tar keeps them as numbers.
OTHER_UID, OTHER_GID = 4321, 5432

# 2001-02-03 04:05:06 UTC and later: explicit old times, distinct per entry.
OLD = 981173106


@dataclass
class Place:
    """Where a scenario works: a fresh empty directory, and how to make its filesystem forget what
    it holds in memory (unmount and mount again; nothing for a local directory)."""
    dir: Path
    remount: Callable[[], None]
    kind: str = "local"


def run(args, *, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a command (a list, or a string for the shell) and capture its output as text."""
    return subprocess.run(args, shell=isinstance(args, str), capture_output=True, text=True,
                          timeout=timeout, **kw)


def ok(args, *, quiet: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command that must exit 0 (and, when ``quiet``, write nothing to stderr)."""
    p = run(args, **kw)
    shown = args if isinstance(args, str) else " ".join(map(str, args))
    assert p.returncode == 0, f"{shown} -> exit {p.returncode}\nstdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}"
    if quiet:
        assert p.stderr == "", f"{shown} wrote to stderr:\n{p.stderr[-3000:]}"
    return p


def build_tree(root: Path) -> Path:
    """A package-like tree at ``root`` (which must not exist), and ``root``:

        ./              0755                       bin/run.sh   0755 script: `run.sh X` prints "ran X"
        README          0644                       secret       0600 (other owner when root)
        data/           0750 (other owner)         data/nested/ 0755
        data/nested/blob.bin 0644, 70,000 bytes    data/empty   0644, empty
        data/up -> ../README                       link-to-readme -> README
        link-to-nested -> data/nested              dangling -> does-not-exist

    Every entry, symlinks included, has its own old mtime (set children first)."""
    files = {
        "bin/run.sh": (0o755, b'#!/bin/sh\necho "ran $1"\n'),
        "README": (0o644, b"a package\n"),
        "secret": (0o600, b"s3cr3t\n"),
        "data/nested/blob.bin": (0o644, hashlib.sha256(b"blob").digest() * 2187 + b"tail"),
        "data/empty": (0o644, b""),
    }
    dirs = {".": 0o755, "bin": 0o755, "data": 0o750, "data/nested": 0o755}
    links = {"data/up": "../README", "link-to-readme": "README", "link-to-nested": "data/nested",
             "dangling": "does-not-exist"}
    for d in sorted(dirs):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, (mode, data) in files.items():
        (root / name).write_bytes(data)
        os.chmod(root / name, mode)
    for name, target in links.items():
        os.symlink(target, root / name)
    for d, mode in dirs.items():
        os.chmod(root / d, mode)
    if os.geteuid() == 0:
        for name in ("secret", "data"):
            os.chown(root / name, OTHER_UID, OTHER_GID)
    # Deepest first, so setting a child's time does not touch its directory's afterwards.
    names = sorted([*files, *links, *dirs], key=lambda n: (-n.count("/"), n == ".", n))
    for i, name in enumerate(names):
        t = OLD + 86400 * i + i
        os.utime(root / name, (t, t), follow_symlinks=False)
    return root


def snapshot(root: Path, *, owners: bool = True) -> dict[str, dict]:
    """{relative path: attributes} of ``root`` and everything below it (symlinks not followed)."""
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        a = {"mode": oct(st.st_mode), "mtime": int(st.st_mtime)}
        if owners:
            a["owner"] = (st.st_uid, st.st_gid)
        if stat.S_ISREG(st.st_mode):
            a["size"] = st.st_size
            a["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        elif stat.S_ISLNK(st.st_mode):
            a["target"] = os.readlink(path)
        out[str(path.relative_to(root))] = a
    return out


def tree_diff(expected: dict, actual: dict) -> list[str]:
    """One line per path that is missing, extra, or has other attributes."""
    lines = []
    for name in sorted(expected.keys() | actual.keys()):
        e, a = expected.get(name), actual.get(name)
        if e != a:
            diff = {k: (e.get(k), a.get(k)) for k in e.keys() | a.keys()
                    if e.get(k) != a.get(k)} if e and a else None
            lines.append(f"{name}: " + (f"missing (expected {e})" if a is None else
                                        f"unexpected {a}" if e is None else
                                        ", ".join(f"{k} expected {x} got {y}" for k, (x, y) in sorted(diff.items()))))
    return lines


def assert_same_tree(expected: dict, root: Path, *, owners: bool = True) -> None:
    diff = tree_diff(expected, snapshot(root, owners=owners))
    assert not diff, f"{root} differs from its source:\n" + "\n".join(diff)


def build_wheel(out_dir: Path) -> Path:
    """A pure-Python wheel of package ``stashfs_demo`` (``VALUE = 42``) with a console script
    ``stashfs-demo`` that prints "demo 42"; built by hand, so no build backend (nor the ``wheel``
    package) and no network is needed to install it."""
    import base64
    import zipfile

    info = "stashfs_demo-1.0.dist-info"
    files = {
        "stashfs_demo/__init__.py": b'VALUE = 42\n\n\ndef main():\n    print("demo", VALUE)\n',
        "stashfs_demo/data.txt": b"package data\n",
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: stashfs-demo\nVersion: 1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: stashfs-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": b"[console_scripts]\nstashfs-demo = stashfs_demo:main\n",
    }
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
              for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / "stashfs_demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return wheel
