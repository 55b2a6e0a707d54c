"""Durable local files: the write-fsync-rename-fsync steps every crash-safe write here needs."""

import os
import tempfile
from pathlib import Path


def fsync_dir(path) -> None:
    """Make a rename or create in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_temp(directory, data: bytes, prefix: str = "tmp-", suffix: str = "",
                 mode: int | None = None, group: int | None = None) -> str:
    """A new file in ``directory`` holding ``data``, fsynced; returns its path (removed on error).

    Mode and group are set before the first byte is written (mkstemp creates it 0600).
    """
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    try:
        if group is not None:
            try:
                os.fchown(fd, -1, group)
            except PermissionError:
                pass  # not a member of that group: the directory's group stays
        if mode is not None:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def replace_durably(tmp: str, path: Path) -> None:
    """Rename ``tmp`` over ``path`` and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)
