"""The directory index on S3 (fsdriver/dirindex.py), through the core on a moto server.

What must hold (issue 11, constraints 1-4): a listing shows each entry's own attributes with no
request per entry; what one node stored is what another shows; two nodes writing one directory do
not lose each other's rows; objects written by other tools (s3fs metadata) show their attributes
when looked up.
"""

import json
import os
import stat
import threading
from functools import partial

import pytest
import trio
import trio.testing

from fsdriver.backend.s3 import S3Backend
from fsdriver.core import Filesystem, Options
from fsdriver.errors import NameTooLong, Unavailable
from fsdriver.inodes import ROOT_INO
from fsdriver.staging import Cache


def new_backend(moto_server, s3_url) -> S3Backend:
    return S3Backend(s3_url.split("/")[2], "data", endpoint_url=moto_server.url)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run_nodes(tmp_path, backends, body, clock=None):
    """Run ``body(nodes)`` with one core per backend (each its own cache dir: separate nodes),
    on ``clock`` if given (one for all: `Clock`)."""

    async def main():
        nodes = []
        async with trio.open_nursery() as nursery:
            for i, backend in enumerate(backends):
                fs = Filesystem(backend, Cache(tmp_path / f"cache{i}"), Options(uid=0, gid=0),
                                **({"clock": clock} if clock is not None else {}))
                await nursery.start(fs.run)
                nodes.append(fs)
            with trio.fail_after(120):
                await body(nodes)
            nursery.cancel_scope.cancel()

    trio.run(main)


async def path_ino(fs, *names, create=False) -> int:
    ino = ROOT_INO
    for i, name in enumerate(names):
        try:
            ino = (await fs.lookup(ino, name)).ino
        except Exception:
            if not create:
                raise
            ino = (await fs.mkdir(ino, name, mode=0o755 if i >= 2 else None)).ino
    return ino


async def new_file(fs, parent, name, data=b"x", mode=0o644):
    fh, attr, _ = await fs.create(parent, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=mode)
    await fs.write(fh, 0, data)
    await fs.flush(fh)
    await fs.release(fh)
    return attr.ino


async def listed(fs, d):
    fh = await fs.opendir(d)
    try:
        return {name: fs.attr(node) for name, node in await fs.readdir(fh)}
    finally:
        fs.releasedir(fh)


def stored_row(moto_server, s3_url, prefix: str, name: str) -> dict:
    """The row of ``name`` in the index the marker ``prefix`` holds in the bucket."""
    body, _ = new_backend(moto_server, s3_url).get_object(prefix)
    return json.loads(body)["rows"][name]


def requests(fs) -> dict:
    return dict(fs.stats.as_dict()["backend_requests"])


