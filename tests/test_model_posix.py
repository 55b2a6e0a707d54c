"""POSIX attributes through a real mount against a plain local directory (issue 11).

Random sequences of create/write/chmod/chown/utimensat/symlink/rename/unlink/mkdir/rmdir, and of
open/pread/pwrite/ftruncate/fsync/fstat/close on descriptors held open across steps, run as
root, on a tree inside ``/pipeline/<id>`` of a mount (disk and S3) and on a tree in a local
directory; after every step the two must agree on every path's type, mode bits, owner, group,
size, symlink target, content, on what every held descriptor reads and fstat shows (through an
unlink or a rename over its file too), and on the errno and result of each operation, and each
side's times must follow ext4's rules (tests/posixmodel.py states exactly what is compared, and
the time model). The mount has a short metadata TTL, so attributes are read back from the
backend between steps; after the run (descriptors closed) it is mounted afresh and every
example's final tree is compared again.

The reference check runs the same machine on two local directories: it keeps the harness and
its time model honest (it must pass whatever the mount does).

A longer search: ``STASHFS_MODEL_EXAMPLES=300 STASHFS_MODEL_STEPS=80 .venv/bin/python -m pytest
tests/test_model_posix.py``.
"""

import itertools
import os

import pytest
from hypothesis import Phase, settings

from .conftest import backend_env
from .fsmodel import machine_settings
from .mounting import force_unmount, make_mount, require_fuse
from .posixmodel import Side, check_after_remount, run

_n = itertools.count()
TTL = 0.05
EXAMPLES, STEPS = 20, 30


def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("chown to other users and files of any mode need root")


@pytest.mark.fuse
@pytest.mark.parametrize("kind", ["disk", "s3"])
def test_mount_against_a_local_directory(kind, request, tmp_path):
    _needs_root()
    require_fuse()
    url, env = backend_env(kind, request, tmp_path)
    m = make_mount(tmp_path, url, env, extra=["--metadata-ttl", str(TTL)])
    m.mount()
    finals = []
    try:
        def sides():
            n = next(_n)
            (tmp_path / f"ref{n}").mkdir()  # the roots' parents are fresh: "../x" is missing on both sides
            ns = m.path / "pipeline" / f"x{n}"
            ns.mkdir()
            # a tree one level down: /pipeline/<id> itself keeps its namespace owner and mode
            return Side(tmp_path / f"ref{n}" / "t", "local"), Side(ns / "t", f"mount ({kind})")

        # No shrinking through a mount: a mount's caches make some failures depend on timing, so
        # shrinking (minutes of examples on S3) mostly ends in hypothesis' "flaky" report; the
        # failure message lists the steps of the failing example instead.
        config = settings(machine_settings(examples=EXAMPLES, steps=STEPS),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
        run(sides, config, finished=lambda *final: finals.append(final))
        assert finals, "no example ran to its end"
        m.umount()
        m.mount()
        for root, snap, data in finals:
            check_after_remount(root, snap, data)
    finally:
        if m.mounted:
            m.umount()
        force_unmount(m.path)


def test_the_harness_on_two_local_directories(tmp_path):
    _needs_root()

    def sides():
        n = next(_n)
        for d in (f"ref{n}", f"twin{n}"):
            (tmp_path / d).mkdir()
        return Side(tmp_path / f"ref{n}" / "t", "local"), Side(tmp_path / f"twin{n}" / "t", "twin")

    run(sides, machine_settings(examples=EXAMPLES, steps=STEPS), strict_ctime=True, fine_clock=False)
