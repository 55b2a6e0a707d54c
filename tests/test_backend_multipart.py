"""The multipart methods of the backend protocol (create, upload_part, complete, abort), on S3
(moto) and on the memory backend: parts uploaded again replace the earlier ones, conditions apply
to the completion, an aborted or completed upload is gone, and the disk backend has none."""

import os

import pytest

from fsdriver.backend.memory import MemoryBackend
from fsdriver.errors import PermissionDenied, PreconditionFailed

MiB = 1 << 20


@pytest.fixture(params=["s3", "memory"])
def mp_backend(request):
    if request.param == "memory":
        return MemoryBackend()
    return request.getfixturevalue("s3_backend")


def _open_uploads(be) -> list:
    if isinstance(be, MemoryBackend):
        return be.open_uploads()
    r = be.client.list_multipart_uploads(Bucket=be.bucket, Prefix=be.prefix)
    return [u["Key"][len(be.prefix):] for u in r.get("Uploads", [])]


@pytest.mark.parametrize("checksum", [False, True])
def test_parts_uploaded_again_replace_the_earlier_ones(mp_backend, checksum):
    be = mp_backend
    a, b, c = os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1000)
    upload = be.create_multipart("big", meta={"mode": "420"}, checksum=checksum)
    e1 = be.upload_part("big", upload, 1, os.urandom(5 * MiB))
    e2 = be.upload_part("big", upload, 2, b)
    e1 = be.upload_part("big", upload, 1, a)  # the latest upload of a number wins
    e3 = be.upload_part("big", upload, 3, c)
    with pytest.raises(Exception):
        be.head("big")  # nothing visible before the completion
    info = be.complete_multipart("big", upload, [(1, e1), (2, e2), (3, e3)], 10 * MiB + 1000)
    assert info.size == 10 * MiB + 1000
    assert be.get_range("big", 0) == a + b + c
    head = be.head("big")
    assert head.etag == info.etag and head.meta == {"mode": "420"}
    assert _open_uploads(be) == []


def test_if_none_match_applies_to_the_completion(mp_backend):
    be = mp_backend
    upload = be.create_multipart("k")
    e1 = be.upload_part("k", upload, 1, b"new")
    be.put_bytes("k", b"another writer's")
    with pytest.raises(PreconditionFailed):
        be.complete_multipart("k", upload, [(1, e1)], 3, if_none_match=True)
    assert be.get_range("k", 0) == b"another writer's"
    be.abort_multipart("k", upload)
    assert _open_uploads(be) == []


@pytest.mark.parametrize("other", ["rewrote it", "deleted it"])
def test_if_match_applies_to_the_completion(mp_backend, other):
    """A retry of a failed close completes only over the version that close replaced: another
    writer's later version (or delete) stays.  moto ignores If-Match on CompleteMultipartUpload;
    the backend checks it first (`S3Backend._check_conditions`)."""
    be = mp_backend
    old = be.put_bytes("k", b"the version the close replaced")
    upload = be.create_multipart("k")
    e1 = be.upload_part("k", upload, 1, b"mine")
    if other == "rewrote it":
        be.put_bytes("k", b"another writer's, later")
    else:
        be.delete("k")
    with pytest.raises(PreconditionFailed):
        be.complete_multipart("k", upload, [(1, e1)], 4, if_match=old.etag)
    if other == "rewrote it":
        assert be.get_range("k", 0) == b"another writer's, later"
    else:
        with pytest.raises(Exception):
            be.head("k")
    be.abort_multipart("k", upload)
    assert _open_uploads(be) == []
    upload = be.create_multipart("k")  # over the current version: lands
    e1 = be.upload_part("k", upload, 1, b"mine")
    current = be.head("k").etag if other == "rewrote it" else None
    be.complete_multipart("k", upload, [(1, e1)], 4, if_match=current, if_none_match=current is None)
    assert be.get_range("k", 0) == b"mine"


@pytest.mark.parametrize("other", ["rewrote it", "deleted it", "created it"])
def test_a_conditional_put_of_a_big_file_never_replaces_a_later_version(s3_backend, tmp_path, other):
    """``put_file`` above the multipart threshold (a retry of a failed close, a leftover of a crash)
    with If-Match / If-None-Match: as a small put, another writer's version stays."""
    be = s3_backend
    path = tmp_path / "big"
    path.write_bytes(os.urandom(be.multipart_threshold + 1000))
    cond = {"if_none_match": True}
    if other != "created it":
        cond = {"if_match": be.put_bytes("k", b"the version the close replaced").etag}
    if other == "deleted it":
        be.delete("k")
    else:
        be.put_bytes("k", b"another writer's, later")
    with pytest.raises(PreconditionFailed):
        be.put_file("k", path, **cond)
    if other == "deleted it":
        with pytest.raises(Exception):
            be.head("k")
    else:
        assert be.get_range("k", 0) == b"another writer's, later"
    assert _open_uploads(be) == []


def test_abort_drops_the_upload_and_is_idempotent(mp_backend):
    be = mp_backend
    upload = be.create_multipart("gone")
    be.upload_part("gone", upload, 1, b"x")
    assert _open_uploads(be) == ["gone"]
    be.abort_multipart("gone", upload)
    be.abort_multipart("gone", upload)  # no longer exists: not an error
    assert _open_uploads(be) == []
    with pytest.raises(Exception):
        be.head("gone")


def test_the_disk_backend_has_no_multipart_uploads(disk_backend):
    assert not disk_backend.multipart_uploads
    with pytest.raises(PermissionDenied):
        disk_backend.create_multipart("k")