def grew(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def test_another_node_lists_stored_attributes_without_a_request_per_entry(tmp_path, moto_server, s3_url):
    async def body(nodes):
        a, b = nodes
        d = await path_ino(a, "pipeline", "p1", "d", create=True)
        for i in range(40):
            ino = await new_file(a, d, f"f{i:02d}", mode=0o600)
            if i % 2:
                await a.setattr(ino, mode=stat.S_IFREG | 0o755, uid=1000 + i, gid=2000 + i)
        await a.setattr(await new_file(a, d, "old"), mtime_ns=1_600_000_000_123_456_789)
        await a.symlink(d, "ln", b"f00")
        sub = (await a.mkdir(d, "sub", mode=0o750)).ino
        await a.setattr(sub, uid=1234)
        want = {n: (x.mode, x.uid, x.gid, x.mtime) for n, x in (await listed(a, d)).items()}
        await a.flush_metadata()

        bd = await path_ino(b, "pipeline", "p1", "d")
        before = requests(b)
        seen = await listed(b, bd)
        used = grew(before, requests(b))
        assert {n: (x.mode, x.uid, x.gid, x.mtime) for n, x in seen.items()} == want
        assert seen["f01"].mode == stat.S_IFREG | 0o755 and seen["f01"].uid == 1001
        assert seen["f02"].mode == stat.S_IFREG | 0o600
        assert stat.S_ISLNK(seen["ln"].mode) and stat.S_ISDIR(seen["sub"].mode)
        assert seen["sub"].uid == 1234 and stat.S_IMODE(seen["sub"].mode) == 0o750
        assert seen["old"].mtime == 1_600_000_000.123456789
        assert used.get("head", 0) == 0, used  # no request per entry
        assert used.get("get_object", 0) <= 1 and used.get("list", 0) <= 1, used

    run_nodes(tmp_path, [new_backend(moto_server, s3_url) for _ in range(2)], body)


def test_two_nodes_writing_one_directory_keep_each_others_rows(tmp_path, moto_server, s3_url):
    async def body(nodes):
        a, b, c = nodes
        ad = await path_ino(a, "pipeline", "p1", "d", create=True)
        bd = await path_ino(b, "pipeline", "p1", "d")
        await listed(a, ad)
        await listed(b, bd)  # both know the same index version: their writes conflict
        for i in range(5):
            await new_file(a, ad, f"a{i}", mode=0o700)
            await new_file(b, bd, f"b{i}", mode=0o640)
        await a.flush_metadata()
        await b.flush_metadata()  # If-Match fails: reads a's index and merges
        cd = await path_ino(c, "pipeline", "p1", "d")
        before = requests(c)
        seen = await listed(c, cd)
        assert {n: stat.S_IMODE(x.mode) for n, x in seen.items()} == (
            {f"a{i}": 0o700 for i in range(5)} | {f"b{i}": 0o640 for i in range(5)})
        assert grew(before, requests(c)).get("head", 0) == 0

    run_nodes(tmp_path, [new_backend(moto_server, s3_url) for _ in range(3)], body)


def test_an_object_written_behind_the_index_is_read_once_and_indexed(tmp_path, moto_server, s3_url):
    async def body(nodes):
        a, b, c = nodes
        d = await path_ino(a, "pipeline", "p1", "d", create=True)
        await new_file(a, d, "mine")
        await a.flush_metadata()
        # s3fs writes its attributes as user metadata; boto3 here stands for it
        raw = new_backend(moto_server, s3_url)
        raw.put_bytes("pipeline/p1/d/theirs", b"data", meta={"mode": str(stat.S_IFREG | 0o711), "uid": "77",
                                                            "gid": "88", "mtime": "1500000000"})
        bd = await path_ino(b, "pipeline", "p1", "d")
        before = requests(b)
        seen = await listed(b, bd)
        assert grew(before, requests(b)).get("head", 0) == 1  # the one object the index lacks
        assert (seen["theirs"].mode, seen["theirs"].uid, seen["theirs"].gid) == (stat.S_IFREG | 0o711, 77, 88)
        assert seen["theirs"].mtime == 1_500_000_000
        await b.flush_metadata()  # b adds the row it read
        cd = await path_ino(c, "pipeline", "p1", "d")
        before = requests(c)
        assert stat.S_IMODE((await listed(c, cd))["theirs"].mode) == 0o711
        assert grew(before, requests(c)).get("head", 0) == 0

    run_nodes(tmp_path, [new_backend(moto_server, s3_url) for _ in range(3)], body)


def test_s3fs_attributes_show_when_a_file_is_looked_up(tmp_path, moto_server, s3_url):
    """A directory written by another tool has no index: its files show their own metadata when
    looked up by name (one HEAD each), the mount's defaults in a bare listing."""
    raw = new_backend(moto_server, s3_url)
    raw.put_bytes("pipeline/p1/ext/a", b"a", meta={"mode": str(stat.S_IFREG | 0o751), "uid": "5", "gid": "6"})
    raw.put_bytes("pipeline/p1/ext/link", b"a", meta={"mode": str(stat.S_IFLNK | 0o777)})

    async def body(nodes):
        (a,) = nodes
        d = await path_ino(a, "pipeline", "p1", "ext")
        await listed(a, d)
        got = await a.lookup(d, "a")
        assert (got.mode, got.uid, got.gid) == (stat.S_IFREG | 0o751, 5, 6)
        link = await a.lookup(d, "link")
        assert stat.S_ISLNK(link.mode) and await a.readlink(link.ino) == b"a"

    run_nodes(tmp_path, [new_backend(moto_server, s3_url)], body)


# -- found by review: conflicts between nodes, failures, read-only ---------------------------------


async def flushed(*nodes):
    for fs in nodes:
        await fs.flush_metadata()


def test_two_nodes_changing_one_files_attributes_keep_both_changes(tmp_path, moto_server, s3_url):
    """A metadata change keeps an S3 object's etag: the conflict must be seen on the metadata."""
    async def body(nodes):
        a, b, c = nodes
        ad = await path_ino(a, "pipeline", "p1", "d", create=True)
        f = await new_file(a, ad, "f", mode=0o644)
        bd = await path_ino(b, "pipeline", "p1", "d")
        bf = (await b.lookup(bd, "f")).ino  # b knows the file as it is now
        await a.setattr(f, uid=1234)
        await b.setattr(bf, mode=stat.S_IFREG | 0o600)  # b's view is older than a's chown
        await flushed(a, b)
        meta = new_backend(moto_server, s3_url).head("pipeline/p1/d/f").meta
        assert (meta["uid"], meta["mode"]) == ("1234", str(stat.S_IFREG | 0o600))
        cd = await path_ino(c, "pipeline", "p1", "d")
        seen = (await listed(c, cd))["f"]
        assert (seen.uid, stat.S_IMODE(seen.mode)) == (1234, 0o600)

    run_nodes(tmp_path, [new_backend(moto_server, s3_url) for _ in range(3)], body)


def test_a_chmod_elsewhere_shows_after_the_ttl_and_a_write_here_keeps_it(tmp_path, moto_server, s3_url):
    """A file this node knows, chmod-ed and touched by another node: once the TTL passed, looking it
    up again (what the kernel does) shows the new mode and mtime, though the LIST of its name
    carries no attributes and the change kept the object's etag; and this node's next write stores
    the file with them, not with the attributes it had seen before."""
    clock = Clock()

    async def main():
        a, b = (Filesystem(new_backend(moto_server, s3_url), Cache(tmp_path / f"cache{i}"),
                           Options(uid=0, gid=0, metadata_ttl=1.0), clock=clock) for i in range(2))
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            with trio.fail_after(120):
                ad = await path_ino(a, "pipeline", "p1", "d", create=True)
                f = await new_file(a, ad, "f", mode=0o644)
                await a.flush_metadata()
                bd = await path_ino(b, "pipeline", "p1", "d")
                assert stat.S_IMODE((await b.lookup(bd, "f")).mode) == 0o644  # b knows it
                clock.now += 5
                await a.setattr(f, mode=stat.S_IFREG | 0o600, mtime_ns=1_600_000_000_000_000_000)
                await a.flush_metadata()
                clock.now += 5  # b's TTL passed
                seen = await b.lookup(bd, "f")
                assert (stat.S_IMODE(seen.mode), seen.mtime_ns) == (0o600, 1_600_000_000_000_000_000)
                fh, _, _ = await b.open(seen.ino, os.O_WRONLY | os.O_TRUNC)
                await b.write(fh, 0, b"new content")
                await b.flush(fh)
                await b.release(fh)
                meta = new_backend(moto_server, s3_url).head("pipeline/p1/d/f").meta
                assert meta["mode"] == str(stat.S_IFREG | 0o600)  # not 0644 again
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_an_older_row_never_hides_a_newer_chmod(tmp_path, moto_server, s3_url):
    async def body(nodes):
        a, b, c = nodes
        ad = await path_ino(a, "pipeline", "p1", "d", create=True)
        await new_file(a, ad, "f", mode=0o644)  # a's row for f waits for its next round
        bd = await path_ino(b, "pipeline", "p1", "d")
        await b.setattr((await b.lookup(bd, "f")).ino, mode=stat.S_IFREG | 0o600)
        await b.flush_metadata()
        await a.flush_metadata()  # a's older row must not win over b's
        cd = await path_ino(c, "pipeline", "p1", "d")
        assert stat.S_IMODE((await listed(c, cd))["f"].mode) == 0o600

    run_nodes(tmp_path, [new_backend(moto_server, s3_url) for _ in range(3)], body)


def test_directory_times_written_later_keep_another_nodes_chmod(tmp_path, moto_server, s3_url):
    async def body(nodes):
        a, b = nodes
        pd = await path_ino(a, "pipeline", "p1", "d", create=True)
        sub = (await a.mkdir(pd, "sub", mode=0o755)).ino
        await a.flush_metadata()
        await new_file(a, sub, "x")  # a's new times for sub wait for its next round
        bd = await path_ino(b, "pipeline", "p1", "d", "sub")
        await b.setattr(bd, mode=stat.S_IFDIR | 0o700, uid=77)
        await a.flush_metadata()
        meta = new_backend(moto_server, s3_url).head("pipeline/p1/d/sub/").meta
        assert (meta["mode"], meta["uid"]) == (str(stat.S_IFDIR | 0o700), "77")

    run_nodes(tmp_path, [new_backend(moto_server, s3_url) for _ in range(2)], body)


def test_a_directory_removed_elsewhere_is_not_made_again_by_a_late_index_write(tmp_path, moto_server, s3_url):
    async def body(nodes):
        a, b = nodes
        pd = await path_ino(a, "pipeline", "p1", "d", create=True)
        sub = (await a.mkdir(pd, "sub", mode=0o755)).ino
        await a.flush_metadata()
        await new_file(a, sub, "x")  # a's row for x waits
        bsub = await path_ino(b, "pipeline", "p1", "d", "sub")
        await b.unlink(bsub, "x")
        await b.rmdir(await path_ino(b, "pipeline", "p1", "d"), "sub")
        await a.flush_metadata()
        keys = [e.key for e in new_backend(moto_server, s3_url).list("pipeline/p1/d/")]
        assert not any(k.startswith("pipeline/p1/d/sub") for k in keys), keys

    run_nodes(tmp_path, [new_backend(moto_server, s3_url) for _ in range(2)], body)


class FailingHeads(S3Backend):
    """HEADs of names starting with "bad" fail as an unreachable backend would."""

    def head(self, key):
        if key.rsplit("/", 1)[-1].startswith("bad"):
            from fsdriver.errors import Unavailable
            raise Unavailable(f"{key}: down (test)")
        return super().head(key)


@pytest.mark.expected_log(r"cannot be read now")
def test_a_listing_stands_when_heads_of_unindexed_entries_fail(tmp_path, moto_server, s3_url):
    async def body(nodes):
        a, b = nodes
        d = await path_ino(a, "pipeline", "p1", "d", create=True)
        await new_file(a, d, "ok")
        await a.flush_metadata()
        raw = new_backend(moto_server, s3_url)
        for name in ("bad1", "bad2", "bad3", "fine"):
            raw.put_bytes(f"pipeline/p1/d/{name}", b"x", meta={"mode": str(stat.S_IFREG | 0o700)})
        seen = await listed(b, await path_ino(b, "pipeline", "p1", "d"))
        assert set(seen) == {"ok", "bad1", "bad2", "bad3", "fine"}
        assert stat.S_IMODE(seen["fine"].mode) == 0o700

    bucket = s3_url.split("/")[2]
    run_nodes(tmp_path, [new_backend(moto_server, s3_url), FailingHeads(bucket, "data", endpoint_url=moto_server.url)],
              body)


def test_a_read_only_mount_writes_no_index(tmp_path, moto_server, s3_url):
    raw = new_backend(moto_server, s3_url)
    raw.put_bytes("pipeline/p1/d/", b"")
    raw.put_bytes("pipeline/p1/d/f", b"x", meta={"mode": str(stat.S_IFREG | 0o700)})

    async def main():
        fs = Filesystem(new_backend(moto_server, s3_url), Cache(tmp_path / "c"), Options(uid=0, gid=0, read_only=True))
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            d = await path_ino(fs, "pipeline", "p1", "d")
            assert stat.S_IMODE((await listed(fs, d))["f"].mode) == 0o500  # read-only: no write bits
            await fs.flush_metadata()
            assert fs.stats.as_dict()["backend_requests"].get("put_bytes", 0) == 0
            nursery.cancel_scope.cancel()

    before = raw.head("pipeline/p1/d/").etag
    trio.run(main)
    assert raw.head("pipeline/p1/d/").etag == before


def test_metadata_naming_no_owner_shows_the_mount_default_owner(tmp_path, moto_server, s3_url):
    raw = new_backend(moto_server, s3_url)
    raw.put_bytes("pipeline/p1/d/f", b"x", meta={"mode": str(stat.S_IFREG | 0o755)})  # aws s3 cp --metadata

    async def main():
        fs = Filesystem(new_backend(moto_server, s3_url), Cache(tmp_path / "c"),
                        Options(uid=0, gid=0, default_uid=4321, default_gid=5432))
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            got = await fs.lookup(await path_ino(fs, "pipeline", "p1", "d"), "f")
            assert (got.mode, got.uid, got.gid) == (stat.S_IFREG | 0o755, 4321, 5432)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_chmod_whose_row_was_lost_is_not_hidden_by_the_files_older_row(tmp_path, moto_server, s3_url):
    """A chmod on S3 copies the object onto itself: a single-part object keeps its etag, only its
    Last-Modified moves.  When the node that made it dies before its index row is written (about
    a second later), or unmounts during an outage, the index keeps the row of the file's write.
    That row was trusted for any Last-Modified up to 2 s after it, so every node showed the old
    mode for ever.  A copy a second or more after the row's write is now told apart (one HEAD)."""

    async def body(nodes):
        a, b = nodes
        d = await path_ino(a, "pipeline", "p1", "d", create=True)
        await new_file(a, d, "f", mode=0o644)
        await a.flush_metadata()  # the file's row, mode 644
        key = "pipeline/p1/d/f"
        await trio.sleep(1.1)  # time passing (Last-Modified has whole seconds), not a wait for an event
        info = a.sync_backend.head(key)
        meta = dict(info.meta, mode=str(stat.S_IFREG | 0o600))
        a.sync_backend.set_meta(key, meta, if_match=info.etag)  # the chmod; its row is never written
        assert a.sync_backend.head(key).etag == info.etag  # (else this test shows nothing)
        bd = await path_ino(b, "pipeline", "p1", "d")
        assert (await listed(b, bd))["f"].mode == stat.S_IFREG | 0o600

    run_nodes(tmp_path, [new_backend(moto_server, s3_url) for _ in range(2)], body)


@pytest.mark.expected_log("directory index not written")
def test_the_unmounts_flush_reports_the_index_rows_it_could_not_write(tmp_path, moto_server, s3_url):
    """A failed index write is queued again for the next round; at unmount there is none, so the
    flush says which directories' rows were not written (the daemon logs them as an error; it
    used to say nothing and exit as if all was stored)."""
    from fsdriver.errors import Unavailable

    async def body(nodes):
        (a,) = nodes
        d = await path_ino(a, "pipeline", "p1", "d", create=True)
        await a.flush_metadata()
        ino = await new_file(a, d, "f")
        await a.setattr(ino, mode=stat.S_IFREG | 0o600)
        real = a.sync_backend.put_bytes

        def down(*args, **kwargs):
            raise Unavailable("down")

        a.sync_backend.put_bytes = down
        assert "/pipeline/p1/d" in [n.display for n in await a.flush_metadata()]
        a.sync_backend.put_bytes = real
        a.dirindex._due.clear()  # (the backoff the failure set)
        assert await a.flush_metadata() == []

    run_nodes(tmp_path, [new_backend(moto_server, s3_url)], body)


class _Hold:
    """One call held in its worker thread until the test opens it (bounded both ways)."""

    def __init__(self, key: str):
        self.key, self.entered, self.opened = key, threading.Event(), threading.Event()
        self.done = threading.Event()  # the call returned (or failed)

    def hold(self) -> None:
        self.entered.set()
        assert self.opened.wait(30), f"{self.key}: never let through"


class HeldWrites(S3Backend):
    """Holds, when armed, the next put of one key before it is sent (``put_hold``), and a directory
    rename between its copies and its deletes (``delete_hold``: the first delete under a prefix)."""

    put_hold: "_Hold | None" = None
    delete_hold: "_Hold | None" = None

    def put_bytes(self, key, *args, **kwargs):
        held = self.put_hold
        if held is None or key != held.key:
            return super().put_bytes(key, *args, **kwargs)
        self.put_hold = None
        held.hold()
        try:
            return super().put_bytes(key, *args, **kwargs)
        finally:
            held.done.set()

    def delete(self, key, **kwargs):
        held = self.delete_hold
        if held is not None and key.startswith(held.key):
            self.delete_hold = None
            held.hold()
        return super().delete(key, **kwargs)


@pytest.fixture
def held_writes(moto_server, s3_url, monkeypatch) -> HeldWrites:
    """A `HeldWrites` backend on moto; the background index round kept out (only a test's own
    flush writes an index)."""
    monkeypatch.setattr("fsdriver.dirindex.WRITE_DELAY", 3600.0)
    return HeldWrites(s3_url.split("/")[2], "data", endpoint_url=moto_server.url)


async def flush_beside_rename(fs, ino: int, put: _Hold, deletes: _Hold, rename) -> None:
    """The metadata flush, whose index write of directory ``ino`` is held at ``put``, and
    ``rename()`` at once.  Once the rename either waits for that write or has copied the markers
    (held at ``deletes``, its first delete), the write is let through; the deletes go on once it
    has landed (on the old marker, if the rename copied it first)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.flush_metadata)
        assert await trio.to_thread.run_sync(put.entered.wait, 30)  # the index write is in flight
        nursery.start_soon(rename)
        while not deletes.entered.is_set():  # bounded by run_nodes
            await trio.testing.wait_all_tasks_blocked()
            lock = fs.dirindex._locks.get(ino)  # taken by each index write of the directory
            if lock is not None and lock.statistics().tasks_waiting:
                break  # the rename waits for the write
            await trio.to_thread.run_sync(deletes.entered.wait, 0.05)
        put.opened.set()
        assert await trio.to_thread.run_sync(put.done.wait, 30)
        deletes.opened.set()


def test_a_directory_renamed_while_its_index_is_written_keeps_its_times(tmp_path, moto_server, s3_url, held_writes):
    """The index write of a directory (its new times) in flight when the directory is renamed: it
    must not land on the old marker between the rename's copy of it and its delete (lost with it,
    while this mount took the times for written: the next change of the directory, a chown, then
    started again from the copy and showed the directory's mtime going back)."""
    backend = held_writes

    async def body(nodes):
        fs, = nodes
        pd = await path_ino(fs, "pipeline", "p1", "d", create=True)
        a = (await fs.mkdir(pd, "a", mode=0o755)).ino
        await new_file(fs, a, "c")
        await fs.flush_metadata()
        await new_file(fs, a, "x")  # a's times move; written with its index in the next round
        moved_at = (await fs.getattr(a)).mtime
        put = backend.put_hold = _Hold("pipeline/p1/d/a/")
        backend.delete_hold = deletes = _Hold("pipeline/p1/d/a/")
        await flush_beside_rename(fs, a, put, deletes, partial(fs.rename, pd, "a", pd, "b", 0))
        b = await path_ino(fs, "pipeline", "p1", "d", "b")
        assert b == a
        await fs.setattr(b, gid=4242)  # a chown keeps the mtime
        attr = await fs.getattr(b)
        assert (attr.gid, attr.mtime) == (4242, moved_at)
        stored = new_backend(moto_server, s3_url).head("pipeline/p1/d/b/").meta
        assert float(stored["mtime"]) + int(stored.get("mtime-nsec", 0)) / 1e9 == pytest.approx(moved_at, abs=1e-6)

    run_nodes(tmp_path, [backend], body)


def test_a_rename_onto_an_empty_directory_never_stores_the_replaced_ones_times(tmp_path, moto_server, s3_url,
                                                                                held_writes):
    """``mv d1 d2`` onto an empty d2 whose index write (its new times) is in flight: the write must
    end before d2's marker is deleted, never be tried again on the marker the rename copied there
    (d1's), which would then carry d2's times."""
    backend = held_writes

    async def body(nodes):
        fs, = nodes
        pd = await path_ino(fs, "pipeline", "p1", "d", create=True)
        d1 = (await fs.mkdir(pd, "d1", mode=0o755)).ino
        await new_file(fs, d1, "f")
        d2 = (await fs.mkdir(pd, "d2", mode=0o755)).ino
        await new_file(fs, d2, "g")
        await fs.flush_metadata()
        await fs.unlink(d2, "g")  # d2's times move: written with its index by the flush below
        own = (await fs.getattr(d1)).mtime
        assert (await fs.getattr(d2)).mtime > own
        put = backend.put_hold = _Hold("pipeline/p1/d/d2/")
        backend.delete_hold = deletes = _Hold("pipeline/p1/d/d1/")  # the rename's deletes, after its copies
        await flush_beside_rename(fs, d2, put, deletes, partial(fs.rename, pd, "d1", pd, "d2", 0))
        assert await path_ino(fs, "pipeline", "p1", "d", "d2") == d1
        assert (await fs.getattr(d1)).mtime == own
        stored = new_backend(moto_server, s3_url).head("pipeline/p1/d/d2/").meta
        assert float(stored["mtime"]) + int(stored.get("mtime-nsec", 0)) / 1e9 == pytest.approx(own, abs=1e-6)

    run_nodes(tmp_path, [backend], body)


def test_index_writes_of_a_directory_stay_one_at_a_time_after_a_rename_held_them(tmp_path, moto_server, s3_url,
                                                                                  held_writes):
    """A write that waited for `DirIndex.held` (a rename) gets the lock at its release: the lock
    must stay the directory's while it writes, so that the next write waits for it."""
    backend = held_writes

    async def body(nodes):
        fs, = nodes
        pd = await path_ino(fs, "pipeline", "p1", "d", create=True)
        a = (await fs.mkdir(pd, "a", mode=0o755)).ino
        await fs.flush_metadata()
        node = fs.inodes.get(a)
        put = backend.put_hold = _Hold("pipeline/p1/d/a/")
        async with trio.open_nursery() as nursery:
            async with fs.dirindex.held([node]):
                nursery.start_soon(partial(fs.setattr, a, mode=stat.S_IFDIR | 0o700))
                await trio.testing.wait_all_tasks_blocked()  # the chmod waits for the lock
            assert await trio.to_thread.run_sync(put.entered.wait, 30)  # its write is in flight
            nursery.start_soon(partial(fs.setattr, a, mode=stat.S_IFDIR | 0o750))
            await trio.testing.wait_all_tasks_blocked()  # the second waits for the first
            put.opened.set()
        assert stat.S_IMODE((await fs.getattr(a)).mode) == 0o750
        meta = new_backend(moto_server, s3_url).head("pipeline/p1/d/a/").meta
        assert int(meta["mode"]) == stat.S_IFDIR | 0o750

    run_nodes(tmp_path, [backend], body)


async def file_in_a_subdirectory(fs) -> tuple[int, int, int, int]:
    """pipeline/p1/d/sub/f (mode 0644), its index rows written: the inode numbers of p1, d, sub, f."""
    p1 = await path_ino(fs, "pipeline", "p1", create=True)
    d = (await fs.mkdir(p1, "d", mode=0o755)).ino
    sub = (await fs.mkdir(d, "sub", mode=0o755)).ino
    f = await new_file(fs, sub, "f", mode=0o644)
    await fs.flush_metadata()
    return p1, d, sub, f


def test_a_forgotten_directorys_unwritten_rows_move_with_a_renamed_parent(tmp_path, moto_server, s3_url):
    """A chmod in a directory, the directory and the file forgotten by the kernel (memory
    pressure), then its parent renamed before the directory's index was written: the row is
    written at the directory's new place.  It was dropped: the forgotten node kept the old path,
    whose marker the rename had deleted, so another node listing the moved directory showed the
    file with the mount's defaults."""
    async def body(nodes):
        a, b = nodes
        p1, d, sub, f = await file_in_a_subdirectory(a)
        await a.setattr(f, mode=stat.S_IFREG | 0o600)  # f's row in sub's index: written later
        a.forget([(f, a.inodes.by_ino[f].lookups), (sub, a.inodes.by_ino[sub].lookups)])
        await a.rename(p1, "d", p1, "e", 0)
        await a.flush_metadata()
        keys = [o.key for o in new_backend(moto_server, s3_url).list("pipeline/p1/")]
        assert not any(k.startswith("pipeline/p1/d/") for k in keys), keys
        assert stored_row(moto_server, s3_url, "pipeline/p1/e/sub/", "f")["m"]["mode"] == str(stat.S_IFREG | 0o600)
        bsub = await path_ino(b, "pipeline", "p1", "e", "sub")
        seen = (await listed(b, bsub))["f"]
        assert stat.S_IMODE(seen.mode) == 0o600

    run_nodes(tmp_path, [new_backend(moto_server, s3_url) for _ in range(2)], body)


def test_a_directory_removed_with_unwritten_changes_is_not_kept_for_ever(tmp_path, moto_server, s3_url):
    """A directory whose times and rows are not written yet lives until they are; removed before,
    it goes once the kernel forgets it (it stayed in the table until the unmount)."""
    async def body(nodes):
        fs, = nodes
        pd = await path_ino(fs, "pipeline", "p1", "d", create=True)
        sub = (await fs.mkdir(pd, "sub", mode=0o755)).ino
        await fs.flush_metadata()
        await new_file(fs, sub, "x")  # sub's times and its row for x: written later
        node = fs.inodes.by_ino[sub]
        assert node.attrs_pending
        await fs.unlink(sub, "x")
        await fs.rmdir(pd, "sub")
        fs.forget([(sub, node.lookups)])
        assert sub not in fs.inodes.by_ino
        await fs.flush_metadata()
        assert not [o.key for o in new_backend(moto_server, s3_url).list("pipeline/p1/d/sub")]

    run_nodes(tmp_path, [new_backend(moto_server, s3_url)], body)


def test_rows_noted_during_a_chmod_of_their_directory_move_with_a_renamed_parent(tmp_path, moto_server, s3_url,
                                                                                 held_writes):
    """Found by review.  A chmod of ``sub`` in flight (its store_dir holds sub's lock); a file in sub changes
    (a row noted); the background round pops that row and waits for the lock.  The chmod's
    `stored(sub)` then finds nothing pending (the round's changes are in neither `_changes` nor
    `_writing` while it waits) and clears `attrs_pending`.  The kernel forgets sub once the chmod
    returned: it is dropped while its row is unwritten, a rename of its parent does not move it, and
    the row is lost with the old marker -- the bug the commit fixes, by another path."""
    backend = held_writes

    async def body(nodes):
        a, b = nodes
        p1, d, sub, f = await file_in_a_subdirectory(a)
        key = "pipeline/p1/d/sub/"
        put1 = backend.put_hold = _Hold(key)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(a.setattr, sub, mode=stat.S_IFDIR | 0o700))  # chmod sub
            assert await trio.to_thread.run_sync(put1.entered.wait, 30)  # its marker write in flight
            await a.setattr(f, mode=stat.S_IFREG | 0o600)  # f's row in sub's index: written later
            put2 = backend.put_hold = _Hold(key)
            nursery.start_soon(a.flush_metadata)  # the round: pops sub's rows, waits for sub's lock
            await trio.testing.wait_all_tasks_blocked()
            assert a.dirindex._locks[sub].statistics().tasks_waiting == 1
            put1.opened.set()  # the chmod ends
            assert await trio.to_thread.run_sync(put2.entered.wait, 30)  # the round writes f's row
            await trio.testing.wait_all_tasks_blocked()
            # the chmod returned; the kernel forgets sub and f
            a.forget([(f, a.inodes.by_ino[f].lookups), (sub, a.inodes.by_ino[sub].lookups)])
            kept = sub in a.inodes.by_ino
            renamed = trio.Event()

            async def rename():
                await a.rename(p1, "d", p1, "e", 0)
                renamed.set()

            nursery.start_soon(rename)
            while not renamed.is_set():  # until the rename waits for f's row's write, or is done
                await trio.testing.wait_all_tasks_blocked()
                if a.dirindex._locks[sub].statistics().tasks_waiting:
                    break
                with trio.move_on_after(0.05):
                    await renamed.wait()
            put2.opened.set()
        await a.flush_metadata()
        assert stored_row(moto_server, s3_url, "pipeline/p1/e/sub/", "f")["m"]["mode"] == str(stat.S_IFREG | 0o600)
        bsub = await path_ino(b, "pipeline", "p1", "e", "sub")
        seen = (await listed(b, bsub))["f"]
        assert stat.S_IMODE(seen.mode) == 0o600
        assert kept, "sub left the table while f's row was being written"

    run_nodes(tmp_path, [held_writes, new_backend(moto_server, s3_url)], body)


