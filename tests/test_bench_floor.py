"""`make bench`'s pyfuse3 floors (bench/floorfs.py, bench/s3floor.py, bench/s3writefloor.py) and the
rows built on them: a floor is a real FUSE mount through the kernel that keeps what the rows
compare (bytes, fsync at close; the object's bytes in one GET; the written file's bytes in one
multipart upload, complete when fsync returns), and each disk row shows the round whose ratio is
the middle one, with the floor's beside it."""

import errno
import os

import pytest

from bench import appclient, report, scenarios, tables, writes
from bench.harness import FloorMount

from .benchenv import env  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


def test_floor_serves_the_backing_directory(env):
    backing = env.root / "backing"
    backing.mkdir()
    (backing / "old.bin").write_bytes(b"x" * 5000)
    with env.mount_floor("floor", backing) as floor:
        assert os.path.ismount(floor.path)
        assert (floor.path / "old.bin").read_bytes() == b"x" * 5000
        (floor.path / "d").mkdir()
        payload = os.urandom(3 << 20)  # several 1 MiB FUSE writes
        old_umask = os.umask(0o022)
        try:
            fd = os.open(floor.path / "d" / "new.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        finally:
            os.umask(old_umask)
        try:
            assert os.write(fd, payload) == len(payload)
        finally:
            os.close(fd)
        assert (backing / "d" / "new.bin").read_bytes() == payload  # the backing file itself
        assert os.stat(floor.path / "d" / "new.bin").st_mode & 0o777 == 0o640
        assert sorted(os.listdir(floor.path / "d")) == ["new.bin"]
        with pytest.raises(FileExistsError):
            os.open(floor.path / "d" / "new.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with pytest.raises(FileNotFoundError):
            os.stat(floor.path / "missing")
        (floor.path / "gone").mkdir()
        (backing / "gone").rmdir()  # behind the floor's back: its readdir meets a file
        (backing / "gone").write_bytes(b"")
        with pytest.raises(NotADirectoryError):
            os.listdir(floor.path / "gone")
        assert (floor.path / "old.bin").read_bytes() == b"x" * 5000  # the floor still serves
    assert not os.path.ismount(floor.path)  # unmounted on exit, the daemon gone
    assert floor.proc is None


def test_s3_floor_streams_the_object_in_one_get_per_open(env):
    env.start()
    data = os.urandom((3 << 20) + 4567)  # several 1 MiB FUSE reads and a short last one
    env.direct.put_object(Bucket=env.bucket, Key=scenarios.BIG_KEY, Body=data)
    with env.mount_s3_floor("s3floor", scenarios.BIG_KEY, len(data)) as floor:
        path = floor.path / "object"
        assert os.stat(path).st_size == len(data)
        before = env.proxy.snapshot()
        assert path.read_bytes() == data
        assert env.proxy.counts.delta(before, env.proxy.snapshot())["requests"] == {"GET": 1}
        assert path.read_bytes() == data  # a second open: a GET of its own, from the start
        with pytest.raises(FileNotFoundError):
            os.stat(floor.path / "other")
    assert not os.path.ismount(floor.path) and floor.proc is None
    # the row's own measurement, on a fresh floor mount of its own
    r = scenarios.floor_sequential(env, len(data), "s3floor-row")
    assert r["proxy"]["requests"] == {"GET": 1} and r["bytes_per_byte"] == pytest.approx(1.0, abs=0.01)
    assert r["mb_s"] > 0 and r["cpu_s"] >= 0
    assert r["trace"]["gets"] == 1 and r["trace"]["first_byte_ms"] > 0 and r["trace"]["body_ms"] >= 0
    with env.mount_s3_floor("s3floor-missing", "no/such/key", 10) as floor:
        with pytest.raises(OSError) as e:  # the GET answers 404: the open fails, not a read of nothing
            (floor.path / "object").read_bytes()
        assert e.value.errno == errno.EIO


def test_cached_backing_reads_drop_only_the_mounts_pages(env):
    """The "backing file cached" row: through a disk mount, after `drop_file_cache` on the mount's
    path, the read goes to the daemon again (FUSE reads counted by the mount) while the backing
    file stays in the page cache (a pread with RWF_NOWAIT is served, not refused)."""
    store = env.root / "store"
    (store / "pipeline" / "p").mkdir(parents=True)
    data = os.urandom(4 << 20)
    target = store / "pipeline" / "p" / "f.bin"
    target.write_bytes(data)
    with env.mount_disk("cached", store) as m, env.mount_floor("cached-floor", store) as floor:
        path = m.path / "pipeline" / "p" / "f.bin"

        def reads():
            return m.status()["requests"].get("read", 0)

        assert appclient.read_all(path) == len(data)
        before = reads()
        assert appclient.read_all(path) == len(data)
        assert reads() == before  # the mount's own pages served it: the kernel kept them
        scenarios.drop_file_cache(path)
        fd = os.open(target, os.O_RDONLY)
        try:  # the backing file's pages stayed (a read that would wait for the disk is refused)
            assert os.preadv(fd, [bytearray(1 << 20)], 3 << 20, os.RWF_NOWAIT) == 1 << 20
        finally:
            os.close(fd)
        assert appclient.read_all(path) == len(data)
        assert reads() > before  # the mount's were dropped: read through the daemon again
        before = reads()
        got = scenarios.cached_backing_reads(target, {"floor": floor.path / "pipeline" / "p" / "f.bin",
                                                      "mount": path}, len(data))
        assert set(got) == {"direct", "floor", "mount"} and all(v > 0 for v in got.values())
        assert reads() > before  # its mount read went through FUSE, not the mount's page cache
        with pytest.raises(AssertionError, match="direct: the cached read gave 4194304 bytes of 4194305"):
            scenarios.cached_backing_reads(target, {"floor": floor.path / "pipeline" / "p" / "f.bin"}, len(data) + 1)


def test_the_disk_rows_judge_the_middle_round_and_show_its_figures():
    # three rounds; the columns' own medians (2000, 1000, 900) come from different rounds, and
    # 900 / 2000 is no round's ratio: each row shows the round whose ratio is the middle one
    rounds = [{"direct": 1000, "floor": 800, "mount": 700},  # mount 0.70x, floor 0.80x
              {"direct": 2000, "floor": 1000, "mount": 1000},  # mount 0.50x, floor 0.50x
              {"direct": 3000, "floor": 1200, "mount": 900}]  # mount 0.30x, floor 0.40x
    judged = scenarios.judge_rounds(rounds, "direct")
    assert judged["mount"] is rounds[1] and judged["mount_ratio"] == 0.5
    assert judged["floor"] is rounds[1] and judged["floor_ratio"] == 0.5
    judged = scenarios.judge_rounds(rounds[::-1] + [{"direct": 100, "floor": 90, "mount": 95}], "direct")
    assert judged["mount_ratio"] == 0.5 and judged["floor_ratio"] == 0.5  # the lower middle of four
    assert scenarios.judge_rounds(rounds[:1], "direct")["mount_ratio"] == 0.7

    seq = {"caches_dropped": True, "rounds": rounds, "direct_mb_s": 2000, "mount_mb_s": 1000,
           "floor_direct_mb_s": 2000, "floor_mb_s": 1000, "ratio": 0.5, "floor_ratio": 0.5,
           "daemon_cpu_s": 0.1, "fuse_reads": 256, "fuse_read_kib": 1024}
    create = {"reference": {"files_s": 4000.0, "size": 4096, "count": 200},
              "floor": {"files_s": 1600.0, "size": 4096, "count": 200},
              "mount": {"files_s": 600.0, "size": 4096, "count": 200}, "floor_reference_files_s": 4000.0,
              "ratio": 0.15, "floor_ratio": 0.4,
              "rounds_files_s": [{"reference": 4000, "floor": 1600, "mount": 600}]}
    results = {"disk_seq": seq, "create_disk": create}
    verdict = report.evaluate(results, None)
    assert verdict["disk_seq"]["met"] is False
    assert verdict["disk_seq"]["measured"].startswith("0.500x (1000 vs 2000 MB/s")
    assert "passthrough reached 0.500x in the same rounds, below the target too" in verdict["disk_seq"]["measured"]
    assert verdict["disk_creates"]["met"] is False
    assert "0.400x" in verdict["disk_creates"]["measured"]
    text = tables.local_table(results, {"object_mib": 256}, verdict)
    assert "bench.floorfs (pyfuse3 floor)" in text
    assert "1000 / 800 / 700, 2000 / 1000 / 1000, 3000 / 1200 / 900" in text
    assert "4000 / 1600 / 600" in text
    assert "backing file cached" not in text  # a result without the cached reads (older runs)
    cached = dict(seq, cached={"direct": 15000.0, "floor": 2100.0, "mount": 1900.0}, cached_ratio=0.95,
                  cached_floor_ratio=1.05)
    verdict = report.evaluate(dict(results, disk_seq=cached), None)
    assert ("with the backing file cached, so that no read waits for the disk, the mount reads at 0.950x "
            "and the floor at 1.050x of the cold backing read") in verdict["disk_seq"]["measured"]
    text = tables.local_table(dict(results, disk_seq=cached), {"object_mib": 256}, verdict)
    row = next(line for line in text.splitlines() if "backing file cached (FUSE alone)" in line)
    assert "1900 MB/s" in row and "floor 2100, vs cold 2000 MB/s" in row and "0.950x" in row
    assert "the backing file itself 15000 MB/s" in text
    met = report.evaluate(dict(results, create_disk=dict(create, ratio=0.81, floor_ratio=0.9)), None)
    assert met["disk_creates"]["met"] is True
    assert "below the target" not in met["disk_creates"]["measured"]


def test_s3_write_floor_uploads_the_file_in_parts_complete_at_fsync(env):
    env.start()
    part = 8 << 20
    data = os.urandom(2 * part + (1 << 20) + 777)  # two full parts while writing, the tail at fsync
    with env.mount_s3_write_floor("s3writefloor", "pipeline/floor") as floor:
        before = env.proxy.snapshot()
        fd = os.open(floor.path / "w.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for off in range(0, len(data), 1 << 20):
                assert os.write(fd, data[off:off + (1 << 20)]) == len(data[off:off + (1 << 20)])
            with pytest.raises(OSError) as e:  # not at the end: the floor only appends
                os.pwrite(fd, b"x", 5)
            assert e.value.errno == errno.EIO
            os.fsync(fd)
            # complete when fsync returned: the object is there, whole, before the close
            assert env.direct.get_object(Bucket=env.bucket, Key="pipeline/floor/w.bin")["Body"].read() == data
            with pytest.raises(OSError) as e:  # completed: a write now would be left out of it
                os.write(fd, b"late")
            assert e.value.errno == errno.EIO
        finally:
            os.close(fd)  # (the completion is not sent again)
        got = env.proxy.counts.delta(before, env.proxy.snapshot())["requests"]
        assert got == {"POST": 2, "PUT part": 3}, got  # create + complete; two full parts and the tail
    assert not os.path.ismount(floor.path) and floor.proc is None
    assert env.direct.list_multipart_uploads(Bucket=env.bucket).get("Uploads", []) == []
    # the row's own measurement, on a fresh floor mount of its own; it checks the object itself
    local = writes.make_write_file(env, 12 << 20)
    r = writes.floor_big_write(env, local, "pipeline/floor-row/w.bin")
    assert r["bytes"] == 12 << 20 and r["mb_s"] > 0 and r["cpu_s"] >= 0 and r["parts_s"] >= 0
    with pytest.raises(AssertionError):  # and that check can fail: other bytes of the same size
        other = writes.make_write_file(env, 12 << 20)  # (new random bytes, same path)
        writes._check_object(env, "pipeline/floor-row/w.bin", other)


def test_s3_write_floor_fails_the_fsync_and_close_of_a_file_it_could_not_upload(env):
    env.start()
    with FloorMount(env, "s3writefloor-nobucket", "bench.s3writefloor", env.proxy.url, "no-such-bucket",
                    "pipeline/floor") as floor:
        fd = os.open(floor.path / "w.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, os.urandom((8 << 20) + 1))  # a full part (not uploaded: no bucket) and a byte
            with pytest.raises(OSError) as e:
                os.fsync(fd)
            assert e.value.errno == errno.EIO
        finally:
            with pytest.raises(OSError) as e:
                os.close(fd)
            assert e.value.errno == errno.EIO
        assert "NoSuchBucket" in floor.log()


def test_the_s3_write_row_shows_the_floor_beside_it():
    proxy = {"requests": {"PUT part": 16, "POST": 2}, "total": 18, "bytes": 128 << 20, "errors": {}}
    raw = {"bytes": 128 << 20, "mb_s": 150.0, "proxy": proxy, "cpu_s": 0.24, "parts_s": 0.5, "completion_s": 0.33,
           "runs_mb_s": [150.0, 140.0, 155.0]}
    mount = dict(raw, mb_s=135.0, seconds=0.99, fsync_s=0.4, close_s=0.0, content_verified=True, unmount_proxy=dict(proxy, requests={}, total=0),
                 daemon={"cpu_s": 0.41, "vm_hwm": 140 << 20}, rss_after_mount=40 << 20, memory_limit=256 << 20)
    floor = dict(raw, mb_s=144.0, cpu_s=0.32, parts_s=0.55, completion_s=0.34, runs_mb_s=[144.0, 139.0, 150.0])
    p = {"latency_ms": 10, "write_mount": mount, "write_raw": raw, "write_floor": floor}
    verdict = report.evaluate_s3(p)
    assert verdict["big_write"]["met"] is False
    assert verdict["big_write"]["measured"] == ("0.900x (135.0 vs 150.0 MB/s; bench.s3writefloor reached 0.960x in "
                                                "the same rounds, below the target too)")
    text = tables.s3_table(p, {"object_mib": 256}, verdict, judged=True)
    row = next(line for line in text.splitlines() if "bench.s3writefloor (pyfuse3 floor)" in line)
    assert "144.0 MB/s" in row and "upload_file 150.0 MB/s" in row and "0.960x" in row and "(reported)" in row
    assert "bench.s3writefloor CPU 0.32 s, parts 0.55 s, completion 0.34 s" in text
    assert "; floor 144.0, 139.0, 150.0" in text
    assert "s3writefloor" not in report.evaluate_s3(dict(p, write_floor=None))["big_write"]["measured"]  # older runs


def test_the_s3_read_row_shows_the_floor_beside_it():
    proxy = {"requests": {"GET": 1}, "total": 1, "bytes": 256 << 20, "errors": {}}
    read = {"mb_s": 600.0, "requests_per_mib": 1 / 256, "bytes_per_byte": 1.0, "cpu_s": 0.05, "cpu_s_per_gib": 0.2,
            "proxy": proxy, "runs_mb_s": [600.0, 590.0, 610.0]}
    mount = dict(read, cpu_s=0.18, cpu_s_per_gib=0.72, trace={"sizes_mib": [256], "max_in_flight": 1},
                 fuse_reads=256, fuse_read_kib=1024, daemon_cpu_s=0.18,
                 memory={"limit": 256 << 20, "vm_hwm": 100 << 20, "budget_peak": 70 << 20,
                         "rss_after_mount": 40 << 20, "rss_end": 50 << 20})
    p = {"latency_ms": 10, "seq_mount": dict(mount, first_byte_ms=153.2, body_ms=245.0),
         "seq_raw_single": dict(read, mb_s=800.0, first_byte_ms=149.0, body_ms=136.4),
         "seq_floor": dict(read, mb_s=660.0, cpu_s=0.1, runs_mb_s=[660.0, 650.0, 700.0])}
    verdict = report.evaluate_s3(p)
    assert verdict["sequential"]["met"] is False
    assert verdict["sequential"]["measured"] == ("0.750x (600.0 vs 800.0 MB/s; bench.s3floor reached 0.825x in the "
                                                 "same rounds)")
    text = tables.s3_table(p, {"object_mib": 256}, verdict, judged=True)
    row = next(line for line in text.splitlines() if "bench.s3floor (pyfuse3 floor)" in line)
    assert "660.0 MB/s" in row and "one GET 800.0 MB/s" in row and "0.825x" in row and "(reported)" in row
    assert "bench.s3floor: GET 1, CPU 0.10 s" in text and "; floor 660.0, 650.0, 700.0" in text
    assert "then its body (medians of the runs" in text and "one GET 149 + 136 ms, the mount 153 + 245 ms." in text
    below = report.evaluate_s3(dict(p, seq_floor=dict(read, mb_s=560.0)))["sequential"]["measured"]
    assert below.endswith("bench.s3floor reached 0.700x in the same rounds, below the target too)")
    assert "s3floor" not in report.evaluate_s3(dict(p, seq_floor=None))["sequential"]["measured"]  # older runs


def test_the_write_floors_part_body_reads_its_chunks_without_copies():
    from bench.s3writefloor import ChunksBody

    chunks = [b"abc", memoryview(b"xdefgh")[1:], b"ij"]
    body = ChunksBody(chunks)
    assert len(body) == 10
    got = body.read(2)
    assert isinstance(got, memoryview) and got.obj is chunks[0]  # a view of the chunk, not a copy
    assert bytes(got) == b"ab" and len(body) == 8 and body.tell() == 2
    assert bytes(body.read(100)) == b"c"  # a read ends where its chunk does
    assert bytes(body.read(100)) == b"defgh"
    body.seek(4)
    assert bytes(body.read(2)) == b"ef" and body.tell() == 6
    body.seek(0)
    assert body.read() == b"abcdefghij" and body.read(5) == b""  # the rest, and then the end
    body.seek(-3, 2)
    assert body.readall() == b"hij"
    buf = bytearray(4)
    body.seek(1)
    assert body.readinto(buf) == 2 and buf[:2] == b"bc"


def test_the_trace_times_the_largest_gets_answer_and_body():
    MiB = 1 << 20
    trace = [(1.0, 1.5, "GET", None, 256 * MiB, "/b/big", 1.15),  # (start, end, kind, range, bytes, target, answered)
             (0.9, 0.95, "HEAD", None, 0, "/b/big", 0.94),
             (1.2, 1.25, "GET range", "bytes=0-9", 10, "/b/big", 1.21)]
    t = scenarios.trace_summary(trace)
    assert t["gets"] == 2 and t["sizes_mib"] == [256.0, 0.0] and t["max_in_flight"] == 2
    assert t["first_byte_ms"] == pytest.approx(150.0) and t["body_ms"] == pytest.approx(350.0)
    assert "first_byte_ms" not in scenarios.trace_summary([(1.0, 1.5, "GET", None, 5, "/b/k", None)])  # no answer
    assert scenarios.trace_summary([])["gets"] == 0


def test_a_rows_runs_give_the_median_answer_and_body_times():
    from bench.__main__ import median_run

    runs = [{"mb_s": m, "trace": {"first_byte_ms": f, "body_ms": b}}
            for m, f, b in ((700.0, 150.0, 240.0), (650.0, 160.0, 250.0), (720.0, 140.0, 230.0))]
    out = median_run(runs)
    assert out["mb_s"] == 700.0 and out["runs_mb_s"] == [700.0, 650.0, 720.0]
    assert out["first_byte_ms"] == 150.0 and out["body_ms"] == 240.0
    assert "first_byte_ms" not in median_run([{"mb_s": 1.0, "trace": {"gets": 1}}])
