"""stashfs:// moves, copies and removals: what fsspec's generic ``mv`` (a copy, then a removal of
the source) and ``rm`` get wrong on an object store, on disk and S3."""

import errno

import pytest

pytest.importorskip("fsspec")

from fsdriver.errors import InvalidRequest, NameTooLong  # noqa: E402
from fsdriver.fsspec_errors import os_errors  # noqa: E402
from fsdriver.fsspec_fs import StashFileSystem  # noqa: E402


@pytest.fixture
def fs(backend):
    return StashFileSystem(backend=backend, skip_instance_cache=True)


def objects(backend, prefix="pipeline/p13/") -> dict:
    """Every object below ``prefix`` (markers left out) and its content, straight from the backend."""
    return {e.key: backend.get_range(e.key, 0) for e in backend.list(prefix)
            if not e.key.endswith("/")}


@pytest.mark.parametrize("spelling", ["pipeline/p13/a.txt", "/pipeline/p13/a.txt", "stashfs://pipeline/p13/a.txt"])
def test_a_copy_onto_itself_does_nothing(fs, backend, spelling):
    fs.pipe_file("pipeline/p13/a.txt", b"a")
    fs.cp("pipeline/p13/a.txt", spelling)  # S3 refused such a copy (InvalidRequest, shown as ENOTDIR)
    fs.cp_file(spelling, "pipeline/p13/a.txt")
    assert objects(backend) == {"pipeline/p13/a.txt": b"a"}
    with pytest.raises(FileNotFoundError):
        fs.cp_file("pipeline/p13/missing", "/pipeline/p13/missing")


def test_a_refused_request_is_einval_not_enotdir():
    with pytest.raises(OSError) as e:
        with os_errors("pipeline/p1/x"):
            raise InvalidRequest("pipeline/p1/x: S3 refused the request (InvalidRequest: ...)", "pipeline/p1/x")
    assert e.value.errno == errno.EINVAL and not isinstance(e.value, NotADirectoryError)


def test_a_key_too_long_for_the_backend_is_refused_before_writing(fs, backend):
    limit = backend.max_key_bytes
    segments = ["s" * 250] * (limit // 251 + 1)
    path = "pipeline/p13/" + "/".join(segments)
    with pytest.raises(NameTooLong):  # S3 would answer KeyTooLongError, an InvalidRequest
        fs.pipe_file(path, b"x")
    with pytest.raises(NameTooLong):
        fs.open(path, "wb")
    assert list(backend.list("pipeline/")) == []


def test_a_file_below_a_file_is_enotdir_before_the_backend_is_asked(fs, backend):
    fs.pipe_file("pipeline/p13/f", b"1")
    for write in (lambda p: fs.pipe_file(p, b"2"), lambda p: fs.cp_file("pipeline/p13/f", p), fs.makedirs):
        with pytest.raises(NotADirectoryError) as e:
            write("pipeline/p13/f/g/h")
        assert e.value.errno == errno.ENOTDIR
    assert objects(backend) == {"pipeline/p13/f": b"1"}
