"""The core tests that are parametrised over backends (tests/test_core_freshness.py), run on the
in-memory backend too, and core failure paths on its S3 semantics driven by its fault injection:
a close racing a rename (S3's copy-then-delete).  (The outage test of test_core_freshness runs on
the memory backend itself.)"""

import inspect
import os

import pytest
import trio
import trio.testing

from fsdriver.backend.memory import MemoryBackend
from fsdriver.inodes import ROOT_INO

from . import test_core_freshness
from .memcore import entered, run_core
from .test_core_freshness import read_all

# Every test of test_core_freshness that takes the ``backend`` fixture, on the memory backend
# (this module's ``backend`` fixture overrides conftest's disk/s3 one for them).
for _name, _fn in vars(test_core_freshness).copy().items():
    if _name.startswith("test_") and "backend" in inspect.signature(_fn).parameters:
        globals()[_name] = _fn


@pytest.fixture
def backend():
    return MemoryBackend()


def test_close_during_a_copy_then_delete_rename_lands_at_the_new_name(tmp_path):
    async def body(fs, be, nursery):
        tree = (await fs.lookup(ROOT_INO, "pipeline")).ino
        ns = (await fs.mkdir(tree, "p1")).ino
        fh, _, _ = await fs.create(ns, "f", os.O_RDWR)
        await fs.write(fh, 0, b"v1")
        await fs.flush(fh)
        gate = be.gate("rename")
        nursery.start_soon(fs.rename, ns, "f", ns, "g", 0)
        await entered(gate)  # the rename is in the backend now

        async def write_and_close():
            await fs.write(fh, 0, b"v2")
            await fs.flush(fh)  # must not land on the old key, nor be deleted with it

        async with trio.open_nursery() as inner:
            inner.start_soon(write_and_close)
            await trio.testing.wait_all_tasks_blocked()
            gate.open()
        await fs.release(fh)
        files = {k: v for k, v in be.contents().items() if k.startswith("pipeline/")}
        assert files == {"pipeline/p1/": b"", "pipeline/p1/g": b"v2"}
        assert (await fs.lookup(ns, "g")).size == 2

    run_core(tmp_path, body)


def test_s3_directories_survive_their_last_file_and_move_with_new_etags(tmp_path):
    """On S3 a directory is only its keys: removing its last file must leave a marker; a renamed
    directory's objects are copies with new etags, which reads within the TTL must use."""
    async def body(fs, be, nursery):
        be.put_bytes("pipeline/p2/e/only", b"1")  # written elsewhere: no markers at all
        be.put_bytes("pipeline/p2/d/x", b"xx")
        be.put_bytes("pipeline/p2/d/sub/y", b"yyy")
        tree = (await fs.lookup(ROOT_INO, "pipeline")).ino
        ns = (await fs.lookup(tree, "p2")).ino
        e = (await fs.lookup(ns, "e")).ino
        await fs.unlink(e, "only")
        assert "pipeline/p2/e/" in be.contents()  # the directory stays
        assert (await fs.lookup(ns, "e")).is_dir
        d = (await fs.lookup(ns, "d")).ino
        x = (await fs.lookup(d, "x")).ino
        assert await read_all(fs, x) == b"xx"
        old = be.head("pipeline/p2/d/x").etag
        await fs.rename(ns, "d", ns, "moved", 0)
        assert be.head("pipeline/p2/moved/x").etag != old
        moved = (await fs.lookup(ns, "moved")).ino
        assert await read_all(fs, (await fs.lookup(moved, "x")).ino) == b"xx"
        sub = (await fs.lookup(moved, "sub")).ino
        assert await read_all(fs, (await fs.lookup(sub, "y")).ino) == b"yyy"
        assert not any(k.startswith("pipeline/p2/d/") for k in be.contents())

    run_core(tmp_path, body)
