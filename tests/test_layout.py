import pytest

from fsdriver import layout
from fsdriver.errors import InvalidName


@pytest.mark.parametrize("name", ["p1", "A", "a.b_c-d", "9" * 128])
def test_good_names(name):
    assert layout.check_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "_x", "a/b", "a b", "é", "9" * 129, "a\0b", ".."])
def test_bad_names(name):
    with pytest.raises(InvalidName, match="invalid"):
        layout.check_name(name, "pipeline id")


@pytest.mark.parametrize("path,reason", [
    ("..", "'..'"), ("a/../b", "'..'"), (".", "'.'"), ("a//b", "empty"), ("/abs", "relative"),
    ("a\0b", "NUL"), ("x" * 256, "256 bytes"), ("é" * 128, "256 bytes"), ("", "empty"),
    ("a/\udc80", "UTF-8"),
])
def test_bad_paths_name_the_reason(path, reason):
    with pytest.raises(InvalidName, match=reason):
        layout.split_path(path)


def test_good_paths():
    assert layout.split_path("a/b/c.txt") == ["a", "b", "c.txt"]
    assert layout.split_path("a/b/") == ["a", "b"]
    assert layout.split_path("x" * 255) == ["x" * 255]
    assert layout.split_path(".hidden/..x/...") == [".hidden", "..x", "..."]
    assert layout.split_path("", allow_empty=True) == []


def test_keys():
    assert layout.root_prefix("pipeline", "p1") == "pipeline/p1/"
    assert layout.root_prefix("kv", "s") == "kv/s/"
    with pytest.raises(InvalidName, match="user name"):
        layout.root_prefix("user", "../etc")
    with pytest.raises(InvalidName, match="unknown tree"):
        layout.root_prefix("other", "x")
