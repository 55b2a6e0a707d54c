"""The measurements.  Each function returns a dict of plain numbers (it goes to the JSON file).

Every S3 figure, the mount's and the raw boto3 reference's, goes through the same counting proxy to
the same moto server; the proxy's counters give requests by kind and bytes downloaded.
"""

import os
import random
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from .harness import BUCKET, MiB, Env, Timer, drop_caches, proc_cpu, proc_status

READ_SIZE = 1 * MiB
BIG_KEY = "pipeline/bench/big.bin"
MANY_PREFIX = "pipeline/bench/many/"


def _delta(env: Env, before: dict) -> dict:
    return env.proxy.counts.delta(before, env.proxy.snapshot())


def _read_all(path) -> int:
    """``cat``-like: read the whole file with 1 MiB reads, keep nothing."""
    buf = bytearray(READ_SIZE)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return total
            total += n


def make_big_file(env: Env, size: int) -> Path:
    """Random content (incompressible), written locally and uploaded straight to moto (uncounted)."""
    path = env.root / "big.bin"
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(8 * MiB, left)
            f.write(os.urandom(n))
            left -= n
    env.direct.upload_file(str(path), BUCKET, BIG_KEY, Config=TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=8))
    return path


# -- S3: sequential read ------------------------------------------------------------------------

def raw_single_get(env: Env, size: int) -> dict:
    before = env.proxy.snapshot()
    with Timer() as t:
        body = env.raw.get_object(Bucket=BUCKET, Key=BIG_KEY)["Body"]
        n = sum(len(c) for c in body.iter_chunks(READ_SIZE))
    assert n == size, f"raw GET read {n} bytes of {size}"
    return {"seconds": t.seconds, "mb_s": size / t.seconds / 1e6, "proxy": _delta(env, before)}


def raw_parallel_get(env: Env, size: int, part: int = 8 * MiB, threads: int = 8) -> dict:
    ranges = [(o, min(o + part, size) - 1) for o in range(0, size, part)]

    def get(r):
        body = env.raw.get_object(Bucket=BUCKET, Key=BIG_KEY, Range=f"bytes={r[0]}-{r[1]}")["Body"]
        return len(body.read())

    before = env.proxy.snapshot()
    with Timer() as t, ThreadPoolExecutor(threads) as pool:
        n = sum(pool.map(get, ranges))
    assert n == size, f"raw ranged GETs read {n} bytes of {size}"
    return {"seconds": t.seconds, "mb_s": size / t.seconds / 1e6, "parts": len(ranges),
            "part_size": part, "threads": threads, "proxy": _delta(env, before)}


def trace_summary(trace: list) -> dict:
    """GETs of a traced run: how many, their sizes in order, and how many were in flight at most."""
    gets = sorted(t for t in trace if t[2].startswith("GET"))
    events = sorted([(t[0], 1) for t in gets] + [(t[1], -1) for t in gets])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    return {"gets": len(gets), "sizes_mib": [round(t[4] / MiB, 2) for t in gets], "max_in_flight": peak}


def mount_sequential(env: Env, size: int, memory_limit: str, name: str = "seq") -> dict:
    """A fresh mount: read the object with 1 MiB reads; the daemon's memory is measured here."""
    with env.mount_s3(name, "--memory-limit", memory_limit) as m:
        path = m.path / BIG_KEY
        os.stat(path)  # the lookup (HEAD/LIST) is not part of the read
        st = m.status()
        pid, limit = st["pid"], st["memory"]["limit"]
        baseline = proc_status(pid)
        cpu0 = proc_cpu(pid)
        before = env.proxy.snapshot()
        env.proxy.counts.start_trace()
        with Timer() as t:
            n = _read_all(path)
        trace = env.proxy.counts.stop_trace()
        proxy = _delta(env, before)
        cpu = proc_cpu(pid) - cpu0
        after = m.status()
        mem = proc_status(pid)
    assert n == size, f"the mount read {n} bytes of {size}"
    reads = after["requests"].get("read", 0) - st["requests"].get("read", 0)
    return {
        "seconds": t.seconds, "mb_s": size / t.seconds / 1e6, "proxy": proxy, "trace": trace_summary(trace),
        "daemon_cpu_s": cpu, "fuse_reads": reads, "fuse_read_kib": size / max(reads, 1) / 1024,
        "daemon": {"backend_requests": after["backend_requests"], "bytes_down": after["bytes_down"],
                   "prefetch_hit_bytes": after["prefetch_hit_bytes"]},
        "memory": {"limit": limit, "budget_peak": after["memory"]["peak"],
                   "rss_after_mount": baseline["VmRSS"], "vm_hwm": mem["VmHWM"], "rss_end": mem["VmRSS"]},
    }


