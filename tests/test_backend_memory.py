"""The backend protocol tests of tests/test_backend.py, run against `MemoryBackend`, and its fault
injection (failures, gates, counters) on its own."""

import inspect
import threading

import pytest

from fsdriver.backend import CommonPrefix, ObjectInfo
from fsdriver.backend.memory import MemoryBackend
from fsdriver.errors import NotFound, PreconditionFailed, Unavailable

from . import test_backend

# Every protocol test that takes the parametrised ``backend`` fixture runs here on the memory
# backend (the module's own ``backend`` fixture below overrides conftest's for them).
for _name, _fn in vars(test_backend).copy().items():
    if _name.startswith("test_") and "backend" in inspect.signature(_fn).parameters:
        globals()[_name] = _fn


@pytest.fixture
def backend():
    return MemoryBackend()


def test_keys_and_prefixes_coexist_as_on_s3(backend):
    backend.put_bytes("a", b"file")
    backend.put_bytes("a/b", b"below")
    assert backend.lookup("a")[0].size == 4 and backend.lookup("a")[1] is True
    assert [type(e).__name__ for e in backend.list("a", "/")] == ["ObjectInfo", "CommonPrefix"]
    backend.put_bytes("d/", b"")
    backend.put_bytes("d/x", b"x")
    backend.delete("d/")  # a marker goes, the keys below it stay
    assert backend.get_range("d/x", 0) == b"x"
    assert backend.local_path("a") is None


def test_same_content_gets_a_new_etag_and_copies_too(backend):
    e1 = backend.put_bytes("k", b"same").etag
    e2 = backend.put_bytes("k", b"same").etag
    assert e1 != e2
    assert backend.copy("k", "c").etag not in (e1, e2)


def test_ranged_read_pinned_to_an_etag(backend):
    etag = backend.put_bytes("k", b"0123456789").etag
    assert backend.get_range("k", 2, 5, if_match=etag) == b"234"
    backend.put_bytes("k", b"0123456789")
    with pytest.raises(PreconditionFailed):
        backend.get_range("k", 2, 5, if_match=etag)


def test_rename_reports_the_new_objects(backend):
    backend.put_bytes("d/a", b"1")
    backend.put_bytes("d/s/b", b"22")
    moved = backend.rename("d/", "e/")
    assert set(moved) == {"e/a", "e/s/b"} and moved["e/s/b"].size == 2
    assert moved["e/a"].etag == backend.head("e/a").etag
    assert list(backend.list("d/")) == []
    assert set(backend.rename("e/a", "f")) == {"f"}
    with pytest.raises(NotFound):
        backend.head("e/a")
    with pytest.raises(NotFound):
        backend.rename("nothing/", "x/")
    with pytest.raises(NotFound):
        backend.rename("nothing", "x")


def test_pages_are_read_one_request_at_a_time():
    be = MemoryBackend(page_size=3)
    for k in ["p/a", "p/b/1", "p/b/2", "p/b/3", "p/c", "p/d", "p/e/1", "p/f"]:
        be.put_bytes(k, b"x")
    it = be.list("p/", "/")
    first = [next(it) for _ in range(3)]
    assert [e.key for e in first] == ["p/a", "p/b/", "p/c"] and be.calls["list.page"] == 1
    be.put_bytes("p/g", b"late")  # a later page is read later: it sees the new key
    assert [e.key for e in it] == ["p/d", "p/e/", "p/f", "p/g"]
    assert be.calls["list.page"] == 3
    assert isinstance(first[1], CommonPrefix) and isinstance(first[2], ObjectInfo)
    assert [e.key for e in be.list("p/", max_keys=2)] == ["p/a", "p/b/1"]


def test_injected_failures_once_always_and_by_prefix():
    be = MemoryBackend()
    be.put_bytes("x/k", b"v")
    be.fail("head", Unavailable("down"))
    with pytest.raises(Unavailable):
        be.head("x/k")
    assert be.head("x/k").size == 1  # once
    be.fail("get_range", Unavailable("down"), times=None, prefix="x/")
    be.put_bytes("y", b"w")
    assert be.get_range("y", 0) == b"w"  # another prefix
    for _ in range(3):
        with pytest.raises(Unavailable):
            be.get_range("x/k", 0)
    be.heal("get_range")
    assert be.get_range("x/k", 0) == b"v"
    assert be.calls["head"] == 2 and be.calls["get_range"] == 5 and be.calls["put_bytes"] == 2


@pytest.mark.parametrize("when", ["before", "after"])
def test_gate_holds_a_call_until_opened(when):
    be = MemoryBackend()
    gate = be.gate("put_bytes", prefix="k", when=when)
    done = threading.Event()
    t = threading.Thread(target=lambda: (be.put_bytes("k", b"v"), done.set()))
    t.start()
    gate.wait_entered()
    assert gate.key == "k" and not done.is_set()
    assert ("k" in be.contents()) == (when == "after")  # held before or after the put happened
    gate.open()
    t.join(20)
    assert done.is_set() and be.contents() == {"k": b"v"}
    be.put_bytes("k", b"w")  # a gate holds one call only


def test_a_gate_for_several_methods_holds_whichever_comes_first():
    be = MemoryBackend()
    gate = be.gate(("delete", "delete_many"), prefix="m/")
    t = threading.Thread(target=be.delete_many, args=(["x", "m/1"],))
    t.start()
    gate.wait_entered()
    assert gate.method == "delete_many" and gate.key == "x"
    gate.open()
    t.join(20)
    assert not t.is_alive()


def test_a_gate_never_opened_fails_the_call_not_the_test_run():
    be = MemoryBackend(gate_timeout=0.05)
    be.gate("check")
    with pytest.raises(AssertionError, match="never opened"):
        be.check()
