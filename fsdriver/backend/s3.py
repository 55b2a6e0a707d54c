"""The S3 backend (boto3).  All botocore knowledge of stashfs lives in this module.

- One client, created up front and shared by every thread (boto3 clients are thread-safe), with a
  connection pool sized to the concurrency, standard retries and bounded connect/read timeouts,
  so an unreachable endpoint fails within a bounded time instead of hanging.
- Endpoint: the explicit ``endpoint_url`` option, else boto3's own ``AWS_ENDPOINT_URL_S3`` /
  ``AWS_ENDPOINT_URL`` convention; a custom endpoint uses path-style addressing.
  Credentials come from the standard AWS chain.
- Large puts use multipart uploads whose parts are uploaded in parallel; conditional writes use
  S3's ``If-Match`` / ``If-None-Match`` on PutObject and CompleteMultipartUpload.
- User metadata is S3's (``x-amz-meta-*``), sent with PutObject and CreateMultipartUpload;
  `set_meta` copies the object onto itself with MetadataDirective=REPLACE.  Listings do not carry
  it (``meta`` None); HEAD does.  Every put adds its own token (``stashfs-put``), never reported.
- botocore errors become `fsdriver.errors` exceptions in `s3_errors` (`fsdriver.backend.s3_errors`).
"""

import concurrent.futures
import dataclasses
import email.utils
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Sequence

import boto3
import botocore.utils
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

