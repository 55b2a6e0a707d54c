"""The S3 backend's timestamp parser (`fast_timestamp`) gives botocore's answers, faster."""

import botocore.utils
import pytest

from fsdriver.backend.s3 import fast_timestamp

VALUES = [
    "2026-11-29T13:12:52.000Z",  # ListObjectsV2's LastModified
    "2026-11-29T13:12:52Z",
    "2026-11-29T13:12:52.123456Z",
    "Sun, 29 Nov 2026 13:12:52 GMT",  # a HEAD's Last-Modified header
    "2026-11-29T13:12:52+01:00",  # not S3's forms: botocore's own parser
    "1795955312",
    1795955312,
]


@pytest.mark.parametrize("value", VALUES)
def test_same_instant_as_botocore(value):
    ours, theirs = fast_timestamp(value), botocore.utils.parse_timestamp(value)
    assert ours.timestamp() == theirs.timestamp()
    assert ours.utcoffset() is not None


def test_garbage_is_refused_as_botocore_does():
    with pytest.raises(ValueError):
        fast_timestamp("not a time")


def test_listing_and_head_agree(s3_backend):
    s3_backend.put_bytes("pipeline/p/f", b"x")
    listed = next(e for e in s3_backend.list("pipeline/p/") if e.key == "pipeline/p/f")
    assert abs(listed.mtime - s3_backend.head("pipeline/p/f").mtime) < 1.0
