"""The backend factory reads no configuration; `fsdriver.configured` applies the backend rule."""

import pytest

from fsdriver import configured
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
    assert open_url(str(broken_config.parent / "disk")).root.is_dir()
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
    a = configured.shared_backend(str(tmp_path / "a"))
    assert configured.shared_backend(str(tmp_path / "a")) is a
    assert configured.shared_backend(str(tmp_path / "b")) is not a
