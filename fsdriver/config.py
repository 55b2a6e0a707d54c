"""stashfs configuration: ``/etc/stashfs/config.toml`` then ``~/.config/stashfs/config.toml``.

Each setting is taken from, strongest first: the command-line option, the environment variable,
the user's config file, the system config file, the default.  Sections::

    [mount]                              # the node's mount (mountctl mount / exec, the daemon)
    mountpoint = "/mnt/stashfs"          $STASHFS_MOUNTPOINT
    backend = "s3://bucket"              $STASHFS_BACKEND
    endpoint_url = ""                    $AWS_ENDPOINT_URL (boto3's own)
    org_group = "stashfs"                $STASHFS_ORG_GROUP
    allow_other = true
    ...                                  every mount option, by its name (memory_limit = "1G"):
                                         declared, with defaults and checks, in fsdriver.mountconfig

    [secrets]                            see fsdriver.secrets.store
"""

import os
import tomllib
from pathlib import Path


class ConfigError(Exception):
    """The configuration cannot be read (one line, names the file)."""


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "stashfs"


def config_files() -> list[Path]:
    return [Path("/etc/stashfs/config.toml"), config_home() / "config.toml"]


_parsed: dict = {}  # path -> (mtime_ns, size, parsed document): the backend rule asks on every open


def _document(path: Path) -> dict:
    """A config file's contents ({} if it does not exist), parsed again only when it changed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    hit = _parsed.get(path)
    if hit is None or hit[:2] != (st.st_mtime_ns, st.st_size):
        with open(path, "rb") as f:
            hit = (st.st_mtime_ns, st.st_size, tomllib.load(f))
        _parsed[path] = hit
    return hit[2]


def load_section(section: str, defaults: dict, env: dict, overrides: dict | None = None,
                 error=ConfigError) -> dict:
    """The settings of one section in force (see the module docstring for the order)."""
    cfg = dict(defaults)
    for path in config_files():
        try:
            cfg.update(_document(path).get(section, {}))
        except FileNotFoundError:  # removed between the stat and the open
            pass
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise error(f"{path}: cannot read the configuration: {e}") from None
    for key, var in env.items():
        if os.environ.get(var):
            cfg[key] = os.environ[var]
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cfg


# What the Python API needs of [mount] to find the backend; the mount's own options (and their
# checks) are fsdriver.mountconfig's.
MOUNT_DEFAULTS = {"backend": None, "endpoint_url": None}
MOUNT_ENV = {"backend": "STASHFS_BACKEND"}


def mount_settings(**overrides) -> dict:
    """The [mount] settings that locate the backend (``backend``, ``endpoint_url``), unchecked:
    a bad mount option elsewhere in the section must not stop the Python API."""
    cfg = load_section("mount", MOUNT_DEFAULTS, MOUNT_ENV, overrides)
    return {k: cfg.get(k) for k in MOUNT_DEFAULTS}
