"""``moto_server`` for the tests (tests/servers.py runs this file instead of the script).

The same server (the same arguments, the same ``moto.server.main``), with two changes, and one
option of its own: ``--bucket NAME`` (repeatable) makes the bucket before the server answers, so
that a server restarted on its port to end a simulated outage comes back with its bucket, as S3
does; nothing reaches it in between.

- Speed: moto finds the backend of every request by testing whether the request's service is one
  of its modules, listing its package directory (a ``listdir`` and an ``isdir`` per entry, ~200
  system calls) each time, under a lock that all requests take.  That was about a third of the
  server's CPU in the suite.  The list cannot change while the server runs: it is read once.
- Atomic conditional writes, as on S3: moto checks a write's condition (If-Match, If-None-Match,
  x-amz-copy-source-if-match) and then writes, with nothing between the two to stop a concurrent
  write to the same key, so two writers with the same If-Match could both succeed, losing one
  update that S3 would have refused (test_kv's counters caught it).  Object writes are made one at
  a time here.  Moto reads a request's whole body before its handler runs, so a slow client never
  holds the lock.
"""

import functools
import sys
import threading

from moto import backends
from moto.s3.responses import S3Response

if callable(getattr(backends, "list_of_moto_modules", None)):
    _MODULES = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: _MODULES

_WRITES = threading.RLock()


def _one_at_a_time(handler):
    @functools.wraps(handler)
    def locked(self, *args, **kwargs):
        with _WRITES:
            return handler(self, *args, **kwargs)
    return locked


# put (If-Match, If-None-Match), copy (x-amz-copy-source-if-match: stashfs's metadata change),
# delete (If-Match), POST on a key (complete a multipart upload: If-Match, If-None-Match)
for _name in ("put_object", "copy_object", "delete_object", "_key_response_post"):
    setattr(S3Response, _name, _one_at_a_time(getattr(S3Response, _name)))

from moto.server import main  # noqa: E402


def _make_buckets(argv: list[str]) -> list[str]:
    """Make the buckets of the ``--bucket NAME`` arguments; the other arguments."""
    rest, names = [], []
    args = iter(argv)
    for a in args:
        if a == "--bucket":
            names.append(next(args))
        else:
            rest.append(a)
    if names:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        for name in names:
            s3_backends[DEFAULT_ACCOUNT_ID]["aws"].create_bucket(name, "us-east-1")
    return rest


if __name__ == "__main__":
    sys.exit(main(_make_buckets(sys.argv[1:])))
