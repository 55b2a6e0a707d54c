"""Uploads under faults, without the kernel: ambiguous outcomes, permanent errors, the journal, and
one owner per pending upload (items 11, 13, 14, 15 of issue 10)."""

import errno
import logging
import os
import subprocess
import sys

import pytest
import trio
import trio.testing

from fsdriver.errors import InvalidRequest, NotFound, PermissionDenied, Unavailable
from fsdriver.errno_boundary import FSError

from .test_core_races import GatedDisk, entered, run

MiB = 1 << 20


class LandsThenFails(GatedDisk):
    """A put whose answer is lost: the object is stored, then the caller is told it failed."""

    lose_answer = True

    def put_file(self, key, path, **kw):
        info = super().put_file(key, path, **kw)
        if self.lose_answer:
            raise Unavailable(f"{key}: read timeout (the answer was lost)", key)
        return info


def _keys(be):
    return [e.key for e in be.list("user/alice/") if not e.key.endswith("/")]


def test_unlink_after_an_ambiguous_failure_deletes_what_landed(tmp_path):
    """Item 11: a failed upload may have landed; an unlink must delete it, and no retry may bring
    it back."""
    be = LandsThenFails(tmp_path / "be")

    async def body(fs, be, ns, nursery):
        fh, _, _ = await fs.create(ns, "f", os.O_WRONLY)
        await fs.write(fh, 0, b"data")
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.EIO
        await fs.release(fh)
        assert _keys(be) == ["user/alice/f"]  # it landed, the daemon was told otherwise
        await fs.unlink(ns, "f")
        assert _keys(be) == []
        be.lose_answer = False
        assert await fs.uploader.flush_all() == []
        assert _keys(be) == []  # the retry loop did not resurrect it
        with pytest.raises(FSError) as e:
            await fs.lookup(ns, "f")
        assert e.value.errno == errno.ENOENT

    run(tmp_path, body, be)


def test_unlink_wins_over_a_retry_in_flight(tmp_path):
    """Item 11: an unlink racing the retry loop's upload of the same file: the file stays deleted."""
    async def body(fs, be, ns, nursery):
        fh, _, _ = await fs.create(ns, "f", os.O_WRONLY)
        await fs.write(fh, 0, b"data")
        be.fail["put_file"] = Unavailable("down")
        with pytest.raises(FSError):
            await fs.flush(fh)
        await fs.release(fh)
        del be.fail["put_file"]
        ent, release = be.gate("put_file")
        nursery.start_soon(fs.uploader.flush_all)
        await entered(ent)  # the retry is uploading now
        async with trio.open_nursery() as inner:
            inner.start_soon(fs.unlink, ns, "f")
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert await fs.uploader.flush_all() == []
        assert _keys(be) == []

    run(tmp_path, body)


@pytest.mark.parametrize("error, code", [
    (OSError(errno.ENAMETOOLONG, "File name too long"), errno.ENAMETOOLONG),
    (InvalidRequest("user/alice/f: S3 refused the request (InvalidRequest)"), errno.EINVAL),
    (PermissionDenied("user/alice/f: access denied by S3 (AccessDenied)"), errno.EACCES),
    (NotFound("user/alice/f: no such object"), errno.ENOENT),
])
def test_permanent_errors_are_reported_at_once_and_not_queued(tmp_path, error, code):
    """Item 13: an upload that can never succeed gets its own errno and no pending upload."""
    async def body(fs, be, ns, nursery):
        fh, _, _ = await fs.create(ns, "f", os.O_WRONLY)
        await fs.write(fh, 0, b"data")
        be.fail["put_file"] = error
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == code
        assert fs.uploader.pending == {} and fs.uploader.describe_pending() == []
        assert list(fs.cache.pending_dir.iterdir()) == []
        await fs.release(fh)
        assert list(fs.cache.staged_dir.iterdir()) == []

    run(tmp_path, body)


