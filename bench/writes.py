"""Writes: small-file creates and one big write, each durable when ``close()`` returns.

S3 creates: ``count`` files of ``size`` bytes (4 KiB) written and closed one after another in a
new directory of a fresh S3 mount (the ``mkdir`` is not counted), by a process of its own
(`bench.appclient`, as the reference's client is, away from the proxy's threads).  Requests are
counted during the creates and at the unmount that follows (what the creates left to do, such as
a directory index); requests per created file = both / count.  Reference: a loop of
``put_object`` of the same size (`bench.rawclient`, a process of its own).

Big write: a fresh S3 mount; a process of its own (`bench.appclient`) opens a new file, writes
``size`` bytes (128 MiB in a full run) with 1 MiB ``write()``s, ``fsync``s and closes it; the time
runs from ``open`` to ``close`` returning.  Requests by kind, the daemon's peak RSS (VmHWM) and
CPU; after the unmount the object is checked straight on moto (uncounted): its size and SHA-256
equal the local file's.  Reference: boto3 ``upload_file`` of the same local file with the default
TransferConfig (8 MiB parts, 10 threads), in a process of its own.  Beside it, the same write
through `bench.s3writefloor`: that upload fed by FUSE writes and nothing else, the least a pyfuse3
daemon uploading as ``upload_file`` does can do for the same promise: how far the target is
reachable by any such daemon.

Disk creates: the same creates through a disk mount, against files of the same size written,
``fsync``-ed and closed in a new directory of the backing filesystem directly (the durability
the mount promises at close), and through `bench.floorfs`, the least a pyfuse3 daemon can do for
the same promise (one ``fsync`` at close): how far the target is reachable by any pyfuse3 daemon.
"""

import hashlib
import os
from pathlib import Path

from . import appclient, rawclient
from .appclient import creates
from .harness import MiB, Env, daemon_figures, proc_cpu
from .scenarios import judge_rounds

BIG_WRITE_KEY = "pipeline/bench/bigwrite/w.bin"


def _delta(env: Env, before: dict) -> dict:
    return env.proxy.counts.delta(before, env.proxy.snapshot())


def _add(a: dict, b: dict) -> dict:
    """Two proxy deltas as one (requests by kind, total, bytes, errors)."""
    req = dict(a["requests"])
    for k, v in b["requests"].items():
        req[k] = req.get(k, 0) + v
    err = dict(a.get("errors", {}))
    for k, v in b.get("errors", {}).items():
        err[k] = err.get(k, 0) + v
    return {"requests": dict(sorted(req.items())), "total": a["total"] + b["total"],
            "bytes": a["bytes"] + b["bytes"], "errors": err}


def mount_s3_creates(env: Env, count: int, size: int) -> dict:
    rel = Path("pipeline") / "bench" / "small"
    with env.mount_s3("create") as m:
        (m.path / rel).mkdir()
        st = m.status()
        cpu0 = proc_cpu(st["pid"])
        before = env.proxy.snapshot()
        app = appclient.run(env, "creates", m.path / rel, count, size)  # a process of its own, as the reference
        r = {"count": count, "size": size, "seconds": app["seconds"], "files_s": count / app["seconds"],
             "app_cpu_s": app["cpu_s"]}
        r["proxy"] = _delta(env, before)
        r["daemon"] = daemon_figures(m, cpu0)
        before = env.proxy.snapshot()
        m.umount()
    r["unmount_proxy"] = _delta(env, before)
    total = _add(r["proxy"], r["unmount_proxy"])
    r["requests_per_file"] = total["total"] / count
    r["requests_by_kind"] = total["requests"]
    n = sum(1 for _ in env.direct.get_paginator("list_objects_v2").paginate(
        Bucket=env.bucket, Prefix=f"{rel}/s").search("Contents"))
    assert n == count, f"{n} of {count} created files reached S3"
    return r


def raw_puts(env: Env, count: int, size: int) -> dict:
    r = rawclient.run(env, "puts", "pipeline/bench/raw-small/", count, size)
    return {"count": count, "size": size, "seconds": r["seconds"], "files_s": count / r["seconds"],
            "proxy": r["proxy"], "requests_per_file": r["proxy"]["total"] / count, "cpu_s": r["cpu_s"]}


def make_write_file(env: Env, size: int) -> Path:
    path = env.root / "bigwrite.bin"
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return path


def server_phases(trace: list) -> dict:
    """From a trace of one multipart upload: ``parts_s``, from the first UploadPart sent to the last
    answered (the parts go up concurrently), and ``completion_s``, how long the server took to
    answer CompleteMultipartUpload (moto assembles the object then: about a third of the big
    write's time, for both sides)."""
    parts = [(start, end) for start, end, kind, *_ in trace if kind == "PUT part"]
    return {"parts_s": max(e for _, e in parts) - min(s for s, _ in parts) if parts else 0.0,
            "completion_s": sum(end - start for start, end, kind, _rng, _n, target, *_ in trace
                                if kind == "POST" and "uploadId=" in target)}