# -- S3: random 4 KiB reads ---------------------------------------------------------------------

def random_offsets(size: int, count: int, block: int = 4096, aligned: bool = True, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    if aligned:
        return [rng.randrange(0, size // block) * block for _ in range(count)]
    return [rng.randrange(0, size - block) for _ in range(count)]


def mount_random(env: Env, local: Path, size: int, offsets: list[int], block: int = 4096, name: str = "rand") -> dict:
    lat = []
    with env.mount_s3(name) as m, open(local, "rb") as ref:
        fd = os.open(m.path / BIG_KEY, os.O_RDONLY)  # opened once: the lookup is not timed
        try:
            before = env.proxy.snapshot()
            for off in offsets:
                t0 = time.perf_counter()
                data = os.pread(fd, block, off)
                lat.append(time.perf_counter() - t0)
                if data != os.pread(ref.fileno(), block, off):
                    raise AssertionError(f"the mount returned wrong bytes at offset {off}")
            proxy = _delta(env, before)
        finally:
            os.close(fd)
        st = m.status()
    read = block * len(offsets)
    return {"count": len(offsets), "block": block, "aligned": all(o % block == 0 for o in offsets),
            "median_ms": statistics.median(lat) * 1e3,
            "p90_ms": _pct(lat, 0.9) * 1e3, "proxy": proxy, "bytes_read": read,
            "amplification": proxy["bytes"] / read, "random_reads": st["random_reads"]}


def raw_random(env: Env, offsets: list[int], block: int = 4096) -> dict:
    lat = []
    before = env.proxy.snapshot()
    for off in offsets:
        t0 = time.perf_counter()
        data = env.raw.get_object(Bucket=BUCKET, Key=BIG_KEY, Range=f"bytes={off}-{off + block - 1}")["Body"].read()
        lat.append(time.perf_counter() - t0)
        assert len(data) == block
    proxy = _delta(env, before)
    return {"count": len(offsets), "median_ms": statistics.median(lat) * 1e3, "p90_ms": _pct(lat, 0.9) * 1e3,
            "proxy": proxy, "amplification": proxy["bytes"] / (block * len(offsets))}


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- S3: ls -l of a large directory -------------------------------------------------------------

def make_many(env: Env, count: int, threads: int = 16) -> float:
    """``count`` small objects under pipeline/bench/many/, put straight to moto (uncounted)."""
    def put(i):
        env.direct.put_object(Bucket=BUCKET, Key=f"{MANY_PREFIX}f{i:05d}.dat", Body=f"object {i}\n".encode())

    with Timer() as t, ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(count)))
    return t.seconds


def raw_listing(env: Env, count: int, repeat: int = 3) -> dict:
    runs = []
    for _ in range(repeat):
        before = env.proxy.snapshot()
        with Timer() as t:
            n = 0
            for page in env.raw.get_paginator("list_objects_v2").paginate(
                    Bucket=BUCKET, Prefix=MANY_PREFIX, Delimiter="/"):
                n += len(page.get("Contents", ()))
        assert n == count, f"raw listing found {n} of {count} objects"
        runs.append((t.seconds, _delta(env, before)))
    seconds = statistics.median(r[0] for r in runs)
    return {"seconds": seconds, "runs": [r[0] for r in runs], "proxy": runs[0][1]}


def _ls(env: Env, path: Path) -> tuple[float, dict, int]:
    before = env.proxy.snapshot()
    with Timer() as t:
        p = subprocess.run(["ls", "-l", str(path)], capture_output=True, text=True, timeout=600)
    proxy = _delta(env, before)
    if p.returncode != 0:
        raise RuntimeError(f"ls -l {path} failed: {p.stderr.strip()}")
    return t.seconds, proxy, len(p.stdout.splitlines()) - 1  # minus the "total" line


def mount_ls(env: Env, count: int, slow: float = 30.0) -> dict:
    """``ls -l`` of the directory through a fresh mount (path resolution included), then again.

    The extra runs (again on the same mount; split into path resolution and listing on another fresh
    mount) are skipped when the first one took more than ``slow`` seconds, to bound the run time.
    """
    with env.mount_s3("ls") as m:
        os.stat(m.path / "pipeline")  # the fixed top level: no backend request
        st0 = m.status()
        seconds, proxy, listed = _ls(env, m.path / MANY_PREFIX)
        st1 = m.status()
        warm = None
        if seconds <= slow:
            warm = _ls(env, m.path / MANY_PREFIX)  # within the metadata TTL or not
    assert listed == count, f"ls -l listed {listed} of {count} entries"
    fuse = {k: v - st0["requests"].get(k, 0) for k, v in st1["requests"].items() if v - st0["requests"].get(k, 0)}
    out = {"seconds": seconds, "listed": listed, "proxy": proxy, "heads": proxy["requests"].get("HEAD", 0),
           "fuse_requests": fuse, "warm": None, "split": None}
    if warm is None:
        return out
    out["warm"] = {"seconds": warm[0], "proxy": warm[1]}
    # The same on another fresh mount, in two steps: resolving the directory's path, then ls -l.
    with env.mount_s3("ls-split") as m:
        os.stat(m.path / "pipeline")
        before = env.proxy.snapshot()
        with Timer() as t:
            os.stat(m.path / MANY_PREFIX)
        resolve = {"seconds": t.seconds, "proxy": _delta(env, before)}
        ls_seconds, ls_proxy, _ = _ls(env, m.path / MANY_PREFIX)
    out["split"] = {"resolve": resolve, "ls": {"seconds": ls_seconds, "proxy": ls_proxy}}
    return out


# -- small-file creates ------------------------------------------------------------------------

def creates(root: Path, count: int, size: int = 1024) -> dict:
    """Create ``count`` files of ``size`` bytes in a new directory ``root`` (each closed: durable)."""
    root.mkdir()
    payload = os.urandom(size)
    with Timer() as t:
        for i in range(count):
            with open(root / f"s{i:05d}.dat", "wb") as f:
                f.write(payload)
    return {"count": count, "seconds": t.seconds, "files_s": count / t.seconds}


def mount_s3_creates(env: Env, count: int) -> dict:
    with env.mount_s3("create") as m:
        os.stat(m.path / "pipeline" / "bench")
        before = env.proxy.snapshot()
        r = creates(m.path / "pipeline" / "bench" / "small", count)
        r["proxy"] = _delta(env, before)
    n = sum(1 for _ in env.direct.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="pipeline/bench/small/s").search("Contents"))
    assert n == count, f"{n} of {count} created files reached S3"
    return r


