"""`Backend.open_range`: one request whose body is read front to back (S3: one streamed GET)."""

import os

import pytest

from fsdriver.backend.memory import MemoryBackend
from fsdriver.errors import InvalidRequest, NotFound, PreconditionFailed

DATA = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture(params=["disk", "s3", "memory"])
def any_backend(request):
    if request.param == "memory":
        return MemoryBackend()
    return request.getfixturevalue(f"{request.param}_backend")


def test_reads_a_range_front_to_back(any_backend):
    b = any_backend
    b.put_bytes("a/obj", DATA)
    r = b.open_range("a/obj", 0)
    try:
        assert r.read(10) == DATA[:10]
        bufs = [bytearray(1 << 20), bytearray(5), bytearray(1 << 20)]
        assert r.read_into(bufs) == len(bufs[0]) + 5 + len(bufs[2])
        assert b"".join(bufs) == DATA[10 : 10 + (2 << 20) + 5]
        rest = DATA[10 + (2 << 20) + 5 :]
        tail = [bytearray(len(rest) + 100)]
        assert r.read_into(tail) == len(rest)  # fewer only at the end
        assert tail[0][: len(rest)] == rest
        assert r.read(10) == b"" and r.read_into([bytearray(4)]) == 0
    finally:
        r.close()
    r = b.open_range("a/obj", 1000, 1010)
    assert r.read(100) == DATA[1000:1010] and r.read(1) == b""
    r.close()
    r = b.open_range("a/obj", len(DATA) - 3)
    assert r.read(100) == DATA[-3:]
    r.close()


def test_past_the_end_is_empty_and_errors_come_at_open(any_backend):
    b = any_backend
    b.put_bytes("a/obj", DATA)
    etag = b.head("a/obj").etag
    r = b.open_range("a/obj", len(DATA) + 5)
    assert r.read(10) == b""
    r.close()
    with pytest.raises(NotFound):
        b.open_range("a/missing", 0).read(1)
    with pytest.raises(InvalidRequest):
        b.open_range("a/obj", 5, 2)
    b.put_bytes("a/obj", DATA[::-1])
    with pytest.raises(PreconditionFailed):
        b.open_range("a/obj", 0, if_match=etag).read(1)
    new = b.head("a/obj").etag
    r = b.open_range("a/obj", 2, if_match=new)
    assert r.read(5) == DATA[::-1][2:7]
    r.close()


def test_a_closed_reader_reads_nothing(any_backend):
    b = any_backend
    b.put_bytes("a/obj", DATA)
    r = b.open_range("a/obj", 0)
    assert r.read(4) == DATA[:4]
    r.close()
    r.close()  # twice is fine
    assert r.read(4) == b""


def test_s3_streams_a_version_that_changes_meanwhile(s3_backend):
    """A body already streaming keeps serving the version it started with."""
    s3_backend.put_bytes("a/obj", DATA)
    etag = s3_backend.head("a/obj").etag
    r = s3_backend.open_range("a/obj", 0, if_match=etag)
    try:
        first = r.read(1 << 20)
        s3_backend.put_bytes("a/obj", DATA[::-1])
        assert first + r.read(len(DATA)) == DATA
    finally:
        r.close()


def _s3_through(proxy, s3_url, **kw):
    from fsdriver.backend.s3 import S3Backend

    return S3Backend(s3_url.split("/")[2], "data", endpoint_url=proxy.url, **kw)


def _pool_connections(be) -> int:
    """Connections urllib3 opened to the backend's endpoint so far (one per connection, reused or not)."""
    session = be.client._endpoint.http_session
    pool = session._manager.connection_from_url(be.client.meta.endpoint_url)
    return pool.num_connections


def test_s3_body_is_read_straight_into_the_buffers_and_the_connection_reused(moto_server, s3_url):
    """A plain body is read from the socket into the caller's buffers (`BodyReader.direct`); read
    to its end, whether or not the caller asks past it, the connection goes back to the pool and
    the next requests reuse it (through the keep-alive proxy)."""
    from .faultproxy import FaultProxy

    with FaultProxy(moto_server.url) as proxy:
        be = _s3_through(proxy, s3_url)
        try:
            be.put_bytes("a/obj", DATA)
            opened = _pool_connections(be)
            for start, exact in ((0, True), (12345, False), (0, True)):
                r = be.open_range("a/obj", start)
                assert r.direct
                rest = len(DATA) - start
                # exact: buffers of exactly the body's size (the stream never asks past the end)
                sizes = [1 << 20] * (rest >> 20) + [rest % (1 << 20)] if exact else [1 << 20] * 4
                bufs = [bytearray(n) for n in sizes]
                n = r.read_into(bufs)
                assert n == rest and b"".join(bufs)[:n] == DATA[start:]
                if not exact:
                    assert r.read_into([bytearray(10)]) == 0
                r.close()
            assert be.get_range("a/obj", 5, 9) == DATA[5:9]
            assert _pool_connections(be) == opened  # every request on the connection of the put
        finally:
            be.close()


def test_s3_body_cut_short_is_an_error_not_a_short_read(moto_server, s3_url):
    """A body that ends before its Content-Length (the connection dropped) raises Unavailable on
    the direct path, as botocore does, instead of passing for the end of the object."""
    from fsdriver.errors import Unavailable

    from .faultproxy import FaultProxy

    with FaultProxy(moto_server.url) as proxy:
        be = _s3_through(proxy, s3_url, max_attempts=1)
        try:
            be.put_bytes("a/obj", DATA)
            proxy.cut, proxy.rule = 1_500_000, (lambda method, path: method == "GET")
            r = be.open_range("a/obj", 0)
            assert r.direct
            bufs = [bytearray(1 << 20) for _ in range(4)]
            with pytest.raises(Unavailable):
                r.read_into(bufs)
            assert bufs[0] == DATA[: 1 << 20]
            r.close()
        finally:
            be.close()


def test_s3_encoded_body_comes_as_stored(s3_backend):
    """An object stored with a Content-Encoding comes as stored, not decoded (botocore asks
    urllib3 not to decode, so the direct path serves it too)."""
    import gzip

    packed = gzip.compress(DATA[:100000])
    s3_backend.client.put_object(Bucket=s3_backend.bucket, Key=s3_backend._k("a/gz"), Body=packed,
                                 ContentEncoding="gzip")
    r = s3_backend.open_range("a/gz", 0)
    buf = [bytearray(len(packed) + 10)]
    assert r.read_into(buf) == len(packed) and bytes(buf[0][: len(packed)]) == packed
    r.close()
