"""User metadata and hard links in the backend protocol, on disk, S3 (moto's server) and memory."""

import base64
import errno
import json
import os
import zlib

import pytest
import trio

from fsdriver.backend import CommonPrefix, ObjectInfo
from fsdriver.backend.aio import AsyncBackend
from fsdriver.backend.base import MAX_META_BYTES
from fsdriver.backend.disk import META_XATTR, DiskBackend
from fsdriver.backend.memory import MemoryBackend
from fsdriver.errors import InvalidRequest, NotFound, PermissionDenied, PreconditionFailed

M = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1700000000", "mtime-nsec": "123456789"}
N = {"mode": "33261", "uid": "0", "gid": "0"}
D = {"mode": "16877", "uid": "1000", "gid": "100"}


@pytest.fixture(params=["disk", "s3", "memory"])
def mb(request):
    """Each backend: disk, S3 against moto, and the in-memory one."""
    if request.param == "memory":
        return MemoryBackend()
    return request.getfixturevalue(f"{request.param}_backend")


def listed(backend, prefix, delimiter=None) -> dict:
    return {e.key: e for e in backend.list(prefix, delimiter)}


def listed_meta(backend, entry, want):
    """What a listing entry must carry: the metadata where the backend lists it, else None."""
    return entry.meta == (want if backend.lists_meta else None)


def test_put_with_meta_then_head_and_list_show_it(mb, tmp_path):
    info = mb.put_bytes("d/a", b"abc", meta=M)
    assert info.meta == M and info.size == 3
    assert mb.head("d/a").meta == M
    src = tmp_path / "src"
    src.write_bytes(b"from a file")
    assert mb.put_file("d/f", src, meta=N).meta == N
    assert mb.head("d/f").meta == N
    assert mb.get_range("d/f", 0) == b"from a file"
    entries = listed(mb, "d/", "/")
    assert listed_meta(mb, entries["d/a"], M) and listed_meta(mb, entries["d/f"], N)
    assert listed_meta(mb, listed(mb, "d/")["d/a"], M)  # without a delimiter too
    assert mb.lists_meta == (not mb.url.startswith("s3://"))


def test_put_without_meta_has_none_and_replaces_the_old(mb):
    assert mb.put_bytes("k", b"1").meta == {}
    assert mb.head("k").meta == {}
    mb.put_bytes("k", b"2", meta=M)
    assert mb.put_bytes("k", b"3").meta == {}  # a put replaces the metadata as a whole
    assert mb.head("k").meta == {}
    if mb.lists_meta:
        assert listed(mb, "k")["k"].meta == {}


def test_set_meta_replaces_it_and_keeps_the_content(mb):
    etag = mb.put_bytes("d/a", b"content", meta=M).etag
    info = mb.set_meta("d/a", N)
    assert info.meta == N and info.size == 7
    head = mb.head("d/a")
    assert head.meta == N and head.etag == info.etag
    assert mb.get_range("d/a", 0) == b"content"
    if not mb.url.startswith("s3://"):
        assert info.etag == etag  # the content did not change (S3 may give a new etag)
    if mb.lists_meta:
        assert listed(mb, "d/", "/")["d/a"].meta == N
    assert mb.set_meta("d/a", None).meta == {}
    assert mb.head("d/a").meta == {}


def test_set_meta_conditions_and_missing_keys(mb):
    etag = mb.put_bytes("k", b"v", meta=M).etag
    with pytest.raises(PreconditionFailed):
        mb.set_meta("k", N, if_match="not-the-etag")
    assert mb.head("k").meta == M
    new = mb.set_meta("k", N, if_match=etag)
    assert mb.head("k").meta == N
    mb.set_meta("k", M, if_match=new.etag)  # the etag it answered is current
    assert mb.head("k").meta == M
    with pytest.raises(NotFound):
        mb.set_meta("missing", N)
    with pytest.raises(NotFound):
        mb.set_meta("missing-dir/", N)
    with pytest.raises(NotFound):
        mb.head("missing")