def test_a_failed_chmod_with_nothing_pending_leaves_no_stale_node_in_the_index_queue(tmp_path, moto_server, s3_url):
    """Found by review.  A chmod of a directory with nothing pending fails: `store_dir` requeues an empty
    `_Changes(node)` while `node.attrs_pending` is False, so the kernel forgetting it drops the node
    with an entry in `_changes`.  Looked up again it gets the same inode number (`_numbers`) as a
    new Node; a row noted for it goes into the old entry (`setdefault` by ino), is written with the
    old Node, and `stored(old)` never clears the new node's flag: it stays in the table for ever."""
    async def body(nodes):
        fs, = nodes
        pd = await path_ino(fs, "pipeline", "p1", "d", create=True)
        sub = (await fs.mkdir(pd, "sub", mode=0o755)).ino
        await new_file(fs, sub, "f")
        await fs.flush_metadata()
        assert not fs.inodes.by_ino[sub].attrs_pending and not fs.dirindex._changes
        real = fs.sync_backend.put_bytes

        def down(*args, **kwargs):
            raise Unavailable("down")

        fs.sync_backend.put_bytes = down
        with pytest.raises(Exception):
            await fs.setattr(sub, mode=stat.S_IFDIR | 0o700)
        fs.sync_backend.put_bytes = real
        old = fs.inodes.by_ino[sub]
        fs.forget([(sub, old.lookups)])
        assert sub not in fs.inodes.by_ino and sub not in fs.dirindex._changes  # nothing was queued
        again = await path_ino(fs, "pipeline", "p1", "d", "sub")
        assert again == sub and fs.inodes.by_ino[sub] is not old
        f = await path_ino(fs, "pipeline", "p1", "d", "sub", "f")
        await fs.setattr(f, mode=stat.S_IFREG | 0o600)  # a row for the new node
        new = fs.inodes.by_ino[sub]
        fs.forget([(f, fs.inodes.by_ino[f].lookups), (sub, new.lookups)])
        fs.dirindex._due.clear()
        assert await fs.flush_metadata() == []
        assert not fs.dirindex.pending(new)
        assert sub not in fs.inodes.by_ino, "kept: attrs_pending set, nothing pending"

    run_nodes(tmp_path, [new_backend(moto_server, s3_url)], body)