def _check_object(env: Env, key: str, local: Path) -> bool:
    """The object at ``key`` (read straight on moto, uncounted) has ``local``'s size and SHA-256."""
    size = local.stat().st_size
    got = env.direct.get_object(Bucket=env.bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    n = 0
    for chunk in got.iter_chunks(MiB):
        digest.update(chunk)
        n += len(chunk)
    with open(local, "rb") as f:
        ok = n == size and digest.hexdigest() == hashlib.file_digest(f, "sha256").hexdigest()
    assert ok, f"the object written at {key} has {n} bytes of {size} or other content"
    return ok


def mount_big_write(env: Env, local: Path, memory_limit: str, key: str = BIG_WRITE_KEY) -> dict:
    size = local.stat().st_size
    path_rel = Path(key)
    with env.mount_s3("bigw", "--memory-limit", memory_limit) as m:
        (m.path / path_rel.parent).mkdir(parents=True, exist_ok=True)
        st = m.status()
        cpu0 = proc_cpu(st["pid"])
        rss0 = daemon_figures(m)["rss"]
        before = env.proxy.snapshot()
        env.proxy.counts.start_trace()
        try:  # a process of its own, as the reference
            app = appclient.run(env, "write", m.path / path_rel, local)
        finally:
            trace = env.proxy.counts.stop_trace()
        proxy = _delta(env, before)
        daemon = daemon_figures(m, cpu0)
        before = env.proxy.snapshot()
        m.umount()
    unmount = _delta(env, before)
    ok = _check_object(env, key, local)
    return {"bytes": size, "seconds": app["seconds"], "mb_s": size / app["seconds"] / 1e6, "fsync_s": app["fsync_s"],
            "close_s": app["close_s"], "app_cpu_s": app["cpu_s"], **server_phases(trace), "proxy": proxy,
            "unmount_proxy": unmount, "content_verified": ok, "daemon": daemon, "rss_after_mount": rss0,
            "memory_limit": st["memory"]["limit"]}


def floor_big_write(env: Env, local: Path, key: str = "pipeline/bench/floor-bigwrite/w.bin") -> dict:
    """The same write through `bench.s3writefloor` (a fresh floor mount): the reference's upload fed
    by FUSE writes, nothing else.  What a pyfuse3 daemon uploading as ``upload_file`` does reaches
    at best on this machine: beside the row, not a target."""
    prefix, name = key.rsplit("/", 1)
    with env.mount_s3_write_floor("s3writefloor", prefix) as floor:
        cpu0 = proc_cpu(floor.proc.pid)
        env.proxy.counts.start_trace()
        try:  # a process of its own, as the reference
            app = appclient.run(env, "write", floor.path / name, local)
        finally:
            trace = env.proxy.counts.stop_trace()
        cpu = proc_cpu(floor.proc.pid) - cpu0
    size = local.stat().st_size
    _check_object(env, key, local)
    return {"bytes": size, "seconds": app["seconds"], "mb_s": size / app["seconds"] / 1e6, "cpu_s": cpu,
            "app_cpu_s": app["cpu_s"], **server_phases(trace)}


def raw_upload(env: Env, local: Path, key: str = "pipeline/bench/raw-bigwrite/w.bin") -> dict:
    env.proxy.counts.start_trace()
    try:
        r = rawclient.run(env, "upload", local, key)
    finally:
        trace = env.proxy.counts.stop_trace()
    size = local.stat().st_size
    return {"bytes": size, "seconds": r["seconds"], "mb_s": size / r["seconds"] / 1e6, "proxy": r["proxy"],
            "cpu_s": r["cpu_s"], "max_rss": r["max_rss"], **server_phases(trace)}


def disk_creates(env: Env, store: Path, count: int, size: int, rounds: int = 1) -> dict:
    """Creates on the backing filesystem (write, fsync, close), through `bench.floorfs` (the pyfuse3
    floor: a passthrough that fsyncs at close) and through a disk mount, each in a new directory,
    ``rounds`` times back to back; judged on the middle round by ratio (`scenarios.judge_rounds`)."""
    runs = []
    backing = env.root / "floor-backing"  # the same filesystem as the reference's directories
    backing.mkdir()
    with env.mount_disk("disk-create", store) as m, env.mount_floor("floor-create", backing) as floor:
        for i in range(rounds):
            ref_dir = env.root / f"disk-ref-creates-{i}"
            ref_dir.mkdir()
            floor_dir = floor.path / f"floor-creates-{i}"
            floor_dir.mkdir()
            mount_dir = m.path / "pipeline" / "bench" / f"small{i}"
            mount_dir.mkdir(parents=True)
            runs.append({"reference": creates(ref_dir, count, size, fsync=True), "floor": creates(floor_dir, count, size),
                         "mount": creates(mount_dir, count, size)})
            n = len(list((store / "pipeline" / "bench" / f"small{i}").iterdir()))
            assert n == count, f"{n} of {count} created files reached the disk backend"
            n = len(list((backing / f"floor-creates-{i}").iterdir()))
            assert n == count, f"{n} of {count} files created through bench.floorfs reached its backing directory"
    flat = [{k: r[k]["files_s"] for k in r} for r in runs]
    judged = judge_rounds(flat, "reference")
    mid = runs[next(i for i, f in enumerate(flat) if f is judged["mount"])]
    floor_mid = runs[next(i for i, f in enumerate(flat) if f is judged["floor"])]
    return {"reference": mid["reference"], "mount": mid["mount"], "floor": floor_mid["floor"],
            "floor_reference_files_s": floor_mid["reference"]["files_s"],
            "ratio": judged["mount_ratio"], "floor_ratio": judged["floor_ratio"],
            "rounds_files_s": [{k: round(v) for k, v in f.items()} for f in flat]}
