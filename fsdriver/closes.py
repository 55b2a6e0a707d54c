"""Which close() uploads a file: the rule for descriptors that other processes inherited.

Every close() of a descriptor is a FUSE flush, including the ones a child process makes of the
descriptors it inherited (fork, then exec closes the close-on-exec ones; a shell's child; a daemon
that closes everything it did not open).  Uploading at each of them would upload a file being
written again at every spawn of its writer.  The rule (docs/semantics.md, "Which close() uploads"):

- a close() of a file written since its last upload uploads it, and is durable when it returns,
  unless the process that *opened* the file (the open's request context) still holds at least as
  many descriptors of that file open for writing as the file has writing handles (opens for
  writing not yet released, this one included, whoever made them): then the close came from a
  copy of one of the opener's descriptors (a child's, or a dup), the opener is still writing, and
  its own close (or any fsync) uploads.  Descriptors open for reading do not count (a writer that
  inherited some, ``exec 4<f; cmd > f``, is not taken for a copy of itself);
- when that cannot be told (the opener is gone, /proc is not readable for the daemon, the mount
  point is not known, the opener has more than MAX_FDS descriptors), the close uploads: the safe
  answer.

Descriptors are found by the path ``/proc/<pid>/fd`` links show (one ``readlink`` per descriptor
of the opener: procfs answers from memory); the daemon learns the opener's pid from FUSE at open/create.
"""

import os

MAX_FDS = 4096  # an opener with more descriptors than this is not looked at: its closes upload


def opener_holds(pid: int, path: str, handles: int, deleted: bool = False) -> bool:
    """Whether process ``pid`` still has at least ``handles`` descriptors open for writing on
    ``path`` (a file of this mount, as ``/proc/<pid>/fd`` shows it; ``deleted``: the file was
    unlinked, and the links end in " (deleted)").  False when it cannot be told."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to look at
        return False
    if len(fds) > MAX_FDS:  # too many to read on the daemon's event loop at every close
        return False
    if deleted:
        path += " (deleted)"
    found = 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target == path and _writable(pid, fd):
            found += 1
            if found >= handles:
                return True
    return False


def _writable(pid: int, fd: str) -> bool:
    """Whether descriptor ``fd`` of ``pid`` is open for writing (its ``flags`` in fdinfo); False
    when that cannot be told (then it does not count: the close uploads)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):
        pass
    return False
