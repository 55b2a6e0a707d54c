"""The streamed body of one S3 GET (`S3Backend.open_range`), read into the caller's buffers.

botocore's ``StreamingBody.readinto`` goes through urllib3, whose ``readinto`` reads a temporary
``bytes`` (itself a copy out of http.client's ``read``) and copies it into the buffer: three copies
of every byte, two thirds of the CPU time of a streamed read.  When the layers are the known ones
(a plain `StreamingBody` over a length-delimited response, not decoded), `BodyReader` reads
straight from the http.client response under them (``socket.recv_into`` the caller's buffer: one
copy) and keeps their bookkeeping (bytes read, bytes remaining) as their own reads do; at the end
of the body (its last byte read, or the server stopping early) one read through the layers lets
them check the length and give the connection back to the pool.  Otherwise it reads through
botocore.  A socket error or a timeout of a direct read is raised as
botocore would raise it (`ResponseStreamingError`, `ReadTimeoutError`), so the caller's error
mapping is the same on both paths.

A direct body can also be read without a thread (`BodyReader.poll_into`, what
`AsyncBackend.read_range` uses when it can): the socket is made non-blocking and each call takes
what has arrived (the bytes http.client buffered first, on their own; then from the socket
directly), or None when nothing has yet; the caller waits for the socket (`BodyReader.wait_fd`).
The socket's low-water mark (``SO_RCVLOWAT``) is raised to `LOWAT`, never above what the caller
needs or the body still has to give (over TLS one record less), so that the caller wakes once per
quarter MiB that arrived, not per packet.  A thread hop per chunk costs more CPU time than the
read itself (futex wake-ups, the wake-up socket, epoll); on a 2-core machine every CPU second
the daemon spends is one the server, the proxy or the reader does not get.  Over TLS a socket
read returns one record (16 KiB at most): a poll goes on reading the records that have arrived,
as one read of a plain socket takes all of it; an error met after some of them is raised by the
next poll, after their bytes (a read that must write first is left to the next poll too).  The
socket's blocking mode, timeout and low-water mark are put back when the body ends (read to its
end, stopped early or closed), before the connection goes back to the pool.
"""

import http.client
import socket
import ssl
import threading

from botocore.exceptions import ReadTimeoutError, ResponseStreamingError
from botocore.response import StreamingBody

from .base import RangeReader


# The socket's low-water mark while a body is polled: the caller wakes once this much arrived
# (or what it needs, if less).  Over TLS it is set one record lower: OpenSSL may have taken part
# of a record off the socket already (at most 16 KiB of data and its overhead).
LOWAT = 256 << 10
TLS_RECORD = 18 << 10