def mount_disk_creates(env: Env, store: Path, count: int) -> dict:
    with env.mount_disk("disk-create", store) as m:
        (m.path / "pipeline" / "bench").mkdir(parents=True, exist_ok=True)
        r = creates(m.path / "pipeline" / "bench" / "small", count)
    n = len(list((store / "pipeline" / "bench" / "small").iterdir()))
    assert n == count, f"{n} of {count} created files reached the disk backend"
    return r


def raw_puts(env: Env, count: int, size: int = 1024) -> dict:
    payload = os.urandom(size)
    before = env.proxy.snapshot()
    with Timer() as t:
        for i in range(count):
            env.raw.put_object(Bucket=BUCKET, Key=f"pipeline/bench/raw-small/s{i:05d}.dat", Body=payload)
    return {"count": count, "seconds": t.seconds, "files_s": count / t.seconds, "proxy": _delta(env, before)}


# -- disk backend: sequential read -------------------------------------------------------------

def disk_sequential(env: Env, store: Path, local: Path, size: int) -> dict:
    target = store / BIG_KEY
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(local, target)
    with env.mount_disk("disk-seq", store) as m:
        path = m.path / BIG_KEY
        os.stat(path)
        st0 = m.status()
        dropped = drop_caches()
        if not dropped:  # cannot drop: read both warm, so neither has an unfair advantage
            _read_all(target)
        with Timer() as direct:
            n1 = _read_all(target)
        if dropped:
            drop_caches()
        cpu0 = proc_cpu(st0["pid"])
        with Timer() as mounted:
            n2 = _read_all(path)
        cpu = proc_cpu(st0["pid"]) - cpu0
        st1 = m.status()
    assert n1 == n2 == size, f"disk reads gave {n1} and {n2} bytes of {size}"
    reads = st1["requests"].get("read", 0) - st0["requests"].get("read", 0)
    return {"caches_dropped": dropped, "direct_s": direct.seconds, "direct_mb_s": size / direct.seconds / 1e6,
            "mount_s": mounted.seconds, "mount_mb_s": size / mounted.seconds / 1e6,
            "daemon_cpu_s": cpu, "fuse_reads": reads, "fuse_read_kib": size / max(reads, 1) / 1024}
