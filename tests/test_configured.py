"""The backend factory reads no configuration; `fsdriver.configured` applies the backend rule."""

import errno

import pytest

from fsdriver import configured, data
from fsdriver.kv import DataStore
from fsdriver.backend import open_url
from fsdriver.config import ConfigError


@pytest.fixture
def broken_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "config" / "stashfs").mkdir(parents=True)
    path = tmp_path / "config" / "stashfs" / "config.toml"
    path.write_text("[mount\n")
    return path


def test_the_factory_does_not_read_the_config_file(broken_config, monkeypatch, moto_server):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    assert open_url("s3://stashfs-test/p").client.meta.endpoint_url == moto_server.url  # boto3's own
    assert open_url(str(broken_config.parent / "disk"), create=True).root.is_dir()
    with pytest.raises(ValueError, match="applies the default"):
        open_url(None)
    with pytest.raises(ConfigError, match="config.toml"):
        configured.open_backend("s3://stashfs-test/p")  # the rule asks [mount] for the endpoint


def test_the_rule_takes_backend_and_endpoint_from_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "config" / "stashfs").mkdir(parents=True)
    (tmp_path / "config" / "stashfs" / "config.toml").write_text(
        '[mount]\nbackend = "s3://configured-bucket/x"\nendpoint_url = "http://127.0.0.1:9"\n')
    assert configured.resolve_url() == "s3://configured-bucket/x"
    b = configured.open_backend()
    assert (b.bucket, b.client.meta.endpoint_url) == ("configured-bucket", "http://127.0.0.1:9")
    assert configured.open_backend("s3://other", endpoint_url="http://127.0.0.1:10").client.meta.endpoint_url \
        == "http://127.0.0.1:10"


def test_shared_backend_is_one_per_url(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = configured.shared_backend(str(tmp_path / "a"))
    assert configured.shared_backend(str(tmp_path / "a")) is a
    assert configured.shared_backend(str(tmp_path / "b")) is not a


def _refused(call, path):
    with pytest.raises(FileNotFoundError) as e:
        call()
    assert e.value.errno == errno.ENOENT and e.value.filename == str(path)
    assert "create=True" in str(e.value)


def test_a_named_local_directory_that_does_not_exist_is_refused(tmp_path, monkeypatch):
    """A mistyped path never reads as an empty store nor is made: as the mount's --backend."""
    import fsspec

    missing = tmp_path / "x" / "nonexistent-store"
    _refused(lambda: fsspec.filesystem("stashfs", backend=str(missing), skip_instance_cache=True).ls("pipeline"),
             missing)
    _refused(lambda: data.pipeline(id="p1", backend=str(missing)).list(), missing)
    _refused(lambda: data.user("alice", backend=f"file://{missing}").puts("f", b"x"), missing)
    _refused(lambda: DataStore("crm", backend=str(missing)).get("a"), missing)
    monkeypatch.setenv("STASHFS_BACKEND", str(missing))  # named by the environment: the same
    _refused(lambda: data.pipeline(id="p1").list(), missing)
    _refused(lambda: configured.open_backend(), missing)
    assert not (tmp_path / "x").exists()
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError):
        configured.open_backend(str(tmp_path / "afile"), create=True)


def test_create_makes_a_new_store(tmp_path, monkeypatch):
    new = tmp_path / "new-store"
    data.pipeline(id="p1", backend=str(new), create=True).puts("f", b"x")
    assert (new / "pipeline" / "p1" / "f").read_bytes() == b"x"
    assert oct(new.stat().st_mode & 0o777) == oct(0o700)  # private to its user, as the mount's --create
    DataStore("crm", backend=str(tmp_path / "kv-store"), create=True)["a"] = 1
    assert DataStore("crm", backend=str(tmp_path / "kv-store"))["a"] == 1
    import fsspec  # the storage option the refusal names (review: it was swallowed into **kwargs)

    fs = fsspec.filesystem("stashfs", backend=str(tmp_path / "fs-store"), create=True, skip_instance_cache=True)
    fs.pipe_file("pipeline/p1/g", b"y")
    assert (tmp_path / "fs-store" / "pipeline" / "p1" / "g").read_bytes() == b"y"
    monkeypatch.delenv("STASHFS_BACKEND", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))
    assert data.pipeline(id="p1").list() == []  # nothing named: the default location is made
    assert (tmp_path / "data-home" / "stashfs").is_dir()
