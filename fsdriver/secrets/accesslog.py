"""The per-user record of which secrets ``mountctl exec`` gave to which command.

One JSON line per exec, appended to ``$XDG_STATE_HOME/stashfs/secrets-access.log`` (default
``~/.local/state/stashfs/``; file 0600, directory 0700)::

    {"time": "2026-11-22T08:00:00Z", "user": "alice", "uid": 1000, "command": "python",
     "pipeline": "p42", "secrets": ["API_TOKEN"], "files": ["DB_PASSWORD"]}

``command`` is the base name of the program only (its arguments may hold anything), masked like
the command's output. Names, never values. The file is the user's own, so it is a record for the
user, not an audit trail: the user (and root) can edit it. When it passes `MAX_BYTES` it is renamed
to ``secrets-access.log.1`` (replacing the previous one), so at most twice that is kept.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import time
from pathlib import Path

__all__ = ["log_path", "record", "read", "MAX_BYTES"]

MAX_BYTES = 1 << 20


def log_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "stashfs" / "secrets-access.log"


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def record(command: str, secrets: list, files: list, pipeline: str | None = None) -> None:
    """Appends one line (OSError if the log cannot be written)."""
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "user": _user(), "uid": os.getuid(), "command": command, "pipeline": pipeline,
        "secrets": sorted(secrets), "files": sorted(files),
    }
    line = (json.dumps(entry, ensure_ascii=True) + "\n").encode()
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        # Concurrent execs: one write per line under the lock, and rotation by one of them only.
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size >= MAX_BYTES and os.path.samestat(os.fstat(fd), os.stat(path)):
            os.replace(path, path.with_name(path.name + ".1"))
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
    finally:
        os.close(fd)


def read() -> tuple[list, dict]:
    """(entries, oldest first, from the rotated file and the current one; {file: lines in it that
    are not readable}, for the files that have some)."""
    entries, bad = [], {}
    path = log_path()
    for p in (path.with_name(path.name + ".1"), path):
        try:
            text = p.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError
            except ValueError:
                bad[str(p)] = bad.get(str(p), 0) + 1
                continue
            entries.append(entry)
    return entries, bad
