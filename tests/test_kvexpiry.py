"""The TTL storage protocol (fsdriver.kvexpiry) on each backend: markers apply to one etag, and
ending a record's TTL touches that record's markers only."""

import time

from fsdriver import kvexpiry, kvnames

STORE = "kv/s/"


def _put(backend, name: str, value: bytes) -> str:
    return backend.put_bytes(STORE + name, value).etag


def test_a_marker_applies_to_one_version(backend):
    etag = _put(backend, "a.json", b"1")
    kvexpiry.set_expiry(backend, STORE, "a.json", etag, int(time.time()) - 1)
    markers = kvexpiry.markers_of(backend, STORE, "a.json")
    assert [(tag, key.startswith(STORE + kvnames.EXPIRES)) for _, tag, key in markers] == [(etag, True)]
    assert kvexpiry.is_expired(etag, markers, time.time())
    rewritten = _put(backend, "a.json", b"2")
    assert not kvexpiry.is_expired(rewritten, markers, time.time())


def test_set_expiry_replaces_the_old_markers(backend):
    etag = _put(backend, "a.json", b"1")
    kvexpiry.set_expiry(backend, STORE, "a.json", etag, 2_000_000_000)
    old = kvexpiry.markers_of(backend, STORE, "a.json")
    kvexpiry.set_expiry(backend, STORE, "a.json", etag, 2_000_000_100, old)
    assert [exp for exp, _, _ in kvexpiry.markers_of(backend, STORE, "a.json")] == [2_000_000_100]
    kvexpiry.set_expiry(backend, STORE, "a.json", etag, None, kvexpiry.markers_of(backend, STORE, "a.json"))
    assert kvexpiry.markers_of(backend, STORE, "a.json") == []


def test_drop_markers_leaves_other_records_alone(backend):
    """``a.json@5.json`` (an '@' in a key is not escaped) shares the marker prefix of ``a.json``."""
    for name in ("a.json", "a.json@5.json", "ab.json"):
        kvexpiry.set_expiry(backend, STORE, name, _put(backend, name, b"1"), 2_000_000_000)
    kvexpiry.drop_markers(backend, STORE, "a.json")
    assert sorted(kvexpiry.store_expiries(backend, STORE)) == ["a.json@5.json", "ab.json"]


def test_expire_record_keeps_a_version_written_since(backend):
    etag = _put(backend, "a.json", b"1")
    kvexpiry.set_expiry(backend, STORE, "a.json", etag, int(time.time()) - 1)
    markers = kvexpiry.markers_of(backend, STORE, "a.json")
    _put(backend, "a.json", b"2")  # written again by another worker after the expiry was seen
    kvexpiry.expire_record(backend, STORE, "a.json", markers)
    assert backend.get_range(STORE + "a.json", 0) == b"2"
    assert kvexpiry.markers_of(backend, STORE, "a.json") == []
    kvexpiry.set_expiry(backend, STORE, "a.json", backend.head(STORE + "a.json").etag, int(time.time()) - 1)
    kvexpiry.expire_record(backend, STORE, "a.json", kvexpiry.markers_of(backend, STORE, "a.json"))
    assert [e.key for e in backend.list(STORE) if not e.key.endswith("/")] == []  # disk: dirs too


class _WriteAfterHead:
    """The backend, with another writer's put landing right after each HEAD of ``key``: the
    window between expire_record's look at the record and its delete."""

    def __init__(self, backend, key: str, value: bytes):
        self.backend, self.key, self.value = backend, key, value

    def head(self, key):
        info = self.backend.head(key)
        if key == self.key:
            self.backend.put_bytes(key, self.value)
        return info

    def __getattr__(self, name):
        return getattr(self.backend, name)


def test_expire_record_never_removes_a_write_that_lands_after_it_looked(backend):
    etag = _put(backend, "a.json", b"1")
    kvexpiry.set_expiry(backend, STORE, "a.json", etag, int(time.time()) - 1)
    markers = kvexpiry.markers_of(backend, STORE, "a.json")
    racing = _WriteAfterHead(backend, STORE + "a.json", b"2")
    kvexpiry.expire_record(racing, STORE, "a.json", markers)
    assert backend.get_range(STORE + "a.json", 0) == b"2"  # acknowledged to its writer: kept
    assert kvexpiry.markers_of(backend, STORE, "a.json") == []
