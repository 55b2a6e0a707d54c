"""What a process really holds, from /proc: the daemon's memory as the kernel counts it."""

import hashlib
import threading

MiB = 1 << 20

# Above --memory-limit and the daemon's RSS at rest: FUSE replies and the copies made for them while
# they are in flight (docs/performance.md states it).
READ_OVERHEAD = 32 * MiB


def proc_memory(pid: int) -> dict:
    """VmRSS (now) and VmHWM (peak since start) of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out


def read_concurrently(paths, timeout: float = 120) -> list:
    """Read each file to its end in its own thread (1 MiB reads, like cat); their sha256 digests."""
    digests: list = [None] * len(paths)

    def read(i):
        h = hashlib.sha256()
        buf = bytearray(MiB)
        with open(paths[i], "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(memoryview(buf)[:n])
        digests[i] = h.hexdigest()

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)  # a bound on a hang, not synchronisation: the result is checked below
    return digests