def test_writing_a_file_deleted_elsewhere_is_estale_not_pending(tmp_path):
    """Item 13: the parts this file did not write are gone for good: ESTALE, nothing queued."""
    async def body(fs, be, ns, nursery):
        be.put_bytes("user/alice/big", os.urandom(3 * MiB))
        fs.inodes[ns].listing = None
        ino = (await fs.lookup(ns, "big")).ino
        fh, _, _ = await fs.open(ino, os.O_WRONLY)
        await fs.write(fh, 0, b"x")  # fetches block 0 only
        be.delete("user/alice/big")  # another node deletes it
        with pytest.raises(FSError) as e:
            await fs.flush(fh)
        assert e.value.errno == errno.ESTALE
        assert fs.uploader.pending == {}
        await fs.release(fh)
        assert _keys(be) == []

    run(tmp_path, body)


@pytest.mark.expected_log(r"cannot journal it|NOT kept")
def test_no_kept_claim_without_a_journal_entry(tmp_path):
    """Item 14: when the journal entry cannot be written, the error says the data is NOT kept."""
    async def body(fs, be, ns, nursery):
        fh, _, _ = await fs.create(ns, "f", os.O_WRONLY)
        await fs.write(fh, 0, b"data")
        pending_dir = fs.cache.pending_dir
        pending_dir.rmdir()
        pending_dir.write_bytes(b"")  # a file where the journal directory should be: ENOTDIR
        be.fail["put_file"] = Unavailable("down")
        try:
            with pytest.raises(FSError) as e:
                await fs.flush(fh)
        finally:
            pending_dir.unlink()
            pending_dir.mkdir()
        assert e.value.errno == errno.EIO
        assert "NOT kept" in str(e.value) and "kept as a pending upload" not in str(e.value)
        [item] = fs.uploader.describe_pending()
        assert "NOT kept" in item["error"]
        del be.fail["put_file"]
        assert await fs.uploader.flush_all() == []  # still retried by this daemon
        await fs.release(fh)
        assert be.get_range("user/alice/f", 0) == b"data"

    run(tmp_path, body)


def test_concurrent_flushes_complete_a_pending_upload_once(tmp_path, caplog):
    """Item 15: two flushes of one pending upload: one uploads and frees it, the other sees that."""
    async def body(fs, be, ns, nursery):
        fh, _, _ = await fs.create(ns, "f", os.O_WRONLY)
        await fs.write(fh, 0, b"data")
        be.fail["put_file"] = Unavailable("down")
        with pytest.raises(FSError):
            await fs.flush(fh)
        await fs.release(fh)  # the retry loop owns it now
        [staged] = fs.uploader.pending
        del be.fail["put_file"]
        ent, release = be.gate("put_file")
        results = []

        async def flush():
            results.append(await fs.uploader.flush_all())

        async with trio.open_nursery() as inner:
            inner.start_soon(flush)
            await entered(ent)
            inner.start_soon(flush)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert results == [[], []]
        assert staged.fd == -1
        sentinel = os.open(os.devnull, os.O_RDONLY)  # takes the lowest free descriptor
        try:
            staged.remove()  # a further remove must not close whatever has that number now
            os.fstat(sentinel)
        finally:
            os.close(sentinel)
        assert be.get_range("user/alice/f", 0) == b"data"

    with caplog.at_level(logging.WARNING):
        run(tmp_path, body)
    assert "unexpectedly" not in caplog.text and "Bad file descriptor" not in caplog.text