def test_copy_and_rename_keep_meta(mb):
    mb.put_bytes("src", b"data", meta=M)
    assert mb.copy("src", "c/copy").meta == M
    assert mb.head("c/copy").meta == M and mb.head("src").meta == M
    mb.rename("src", "moved")
    assert mb.head("moved").meta == M
    mb.put_bytes("dir/", b"", meta=D)
    mb.put_bytes("dir/x", b"x", meta=N)
    mb.put_bytes("dir/sub/", b"", meta=M)
    mb.rename("dir/", "new/")
    assert mb.head("new/").meta == D
    assert mb.head("new/x").meta == N
    assert mb.head("new/sub/").meta == M
    with pytest.raises(NotFound):
        mb.head("dir/x")


def test_directory_markers_with_meta(mb):
    assert mb.put_bytes("p/m/", b"", meta=D).meta == D
    assert mb.head("p/m/").meta == D
    entry = listed(mb, "p/", "/")["p/m/"]
    assert isinstance(entry, CommonPrefix) and listed_meta(mb, entry, D)
    assert listed_meta(mb, listed(mb, "p/m/")["p/m/"], D)  # the marker itself in a flat listing
    with pytest.raises(PreconditionFailed):
        mb.put_bytes("p/m/", b"", meta=N, if_none_match=True)
    assert mb.head("p/m/").meta == D
    assert mb.set_meta("p/m/", N).meta == N
    assert mb.head("p/m/").meta == N
    assert mb.put_bytes("p/m/", b"", meta=M).meta == M  # a put on an existing marker replaces it
    assert mb.head("p/m/").meta == M
    assert mb.put_bytes("p/m/", b"").meta == {}
    assert mb.head("p/m/").meta == {}
    mb.put_bytes("p/implicit/x", b"x")
    if mb.lists_meta:  # a directory without a marker (or whose marker has none) lists {}
        assert listed(mb, "p/", "/")["p/implicit/"].meta == {}


