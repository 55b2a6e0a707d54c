"""How S3's answers become stashfs's exceptions (`fsdriver.errors`): every botocore error code
and exception the S3 backend can meet is classified here, once.

- missing (404, NoSuchKey, NoSuchUpload) → NotFound; NoSuchBucket → BucketNotFound;
- a lost condition (412) → PreconditionFailed;
- refusals that pass by themselves (an expired session token, clock skew, throttling) and 5xx →
  Unavailable: an upload that meets them is kept and retried, never dropped;
- access denied, bad keys or signatures → PermissionDenied (permanent);
- anything else the server refuses → InvalidRequest (permanent);
- no connection → Unavailable, or OutOfDescriptors when the daemon ran out of file descriptors.
"""

import errno
import os
from contextlib import contextmanager

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    ConnectTimeoutError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from ..errors import (
    BucketNotFound,
    InvalidRequest,
    NoAnswer,
    NotFound,
    OutOfDescriptors,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_DENIED = {
    "AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidToken", "AllAccessDisabled",
}
# Refusals that pass by themselves (a session token renewed, the clock corrected, throttling
# over): answered like an outage, so that an upload already journaled is retried, not dropped.
_PASSING = {"ExpiredToken", "TokenRefreshRequired", "RequestExpired", "RequestTimeTooSkewed",
            "TooManyRequests", "Throttling", "ThrottlingException", "429"}
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}


def descriptor_errno(e: BaseException) -> int | None:
    """EMFILE/ENFILE if ``e`` (or what it wraps) is a lack of file descriptors, else None."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in (errno.EMFILE, errno.ENFILE):
            return x.errno
        stack += [x.__cause__, x.__context__, getattr(x, "kwargs", {}).get("error")]
        stack += [a for a in getattr(x, "args", ()) if isinstance(a, BaseException)]
    text = str(e)
    if "Too many open files in system" in text:
        return errno.ENFILE
    if "Too many open files" in text:
        return errno.EMFILE
    return None


@contextmanager
def s3_errors(key: str | None, bucket: str):
    what = key if key is not None else f"bucket {bucket}"
    try:
        yield
    except ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        msg = err.get("Message") or code
        if code == "NoSuchBucket":
            raise BucketNotFound(f"bucket {bucket!r} does not exist", key) from None
        if code in _NOT_FOUND or status == 404:
            raise NotFound(f"{what}: no such object", key) from None
        if code in _PRECONDITION or status == 412:
            raise PreconditionFailed(f"{what}: precondition failed ({code})", key) from None
        if code in _PASSING or status == 429:
            raise Unavailable(f"{what}: S3 refused it for now ({code}: {msg}); retried", key) from None
        if code in _DENIED or status == 403:
            raise PermissionDenied(f"{what}: access denied by S3 ({code}: {msg})", key) from None
        if code in _UNAVAILABLE or status >= 500:
            raise Unavailable(f"{what}: S3 unavailable ({code}: {msg})", key) from None
        raise InvalidRequest(f"{what}: S3 refused the request ({code}: {msg})", key) from None
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise PermissionDenied(f"{what}: no usable AWS credentials ({e})", key) from None
    except (BotoConnectionError, BotoCoreError) as e:
        code = descriptor_errno(e)
        if code is not None:
            raise OutOfDescriptors(
                f"{what}: no file descriptor left for a connection to S3 ({os.strerror(code)}); "
                "raise the daemon's descriptor limit (LimitNOFILE)", key, code) from None
        if isinstance(e, (ConnectTimeoutError, ReadTimeoutError)):
            raise NoAnswer(f"{what}: S3 did not answer ({e})", key) from None
        if isinstance(e, BotoConnectionError):
            raise Unavailable(f"{what}: cannot reach S3 ({e})", key) from None
        raise Unavailable(f"{what}: S3 request failed ({e})", key) from None
