"""Bodies sent to S3 without copies (fsdriver/backend/s3_send.py): a `ViewBody` reads like a file
whose reads are views of the caller's buffer, and botocore sends it, hashes it, checksums it and
sends it again from its start when it retries; parts of a large file read into reused buffers
(fsdriver/backend/partbuf.py) land intact."""

import concurrent.futures
import io
import mmap
import os

import pytest

from fsdriver.backend.s3_send import ViewBody

MiB = 1 << 20


def test_reads_are_views_of_the_buffer_not_copies():
    data = bytearray(b"0123456789")
    body = ViewBody(data)
    assert len(body) == 10  # what is left to read: botocore's Content-Length
    first = body.read(4)
    assert bytes(first) == b"0123" and body.tell() == 4 and len(body) == 6
    data[0:1] = b"X"
    assert bytes(first) == b"X123"  # the same memory
    assert bytes(body.read()) == b"456789" and body.read(5) == b""  # at the end: empty (== b"")
    assert body.seek(-3, io.SEEK_END) == 7 and bytes(body.read(100)) == b"789"
    assert body.seek(2) == 2 and body.seek(3, io.SEEK_CUR) == 5
    out = bytearray(3)
    assert body.readinto(out) == 3 and out == b"567"
    with pytest.raises(ValueError):
        body.seek(-1)
    body.seek(0)
    # botocore's idiom for hashing a body: read until an empty read
    assert b"".join(bytes(c) for c in iter(lambda: body.read(3), b"")) == bytes(data)


def _s3_through(proxy, s3_url, **kw):
    from fsdriver.backend.s3 import S3Backend

    return S3Backend(s3_url.split("/")[2], "data", endpoint_url=proxy.url, **kw)


@pytest.fixture
def proxied(request, moto_server, s3_url, tmp_path, monkeypatch):
    """(proxy, S3Backend through it), over HTTPS when parametrized so (``indirect``): botocore
    signs a body's SHA-256 over HTTP, and over HTTPS sends it aws-chunked with a CRC32 trailer."""
    from .faultproxy import FaultProxy
    from .pacedtls import self_signed

    tls = None
    if request.param:
        tls = self_signed(tmp_path)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(tls[0]))  # (whatever the machine's says)
    with FaultProxy(moto_server.url, tls=tls) as proxy:
        be = _s3_through(proxy, s3_url)
        try:
            yield proxy, be
        finally:
            be.close()


@pytest.mark.parametrize("proxied", [False, True], ids=["http", "https"], indirect=True)
def test_a_part_whose_answer_was_lost_is_sent_again_whole(proxied):
    """The first UploadPart reaches the server but its answer is lost (a 500 from the proxy):
    botocore retries, sending the part again from the start of its ViewBody (an mmap buffer, as
    the mount's parts are), and the completed object is the data."""
    proxy, be = proxied
    data = os.urandom(5 * MiB + 1234)
    sent = []

    def first_part(method, path):  # the rule sees every request: the first part is faulted
        if method == "PUT" and "partNumber=" in path:
            sent.append(path)
            return len(sent) == 1
        return False

    upload = be.create_multipart("big", checksum=True)
    buf = mmap.mmap(-1, 5 * MiB)
    buf[:] = data[:5 * MiB]
    proxy.rule = first_part
    e1 = be.upload_part("big", upload, 1, memoryview(buf))
    proxy.rule = None
    assert proxy.hits == 1 and len(sent) == 2  # the answer lost, and the part sent again
    e2 = be.upload_part("big", upload, 2, data[5 * MiB:])
    be.complete_multipart("big", upload, [(1, e1), (2, e2)], len(data))
    assert be.get_object("big")[0] == data