class EmptyReader(RangeReader):
    def __init__(self):
        pass

    def read(self, n: int) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _direct_source(body):
    """The http.client response under ``body`` (botocore over urllib3) when reading from it
    directly is safe, else None."""
    if type(body) is not StreamingBody:  # e.g. a StreamingChecksumBody: its reads checksum
        return None
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    if not isinstance(fp, http.client.HTTPResponse) or fp.chunked or fp.length is None:
        return None
    if not all(hasattr(raw, a) for a in ("length_remaining", "_fp_bytes_read")) or not hasattr(body, "_amount_read"):
        return None
    encoding = (raw.headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity" and getattr(raw, "decode_content", True):
        return None  # urllib3 would decode it (botocore asks it not to: bodies come as stored)
    return fp


def _socket_of(fp: http.client.HTTPResponse):
    """The socket under the response, if it is one (http.client reads it through ``makefile``)."""
    sock = getattr(getattr(getattr(fp, "fp", None), "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


class BodyReader(RangeReader):
    """``read(n)`` reads exactly ``n`` bytes but at the end, `read_into` fills the caller's
    buffers.  ``close`` drops the connection unless the body was read to its end (then it went
    back to the pool already), and waits for a read in progress in another thread to return first."""

    def __init__(self, body, errors):
        self.body, self.errors = body, errors
        self._direct = _direct_source(body)
        self._lock = threading.Lock()
        self._busy = False  # a read runs
        self._closing = False  # close() was called during that read: the read closes on return
        self._sock = _socket_of(self._direct) if self._direct is not None else None
        self._saved: tuple | None = None  # while polled: the socket's timeout and low-water mark
        self._lowat = 0  # the low-water mark set while polled
        self._drained = False  # http.client's buffer is empty: polls read the socket directly
        self.wants_write = False  # the last poll needs the socket writable (TLS), not readable
        self._failed: "Exception | None" = None  # a socket error met after bytes the poll returned

    @property
    def direct(self) -> bool:
        """Whether `read_into` reads from the socket into the buffers (for tests)."""
        return self._direct is not None

    @property
    def pollable(self) -> bool:
        """Whether `poll_into` can read the body without blocking (a direct body on a socket)."""
        return self._direct is not None and self._sock is not None and not self._closing

    def wait_fd(self) -> int:
        """The descriptor to wait for (readable, or writable if `wants_write`) after None."""
        return self._sock.fileno()

    def poll_into(self, view: memoryview, need: "int | None" = None) -> "int | None":
        """Without blocking: the next bytes of the body into ``view`` (at most its length), None
        if none arrived yet, 0 at the end of the body (or once closed).  ``need``: how many bytes
        the caller waits for in all (default: the view's length); the socket's low-water mark never
        asks for more.  Called on one thread (the event loop's); the first call makes the socket
        non-blocking until the body ends."""
        if self._closing:
            return 0
        with self.errors():
            fp = self._direct
            if fp is None:  # finished (`_finish`): the layers say what is left (nothing)
                return self.body.readinto(view)
            if self._failed is not None:  # met after bytes read before it were returned
                failed, self._failed = self._failed, None
                self._unpoll()
                raise ResponseStreamingError(error=failed) from None
            want = min(len(view), fp.length)
            sock = self._sock
            if self._saved is None:
                self._saved = (sock.gettimeout(), sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))
                sock.settimeout(0)
            mark = min(LOWAT, len(view) if need is None else need, fp.length)
            tls = isinstance(sock, ssl.SSLSocket)
            if tls:  # OpenSSL may hold part of a record already
                mark -= TLS_RECORD
            self._set_lowat(max(1, mark))
            self.wants_write = False
            try:
                n = self._buffered_into(fp, view[:want]) if not self._drained else None
                if n is None and self._drained:
                    n = sock.recv_into(view[:want], want)
                    if tls and n:
                        n += self._more_records(sock, view[n:want])
            except ssl.SSLWantWriteError:
                self.wants_write = True
                return None
            except (BlockingIOError, ssl.SSLWantReadError):
                return None
            except (OSError, http.client.HTTPException) as e:
                self._unpoll()
                raise ResponseStreamingError(error=e) from None
            if n is None:
                return None
            if n:
                fp.length -= n  # as http.client's own reads count it
            return self._count(n)

    def _more_records(self, sock: ssl.SSLSocket, view: memoryview) -> int:
        """After a TLS read: the records that have arrived since, into ``view``, without blocking.
        A TLS read returns one record (at most 16 KiB) where a plain socket's returns all that
        arrived, and a call of `poll_into` per record costs several times the read itself.  Stops
        at the first read that would block; an error is kept for the next call (`_failed`), after
        the bytes read before it."""
        got = 0
        while got < len(view):
            try:
                k = sock.recv_into(view[got:], len(view) - got)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except (OSError, http.client.HTTPException) as e:
                self._failed = e
                break
            if not k:
                break
            got += k
        return got

    def _buffered_into(self, fp: http.client.HTTPResponse, view: memoryview) -> "int | None":
        """The bytes http.client's buffer holds (read with the headers, or left by a read in a
        thread) come first: copied from the buffer alone, never together with a socket read (a
        TLS read that finds no whole record raises, and bytes copied before it would be lost).
        Once it is empty (`_drained`) the body is read from the socket directly.  None: empty."""
        try:
            held = len(fp.fp.peek(1))  # (reads the socket only if the buffer is empty)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self._drained = True
            raise
        if held > len(view):
            return fp.fp.readinto1(view)
        self._drained = True
        return fp.fp.readinto1(view[:held]) if held else None

    def _set_lowat(self, n: int) -> None:
        if n != self._lowat:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
            self._lowat = n

    def _unpoll(self) -> None:
        """Put the socket back as it was (before the connection goes back to the pool)."""
        if self._saved is not None:
            timeout, lowat = self._saved
            self._saved, self._lowat = None, 0
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                self._sock.settimeout(timeout)
            except OSError:  # already closed
                pass

    def read(self, n: int) -> bytes:
        return self._locked(lambda: self.body.read(n) if n > 0 else b"", b"")

    def read_into(self, buffers: list[bytearray]) -> int:
        readinto = self._readinto_direct if self._direct is not None else self.body.readinto

        def fill() -> int:
            done = 0
            for buf in buffers:
                view, got = memoryview(buf), 0
                while got < len(buf):
                    k = readinto(view[got:])
                    if not k:
                        return done + got  # the end of the body
                    got += k
                done += got
            return done

        return self._locked(fill, 0)

    def _readinto_direct(self, view: memoryview) -> int:
        if self._direct is None:  # finished (`_finish`): the layers say what is left (nothing)
            return self.body.readinto(view)
        raw = self.body._raw_stream
        try:
            n = self._direct.readinto(view)
        except TimeoutError as e:  # (socket.timeout)
            raise ReadTimeoutError(endpoint_url=getattr(raw, "_request_url", None), error=e) from None
        except (OSError, http.client.HTTPException) as e:
            raise ResponseStreamingError(error=e) from None
        return self._count(n)

    def _count(self, n: int) -> int:
        """Keep the layers' bookkeeping for ``n`` bytes read under them (0: the server stopped)."""
        raw = self.body._raw_stream
        if n:
            raw._fp_bytes_read += n
            if raw.length_remaining is not None:
                raw.length_remaining -= n
            self.body._amount_read += n
            if raw.length_remaining == 0:  # read to its end: a caller never asks for more
                self._finish()
            return n
        self._finish()  # the server stopped early: IncompleteReadError
        return 0

    def _finish(self) -> None:
        """At the end of the body (or where the server stopped): one read through the layers, so
        botocore checks the length (IncompleteReadError if short) and urllib3 gives the connection
        back to the pool."""
        self._direct = None
        self._unpoll()
        self.body.read()

    def _locked(self, read, closed):
        """Run ``read()`` unless closed (then ``closed``); a close meanwhile takes effect after."""
        with self._lock:
            if self._closing:
                return closed
            self._busy = True
        try:
            with self.errors():
                return read()
        finally:
            with self._lock:
                self._busy = False
                closing = self._closing
            if closing:
                self.body.close()

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            if self._busy:
                return  # the read in progress closes the body when it returns
        self._unpoll()
        self.body.close()
