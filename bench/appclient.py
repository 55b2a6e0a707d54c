"""What an application does on a mount, run in a process of its own: ``python -m bench.appclient OP ...``.

The benchmark's process runs the counting proxy's threads.  An application timed there would
share the GIL with them (every relayed chunk of the mount's requests takes it), which its
reference, a boto3 client in a process of its own (`bench.rawclient`), does not: so the S3 rows
run the mount's side here too, like an application of the mount would.  This process does only
the file system calls and prints one JSON line:

    seconds   wall time of the operation alone (the data to write is in memory before the clock)
    cpu_s     user + system CPU seconds of this process during the operation
    bytes     bytes read or written

Operations:

    read PATH SIZE                  ``cat``-like: the whole file with 1 MiB reads, nothing kept
    write PATH SRC                  open (create, truncate), SRC's content in 1 MiB writes,
                                    ``fsync``, ``close``; also ``fsync_s`` and ``close_s``
    creates DIR COUNT SIZE [fsync]  COUNT new files of SIZE random bytes, one after another, each
                                    written and closed (``fsync``-ed first with ``fsync``)

`read_all` and `creates` are also called in the benchmark's own process, where no proxy traffic
runs alongside (the disk rows and their references).
"""

import json
import os
import resource
import subprocess
import sys
import time

MiB = 1 << 20
READ_SIZE = MiB


def read_all(path) -> int:
    """``cat``-like: read the whole file with 1 MiB reads, keep nothing."""
    buf = bytearray(READ_SIZE)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return total
            total += n


def creates(root, count: int, size: int, fsync: bool = False) -> dict:
    """Write ``count`` files of ``size`` bytes into the existing directory ``root``, one at a time,
    each closed (and ``fsync``-ed before the close when asked)."""
    payload = os.urandom(size)
    t0 = time.perf_counter()
    for i in range(count):
        fd = os.open(os.path.join(root, f"s{i:05d}.dat"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, payload)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    seconds = time.perf_counter() - t0
    return {"count": count, "size": size, "seconds": seconds, "files_s": count / seconds}


def _read(path: str, size: str):
    def act() -> dict:
        n = read_all(path)
        assert n == int(size), f"read {n} bytes of {size}"
        return {"bytes": n}
    return act


def _write(path: str, src: str):
    with open(src, "rb") as f:
        data = memoryview(f.read())  # before the clock

    def act() -> dict:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            off = 0
            while off < len(data):
                off += os.write(fd, data[off:off + MiB])
            t = time.perf_counter()
            os.fsync(fd)
            fsync_s = time.perf_counter() - t
        finally:
            t = time.perf_counter()
            os.close(fd)
        return {"bytes": len(data), "fsync_s": fsync_s, "close_s": time.perf_counter() - t}
    return act


def _creates(root: str, count: str, size: str, fsync: str = ""):
    def act() -> dict:
        r = creates(root, int(count), int(size), fsync == "fsync")
        return {"bytes": r["count"] * r["size"]}
    return act


OPS = {"read": _read, "write": _write, "creates": _creates}


def main(argv: list[str]) -> int:
    op, *args = argv
    act = OPS[op](*args)  # what the operation needs, made before the clock starts
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = act()
    out["seconds"] = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps(out))
    return 0


def run(env, op: str, *args) -> dict:
    """Run one operation in a child process; its figures."""
    from .harness import REPO

    p = subprocess.run([sys.executable, "-m", "bench.appclient", op, *map(str, args)],
                       cwd=REPO, env=env.child_env, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"bench.appclient {op} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
