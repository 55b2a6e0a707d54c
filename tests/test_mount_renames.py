"""A directory rename on S3 through a real mount, against the requests below it and beside it
(`fsdriver.treelock`): those below wait for it, those elsewhere are served meanwhile."""

import os
import threading
import time

from .test_mount_failures import own_server  # noqa: F401  (a fixture: a moto server of the test's own)
from .test_mount_multipart import proxied  # noqa: F401  (a fixture: an S3 mount behind a fault proxy)

WAITERS = 150  # processes stat-ing below the rename: more than pyfuse3's default request tasks (99)


def _until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)  # polling an observable state, bounded


def test_requests_elsewhere_are_served_while_hundreds_wait_below_a_rename(proxied):
    m, proxy, _ = proxied
    root = m.path / "pipeline" / "p1"
    (root / "a" / "d").mkdir(parents=True)
    (root / "a" / "d" / "f").write_bytes(b"moved")
    (root / "other").mkdir()
    (root / "other" / "g").write_bytes(b"elsewhere")
    let_go = threading.Event()
    threads, errors, got = [], [], {}
    try:
        proxy.hold = let_go
        proxy.rule = lambda method, path: method == "PUT" and "/pipeline/p1/b/" in path  # the rename's copies

        def rename():
            try:
                os.rename(root / "a", root / "b")
            except OSError as e:
                errors.append((threading.current_thread().name, e))

        def stat(i):
            try:
                os.stat(root / "a" / "d" / f"missing-{i}")
            except FileNotFoundError:
                pass  # answered once the rename is done: a/ is gone
            except OSError as e:
                errors.append((threading.current_thread().name, e))

        def read():
            got["g"] = (root / "other" / "g").read_bytes()

        threads.append(threading.Thread(target=rename))
        threads[-1].start()
        _until(lambda: proxy.hits >= 1, "the rename's first copy")  # held: the rename is under way
        for i in range(WAITERS):
            threads.append(threading.Thread(target=stat, args=(i,)))
            threads[-1].start()
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(60)
        # served while the rename's copy is held and the stats wait for it (with pyfuse3's default
        # of 99 request tasks it was read only once the rename had failed: S3 did not answer)
        served = not reader.is_alive() and threads[0].is_alive()
    finally:
        let_go.set()
        for t in threads:
            t.join(120)
    assert served and got["g"] == b"elsewhere"
    assert not errors
    assert not any(t.is_alive() for t in threads)
    assert (root / "b" / "d" / "f").read_bytes() == b"moved"
    assert not (root / "a").exists()


def test_files_created_during_a_directory_rename_end_up_in_the_new_one(mount):
    """A loop creating files in ``d`` while ``mv d e`` runs (found by a real-tools trial): a create
    that looked ``d`` up before the move wrote its file under the old path after it, which made
    ``d`` again (disk: 9 rounds in 10; S3: every round, with tens of files).  Now every file whose
    close succeeded is in ``e``, and ``d`` is gone, in the mount and in the backend."""
    top = mount.path / "pipeline" / "p1"
    for r in range(5):
        d, e = top / f"d{r}", top / f"e{r}"
        d.mkdir(parents=True)
        for i in range(5):
            (d / f"old{i}").write_bytes(b"x")
        written, stop = [], threading.Event()

        def writer():
            i = 0
            while not stop.is_set():
                try:
                    with open(d / f"new{i}", "wb") as f:
                        f.write(b"new")
                    written.append(f"new{i}")
                except OSError:
                    pass  # ENOENT once d is gone
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            _until(lambda: len(written) >= 3, "the writer's first files")
            os.rename(d, e)
        finally:
            stop.set()
            t.join(60)
        assert not d.exists()
        assert sorted(os.listdir(e)) == sorted([f"old{i}" for i in range(5)] + written)
        keys = [x.key for x in mount.backend.list(f"pipeline/p1/d{r}/")]
        assert keys == [], keys