from ..errors import (
    BackendError,
    BucketNotFound,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from .s3_errors import s3_errors
from .base import MULTIPART_THRESHOLD, PART_SIZE, Backend, CommonPrefix, ListEntry, ObjectInfo, check_meta
from .base import RangeReader
from .s3_body import BodyReader, EmptyReader
from .s3_send import ViewBody
from .partbuf import PartBuffers, read_into, release

log = logging.getLogger("stashfs.s3")

# User metadata on every object put here: a token unique to that put, so that a put whose answer
# was lost can tell from a HEAD whether it landed.
_TOKEN = "stashfs-put"
# A put answered with one of these may nevertheless have landed.
_AMBIGUOUS = (Unavailable, PreconditionFailed)  # 412: a retry that met the first attempt's object
_COPY_MAX = 5 * 1024**3  # the largest object one CopyObject may copy
_COMPOSABLE = ("CRC32", "CRC32C", "SHA1", "SHA256")  # the algorithms a composite checksum can have


def request_settings(total: float) -> dict:
    """Client settings under which one request, retries and backoff included, ends within about
    half of ``total`` seconds (the daemon's ``--backend-timeout``), so that an upload and the HEAD
    that establishes whether an unanswered one landed fit in ``total``.  A black-holed endpoint
    (accepts, never answers) costs connect + read timeout per attempt: 30 s gives 2 attempts of
    2 s connect + 5 s read, plus at most 1 s of backoff (standard retry mode); a bound under 15 s
    gets one attempt."""
    attempts = 2 if total >= 15 else 1
    per_attempt = (total / 2 - (1.0 if attempts > 1 else 0.0)) / attempts
    connect = min(2.0, per_attempt / 3)
    return {"connect_timeout": connect, "read_timeout": per_attempt - connect, "max_attempts": attempts}


def fast_timestamp(value) -> datetime:
    """botocore's timestamp parser, faster: its default (dateutil) was about half the daemon's CPU
    in `ls -l` of a large directory, one LastModified per listed key.  The ISO 8601 times S3 lists
    ("2026-11-29T13:12:52.000Z") and the HTTP dates of its headers ("Sun, 29 Nov 2026 13:12:52
    GMT") are parsed by the standard library; anything else by botocore's own parser."""
    if isinstance(value, str):
        try:
            if value.endswith("Z") and "T" in value:
                return datetime.fromisoformat(value[:-1]).replace(tzinfo=timezone.utc)
            parsed = email.utils.parsedate_to_datetime(value)
            if parsed.tzinfo is not None:
                return parsed
        except (TypeError, ValueError, IndexError):
            pass
    return botocore.utils.parse_timestamp(value)


def _quote(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _info(key: str, size: int, last_modified, etag: str, meta: dict | None = None) -> ObjectInfo:
    return ObjectInfo(key=key, size=size, mtime=last_modified.timestamp(), etag=etag.strip('"'), meta=meta)


def _server_time(response: dict) -> float:
    """When the server answered (its Date header, whole seconds), else our clock: the time a put
    landed, on the same clock as the Last-Modified of listings."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()


def _user_meta(response: dict) -> dict[str, str]:
    """The user metadata of a HEAD (or GET) answer, without the put token."""
    return {k: v for k, v in response.get("Metadata", {}).items() if k != _TOKEN}


# GETs made by `S3Backend.open_range` in this thread: their body is not checksummed by botocore.
# A streamed body is handed to readers as it arrives, so a checksum of the whole object, known only
# at its end, cannot keep a bad byte from a reader; it only cost CPU (a CRC32 of every byte).  The
# transfer itself is guarded by TCP and TLS.  Other GETs keep botocore's validation.
_streamed = threading.local()


def _no_checksum_when_streamed(params, **kwargs) -> None:
    if getattr(_streamed, "active", False):
        params.get("context", {}).get("checksum", {}).pop("response_algorithms", None)


# botocore sends every PutObject body with "Expect: 100-continue" (it turns bytes into a file
# first) and waits for the server's interim answer before it sends the body.  S3 answers only once
# the headers reached it, so every small object cost two round trips where one does: a create on
# the mount, a directory marker, an index.  A body of at most `EXPECT_ABOVE_BYTES` (the AWS SDK
# for Go v2's threshold) is sent with its headers; a larger one still asks first, so a refusal (a
# lost condition, a wrong region) costs no upload.  A refused small body is sent for nothing, at
# most 2 MiB.  It also keeps empty bodies away from the header: S3 skips the interim answer for a
# zero-length PUT, which botocore before 1.43.77 misreads (a stalled and silently retried next
# request on that connection: boto/botocore#3755).
EXPECT_ABOVE_BYTES = 2 << 20


def _send_small_bodies_at_once(params, model=None, **kwargs) -> None:
    headers = params.get("headers", {})
    if "Expect" in headers and getattr(model, "name", None) == "PutObject":
        length = botocore.utils.determine_content_length(params.get("body"))
        if length is not None and length <= EXPECT_ABOVE_BYTES:
            del headers["Expect"]


class S3Backend(Backend):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_connections: int = 32,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 4,
        part_size: int = PART_SIZE,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        transfer_workers: int = 4,
    ):
        if not bucket:
            raise ValueError("an s3:// backend URL needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.max_key_bytes = 1024 - len(self.prefix.encode())  # S3's key limit, our prefix included
        self.url = f"s3://{bucket}/{self.prefix}"
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.transfer_workers = transfer_workers
        try:
            session = boto3.session.Session()
            session._session.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=fast_timestamp)
        except ProfileNotFound as e:  # a mistyped $AWS_PROFILE: a configuration error, not a bug
            raise PermissionDenied(f"{self.url}: no usable AWS credentials: {e} (check $AWS_PROFILE)") from None
        custom_endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL"
        )
        config = Config(
            max_pool_connections=max_connections,
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": "path"} if custom_endpoint else None,
        )
        self.endpoint_url = custom_endpoint
        self.client = session.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or session.region_name or "us-east-1",
            config=config,
        )
        # after botocore's own handler, which adds the header on this event for every S3 operation
        # (a handler of the more specific "before-call.s3.PutObject" would run before it)
        self.client.meta.events.register_last("before-call.s3", _send_small_bodies_at_once,
                                              unique_id="stashfs-small-put-expect")
        self._pool = ThreadPoolExecutor(transfer_workers, thread_name_prefix="s3-part")
        # What the parts of files uploaded whole are read into: shared, so that all of them map at
        # most one buffer per thread of the pool, or fewer (`cap_upload_memory`, `upload_memory`).
        self._part_buffers = PartBuffers(part_size, limit=transfer_workers)
        self._part_slots = threading.Semaphore(transfer_workers)  # parts submitted, one buffer each
        # upload id -> (put token, meta, {(part, etag): CRC32}) of the uploads of `create_multipart`
        self._streams: dict[str, tuple[str, dict, dict]] = {}
        # (record(key, upload_id) -> entry, forget(entry)): told of every multipart upload that
        # `put_file` opens, and of its end (completed, or aborted).  The mount records them in its
        # cache dir, so that the next daemon aborts what a crash left open (`fsdriver.multipart`).
        self.upload_journal: Optional[tuple[Callable[[str, str], object], Callable[[object], None]]] = None

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _errors(self, key: str | None):
        return s3_errors(key, self.bucket)

    @contextmanager
    def _put_errors(self, key: str, cond: dict, creates: bool = False):
        """S3 answers a put with If-Match on a missing key with 404; the protocol says 412.
        ``creates``: a request that makes an object (PutObject, CreateMultipartUpload), which S3
        answers with 404 only for a missing bucket (NoSuchBucket) or that If-Match: any other 404
        is the server refusing the key itself (moto: a key with a newline), never "no such
        object"."""
        try:
            with self._errors(key):
                yield
        except NotFound as e:
            if isinstance(e, BucketNotFound):
                raise
            if "IfMatch" in cond:
                raise PreconditionFailed(f"{key}: does not exist (if_match)", key) from None
            if creates:
                raise InvalidRequest(f"{key!r}: the S3 endpoint refused to store this key (404 Not Found "
                                     "to a write; some S3 servers cannot take a newline or another control "
                                     "character in a key)", key) from None
            raise

    # Whether the bucket is known to exist: a HEAD answers a missing bucket with a bare 404, the
    # answer of a missing key, so the first HEAD that finds nothing asks about the bucket (once).
    _bucket_seen = False

    def check(self) -> None:
        try:
            with self._errors(None):
                self.client.head_bucket(Bucket=self.bucket)
        except NotFound:  # HEAD answers a bare 404, without the NoSuchBucket code
            raise BucketNotFound(f"bucket {self.bucket!r} does not exist") from None
        self._bucket_seen = True

    def head(self, key: str) -> ObjectInfo:
        return self._head(key)[0]

    def _head(self, key: str, **extra) -> tuple[ObjectInfo, dict]:
        """HeadObject (``extra``: more of its arguments): the object and the whole answer."""
        try:
            with self._errors(key):
                r = self.client.head_object(Bucket=self.bucket, Key=self._k(key), **extra)
        except NotFound:
            self._missing_bucket()
            raise
        return _info(key, r["ContentLength"], r["LastModified"], r["ETag"], _user_meta(r)), r

    def _head_for_copy(self, key: str) -> tuple[ObjectInfo, dict]:
        """The HEAD a copy starts with, and the copy's argument that gives it a checksum of its own.

        A streamed file's parts carry CRC32s, so its object's checksum is a composite one (of the
        parts' checksums).  A copy cannot keep that: it asks for a checksum of the whole copy, in
        the same algorithm (`x-amz-checksum-algorithm`).  moto's server gave a copy made without it
        the composite value as the whole object's, and botocore then refused every validated
        whole-object GET of the copy.  A checksum is taken for composite when the object is a
        multipart one (its etag ends in ``-<parts>``; moto's HEAD tells neither the checksum's type
        nor its part count) unless the answer says it is the whole object's.  A whole-object
        checksum, or none, stays as it is (a server that keeps no checksums gets no header it may
        not know)."""
        info, r = self._head(key, ChecksumMode="ENABLED")
        if "-" in info.etag and r.get("ChecksumType") != "FULL_OBJECT":
            for algorithm in _COMPOSABLE:
                if r.get(f"Checksum{algorithm}"):
                    return info, {"ChecksumAlgorithm": algorithm}
        return info, {}

    def _missing_bucket(self) -> None:
        """After a bare 404 to a HEAD: BucketNotFound if the bucket itself is missing (asked once
        per backend; a missing key is then told from a missing bucket for good).  Credentials that
        may not ask about the bucket leave the answer "no such object", as before."""
        if self._bucket_seen:
            return
        try:
            self.check()
        except BucketNotFound:
            raise
        except PermissionDenied:
            self._bucket_seen = True  # it cannot be told: do not ask at every missing key
        except BackendError:
            pass  # unreachable now: ask again next time

    def get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        with self._errors(key):
            r = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            data = r["Body"].read()
        return data, _info(key, len(data), r["LastModified"], r["ETag"], _user_meta(r))

    def get_range(self, key: str, start: int, end: int | None = None, *, if_match: str | None = None) -> bytes:
        if start < 0 or (end is not None and end < start):
            raise InvalidRequest(f"{key}: invalid range [{start}, {end})", key)
        if end == start:
            self.head(key)  # an empty range still requires the object to exist
            return b""
        rng = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        extra = {"IfMatch": _quote(if_match)} if if_match else {}
        with self._errors(key):
            try:
                r = self.client.get_object(Bucket=self.bucket, Key=self._k(key), Range=rng, **extra)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # 416: the object exists but the range starts at or past its end
                raise
            return r["Body"].read()

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self._errors(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]

        def chunks():
            try:
                with self._errors(key):
                    yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

        return chunks()

    _stream_hooked = False  # the checksum hook of streamed GETs is registered on the client

    def open_range(self, key: str, start: int, end: int | None = None, *,
                   if_match: str | None = None) -> RangeReader:
        """One GET, its body streamed by the reader: no Range header for a whole object (start 0,
        no end), else ``bytes=start-`` or ``bytes=start-(end-1)``; If-Match pins the version."""
        if start < 0 or (end is not None and end < start):
            raise InvalidRequest(f"{key}: invalid range [{start}, {end})", key)
        if end == start:
            self.head(key)  # an empty range still requires the object to exist
            return EmptyReader()
        extra = {"IfMatch": _quote(if_match)} if if_match else {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        if not self._stream_hooked:
            self.client.meta.events.register("before-call.s3.GetObject", _no_checksum_when_streamed,
                                             unique_id="stashfs-streamed-get")
            self._stream_hooked = True
        with self._errors(key):
            _streamed.active = True
            try:
                r = self.client.get_object(Bucket=self.bucket, Key=self._k(key), **extra)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "InvalidRange":
                    return EmptyReader()  # 416: the range starts at or past the object's end
                raise
            finally:
                _streamed.active = False
        return BodyReader(r["Body"], lambda: self._errors(key))

    def get_to_file(self, key: str, fileobj: BinaryIO) -> int:
        """Large objects come down as parallel ranged GETs pinned to one etag."""
        info = self.head(key)
        if info.size <= self.multipart_threshold:
            return super().get_to_file(key, fileobj)
        ranges = [(o, min(o + self.part_size, info.size)) for o in range(0, info.size, self.part_size)]
        window = self.transfer_workers
        for i in range(0, len(ranges), window):
            futures = [
                self._pool.submit(self.get_range, key, s, e, if_match=info.etag)
                for s, e in ranges[i : i + window]
            ]
            for f in futures:
                fileobj.write(f.result())
        return info.size

    def _conditions(self, if_match, if_none_match) -> dict:
        cond = {}
        if if_match is not None:
            cond["IfMatch"] = _quote(if_match)
        if if_none_match:
            cond["IfNoneMatch"] = "*"
        return cond

    def _check_if_match(self, key: str, cond: dict) -> None:
        """Before a multipart upload with If-Match (a retry of a failed close, a leftover of a
        crash, a big record's commit): refuse it (PreconditionFailed) when the key no longer holds
        that version.  S3 checks If-Match on the completion itself, atomically; some servers
        ignore it there (moto does), and such a retry must never replace another node's later
        write or bring back a deleted file on them either.  What lands between this HEAD and the
        completion is left to the server's own check.  (If-None-Match needs no HEAD: moto honours
        it on completions one after the other, and a HEAD could not close the simultaneous case.)"""
        if "IfMatch" not in cond:
            return
        try:
            etag = self.head(key).etag
        except NotFound:
            raise PreconditionFailed(f"{key}: deleted since the version it replaces (if_match)", key) from None
        if _quote(etag) != cond["IfMatch"]:
            raise PreconditionFailed(f"{key}: etag changed since the version it replaces (if_match)", key)

    def _landed(self, key: str, token: str, size: int) -> ObjectInfo | None:
        """After a put whose answer was an error that does not say it did not happen (a timeout,
        a 5xx, a retry refused because the first attempt had already succeeded): what the bucket
        holds, if it is what that put sent (its token and size), else None."""
        try:
            with self._errors(key):
                r = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except BackendError:
            return None
        if r.get("Metadata", {}).get(_TOKEN) != token or r["ContentLength"] != size:
            return None
        return _info(key, r["ContentLength"], r["LastModified"], r["ETag"], _user_meta(r))

    def _put_object(self, key: str, body, size: int, cond: dict, meta: dict) -> ObjectInfo:
        token = uuid.uuid4().hex
        try:
            with self._put_errors(key, cond, creates=True):
                r = self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=body,
                                           Metadata={**meta, _TOKEN: token}, **cond)
        except _AMBIGUOUS:
            info = self._landed(key, token, size)
            if info is None:
                raise
            return info
        return ObjectInfo(key, size, _server_time(r), r["ETag"].strip('"'), meta=meta)

    def put_bytes(self, key, data, *, if_match=None, if_none_match=False, meta=None) -> ObjectInfo:
        meta = check_meta(key, meta)
        cond = self._conditions(if_match, if_none_match)
        view = memoryview(data).cast("B")
        if len(view) > self.multipart_threshold:
            return self._multipart(key, len(view), view, cond, meta)
        return self._put_object(key, data, len(data), cond, meta)

    def put_file(self, key, path, *, if_match=None, if_none_match=False, meta=None) -> ObjectInfo:
        meta = check_meta(key, meta)
        cond = self._conditions(if_match, if_none_match)
        with open(path, "rb") as f:  # a problem with the local file is the caller's OSError
            size = os.fstat(f.fileno()).st_size
            if size > self.multipart_threshold:
                return self._multipart(key, size, f.fileno(), cond, meta)
            return self._put_object(key, f, size, cond, meta)

    def upload_memory(self, size: int) -> int:
        """A file above the multipart threshold is read into one part buffer per part in flight:
        at most one per thread of the pool, or the cap's number, for all files uploaded at once."""
        if size <= self.multipart_threshold:
            return 0
        return min(self._part_buffers.limit, -(-size // self.part_size)) * self.part_size

    def cap_upload_memory(self, most: int) -> None:
        """(Before any upload.)"""
        self._part_buffers.limit = max(1, min(self.transfer_workers, most // self.part_size))
        self._part_slots = threading.Semaphore(self._part_buffers.limit)

    def _multipart(self, key: str, size: int, source, cond: dict, meta: dict) -> ObjectInfo:
        """Upload ``size`` bytes of ``source`` (a byte view, or a file descriptor whose parts are
        read into reused buffers, `fsdriver.backend.partbuf`) as parallel parts."""
        k = self._k(key)
        buffers = self._part_buffers
        token = uuid.uuid4().hex
        self._check_if_match(key, cond)  # before uploading all of it for nothing
        with self._put_errors(key, {}, creates=True):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=k, Metadata={**meta, _TOKEN: token})["UploadId"]
        entry = self._opened(key, upload_id)

        def upload(number: int, start: int) -> dict:
            end = min(start + self.part_size, size)
            if isinstance(source, memoryview):
                return send(number, source[start:end])
            buf = buffers.take()
            body = memoryview(buf)[:end - start]
            try:  # (the call ended in this thread, however: nothing reads ``buf`` after it)
                if read_into(source, start, body) != len(body):
                    raise OSError(f"{key}: the local file is shorter than {size} bytes")
                return send(number, body)
            finally:
                release(body)  # no view of ``buf`` left: it can be unmapped when let go
                buffers.give(buf)

        def send(number: int, body) -> dict:
            with self._errors(key):
                r = self.client.upload_part(
                    Bucket=self.bucket, Key=k, UploadId=upload_id, PartNumber=number, Body=ViewBody(body)
                )
            return {"PartNumber": number, "ETag": r["ETag"]}

        futures = []
        try:
            for n, start in enumerate(range(0, size, self.part_size), start=1):
                if not isinstance(source, memoryview):
                    # a part buffer free first: the caller waits for one here, not a pool thread
                    # (which the pool's other work, parallel range reads, would wait behind)
                    self._part_slots.acquire()
                    try:
                        future = self._pool.submit(upload, n, start)
                    except BaseException:
                        self._part_slots.release()
                        raise
                    future.add_done_callback(lambda _: self._part_slots.release())  # ended or cancelled
                else:
                    future = self._pool.submit(upload, n, start)
                futures.append(future)
            parts = [f.result() for f in futures]
            self._check_if_match(key, cond)
            try:
                with self._put_errors(key, cond):
                    r = self.client.complete_multipart_upload(
                        Bucket=self.bucket, Key=k, UploadId=upload_id,
                        MultipartUpload={"Parts": parts}, **cond,
                    )
            except (*_AMBIGUOUS, NotFound):  # NoSuchUpload: a retry after the first one completed
                info = self._landed(key, token, size)
                if info is None:
                    raise
                self._closed(entry)
                return info
        except BaseException:
            for f in futures:
                f.cancel()
            # the parts under way end first: they read the caller's file (whose descriptor is
            # closed on return, its number reused) or bytes, and a part landing after the abort
            # would keep the upload
            concurrent.futures.wait(futures)
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload_id)
            except (ClientError, BotoCoreError):
                pass  # left recorded: the next daemon aborts it (the bucket's lifecycle rule is the backstop)
            else:
                self._closed(entry)
            raise
        self._closed(entry)
        return ObjectInfo(key, size, _server_time(r), r["ETag"].strip('"'), meta=meta)

    def _opened(self, key: str, upload_id: str):
        """Tell `upload_journal` of a multipart upload `put_file` opened; its entry (None: none)."""
        if self.upload_journal is None:
            return None
        try:
            return self.upload_journal[0](key, upload_id)
        except OSError as e:
            log.warning("%s: cannot record multipart upload %s (%s); a crash now would leave it for "
                        "the bucket's lifecycle rule", key, upload_id, e.strerror or e)
            return None

    def _closed(self, entry) -> None:
        if entry is not None and self.upload_journal is not None:
            self.upload_journal[1](entry)

    # -- a multipart upload driven by the caller (parts uploaded while a file is written) --------
    multipart_uploads = True

    def create_multipart(self, key: str, *, meta=None, checksum: bool = False) -> str:
        """CreateMultipartUpload with ``meta`` (and a put token, so that `complete_multipart`
        can tell whether an ambiguous completion landed); returns the upload id.  ``checksum``:
        its parts carry CRC32 checksums, as boto3's `upload_file` sends them by default (the
        object's checksum is then a composite one; without, the server computes its own)."""
        meta = check_meta(key, meta)
        token = uuid.uuid4().hex
        extra = {"ChecksumAlgorithm": "CRC32"} if checksum else {}
        with self._put_errors(key, {}, creates=True):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self._k(key), Metadata={**meta, _TOKEN: token}, **extra)["UploadId"]
        self._streams[upload_id] = (token, meta, {} if checksum else None)
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """UploadPart ``number`` (1-based; uploading a number again replaces it); its etag."""
        stream = self._streams.get(upload_id)
        sums = stream[2] if stream is not None else None
        extra = {"ChecksumAlgorithm": "CRC32"} if sums is not None else {}
        with self._errors(key):
            r = self.client.upload_part(Bucket=self.bucket, Key=self._k(key), UploadId=upload_id,
                                        PartNumber=number, Body=ViewBody(data), **extra)
        if sums is not None and r.get("ChecksumCRC32"):
            sums[(number, r["ETag"])] = r["ChecksumCRC32"]
        return r["ETag"]

    def complete_multipart(self, key: str, upload_id: str, parts, size: int, *,
                           if_match: str | None = None, if_none_match: bool = False) -> ObjectInfo:
        """CompleteMultipartUpload of ``parts`` ((number, etag) in order, ``size`` bytes in all),
        with S3's If-Match / If-None-Match.  An answer that does not say it did not happen is
        checked against what the bucket holds (as a put's)."""
        token, meta, sums = self._streams.get(upload_id, (None, {}, None))
        sums = sums or {}
        cond = self._conditions(if_match, if_none_match)
        listed = []
        for n, e in parts:
            listed.append({"PartNumber": n, "ETag": e})
            if (n, e) in sums:
                listed[-1]["ChecksumCRC32"] = sums[(n, e)]
        self._check_if_match(key, cond)
        try:
            with self._put_errors(key, cond):
                r = self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self._k(key), UploadId=upload_id,
                    MultipartUpload={"Parts": listed}, **cond)
        except (*_AMBIGUOUS, NotFound):  # NoSuchUpload: a retry after the first one completed
            info = self._landed(key, token, size) if token is not None else None
            if info is None:
                raise
            self._streams.pop(upload_id, None)
            return info
        self._streams.pop(upload_id, None)
        return ObjectInfo(key, size, _server_time(r), r["ETag"].strip('"'), meta=meta)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; an upload that no longer exists is not an error."""
        self._streams.pop(upload_id, None)
        try:
            with self._errors(key):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._k(key), UploadId=upload_id)
        except NotFound:
            pass

    def set_meta(self, key: str, meta, *, if_match: str | None = None, if_meta=None) -> ObjectInfo:
        """CopyObject onto itself with MetadataDirective=REPLACE (a multipart copy above 5 GiB),
        conditional on ``if_match`` through CopySourceIfMatch.  The HEAD first gives the size and
        answers NotFound and a stale ``if_match`` (servers that ignore CopySourceIfMatch, such as
        moto, still refuse the common case).  The etag changes for a multipart object."""
        meta = check_meta(key, meta)
        info, checksum = self._head_for_copy(key)
        if if_match is not None and info.etag != if_match:
            raise PreconditionFailed(f"{key}: etag changed since it was read", key)
        if if_meta is not None and info.meta != dict(if_meta):  # a metadata change keeps the etag
            raise PreconditionFailed(f"{key}: its metadata changed since it was read", key)
        source = {"Bucket": self.bucket, "Key": self._k(key)}
        cond = {"CopySourceIfMatch": _quote(if_match)} if if_match is not None else {}
        if info.size > _COPY_MAX:
            with self._errors(key):
                self.client.copy(
                    source, self.bucket, self._k(key),
                    ExtraArgs={"Metadata": meta, "MetadataDirective": "REPLACE", **cond, **checksum},
                    Config=TransferConfig(multipart_threshold=_COPY_MAX, max_concurrency=self.transfer_workers),
                )
            return self.head(key)
        with self._errors(key):
            r = self.client.copy_object(
                Bucket=self.bucket, Key=self._k(key), CopySource=source,
                Metadata=meta, MetadataDirective="REPLACE", **cond, **checksum,
            )["CopyObjectResult"]
        return dataclasses.replace(_info(key, info.size, r["LastModified"], r["ETag"], meta), copied_from=info.etag)

    def list(self, prefix: str = "", delimiter: str | None = None, max_keys: int | None = None) -> Iterator[ListEntry]:
        params = {"Bucket": self.bucket, "Prefix": self._k(prefix)}
        if delimiter:
            params["Delimiter"] = delimiter
        if max_keys:
            params["PaginationConfig"] = {"MaxItems": max_keys, "PageSize": max_keys}
        cut = len(self.prefix)

        def entries():
            pages = self.client.get_paginator("list_objects_v2").paginate(**params)
            with self._errors(prefix):
                for page in pages:
                    batch: list[ListEntry] = [
                        _info(o["Key"][cut:], o["Size"], o["LastModified"], o["ETag"])
                        for o in page.get("Contents", ())
                    ]
                    batch += [CommonPrefix(p["Prefix"][cut:]) for p in page.get("CommonPrefixes", ())]
                    batch.sort(key=lambda e: e.key.encode("utf-8"))
                    yield from batch

        return entries()

    def lookup(self, key: str) -> tuple[ObjectInfo | None, bool]:
        """One LIST answers both questions: the object ``key`` sorts before the prefix ``key/``,
        and only names starting with ``key`` that sort between them can push ``key/`` off the page."""
        with self._errors(key):
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._k(key), Delimiter="/", MaxKeys=1000)
        info = None
        for o in page.get("Contents", ()):
            if o["Key"] == self._k(key):
                info = _info(key, o["Size"], o["LastModified"], o["ETag"])
        is_dir = any(p["Prefix"] == self._k(key) + "/" for p in page.get("CommonPrefixes", ()))
        if page.get("IsTruncated") and not is_dir:  # siblings like key-1/, key.x filled the page
            is_dir = next(iter(self.list(key + "/", max_keys=1)), None) is not None
        return info, is_dir

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        try:
            with self._errors(key):
                self.client.delete_object(Bucket=self.bucket, Key=self._k(key),
                                          **({"IfMatch": _quote(if_match)} if if_match is not None else {}))
        except NotFound as e:  # If-Match on a missing key: 404, gone already
            if if_match is None or isinstance(e, BucketNotFound):
                raise

    def _delete_batch(self, keys: Sequence[str], what: str) -> None:
        """One DeleteObjects request (at most 1,000 keys); BackendError names the first failure."""
        with self._errors(what):
            r = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._k(k)} for k in keys], "Quiet": True},
            )
        if r.get("Errors"):
            e = r["Errors"][0]
            first = str(e.get("Key", ""))[len(self.prefix):]
            raise BackendError(
                f"{what}: {len(r['Errors'])} of {len(keys)} deletes failed, first {first}: "
                f"{e.get('Code')} ({e.get('Message', '')})",
                first,
            )

    def delete_many(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == 1000:
                self._delete_batch(batch, batch[0])
                batch = []
        if batch:
            self._delete_batch(batch, batch[0])

    def delete_prefix(self, prefix: str) -> int:
        count = 0
        batch: list[str] = []
        for entry in self.list(prefix):
            batch.append(entry.key)
            count += not entry.key.endswith("/")
            if len(batch) == 1000:
                self._delete_batch(batch, prefix)
                batch = []
        if batch:
            self._delete_batch(batch, prefix)
        return count

    def copy(self, src: str, dst: str, *, meta=None) -> ObjectInfo:
        """Returns the copy's own etag: a copied multipart object gets a new one.  The user
        metadata goes with it (CopyObject's default COPY directive; s3transfer's multipart copy
        copies it too), markers included."""
        info, checksum = self._head_for_copy(src)
        replace = {} if meta is None else {"MetadataDirective": "REPLACE", "Metadata": check_meta(dst, meta)}
        if info.size > _COPY_MAX:  # over CopyObject's limit: a managed multipart copy
            with self._errors(src):
                self.client.copy(
                    {"Bucket": self.bucket, "Key": self._k(src)}, self.bucket, self._k(dst),
                    ExtraArgs={**replace, **checksum},
                    Config=TransferConfig(multipart_threshold=_COPY_MAX, max_concurrency=self.transfer_workers),
                )
            return self.head(dst)
        with self._errors(src):
            r = self.client.copy_object(
                Bucket=self.bucket, Key=self._k(dst), CopySource={"Bucket": self.bucket, "Key": self._k(src)},
                CopySourceIfMatch=_quote(info.etag),  # the version whose size we report
                **replace, **checksum,
            )["CopyObjectResult"]
        copied = _info(dst, info.size, r["LastModified"], r["ETag"], info.meta if meta is None else dict(meta))
        return dataclasses.replace(copied, copied_from=info.etag)  # (CopySourceIfMatch)

    def close(self) -> None:
        # Parts still queued (a failed upload's siblings) are not started; a part in flight is not
        # waited for: the daemon must not outlive its unmount for it (its upload failed anyway).
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
