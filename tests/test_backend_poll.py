"""An S3 body read on the event loop (`BodyReader.poll_into`, `AsyncBackend.read_range`): no
worker thread, bounded as a read in a thread is, and the connection given back to the pool as it
was (blocking, its timeout, its low-water mark), through a real HTTP server (moto) and proxy."""

import os
import select
import socket
import threading

import pytest
import trio

from fsdriver.backend.aio import AsyncBackend
from fsdriver.backend.s3_body import LOWAT
from fsdriver.errors import Unavailable

from .faultproxy import FaultProxy
from .pacedtls import self_signed
from .test_backend_open_range import _pool_connections, _s3_through

MiB = 1 << 20
DATA = os.urandom(5 * MiB + 4321)  # (its tail is shorter than the low-water mark)


def _lowat(sock) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def _pieces(n: int) -> list[bytearray]:
    return [bytearray(MiB) for _ in range(n)]


class Watch:
    """Watches a polled reader on the loop: ``waiting`` while it waits for its socket, ``nones``
    the polls that found nothing.  A held server is let go once it has sent all it holds back
    for and the reader waits (`let_go_once_waiting`), never on a timer: the reader has taken
    what was sent, or (the server slow to send it) waits for more than is left before the stop,
    its low-water mark not reached yet."""

    def __init__(self, reader):
        self.waiting, self.changed, self.nones = False, trio.Event(), 0
        poll, wait_fd = reader.poll_into, reader.wait_fd

        def polled(view, need=None):
            self.waiting = False
            k = poll(view, need)
            self.nones += k is None
            return k

        def waits():
            self.waiting = True
            self.changed.set()
            self.changed = trio.Event()
            return wait_fd()

        reader.poll_into, reader.wait_fd = polled, waits

    async def until_waiting(self):
        while not self.waiting:
            await self.changed.wait()


async def let_go_once_waiting(reached: threading.Event, go: threading.Event, watch: Watch):
    """Set ``go`` once the server sent all it holds back for (``reached``) and the reader waits."""
    await trio.to_thread.run_sync(reached.wait, 60, limiter=trio.CapacityLimiter(1))
    assert reached.is_set(), "the server never got to where it holds the body"
    await watch.until_waiting()
    go.set()


@pytest.fixture
def proxied(request, moto_server, s3_url, tmp_path, monkeypatch):
    """(proxy, S3Backend through it) with ``DATA`` stored at a/obj; over HTTPS when the test is
    parametrized so (``indirect``: True), as S3 itself is."""
    tls = None
    if getattr(request, "param", False):
        tls = self_signed(tmp_path)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(tls[0]))  # (whatever the machine's says)
    with FaultProxy(moto_server.url, tls=tls) as proxy:
        be = _s3_through(proxy, s3_url, max_attempts=1)
        try:
            be.put_bytes("a/obj", DATA)
            yield proxy, be
        finally:
            be.close()


@pytest.mark.parametrize("proxied", [False, True], ids=["http", "https"], indirect=True)
def test_a_body_is_read_on_the_loop_and_its_connection_goes_back_as_it_was(proxied):
    """The first bytes come with the request (in a thread); the rest without one: the only
    worker slot is held by the test meanwhile, so a read in a thread could not even start.  The
    body stops for a while midway (the proxy holds the rest back until the reader waits: over
    TLS a read then finds no whole record, `ssl.SSLWantReadError`).  The socket is non-blocking
    while the body is polled, and blocking with its timeout and a mark of 1 again once the body
    ended; the next request reuses the connection."""
    import ssl

    proxy, be = proxied
    opened = _pool_connections(be)
    let_go = threading.Event()
    proxy.stall, proxy.rule = (2 * MiB + 1000, let_go), (lambda method, path: method == "GET")
    ab = AsyncBackend(be, max_concurrency=1, timeout=30)

    async def main():
        first = _pieces(1)
        reader, n = await ab.open_range("a/obj", 0, into=first)
        assert n == MiB and reader.pollable
        sock = reader._sock
        assert isinstance(sock, ssl.SSLSocket) == proxy.url.startswith("https:")
        timeout = sock.gettimeout()
        got, watch = bytes(first[0]), Watch(reader)
        async with ab.limiter:  # no thread can run a read now
            with trio.fail_after(60):
                bufs = _pieces(2)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(let_go_once_waiting, proxy.stalled, let_go, watch)
                    assert await ab.read_range(reader, bufs) == 2 * MiB
                got += b"".join(bufs)
                assert sock.gettimeout() == 0 and watch.nones >= 1  # polled, and waited
                bufs = _pieces(4)
                n = await ab.read_range(reader, bufs)  # the rest, short: the body ends
                got += b"".join(bufs)[:n]
        assert got == DATA
        assert not reader.pollable and sock.gettimeout() == timeout and _lowat(sock) == 1
        reader.close()
        assert await ab.get_range("a/obj", 7, 11) == DATA[7:11]

    try:
        trio.run(main)
    finally:
        let_go.set()
    assert _pool_connections(be) == opened  # every request on one connection


