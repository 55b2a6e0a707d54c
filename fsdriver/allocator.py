"""The C allocator's settings for the daemon, so that its RSS follows the memory budget.

Prefetched parts (1.125 to 8 MiB) are allocated by the worker thread that reads a GET's body and
freed later on the trio thread.  With glibc's defaults, freeing the first such buffer raises the
mmap threshold to its size (the dynamic threshold, up to 32 MiB): later parts are then carved out
of per-thread arenas (up to 8 per core), and what is freed there stays resident.  Eight concurrent
readers under ``--memory-limit 64M`` reached 110-130 MiB of RSS above the daemon's size at rest
while the budget counter never passed 64 MiB, and the RSS did not go down afterwards.

- A fixed mmap threshold (setting it turns the dynamic adjustment off) just above one FUSE read
  (1 MiB): every part gets its own mapping, returned to the kernel when the part is freed.
- Replies of up to 1 MiB stay in the heap and are reused: mapping them, or trimming the heap at
  the 128 KiB that fixing the mmap threshold also fixes (or at 4 MiB), made 1 MiB replies fault
  their pages in again: about 1,500 page faults per 256 MiB read through a disk mount instead of
  about 150, and reads up to half as fast.  The heap keeps up to 8 MiB free at its top.
- Two arenas bound what the small allocations of many threads keep; the GIL serialises most
  allocations anyway, so more arenas buy no parallelism.
"""

import ctypes
import logging

log = logging.getLogger("stashfs.allocator")

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = (1 << 20) + (64 << 10)
TRIM_THRESHOLD = 8 << 20
ARENA_MAX = 2


def configure() -> bool:
    """Apply the settings (before the daemon starts threads); False where there is no glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        log.info("no mallopt in this C library: allocator left at its defaults")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = all([mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1, mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1,
              mallopt(M_ARENA_MAX, ARENA_MAX) == 1])
    if not ok:
        log.warning("mallopt refused the allocator settings: RSS may exceed --memory-limit")
    return ok


def _buffer_maker():
    """``n -> bytearray`` of ``n`` bytes left uninitialised (``bytearray(n)`` zero-fills: 90-150 us
    a MiB, more than the socket read, for bytes the body read overwrites at once).  Every byte of a
    piece is written by the read before anyone sees it: a short read trims the piece to what was
    read.  C API ``PyByteArray_FromStringAndSize(NULL, n)``; ``bytearray`` where there is none."""
    try:
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except AttributeError:
        return bytearray
    make.restype, make.argtypes = ctypes.py_object, (ctypes.c_char_p, ctypes.c_ssize_t)
    return lambda n: make(None, n)


# A bytearray of n bytes, uninitialised: for buffers a read overwrites before anyone sees them
# (the read's length trims them); the stream's pieces and the disk reader's preadv buffers.
new_buffer = _buffer_maker()
