"""Secrets as files for one command: ``mountctl exec --secret-files`` / ``--secret-file NAME``.

`SecretFiles` writes each value to a 0600 file in a new private directory on a tmpfs (memory, not
disk: nothing is left in disk blocks or a journal after removal) and removes the directory when
the command is over. Where, first that applies:

- ``$XDG_RUNTIME_DIR/stashfs-secrets/`` when ``$XDG_RUNTIME_DIR`` is a tmpfs directory of the user
  with mode 0700 (systemd-logind's ``/run/user/<uid>``, removed at logout);
- ``/dev/shm/stashfs-secrets-<uid>/`` (created 0700; refused if it is not ours, or not private);
- otherwise nothing: exec refuses rather than put secret values on a disk.

Each command's directory is ``exec-XXXXXXXX`` there, held with an ``flock`` on the directory by
mountctl *and* by the command (the locked descriptor is passed on to it), so the lock lasts as long
as either lives. A directory whose lock nobody holds was left by a run that was killed (SIGKILL, a
crash, a power cut does not count: tmpfs is empty after it) and is removed by `sweep`, which every
``mountctl exec`` calls. Creating and sweeping are serialised by an ``flock`` on the parent, so a
sweep never takes a directory that is being set up.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .store import SecretsError, check_name

__all__ = ["SecretFiles", "base_dir", "sweep", "ENV_PREFIX"]

ENV_PREFIX = "STASHFS_SECRET_FILE_"
TMPFS_TYPES = ("tmpfs", "ramfs")


def _mount_type(path: str) -> str:
    """The filesystem type of the mount holding ``path`` ("" if unknown)."""
    path = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mp = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
                inside = path == mp or path.startswith(mp.rstrip("/") + "/")
                if inside and len(mp) >= len(best):
                    best, kind = mp, fields[2]
    except OSError:
        return ""
    return kind


def _private_dir(path: Path) -> bool:
    """An existing real directory (no symlink) of ours that nobody else can enter."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0


def base_dir(create: bool = True) -> Path:
    """The private tmpfs directory that holds the per-command directories (made if ``create``)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and _private_dir(Path(xdg)) and _mount_type(xdg) in TMPFS_TYPES:
        base = Path(xdg) / "stashfs-secrets"
    elif _mount_type("/dev/shm") in TMPFS_TYPES:
        base = Path("/dev/shm") / f"stashfs-secrets-{os.geteuid()}"
    else:
        raise SecretsError("no tmpfs for secret files ($XDG_RUNTIME_DIR is not a private tmpfs directory "
                           "and /dev/shm is not a tmpfs): refusing to write secret values to a disk")
    try:
        if create:
            os.mkdir(base, 0o700)
        elif not os.path.lexists(base):
            return base
    except FileExistsError:
        pass
    if not _private_dir(base):
        raise SecretsError(f"{base} is not a private directory of this user (mode 0700): not using it "
                           "for secret files")
    return base


class _Locked:
    """An ``flock`` on a directory, exclusive; ``blocking=False`` raises BlockingIOError if held."""

    def __init__(self, path: Path, blocking: bool = True):
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _sweep_locked(base: Path) -> list[str]:
    removed = []
    for entry in os.scandir(base):
        if not entry.name.startswith("exec-") or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            lock = _Locked(Path(entry.path), blocking=False)
        except BlockingIOError:
            continue  # its command (or mountctl) still runs
        except FileNotFoundError:
            continue
        try:
            shutil.rmtree(entry.path)
            removed.append(entry.name)
        finally:
            lock.close()
    return removed


def sweep() -> list[str]:
    """Removes the directories that killed runs left behind; returns their names. Does nothing
    when there is no such place (no tmpfs), as then no run could have made one."""
    try:
        base = base_dir(create=False)
    except SecretsError:
        return []
    if not os.path.lexists(base):
        return []
    guard = _Locked(base)
    try:
        return _sweep_locked(base)
    finally:
        guard.close()


class SecretFiles:
    """A context manager: the files of ``values`` ({name: value}) while the block runs.

    ``paths`` maps each name to its file; ``environment()`` gives the ``STASHFS_SECRET_FILE_<NAME>``
    variables; ``lock_fd`` is the descriptor to pass on to the command (see the module doc).
    """

    def __init__(self, values: dict):
        self.values = {check_name(n): v for n, v in values.items()}
        self.dir: Path | None = None
        self.paths: dict = {}
        self._lock: _Locked | None = None

    def __enter__(self) -> "SecretFiles":
        base = base_dir()
        guard = _Locked(base)
        try:
            _sweep_locked(base)
            self.dir = Path(tempfile.mkdtemp(prefix="exec-", dir=base))  # 0700
            self._lock = _Locked(self.dir)
        finally:
            guard.close()
        try:
            for name, value in self.values.items():
                path = self.dir / name
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    data = memoryview(value.encode("utf-8", "surrogateescape"))
                    while data:
                        data = data[os.write(fd, data):]
                finally:
                    os.close(fd)
                self.paths[name] = str(path)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def lock_fd(self) -> int:
        return self._lock.fd if self._lock else -1

    def environment(self) -> dict:
        return {ENV_PREFIX + name: path for name, path in self.paths.items()}

    def close(self) -> None:
        """Removes the directory (whatever the command left in it) and releases the lock."""
        try:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def __exit__(self, *exc) -> None:
        self.close()
