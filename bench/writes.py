"""Writes: small-file creates and one big write, each durable when ``close()`` returns.

S3 creates: ``count`` files of ``size`` bytes (4 KiB) written and closed one after another in a
new directory of a fresh S3 mount (the ``mkdir`` is not counted).  Requests are counted during the
creates and at the unmount that follows (what the creates left to do, such as a directory index);
requests per created file = both / count.  Reference: a loop of ``put_object`` of the same size
(`bench.rawclient`, a process of its own).

Big write: a fresh S3 mount; one process opens a new file, writes ``size`` bytes (128 MiB in a full
run) with 1 MiB ``write()``s, ``fsync``s and closes it; the time runs from ``open`` to ``close``
returning.  Requests by kind, the daemon's peak RSS (VmHWM) and CPU; after the unmount the object
is checked straight on moto (uncounted): its size and SHA-256 equal the local file's.  Reference:
boto3 ``upload_file`` of the same local file with the default TransferConfig (8 MiB parts, 10
threads), in a process of its own.

Disk creates: the same creates through a disk mount, against files of the same size written,
``fsync``-ed and closed in a new directory of the backing filesystem directly (the durability
the mount promises at close).
"""

import hashlib
import os
from pathlib import Path

from . import rawclient
from .harness import MiB, Env, Timer, daemon_figures, proc_cpu

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


def creates(root: Path, count: int, size: int, fsync: bool = False) -> dict:
    """Write ``count`` files of ``size`` bytes into the existing directory ``root``, one at a time,
    each closed (and ``fsync``-ed before the close when asked)."""
    payload = os.urandom(size)
    with Timer() as t:
        for i in range(count):
            fd = os.open(root / f"s{i:05d}.dat", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, payload)
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
    return {"count": count, "size": size, "seconds": t.seconds, "files_s": count / t.seconds}


def mount_s3_creates(env: Env, count: int, size: int) -> dict:
    rel = Path("pipeline") / "bench" / "small"
    with env.mount_s3("create") as m:
        (m.path / rel).mkdir()
        st = m.status()
        cpu0 = proc_cpu(st["pid"])
        before = env.proxy.snapshot()
        r = creates(m.path / rel, count, size)
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


def mount_big_write(env: Env, local: Path, memory_limit: str) -> dict:
    data = local.read_bytes()
    size = len(data)
    view = memoryview(data)
    path_rel = Path(BIG_WRITE_KEY)
    with env.mount_s3("bigw", "--memory-limit", memory_limit) as m:
        (m.path / path_rel.parent).mkdir(parents=True, exist_ok=True)
        st = m.status()
        cpu0 = proc_cpu(st["pid"])
        rss0 = daemon_figures(m)["rss"]
        before = env.proxy.snapshot()
        with Timer() as t:
            fd = os.open(m.path / path_rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                off = 0
                while off < size:
                    off += os.write(fd, view[off:off + MiB])
                with Timer() as f:
                    os.fsync(fd)
            finally:
                with Timer() as c:
                    os.close(fd)
        proxy = _delta(env, before)
        daemon = daemon_figures(m, cpu0)
        before = env.proxy.snapshot()
        m.umount()
    unmount = _delta(env, before)
    got = env.direct.get_object(Bucket=env.bucket, Key=BIG_WRITE_KEY)["Body"]
    digest = hashlib.sha256()
    n = 0
    for chunk in got.iter_chunks(MiB):
        digest.update(chunk)
        n += len(chunk)
    ok = n == size and digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert ok, f"the object written through the mount has {n} bytes of {size} or other content"
    return {"bytes": size, "seconds": t.seconds, "mb_s": size / t.seconds / 1e6, "fsync_s": f.seconds,
            "close_s": c.seconds, "proxy": proxy, "unmount_proxy": unmount, "content_verified": ok,
            "daemon": daemon, "rss_after_mount": rss0, "memory_limit": st["memory"]["limit"]}


def raw_upload(env: Env, local: Path) -> dict:
    r = rawclient.run(env, "upload", local, "pipeline/bench/raw-bigwrite/w.bin")
    size = local.stat().st_size
    return {"bytes": size, "seconds": r["seconds"], "mb_s": size / r["seconds"] / 1e6, "proxy": r["proxy"],
            "cpu_s": r["cpu_s"], "max_rss": r["max_rss"]}


def disk_creates(env: Env, store: Path, count: int, size: int) -> dict:
    """Creates through a disk mount, and the reference on the backing filesystem (write, fsync, close)."""
    ref_dir = env.root / "disk-ref-creates"
    ref_dir.mkdir()
    ref = creates(ref_dir, count, size, fsync=True)
    with env.mount_disk("disk-create", store) as m:
        d = m.path / "pipeline" / "bench" / "small"
        d.mkdir(parents=True)
        r = creates(d, count, size)
    n = len(list((store / "pipeline" / "bench" / "small").iterdir()))
    assert n == count, f"{n} of {count} created files reached the disk backend"
    return {"mount": r, "reference": ref}
