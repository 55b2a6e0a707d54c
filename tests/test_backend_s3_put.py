"""S3 puts as they go over HTTP (through the benchmark's counting proxy, to moto): a small or empty
file uploaded whole sends its body with its headers, without waiting a round trip for the server's
"100 Continue" (an empty body also never meets boto/botocore#3755); a large one still asks first,
so a refusal costs no upload."""

import os

from bench.proxy import CountingProxy
from fsdriver.backend.s3 import EXPECT_ABOVE_BYTES, S3Backend
from fsdriver.errors import PreconditionFailed

import pytest


def _through(proxy, s3_url) -> S3Backend:
    return S3Backend(s3_url.split("/")[2], "puts", endpoint_url=proxy.url)


def test_a_small_file_is_put_without_waiting_for_100_continue(moto_server, s3_url, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    small = tmp_path / "small"
    small.write_bytes(os.urandom(4096))
    edge = tmp_path / "edge"
    edge.write_bytes(os.urandom(EXPECT_ABOVE_BYTES))
    large = tmp_path / "large"
    large.write_bytes(os.urandom(EXPECT_ABOVE_BYTES + 1))  # still one PutObject (below the multipart threshold)
    with CountingProxy(moto_server.url) as proxy:
        be = _through(proxy, s3_url)
        try:
            before = proxy.snapshot()
            for name, path in (("empty", empty), ("small", small), ("edge", edge), ("large", large)):
                be.put_file(name, path)
            be.put_bytes("marker/", b"")
            be.put_bytes("record", b"{}")
            sent = proxy.counts.delta(before, proxy.snapshot())
            assert sent["requests"] == {"PUT": 6}
            assert sent["expect_100"] == {"PUT": 1}  # the large one only
            for name, path in (("empty", empty), ("small", small), ("edge", edge), ("large", large)):
                assert be.get_range(name, 0) == path.read_bytes()
            assert be.get_range("record", 0) == b"{}"
            # a condition that fails still fails, and the object stays as it was
            before = proxy.snapshot()
            with pytest.raises(PreconditionFailed):
                be.put_file("small", edge, if_none_match=True)
            assert proxy.counts.delta(before, proxy.snapshot())["expect_100"] == {}
            assert be.get_range("small", 0) == small.read_bytes()
        finally:
            be.close()
