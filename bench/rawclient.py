"""Raw boto3 references, each run in a process of its own: ``python -m bench.rawclient OP ...``.

The benchmark's process also runs the counting proxy's threads: a reference measured there would
share the GIL with them, and its CPU time could not be told apart from theirs.  This process does
only the boto3 work and prints one JSON line:

    seconds   wall time of the operation alone (the client is created before the clock starts)
    cpu_s     user + system CPU seconds of this process (all its threads) during the operation,
              from ``resource.getrusage(RUSAGE_SELF)``: comparable with the daemon's CPU seconds
    max_rss   the process's peak RSS in bytes (``ru_maxrss``)
    bytes     bytes read (get, ranged) or sent (upload, puts)

Operations (ENDPOINT is the counting proxy, so the requests are counted like the mount's):

    get ENDPOINT BUCKET KEY SIZE           one GET of the whole object, body read in 1 MiB chunks
    ranged ENDPOINT BUCKET KEY SIZE        GETs of 8 MiB ranges on 8 threads
    upload ENDPOINT BUCKET FILE KEY        ``upload_file`` with boto3's default TransferConfig
    puts ENDPOINT BUCKET PREFIX COUNT SIZE COUNT sequential ``put_object`` of SIZE random bytes
    list ENDPOINT BUCKET PREFIX COUNT      ListObjectsV2 pagination of PREFIX, delimiter "/"
                                           (``bytes`` is then the number of keys listed)

`run` (used by the benchmark) starts it and adds the proxy's counts of the operation's requests.
"""

import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

MiB = 1 << 20


def _client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        config=Config(max_pool_connections=16, s3={"addressing_style": "path"},
                      retries={"mode": "standard", "max_attempts": 3}))


def _get(s3, bucket: str, key: str, size: str) -> int:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    n = sum(len(c) for c in body.iter_chunks(MiB))
    assert n == int(size), f"one GET read {n} bytes of {size}"
    return n


def _ranged(s3, bucket: str, key: str, size: str, part: int = 8 * MiB, threads: int = 8) -> int:
    size = int(size)

    def get(start):
        end = min(start + part, size) - 1
        return len(s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")["Body"].read())

    with ThreadPoolExecutor(threads) as pool:
        n = sum(pool.map(get, range(0, size, part)))
    assert n == size, f"ranged GETs read {n} bytes of {size}"
    return n


def _upload(s3, bucket: str, path: str, key: str) -> int:
    s3.upload_file(path, bucket, key)  # the default TransferConfig: 8 MiB parts, 10 threads
    return os.path.getsize(path)


def _puts(s3, bucket: str, prefix: str, count: str, size: str) -> int:
    payload = os.urandom(int(size))
    for i in range(int(count)):
        s3.put_object(Bucket=bucket, Key=f"{prefix}s{i:05d}.dat", Body=payload)
    return int(count) * int(size)


def _list(s3, bucket: str, prefix: str, count: str) -> int:
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        n += len(page.get("Contents", ()))
    assert n == int(count), f"the raw listing found {n} of {count} objects"
    return n


OPS = {"get": _get, "ranged": _ranged, "upload": _upload, "puts": _puts, "list": _list}


def main(argv: list[str]) -> int:
    op, endpoint, bucket, *args = argv
    s3 = _client(endpoint)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    n = OPS[op](s3, bucket, *args)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "max_rss": after.ru_maxrss * 1024, "bytes": n}))
    return 0


def run(env, op: str, *args) -> dict:
    """Run one operation in a child process against the proxy; its figures plus ``proxy`` counts."""
    from .harness import REPO

    before = env.proxy.snapshot()
    p = subprocess.run([sys.executable, "-m", "bench.rawclient", op, env.proxy.url, env.bucket, *map(str, args)],
                       cwd=REPO, env=env.child_env, capture_output=True, text=True, timeout=1800)
    proxy = env.proxy.counts.delta(before, env.proxy.snapshot())
    if p.returncode != 0:
        raise RuntimeError(f"bench.rawclient {op} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["proxy"] = proxy
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
