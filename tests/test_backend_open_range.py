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
