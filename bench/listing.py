"""``ls -l`` of a large S3 directory: a fresh mount against the raw ListObjectsV2 pagination.

The objects are put straight to moto (uncounted) under `MANY_PREFIX`, in a bucket of their own
when the caller says so (moto's ListObjectsV2 walks the whole bucket for every page, so the other
rows' objects would make each page slower).  Measured, for the mount: the seconds of ``ls -l`` (a
subprocess; path resolution included), requests by kind, the LISTs whose prefix is the directory
itself (``ceil(n / 1000)`` pages are needed; more means the directory was listed again while the
listing was in use), HEADs (a request per entry would show there), and the daemon's CPU seconds
and peak RSS.  The reference: ListObjectsV2 pagination of the prefix with delimiter ``/``, in a
process of its own (`bench.rawclient`), median of 3.
"""

import math
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from . import rawclient
from .harness import Env, Timer, daemon_figures, proc_cpu

MANY_PREFIX = "pipeline/bench/many/"


def _delta(env: Env, before: dict) -> dict:
    return env.proxy.counts.delta(before, env.proxy.snapshot())


def make_many(env: Env, count: int, threads: int = 16) -> float:
    """``count`` small objects under `MANY_PREFIX` of ``env.bucket``, put straight to moto (uncounted)."""
    def put(i):
        env.direct.put_object(Bucket=env.bucket, Key=f"{MANY_PREFIX}f{i:05d}.dat", Body=f"object {i}\n".encode())

    with Timer() as t, ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(count)))
    return t.seconds


def raw_listing(env: Env, count: int, repeat: int = 3) -> dict:
    """ListObjectsV2 pagination of `MANY_PREFIX` (delimiter ``/``) in a child process, median of ``repeat``."""
    runs = [rawclient.run(env, "list", MANY_PREFIX, count) for _ in range(repeat)]
    runs.sort(key=lambda r: r["seconds"])
    mid = runs[(len(runs) - 1) // 2]
    return {"seconds": mid["seconds"], "runs": [r["seconds"] for r in runs], "proxy": mid["proxy"],
            "cpu_s": mid["cpu_s"], "requests_per_file": mid["proxy"]["total"] / count}


def dir_lists(trace: list, prefix: str) -> list[str]:
    """The max-keys of each traced LIST whose prefix is exactly ``prefix`` ("" when not given)."""
    out = []
    for t in trace:
        if t[2] != "LIST":
            continue
        q = parse_qs(urlsplit(t[5]).query, keep_blank_values=True)
        if q.get("prefix", [""])[0] == prefix:
            out.append(q.get("max-keys", [""])[0])
    return out


def _ls(env: Env, path: Path) -> tuple[float, dict, int]:
    before = env.proxy.snapshot()
    with Timer() as t:
        p = subprocess.run(["ls", "-l", str(path)], capture_output=True, text=True, timeout=600)
    proxy = _delta(env, before)
    if p.returncode != 0:
        raise RuntimeError(f"ls -l {path} failed: {p.stderr.strip()}")
    return t.seconds, proxy, len(p.stdout.splitlines()) - 1  # minus the "total" line


def mount_ls(env: Env, count: int, slow: float = 30.0, name: str = "ls") -> dict:
    """``ls -l`` of the directory through a fresh mount (path resolution included), then again.

    The extra runs (again on the same mount; split into path resolution and listing on another fresh
    mount) are skipped when the first one took more than ``slow`` seconds, to bound the run time.
    """
    with env.mount_s3(name) as m:
        os.stat(m.path / "pipeline")  # the fixed top level: no backend request
        st0 = m.status()
        cpu0 = proc_cpu(st0["pid"])
        env.proxy.counts.start_trace()
        try:
            seconds, proxy, listed = _ls(env, m.path / MANY_PREFIX)
        finally:
            trace = env.proxy.counts.stop_trace()
        daemon = daemon_figures(m, cpu0)
        st1 = m.status()
        warm = None
        if seconds <= slow:
            warm = _ls(env, m.path / MANY_PREFIX)  # within the metadata TTL or not
    assert listed == count, f"ls -l listed {listed} of {count} entries"
    fuse = {k: v - st0["requests"].get(k, 0) for k, v in st1["requests"].items() if v - st0["requests"].get(k, 0)}
    lists = dir_lists(trace, MANY_PREFIX)
    pages = math.ceil(count / 1000)
    out = {"seconds": seconds, "listed": listed, "proxy": proxy, "heads": proxy["requests"].get("HEAD", 0),
           "dir_lists": len(lists), "dir_list_max_keys": lists, "pages_needed": pages,
           "lists_beyond_pages": len(lists) - pages, "requests_per_file": proxy["total"] / count,
           "daemon": daemon, "fuse_requests": fuse, "warm": None, "split": None}
    if warm is None:
        return out
    out["warm"] = {"seconds": warm[0], "proxy": warm[1]}
    # The same on another fresh mount, in two steps: resolving the directory's path, then ls -l.
    with env.mount_s3(f"{name}-split") as m:
        os.stat(m.path / "pipeline")
        before = env.proxy.snapshot()
        with Timer() as t:
            os.stat(m.path / MANY_PREFIX)
        resolve = {"seconds": t.seconds, "proxy": _delta(env, before)}
        ls_seconds, ls_proxy, _ = _ls(env, m.path / MANY_PREFIX)
    out["split"] = {"resolve": resolve, "ls": {"seconds": ls_seconds, "proxy": ls_proxy}}
    return out