def test_another_nodes_chmod_of_a_directory_shows_after_the_ttl(tmp_path, moto_server, s3_url):
    """Found by a real-tools trial: node b kept showing a directory's old mode, owner and times
    after node a changed them (or removed and made it again), until b listed the parent again;
    `stat` on b never did.  Now b reads them again once the TTL passed (one HEAD of the marker),
    and within the TTL shows what it knows, without a request."""
    clock = Clock()

    async def body(nodes):
        a, b = nodes
        ad = await path_ino(a, "pipeline", "p1", "d", create=True)
        sub = (await a.mkdir(ad, "sub", mode=0o755)).ino
        await a.flush_metadata()
        bd = await path_ino(b, "pipeline", "p1", "d")
        bsub = (await b.lookup(bd, "sub")).ino
        await a.setattr(sub, mode=stat.S_IFDIR | 0o711, uid=1234)
        await a.flush_metadata()
        before = requests(b)
        assert stat.S_IMODE((await b.getattr(bsub)).mode) == 0o755  # within the TTL: as known
        assert grew(before, requests(b)) == {}
        clock.now += 5
        before = requests(b)
        attr = await b.lookup(bd, "sub")  # the kernel's lookup once the entry timeout passed
        assert (stat.S_IMODE(attr.mode), attr.uid) == (0o711, 1234)
        assert grew(before, requests(b)) == {"head": 1}  # the marker's HEAD, where a LIST was
        await a.rmdir(ad, "sub")
        await a.mkdir(ad, "sub", mode=0o700)
        await a.flush_metadata()
        clock.now += 5
        attr = await b.getattr(bsub)  # the kernel's getattr
        assert (stat.S_IMODE(attr.mode), attr.uid) == (0o700, 0)

    run_nodes(tmp_path, [new_backend(moto_server, s3_url) for _ in range(2)], body, clock)