def test_the_low_water_mark_never_asks_for_more_than_the_body_has_left(proxied):
    """The last 4321 bytes come after a pause, once the reader waits: its mark is those bytes,
    not a quarter MiB that will never arrive (it would wait until the bound)."""
    proxy, be = proxied
    let_go = threading.Event()
    proxy.stall, proxy.rule = (len(DATA) - 4321, let_go), (lambda method, path: method == "GET")
    ab = AsyncBackend(be, timeout=30)

    async def main():
        reader, _ = await ab.open_range("a/obj", 0, into=_pieces(1))
        watch, bufs = Watch(reader), _pieces(5)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(let_go_once_waiting, proxy.stalled, let_go, watch)
                n = await ab.read_range(reader, bufs)
        assert n == len(DATA) - MiB and b"".join(bufs)[:n] == DATA[MiB:]
        assert watch.nones >= 1
        reader.close()

    try:
        trio.run(main)
    finally:
        let_go.set()


def test_a_body_closed_midway_drops_its_connection(proxied):
    """(And while polled the mark is a quarter MiB, but for a caller that needs only 1000 bytes
    more, 1000: it never waits for bytes it does not need while the rest is slow to come.)"""
    proxy, be = proxied
    opened = _pool_connections(be)
    ab = AsyncBackend(be, timeout=30)

    async def main():
        reader, _ = await ab.open_range("a/obj", 0, into=_pieces(1))
        bufs = _pieces(1)
        with trio.fail_after(60):
            assert await ab.read_range(reader, bufs) == MiB
        assert bytes(bufs[0]) == DATA[MiB:2 * MiB]
        reader.poll_into(memoryview(bytearray(MiB)), 2 * MiB)
        assert _lowat(reader._sock) == LOWAT
        reader.poll_into(memoryview(bytearray(1000)), 1000)
        assert _lowat(reader._sock) == 1000
        reader.close()
        assert not reader.pollable
        assert await ab.read_range(reader, _pieces(1)) == 0  # closed: nothing more
        assert await ab.get_range("a/obj", 0, 4) == DATA[:4]

    trio.run(main)
    assert _pool_connections(be) == opened + 1  # the half-read connection was not reused


