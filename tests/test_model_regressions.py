"""Failures the model-based test (tests/test_model_core.py) found, minimised and kept by name.

Each test replays the shrunk sequence through the same kernel emulation (`CoreDriver`), on disk
and on S3, and asserts what the model says this mount must show.
"""

import pytest

from .fsmodel import CoreDriver


@pytest.fixture
def core(backend, tmp_path):
    driver = CoreDriver(backend, tmp_path / "cache")
    yield driver
    driver.close()


def test_a_written_file_keeps_its_size_when_the_kernel_forgets_it(core):
    """Found on 873cd4c: write f1 (create), kernel_forgets, stat f1 -> size 0.  The create put an
    entry without attributes into the namespace's fresh listing; the node that answered the next
    lookup was built from that entry, with size 0."""
    core.write("f1", b"\x00", "trunc", 0)
    core.forget()
    assert core.stat("f1") == [(False, 1), (False, 1)]
    assert core.read("f1") == b"\x00"
    assert core.listdir("") == {"f1": (False, 1)}


def test_an_append_after_a_listing_reads_back(core):
    """Issue 10, item 1 (``ls -l d; echo more >> d/f1.txt; ls -l d; cat d/f1.txt``): a listing
    taken before the write must not overwrite what the write told the mount."""
    core.mkdir("a")
    core.write("a/f1", b"one\n", "trunc", 0)
    core.forget()
    assert core.listdir("a") == {"f1": (False, 4)}
    core.write("a/f1", b"more\n", "append", 0)
    assert core.listdir("a") == {"f1": (False, 9)}
    assert core.stat("a/f1") == [(False, 9), (False, 9)]
    assert core.read("a/f1") == b"one\nmore\n"


def test_a_truncate_after_a_listing_shows_the_new_size(core):
    core.write("f1", b"0123456789", "trunc", 0)
    core.forget()
    assert core.listdir("") == {"f1": (False, 10)}
    core.truncate("f1", 3)
    assert core.listdir("") == {"f1": (False, 3)}
    assert core.read("f1") == b"012"


def test_another_nodes_change_shows_once_the_ttl_passed(core):
    core.write("f1", b"mine", "trunc", 0)
    assert core.listdir("") == {"f1": (False, 4)}
    core.backend_put("f1", b"theirs, longer")
    core.backend_put("f2", b"new")
    core.advance(1.001)
    assert core.listdir("") == {"f1": (False, 14), "f2": (False, 3)}
    assert core.read("f1") == b"theirs, longer"
    core.backend_delete("f2")
    core.advance(1.001)
    assert core.listdir("") == {"f1": (False, 14)}


def test_a_renamed_file_keeps_its_size_when_the_kernel_forgets_it(core):
    """Found in the working tree of issue 10 (after the item 1 fix): write f2, rename f2 f1,
    kernel_forgets, ls -> f1 shown with 0 bytes.  The rename put an entry without attributes into
    the directory's fresh listing, and the next lookup built the node from it."""
    core.write("f2", b"\x00", "trunc", 0)
    core.rename("f2", "f1")
    core.forget()
    assert core.listdir("") == {"f1": (False, 1)}
    assert core.stat("f1") == [(False, 1), (False, 1)]


def test_an_append_to_a_renamed_file_keeps_its_content(core):
    """Same root cause, and data loss: write f2, rename f2 f1, kernel_forgets, append to f1 ->
    the backend holds only the appended bytes (the append was staged on a 0-byte base)."""
    core.write("f2", b"\x00", "trunc", 0)
    core.rename("f2", "f1")
    core.forget()
    core.write("f1", b"\x01", "append", 0)
    assert core.backend_get("f1") == b"\x00\x01"
    assert core.read("f1") == b"\x00\x01"
