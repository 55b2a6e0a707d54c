"""DataStore is a MutableMapping: code written for a dict works, and missing keys raise what both
Python (KeyError) and Pipedream (TypeError) code catches."""

import threading
from collections.abc import MutableMapping

import pytest

from fsdriver.configured import open_backend
from fsdriver.errors import BucketNotFound
from fsdriver.kv import DataStore


@pytest.fixture
def ds(backend):
    return DataStore("crm", backend=backend)


def test_dict_methods(ds):
    assert isinstance(ds, MutableMapping)
    ds.update({"a": 1, "b": [2]}, c={"d": 3})
    ds.update([("e", "x")])
    assert sorted(ds.values(), key=str) == sorted([1, [2], {"d": 3}, "x"], key=str)
    assert dict(ds) == {"a": 1, "b": [2], "c": {"d": 3}, "e": "x"}
    assert ds.pop("a") == 1 and "a" not in ds
    assert ds.pop("a", "gone") == "gone"
    assert ds.setdefault("b", "ignored") == [2]
    assert ds.setdefault("new", {"n": 0}) == {"n": 0} and ds["new"] == {"n": 0}
    assert ds.modify("new", lambda v: {**v, "n": v["n"] + 1}) == {"n": 1}
    with pytest.raises(TypeError, match="modify"):
        ds.update("new", lambda v: v)  # the old spelling of modify says where it went


def test_missing_key_is_a_key_error_and_a_type_error(ds):
    with pytest.raises(KeyError):
        ds["nope"]
    try:
        ds["nope"]
    except TypeError:  # Pipedream's documented behaviour
        pass
    with pytest.raises(KeyError):
        ds.pop("nope")
    with pytest.raises(KeyError):
        del ds["nope"]
    assert ds.get("nope", 5) == 5


def test_setdefault_is_atomic(ds):
    got, barrier = [], threading.Barrier(4)

    def worker(n):
        barrier.wait(timeout=30)
        got.append(ds.setdefault("winner", n))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(set(got)) == 1 and ds["winner"] == got[0]


def test_a_missing_bucket_is_not_an_empty_store(moto_server):
    ds = DataStore("st", backend=open_backend("s3://no-such-bucket", endpoint_url=moto_server.url))
    with pytest.raises(BucketNotFound):
        ds["k"]
    with pytest.raises(BucketNotFound):
        ds.get("k")