def test_a_body_cut_short_on_the_loop_is_unavailable_not_a_short_read(proxied):
    proxy, be = proxied
    proxy.cut, proxy.rule = 3 * MiB // 2, (lambda method, path: method == "GET")
    ab = AsyncBackend(be, timeout=30)

    async def main():
        reader, n = await ab.open_range("a/obj", 0, into=_pieces(1))
        assert n == MiB and reader.pollable
        bufs = _pieces(2)
        with trio.fail_after(60), pytest.raises(Unavailable):
            await ab.read_range(reader, bufs)
        assert bufs[0][: MiB // 2] == DATA[MiB:3 * MiB // 2]
        reader.close()

    trio.run(main)


def test_a_body_that_stalls_is_unavailable_at_the_bound_and_the_loop_goes_on(proxied):
    """A server that stops sending: the read ends with Unavailable at ``--backend-timeout`` (no
    thread left behind), while other tasks of the loop keep running all along."""
    proxy, be = proxied
    let_go = threading.Event()
    proxy.stall, proxy.rule = (MiB + 1000, let_go), (lambda method, path: method == "GET")
    ab = AsyncBackend(be, timeout=1.0)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async def main():
        async with trio.open_nursery() as nursery:
            reader, n = await ab.open_range("a/obj", 0, into=_pieces(1))
            assert n == MiB and reader.pollable
            nursery.start_soon(ticker)
            start = trio.current_time()
            with pytest.raises(Unavailable, match="did not answer within 1s"):
                await ab.read_range(reader, _pieces(1))
            waited = trio.current_time() - start
            assert 1.0 <= waited < 30 and ab.unresponsive
            assert ticks >= 5  # the loop was never blocked
            assert ab.in_flight == 0  # no thread was left reading
            reader.close()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        let_go.set()


def _read_held_tls_body(tmp_path, monkeypatch, **server):
    """The body of ``DATA`` from a `PacedTLSServer` (held where ``server`` says, let go once the
    reader waits): its first MiB read with the request (a thread), the rest polled.  Returns
    (the bytes, the server's request count)."""
    from fsdriver.backend.s3 import S3Backend

    from .pacedtls import PacedTLSServer

    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    with PacedTLSServer(cert, key, DATA, **server) as srv:
        be = S3Backend("paced", "data", endpoint_url=srv.url, max_attempts=1)
        ab = AsyncBackend(be, timeout=20)
        try:
            async def main():
                first = _pieces(1)
                reader, n = await ab.open_range("a/obj", 0, into=first)
                assert n == MiB and reader.pollable
                watch, bufs = Watch(reader), _pieces(5)
                with trio.fail_after(60):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(let_go_once_waiting, srv.reached, srv.go, watch)
                        n = await ab.read_range(reader, bufs)
                reader.close()
                assert watch.nones >= 1
                return bytes(first[0]) + b"".join(bufs)[:n]

            return trio.run(main), srv.requests
        finally:
            be.close()


def test_over_tls_the_bytes_buffered_with_the_first_read_come_first_and_whole(tmp_path, monkeypatch):
    """Records of 1000 bytes: the first MiB, read in a thread, ends inside a record, whose rest
    stays in http.client's buffer; the server then holds the body.  The first poll takes those
    bytes on their own: copied together with a socket read that finds no whole record (and
    raises), they were lost, and every byte after them came shifted."""
    # (the record [1048000, 1049000) holds the first MiB's last byte: the server stops after it)
    got, requests = _read_held_tls_body(tmp_path, monkeypatch, record=1000, hold=MiB - 1)
    assert len(got) == len(DATA) and got == DATA and requests == 1


def test_over_tls_the_last_record_held_midway_is_waited_for_not_until_the_bound(tmp_path, monkeypatch):
    """The last record's second half comes after a pause: OpenSSL took its first half off the
    socket already, so fewer bytes than the body has left will arrive there.  The mark is one
    record lower (here 1 byte): the read ends when they come, not with Unavailable at the
    bound followed by a second request."""
    got, requests = _read_held_tls_body(tmp_path, monkeypatch, hold=len(DATA) - 1, mid_record=True)
    assert got == DATA and requests == 1


@pytest.mark.parametrize("proxied", [False, True], ids=["http", "https"], indirect=True)
def test_the_low_water_mark_near_the_end_is_what_the_body_has_left(proxied):
    """4321 bytes before the end the mark is 4321, not a quarter MiB that will never arrive;
    over TLS one record less (OpenSSL may hold part of the last record already): 1."""
    proxy, be = proxied
    ab = AsyncBackend(be, timeout=30)

    async def main():
        reader, _ = await ab.open_range("a/obj", 0, into=_pieces(1))
        rest = len(DATA) - MiB - 4321
        bufs = _pieces(rest // MiB) + [bytearray(rest % MiB)]
        with trio.fail_after(60):
            assert await ab.read_range(reader, bufs) == rest  # exactly up to the last 4321
        reader.poll_into(memoryview(bytearray(100)), MiB)  # (not to the end: still polled)
        assert _lowat(reader._sock) == (1 if proxy.url.startswith("https:") else 4321)
        reader.close()

    trio.run(main)


def _paced_reader(srv):
    """(backend, reader) of ``DATA`` from ``srv``, the first MiB read (as the request's thread reads
    it), once the server sent everything up to its stop."""
    from fsdriver.backend.s3 import S3Backend

    be = S3Backend("paced", "data", endpoint_url=srv.url, max_attempts=1)
    reader = be.open_range("a/obj", 0)
    first = bytearray(MiB)
    assert reader.read_into([first]) == MiB and bytes(first) == DATA[:MiB]
    assert srv.reached.wait(60)
    return be, reader


def _poll_until(reader, view: memoryview, want: int) -> "tuple[int, int]":
    """Poll ``reader`` into ``view`` until ``want`` bytes came, waiting for its socket when a poll
    has none yet (bounded); (bytes, polls that returned bytes)."""
    got = polls = 0
    while got < want:
        k = reader.poll_into(view[got:])
        if k is None:
            assert select.select([reader.wait_fd()], [], [], 30)[0], "no bytes arrived within 30 s"
        else:
            assert k > 0
            got, polls = got + k, polls + 1
    return got, polls


def test_over_tls_one_poll_takes_every_record_that_arrived_not_one(tmp_path, monkeypatch):
    """Records of 1000 bytes, the server stopped 300,000 bytes past the first MiB: a TLS read
    returns one record, but a poll goes on reading the records that arrived (a poll per record
    costs several times the read): a few polls take them all, not 300; the bytes are the body's."""
    from .pacedtls import PacedTLSServer

    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    with PacedTLSServer(cert, key, DATA, record=1000, hold=MiB + 300_000) as srv:
        be, reader = _paced_reader(srv)
        try:
            buf = bytearray(MiB)
            got, polls = _poll_until(reader, memoryview(buf), 300_000)
            assert polls <= 10, f"{polls} polls for {got} bytes"
            assert bytes(buf[:got]) == DATA[MiB:MiB + got]
            srv.go.set()
            reader.close()
        finally:
            be.close()


def test_over_tls_a_reset_after_records_were_read_comes_after_their_bytes(tmp_path, monkeypatch):
    """The connection is reset while a poll reads the records that arrived: the poll returns the
    bytes it read before (the body's, counted), the next poll raises Unavailable, and the socket
    is put back as it was (blocking, its timeout)."""
    from .pacedtls import PacedTLSServer

    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    with PacedTLSServer(cert, key, DATA, record=1000, hold=MiB + 300_000) as srv:
        be, reader = _paced_reader(srv)
        try:
            sock = reader._sock
            timeout, length = sock.gettimeout(), reader._direct.length
            real, reads = sock.recv_into, [0]

            def reset_at_the_tenth(view, n=0):
                reads[0] += 1
                if reads[0] == 10:
                    raise ConnectionResetError(104, "Connection reset by peer")
                return real(view, n)

            sock.recv_into = reset_at_the_tenth
            buf = bytearray(MiB)
            view, got, met = memoryview(buf), 0, None
            with pytest.raises(Unavailable):
                while True:
                    k = reader.poll_into(view[got:])
                    if k is None:
                        assert select.select([reader.wait_fd()], [], [], 30)[0]
                    else:
                        got += k
                        if reads[0] >= 10 and met is None:
                            met = k  # the poll in which the reset happened
            assert met, "the poll that met the reset returned no bytes"
            assert 0 < got < 10 * 1000 and reads[0] == 10  # the records before the reset
            assert bytes(buf[:got]) == DATA[MiB:MiB + got]
            assert length - reader._direct.length == got  # counted as read
            assert sock.gettimeout() == timeout  # put back
            srv.go.set()
            reader.close()
        finally:
            be.close()