def test_new_marker_put_file_and_copy(mb, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert mb.put_file("q/", empty, meta=D).meta == D
    assert mb.head("q/").meta == D
    assert mb.copy("q/", "r/").meta == D
    assert mb.head("r/").meta == D


def test_meta_over_the_limit_is_refused(mb, tmp_path):
    big = {"a": "x" * 1200, "b": "y" * 1000}  # over 2 KiB
    with pytest.raises(InvalidRequest, match="too large"):
        mb.put_bytes("k", b"v", meta=big)
    with pytest.raises(NotFound):
        mb.head("k")
    src = tmp_path / "src"
    src.write_bytes(b"v")
    with pytest.raises(InvalidRequest):
        mb.put_file("k", src, meta=big)
    mb.put_bytes("k", b"v", meta=M)
    with pytest.raises(InvalidRequest):
        mb.set_meta("k", big)
    assert mb.head("k").meta == M
    with pytest.raises(InvalidRequest):
        mb.put_bytes("k", b"v", meta={f"n{i}": "" for i in range(65)})  # too many names
    # just under the limit fits everywhere (S3: next to the backend's own put token)
    fits = {"a": "x" * (MAX_META_BYTES - 2), "b": ""}
    assert mb.put_bytes("k", b"w", meta=fits).meta == fits
    assert mb.head("k").meta == fits


@pytest.mark.parametrize("meta", [
    {"Mode": "1"}, {"": "1"}, {"stashfs-put": "x"}, {"a b": "1"}, {"mode": "caf\u00e9"},
    {"mode": " 1"}, {"mode": "1\n"}, {"mode": 1}, ["mode"],
])
def test_invalid_meta_is_refused_everywhere(mb, meta):
    with pytest.raises(InvalidRequest):
        mb.put_bytes("k", b"v", meta=meta)
    with pytest.raises(NotFound):
        mb.head("k")


def test_multipart_put_keeps_meta(mb, tmp_path):
    """Above the multipart threshold (5 MiB in these tests, 8 MiB by default) S3 sends the
    metadata with CreateMultipartUpload."""
    data = os.urandom(11 << 20)
    assert mb.put_bytes("big", data, meta=M).meta == M
    assert mb.head("big").meta == M
    src = tmp_path / "big"
    src.write_bytes(data[::-1])
    assert mb.put_file("big2", src, meta=N).meta == N
    assert mb.head("big2").meta == N
    assert mb.set_meta("big2", M).meta == M
    assert mb.head("big2").meta == M and mb.get_range("big2", 0, 100) == data[::-1][:100]


def _copy_requests(backend) -> list[dict]:
    """The headers of every CopyObject / CreateMultipartUpload the backend's client sends."""
    sent = []

    def keep(request, **_):
        sent.append({k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})
    backend.client.meta.events.register("before-send.s3.CopyObject", keep)
    backend.client.meta.events.register("before-send.s3.CreateMultipartUpload", keep)
    return sent


def _copy_by(backend, how: str, key: str) -> str:
    """Copy ``key`` as ``how`` says: onto itself with new metadata (``set_meta``) or to
    ``<key>-copy`` (``copy``, a rename's first half); the key of the copy."""
    if how == "set_meta":
        backend.set_meta(key, N)
        return key
    backend.copy(key, key + "-copy")
    return key + "-copy"


@pytest.mark.parametrize("copy_max", ["CopyObject", "UploadPartCopy"])
@pytest.mark.parametrize("how", ["set_meta", "copy"])
def test_s3_a_copied_multipart_object_reads_back_whole_with_a_valid_checksum(s3_backend, how, copy_max, monkeypatch):
    """A streamed file's parts carry CRC32s, so its object's checksum is a composite one (of the
    parts' checksums).  A copy of it (set_meta; a rename's copy) asks the server for a CRC32 of the
    copy: without that, moto gave the copy the composite value as if it were the whole object's,
    and every whole-object GET that botocore validates failed (FlexibleChecksumError;
    `read_stream` answered Unavailable).  Above the copy limit (lowered here) the copy is made
    part by part."""
    from fsdriver.backend import s3

    if copy_max == "UploadPartCopy":
        monkeypatch.setattr(s3, "_COPY_MAX", 5 << 20)
    data = os.urandom(11 << 20)
    upload = s3_backend.create_multipart("big", meta=M, checksum=True)  # as a streamed file's
    parts = [(n + 1, s3_backend.upload_part("big", upload, n + 1, data[n * (6 << 20):(n + 1) * (6 << 20)]))
             for n in range(2)]
    s3_backend.complete_multipart("big", upload, parts, len(data))
    got = s3_backend.client.get_object(Bucket=s3_backend.bucket, Key=s3_backend._k("big"), ChecksumMode="ENABLED")
    assert got["ChecksumCRC32"].endswith("-2") and got["Body"].read() == data  # composite: of the parts' checksums
    sent = _copy_requests(s3_backend)
    key = _copy_by(s3_backend, how, "big")
    assert [h.get("x-amz-checksum-algorithm") for h in sent] == ["CRC32"]
    assert b"".join(s3_backend.read_stream(key)) == data
    got = s3_backend.client.get_object(Bucket=s3_backend.bucket, Key=s3_backend._k(key), ChecksumMode="ENABLED")
    assert got["Body"].read() == data  # validated by botocore against the checksum it names
    if copy_max == "CopyObject":  # the whole copy's CRC32
        assert got["ChecksumCRC32"] == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    else:  # copied part by part, each with its CRC32: composite again
        assert got["ChecksumCRC32"].endswith("-2")


@pytest.mark.parametrize("how", ["set_meta", "copy"])
def test_s3_a_copy_of_an_object_with_a_whole_checksum_asks_for_none(s3_backend, how):
    """A single put's checksum is the whole object's: the copy keeps it, and is sent as before,
    without a checksum header (which some S3-compatible servers may not know)."""
    data = os.urandom(1 << 20)
    s3_backend.put_bytes("one", data, meta=M)
    sent = _copy_requests(s3_backend)
    key = _copy_by(s3_backend, how, "one")
    assert len(sent) == 1 and "x-amz-checksum-algorithm" not in sent[0]
    got = s3_backend.client.get_object(Bucket=s3_backend.bucket, Key=s3_backend._k(key), ChecksumMode="ENABLED")
    assert got["Body"].read() == data and b"".join(s3_backend.read_stream(key)) == data


def test_s3_copies_above_the_copy_limit_keep_and_replace_meta(s3_backend, monkeypatch):
    """Objects over 5 GiB are copied part by part (UploadPartCopy); a lowered limit takes that
    path here."""
    from fsdriver.backend import s3

    monkeypatch.setattr(s3, "_COPY_MAX", 5 << 20)
    data = os.urandom(12 << 20)
    s3_backend.put_bytes("huge", data, meta=M)
    assert s3_backend.copy("huge", "huge-copy").meta == M
    assert s3_backend.head("huge-copy").meta == M
    assert s3_backend.set_meta("huge", N).meta == N
    assert s3_backend.head("huge").meta == N
    assert s3_backend.get_range("huge", 0) == data
    with pytest.raises(PreconditionFailed):
        s3_backend.set_meta("huge", M, if_match="stale")


def test_s3_listing_has_no_meta_and_the_put_token_is_not_reported(s3_backend):
    s3_backend.put_bytes("d/a", b"1", meta=M)
    s3_backend.put_bytes("d/m/", b"", meta=D)
    entries = listed(s3_backend, "d/", "/")
    assert entries["d/a"].meta is None and entries["d/m/"].meta is None
    assert s3_backend.lookup("d/a")[0].meta is None
    raw = s3_backend.client.head_object(Bucket=s3_backend.bucket, Key=s3_backend._k("d/a"))["Metadata"]
    assert raw.keys() == M.keys() | {"stashfs-put"}  # stored as S3 user metadata (x-amz-meta-*)
    assert s3_backend.head("d/a").meta == M


@pytest.mark.parametrize("kind", ["s3", "memory"])
def test_links_are_refused_without_hard_links(kind, request):
    mb = MemoryBackend() if kind == "memory" else request.getfixturevalue("s3_backend")
    mb.put_bytes("a", b"x")
    assert not mb.hard_links
    with pytest.raises(PermissionDenied, match="hard links are not supported"):
        mb.link("a", "b")
    with pytest.raises(NotFound):
        mb.head("b")


def test_disk_link_shares_content_and_meta(disk_backend):
    b = disk_backend
    assert b.hard_links
    b.put_bytes("a/f", b"shared", meta=M)
    info = b.link("a/f", "b/g")
    assert info.nlink == 2 and info.meta == M and info.size == 6
    assert b.head("a/f").nlink == 2 and b.head("b/g").etag == b.head("a/f").etag
    assert listed(b, "a/", "/")["a/f"].nlink == 2 and listed(b, "b/")["b/g"].nlink == 2
    assert b.get_range("b/g", 0) == b"shared"
    b.set_meta("b/g", N)  # one object under two keys
    assert b.head("a/f").meta == N
    with pytest.raises(PreconditionFailed):
        b.link("a/f", "b/g")
    with pytest.raises(NotFound):
        b.link("missing", "c")
    with pytest.raises(NotFound):
        b.link("a", "c")  # a directory is not an object
    with pytest.raises(InvalidRequest):
        b.link("a/", "c")
    b.delete("a/f")
    assert b.head("b/g").nlink == 1 and b.get_range("b/g", 0) == b"shared"
    assert b.put_bytes("x", b"1").nlink == 1


def test_disk_put_to_a_linked_key_keeps_the_links(disk_backend):
    """A put to one name of a hard-linked file writes the shared inode: every link sees it."""
    b = disk_backend
    b.put_bytes("a/f", b"first version", meta=M)
    b.link("a/f", "a/g")
    before = b.head("a/g").etag
    info = b.put_bytes("a/f", b"second", meta=N)
    assert b.get_range("a/g", 0) == b"second" and b.head("a/g").meta == N
    assert info.nlink == 2 and info.etag == b.head("a/g").etag != before
    with pytest.raises(PreconditionFailed):  # conditional puts still check the etag first
        b.put_bytes("a/g", b"stale", if_match=before)
    assert b.get_range("a/f", 0) == b"second"


def test_disk_stores_meta_as_one_json_xattr(disk_backend):
    b = disk_backend
    b.put_bytes("d/f", b"1", meta=M)
    b.put_bytes("d/m/", b"", meta=D)
    assert json.loads(os.getxattr(b.root / "d" / "f", META_XATTR)) == M
    assert json.loads(os.getxattr(b.root / "d" / "m", META_XATTR)) == D
    b.set_meta("d/f", {})
    assert META_XATTR not in os.listxattr(b.root / "d" / "f")
    os.setxattr(b.root / "d" / "f", META_XATTR, b"not json")  # written by hand: read as none
    assert b.head("d/f").meta == {}


def test_disk_meta_lands_with_the_content(disk_backend, monkeypatch):
    """The xattr is on the temp file when it is renamed into place: content and metadata land in
    one rename, and so does a new marker directory."""
    from fsdriver.backend import disk

    seen = []
    real_replace, real_rename = os.replace, os.rename

    def spy(src, dst, **kw):
        seen.append((os.path.basename(dst), json.loads(os.getxattr(src, META_XATTR))))
        return (real_replace if kw.pop("_replace", False) else real_rename)(src, dst, **kw)

    monkeypatch.setattr(disk.os, "replace", lambda s, d, **kw: spy(s, d, _replace=True, **kw))
    monkeypatch.setattr(disk.os, "rename", spy)
    disk_backend.put_bytes("f", b"1", meta=M)
    disk_backend.put_bytes("m/", b"", meta=D)
    monkeypatch.undo()
    assert seen == [("f", M), ("m", D)]
    assert disk_backend.head("f").meta == M and disk_backend.head("m/").meta == D


def test_disk_without_user_xattrs(disk_backend, monkeypatch):
    from fsdriver.backend import disk

    def unsupported(*a, **kw):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(disk.os, "setxattr", unsupported)
    with pytest.raises(InvalidRequest, match="does not support user extended attributes"):
        disk_backend.check()
    with pytest.raises(InvalidRequest, match="extended attributes"):
        disk_backend.put_bytes("k", b"v", meta=M)
    assert disk_backend.put_bytes("k", b"v").meta == {}  # without metadata it works


def test_new_fields_do_not_change_old_callers():
    old = ObjectInfo("k", 1, 2.0, "e")
    assert old.meta is None and old.nlink == 1
    assert old == ObjectInfo("k", 1, 2.0, "e", meta={"a": "1"})  # meta is not part of equality
    assert CommonPrefix("d/") == CommonPrefix("d/", {"a": "1"}) and CommonPrefix("d/").meta is None


def test_memory_counts_and_faults_set_meta():
    from fsdriver.errors import Unavailable

    be = MemoryBackend()
    be.put_bytes("k", b"v", meta=M)
    be.fail("set_meta", Unavailable("down"))
    with pytest.raises(Unavailable):
        be.set_meta("k", N)
    assert be.head("k").meta == M
    be.set_meta("k", N)
    assert be.calls["set_meta"] == 2 and be.head("k").meta == N
    info = be.head("k")
    info.meta["mode"] = "0"  # an answer is a copy: changing it changes nothing stored
    assert be.head("k").meta == N


def test_async_backend_passes_meta_and_links_through(tmp_path):
    ab = AsyncBackend(DiskBackend(tmp_path / "store"))

    async def main():
        await ab.put_bytes("a", b"1", meta=M)
        info = await ab.set_meta("a", N)
        linked = await ab.link("a", "b")
        return info, linked, await ab.head("b"), await ab.list("")

    info, linked, head, listing = trio.run(main)
    assert info.meta == N and linked.nlink == 2 and head.meta == N
    assert ab.lists_meta and ab.hard_links
    assert {e.key: e.meta for e in listing} == {"a": N, "b": N}