@pytest.mark.parametrize("cap", [None, "two buffers"])
def test_large_files_put_whole_read_their_parts_into_shared_reused_buffers_intact(s3_backend, tmp_path, monkeypatch,
                                                                                  cap):
    """`put_file` of more parts than transfer threads, two files at once: parts are read into
    buffers other parts used before (5 MiB parts in these tests), never more buffers at once than
    the pool has threads, or than a cap allows (`cap_upload_memory`: the mount's budget; what it
    holds there is `upload_memory`), every byte lands where it belongs, and no buffer is kept
    afterwards."""
    if cap is not None:
        s3_backend.cap_upload_memory(2 * s3_backend.part_size + 1)
    most = 2 if cap is not None else s3_backend.transfer_workers
    pool = s3_backend._part_buffers
    mapped = []
    take = pool.take

    def counted():
        buf = take()
        mapped.append(pool.out + pool.held // pool.size)
        return buf
    monkeypatch.setattr(pool, "take", counted)
    workers, part = s3_backend.transfer_workers, s3_backend.part_size
    parts = 3 * workers
    size = parts * part - 777
    data = {name: os.urandom(size) for name in ("a", "b")}
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    made = pool.made
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        sizes = list(ex.map(lambda name: s3_backend.put_file(name, tmp_path / name).size, data))
    assert sizes == [size, size]
    assert all(s3_backend.get_object(name)[0] == content for name, content in data.items())
    assert max(mapped) <= most and pool.made - made < 2 * parts  # reused
    assert pool.out == 0 and pool.held == 0
    assert s3_backend.upload_memory(size) == most * part
    assert s3_backend.upload_memory(2 * part) == 2 * part
    assert s3_backend.upload_memory(s3_backend.multipart_threshold) == 0  # one PUT, read in pieces


def test_a_file_shorter_than_its_size_fails_its_put_and_leaves_no_upload(s3_backend, tmp_path, monkeypatch):
    """A local file that ends before the size it had when the put started (it shrank meanwhile)
    is an OSError, not an object of the wrong size; the multipart upload is aborted."""
    from fsdriver.backend import s3

    size = 3 * s3_backend.part_size
    (tmp_path / "big").write_bytes(os.urandom(size))
    real = s3.read_into
    monkeypatch.setattr(s3, "read_into", lambda fd, start, view: real(fd, start, view) if start == 0 else 0)
    with pytest.raises(OSError, match="shorter"):
        s3_backend.put_file("big", tmp_path / "big")
    with pytest.raises(Exception):
        s3_backend.head("big")
    r = s3_backend.client.list_multipart_uploads(Bucket=s3_backend.bucket, Prefix=s3_backend.prefix)
    assert r.get("Uploads", []) == []


@pytest.mark.parametrize("end", ["completed", "aborted", "abort failed"])
def test_a_file_put_whole_in_parts_tells_its_upload_journal_of_its_upload(s3_backend, tmp_path, monkeypatch, end):
    """The mount records every multipart upload `put_file` opens (in its cache dir), so that the
    next daemon aborts what a crash left; the record goes once the upload was completed or
    aborted, and stays when the abort failed (the next daemon tries it again)."""
    from botocore.exceptions import ClientError

    from fsdriver.backend import s3

    recorded, forgotten = [], []
    s3_backend.upload_journal = (lambda key, upload_id: recorded.append((key, upload_id)) or len(recorded),
                               forgotten.append)
    size = 2 * s3_backend.part_size + 1
    (tmp_path / "big").write_bytes(os.urandom(size))
    if end != "completed":
        real = s3.read_into
        monkeypatch.setattr(s3, "read_into", lambda fd, start, view: real(fd, start, view) if start == 0 else 0)
    if end == "abort failed":
        def refuse(**kwargs):
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "AbortMultipartUpload")
        monkeypatch.setattr(s3_backend.client, "abort_multipart_upload", refuse)
    if end == "completed":
        assert s3_backend.put_file("big", tmp_path / "big").size == size
    else:
        with pytest.raises(OSError, match="shorter"):
            s3_backend.put_file("big", tmp_path / "big")
    assert [key for key, _ in recorded] == ["big"]
    open_ids = [u["UploadId"] for u in s3_backend.client.list_multipart_uploads(
        Bucket=s3_backend.bucket, Prefix=s3_backend.prefix).get("Uploads", [])]
    if end == "abort failed":
        assert forgotten == [] and open_ids == [recorded[0][1]]  # left for the next daemon's abort
        monkeypatch.undo()
        s3_backend.abort_multipart("big", recorded[0][1])
    else:
        assert forgotten == [1] and open_ids == []
