"""Concurrent sequential readers of different objects on one S3 mount: the daemon's peak RSS.

The memory budget bounds what the prefetchers hold; this measures what the process really holds
(``VmHWM``), against ``--memory-limit`` plus the daemon's RSS at rest plus a fixed overhead for the
FUSE replies and copies in flight (`OVERHEAD`, stated in docs/performance.md).
"""

import os
import threading
import time

from .harness import MiB, Env, Timer, proc_status

OVERHEAD = 32 * MiB
TIMEOUT = 600.0  # seconds for all the readers together
PREFIX = "pipeline/bench/readers/"


def _read_all(path, errors: list) -> None:
    buf = bytearray(MiB)  # like cat: 1 MiB reads, nothing kept
    try:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    except OSError as e:
        errors.append(f"{path}: {e}")


def make_objects(env: Env, readers: int, size: int) -> None:
    """``readers`` objects of ``size`` bytes, put straight to moto (uncounted)."""
    body = os.urandom(size)
    for i in range(readers):
        env.direct.put_object(Bucket=env.bucket, Key=f"{PREFIX}r{i}.bin", Body=body)


def mount_concurrent_readers(env: Env, readers: int, size: int, memory_limit: str) -> dict:
    """A fresh mount; ``readers`` threads each read their own object to the end at the same time."""
    make_objects(env, readers, size)
    with env.mount_s3("readers", "--memory-limit", memory_limit) as m:
        paths = [m.path / f"{PREFIX}r{i}.bin" for i in range(readers)]
        for p in paths:
            os.stat(p)  # lookups are not part of the read
        st = m.status()
        pid, limit = st["pid"], st["memory"]["limit"]
        baseline = proc_status(pid)
        errors: list = []
        threads = [threading.Thread(target=_read_all, args=(p, errors), daemon=True) for p in paths]
        with Timer() as t:
            for th in threads:
                th.start()
            for th in threads:  # a daemon that stops answering must not hang the benchmark
                th.join(max(1.0, TIMEOUT - (time.perf_counter() - t.start)))
        if any(th.is_alive() for th in threads):
            raise RuntimeError(f"concurrent readers still reading after {TIMEOUT:.0f} s: the daemon stopped answering")
        after = m.status()
        mem = proc_status(pid)
    if errors:
        raise RuntimeError(f"concurrent readers failed: {errors[:3]}")
    target = limit + baseline["VmRSS"] + OVERHEAD
    return {
        "readers": readers, "object_bytes": size, "seconds": t.seconds,
        "mb_s": readers * size / t.seconds / 1e6,
        "limit": limit, "overhead": OVERHEAD, "rss_after_mount": baseline["VmRSS"],
        "vm_hwm": mem["VmHWM"], "rss_end": mem["VmRSS"], "budget_peak": after["memory"]["peak"],
        "target": target,
    }