def test_running_out_of_descriptors_is_emfile_not_unreachable(tmp_path, moto_server):
    """Item 14: a client that cannot open a socket says so (EMFILE), not "cannot reach S3"."""
    code = f"""
import errno, os, resource, sys
from fsdriver.backend.s3 import S3Backend
from fsdriver.errno_boundary import errno_for
be = S3Backend("stashfs-test", endpoint_url={moto_server.url!r}, max_attempts=1)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    be.head("k")
except Exception as e:
    print(errno.errorcode[errno_for(e, "head", "/k")], type(e).__name__, e)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.stdout.startswith("EMFILE "), p.stdout + p.stderr
    assert "cannot reach S3" not in p.stdout and "descriptor" in p.stdout


class CountingPuts(GatedDisk):
    puts = 0

    def put_file(self, key, path, **kw):
        self.puts += 1
        return super().put_file(key, path, **kw)


@pytest.mark.expected_log(r"upload failed|unreachable")
def test_flush_stops_at_the_first_upload_the_backend_does_not_answer(tmp_path):
    """Item 9: `mountctl flush` against a black-holed endpoint took one bound per pending upload;
    it now stops at the first unanswered one, the rest stay pending for the retry loop."""
    be = CountingPuts(tmp_path / "be")

    async def body(fs, be, ns, nursery):
        be.fail["put_file"] = Unavailable("the backend did not answer within 30s (put_file)")
        for name in ("a", "b", "c"):
            fh, _, _ = await fs.create(ns, name, os.O_WRONLY)
            await fs.write(fh, 0, name.encode())
            with pytest.raises(FSError):
                await fs.flush(fh)
            await fs.release(fh)
        tried = be.puts
        left = await fs.uploader.flush_all()
        # one try by this flush, perhaps one by the retry loop running beside it; never all three
        assert len(left) == 3 and be.puts - tried < 3
        del be.fail["put_file"]
        assert await fs.uploader.flush_all() == []
        assert sorted(_keys(be)) == ["user/alice/a", "user/alice/b", "user/alice/c"]

    run(tmp_path, body, be)


class FailingDelete(GatedDisk):
    def delete(self, key, **kw):
        self._pass("delete")
        return super().delete(key, **kw)


@pytest.mark.expected_log(r"upload failed")
def test_a_failed_unlink_keeps_the_file_and_its_pending_upload(tmp_path):
    """Review finding: unlink marked the node unlinked before the delete; when the delete failed
    (EIO), the file read as gone and the retry loop dropped its pending upload."""
    be = FailingDelete(tmp_path / "be")

    async def body(fs, be, ns, nursery):
        fh, attr, _ = await fs.create(ns, "f", os.O_WRONLY)
        await fs.write(fh, 0, b"keep me")
        be.fail["put_file"] = Unavailable("down")
        with pytest.raises(FSError):
            await fs.flush(fh)
        await fs.release(fh)
        be.fail["delete"] = Unavailable("down")
        with pytest.raises(Unavailable):
            await fs.unlink(ns, "f")
        del be.fail["put_file"], be.fail["delete"]
        assert (await fs.getattr(attr.ino)).size == 7
        assert await fs.uploader.flush_all() == []
        assert be.get_range("user/alice/f", 0) == b"keep me"

    run(tmp_path, body, be)


@pytest.mark.parametrize("status, code, passes", [
    (400, "ExpiredToken", True), (403, "RequestTimeTooSkewed", True), (429, "TooManyRequests", True),
    (503, "SlowDown", True), (403, "AccessDenied", False), (403, "InvalidAccessKeyId", False),
])
def test_refusals_that_pass_by_themselves_are_retried_not_dropped(moto_server, s3_url, status, code, passes):
    """Review finding: an expired session token, clock skew or throttling was a permanent refusal,
    so a journaled upload was dropped (its data deleted) when credentials were renewed late."""
    from fsdriver.backend.s3 import S3Backend
    from fsdriver.upload_errors import permanent_errno

    from .faultproxy import FaultProxy

    with FaultProxy(moto_server.url) as proxy:
        be = S3Backend(s3_url.split("/")[2], "data", endpoint_url=proxy.url, max_attempts=1)
        try:
            proxy.refusal, proxy.rule = (status, code), (lambda method, path: method == "PUT")
            with pytest.raises(Exception) as e:
                be.put_bytes("k", b"v")
            assert (permanent_errno(e.value) is None) == passes, repr(e.value)
            assert isinstance(e.value, Unavailable) == passes
        finally:
            be.close()
