"""Bodies sent to S3 without copying them (`ViewBody`).

botocore turns a ``bytes`` body into a ``BytesIO`` and reads it three times, 1 MiB or 16 KiB at a
time: to hash it for the signature (SHA-256 over ``http://``), to checksum it (CRC32) and to send
it.  Every ``BytesIO.read`` copies what it returns into a new ``bytes``: three copies of every
byte uploaded, into memory just allocated (page faults), where the hash, the checksum and the
socket only need to look at it.  A `ViewBody` is the same file-like object over the caller's
buffer, whose reads return ``memoryview`` slices of it: no copy.
"""

import io


class ViewBody(io.RawIOBase):
    """A read-only, seekable file over a bytes-like ``data``; ``read`` returns views of it (valid
    while ``data`` is)."""

    def __init__(self, data):
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def __len__(self) -> int:
        """The bytes left to read (botocore takes it for the body's length)."""
        return max(0, len(self._view) - self._pos)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = len(self._view) + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, size: int = -1) -> memoryview:
        start = min(self._pos, len(self._view))
        end = len(self._view) if size is None or size < 0 else min(len(self._view), start + size)
        self._pos = end
        return self._view[start:end]

    def readall(self) -> memoryview:
        return self.read()

    def readinto(self, b) -> int:
        chunk = self.read(len(b))
        n = len(chunk)
        memoryview(b).cast("B")[:n] = chunk
        return n
