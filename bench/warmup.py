"""Touch the machine's free memory once before measuring (`touch_free_memory`).

On a virtual machine whose host backs guest memory only when it is first used (these machines are
Firecracker VMs), the first write to each page of guest memory since the VM booted costs a fault
in the host: about 11 us per 4 KiB page here, against 1-4 us for a page used before (measured on
2026-11-30, the first minutes of a fresh VM).  Whichever process happens to get those pages pays
it, so on a fresh machine the benchmark measured the machine, not stashfs: moto's
CompleteMultipartUpload, which builds the 128 MiB object in new memory, took 0.65-0.92 s after the
mount's big write (whose staged file and part buffers had taken the pages freed before) against
0.30 s after `upload_file`'s, and the big write read 0.42x; after the free memory had been touched
once, both took 0.30 s and the row read 0.84-0.86x, as in earlier runs on machines that had been
up for hours.  So the benchmark first touches the free memory once (`--no-warmup` skips it) and
reports how long that took and what a new page cost then, right after and at the end of the run
(`page_cost`).  It reduces the effect, it cannot pin it: the VM gives free memory back to its
host over the following minutes, and a later row may pay again (the end figure tells).
"""

import mmap
import time

CHUNK = 256 << 20
PAGE = 4096
RESERVE = 1 << 30  # left untouched, so that nothing is evicted or swapped for it
BLOCK = b"\x01" * (4 << 20)  # what is written: non-zero bytes (a host may share zero pages)


def _mem_free() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemFree:"):
                return int(line.split()[1]) * 1024
    return 0


def _touch(m: mmap.mmap, block: bytes) -> float:
    """Write every page of ``m`` with ``block``; the seconds it took."""
    t = time.perf_counter()
    for off in range(0, len(m), len(block)):
        m[off:off + len(block)] = block
    return time.perf_counter() - t


def _new_map() -> mmap.mmap:
    return mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # as a process's heap


def page_cost() -> float | None:
    """Microseconds per 4 KiB page to write one new anonymous map of ``CHUNK`` bytes, released
    after: what a process pays now for memory it has not used before (None: no memory for it)."""
    try:
        m = _new_map()
    except OSError:
        return None
    try:
        return _touch(m, BLOCK) * 1e6 / (CHUNK // PAGE)
    finally:
        m.close()


def touch_free_memory(limit: int | None = None, reserve: int = RESERVE) -> dict:
    """Write once to all but ``reserve`` bytes of the free memory (at most ``limit`` bytes), in
    anonymous maps released at the end: the bytes and seconds it took, the cost per page of the
    first chunk and of all of it (about 11 us on a fresh VM), and `page_cost` right after."""
    size = max(0, _mem_free() - reserve)
    size = (size if limit is None else min(size, limit)) // CHUNK * CHUNK
    maps: list[mmap.mmap] = []
    t0 = time.perf_counter()
    first = None
    try:
        for _ in range(size // CHUNK):
            try:
                maps.append(_new_map())
            except OSError:  # less is free than it said: what was touched is enough (never fails the run)
                break
            seconds = _touch(maps[-1], BLOCK)
            first = seconds if first is None else first
    finally:
        for m in maps:
            m.close()
    seconds = time.perf_counter() - t0
    size = len(maps) * CHUNK
    per_page = 1e6 / (CHUNK // PAGE)
    return {"touched_bytes": size, "seconds": seconds,
            "first_chunk_us_per_page": first * per_page if first is not None else None,
            "us_per_page": seconds * 1e6 / (size // PAGE) if size else None,
            "after_us_per_page": page_cost()}


def describe(figures: dict | None, end_us_per_page: float | None = None) -> str:
    """The line of the benchmark's header that says whether and how the memory was touched, and
    what a new page cost at the end of the run (``end_us_per_page``: `page_cost`)."""
    end = "" if end_us_per_page is None else f"; a new page at the end of the run: {end_us_per_page:.1f} us"
    if not figures:
        return ("memory: not touched before measuring (--no-warmup): on a fresh VM, rows may pay the "
                f"host's first-touch faults (bench/warmup.py){end}")
    if not figures["touched_bytes"]:
        return f"memory: nothing touched before measuring (no free memory to touch beyond the reserve){end}"

    def us(v):
        return "?" if v is None else f"{v:.1f}"
    return (f"memory: {figures['touched_bytes'] / (1 << 30):.1f} GiB of free memory touched once before measuring, "
            f"in {figures['seconds']:.0f} s: {us(figures['us_per_page'])} us per 4 KiB page (the first "
            f"{CHUNK >> 20} MiB {us(figures['first_chunk_us_per_page'])}; a new {CHUNK >> 20} MiB right after "
            f"{us(figures['after_us_per_page'])}){end}")