def test_a_rename_refused_for_too_long_keys_leaves_the_target_it_would_replace(tmp_path, moto_server, s3_url):
    """``mv s t`` onto an existing empty ``t`` where a key under ``s`` would be too long at ``t``
    (found by review): ENAMETOOLONG, and nothing changed; the target's marker had been deleted
    before the backend's check refused the copies."""
    be = new_backend(moto_server, s3_url)

    async def body(nodes):
        fs, = nodes
        d = await path_ino(fs, "pipeline", "p1", "d", create=True)
        deep = (await fs.mkdir(d, "s", mode=0o755)).ino
        room = be.max_key_bytes - len("pipeline/p1/d/s/".encode())
        while room > 256 + 1:
            deep = (await fs.mkdir(deep, "x" * 200, mode=0o755)).ino
            room -= 201
        await new_file(fs, deep, "y" * (room - 1))  # a key of the longest length, under s
        target = "t" * 50
        await fs.mkdir(d, target, mode=0o700)
        await fs.flush_metadata()
        with pytest.raises(NameTooLong):
            await fs.rename(d, "s", d, target, 0)
        assert [x.key for x in be.list(f"pipeline/p1/d/{target}/")] == [f"pipeline/p1/d/{target}/"]
        assert sorted(await listed(fs, d)) == ["s", target]

    run_nodes(tmp_path, [be], body)
