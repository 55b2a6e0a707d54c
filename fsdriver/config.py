"""stashfs configuration: ``/etc/stashfs/config.toml`` then ``~/.config/stashfs/config.toml``.

Each setting is taken from, strongest first: the command-line option, the environment variable,
the user's config file, the system config file, the default.  Sections::

    [mount]                              # the node's mount (mountctl mount / exec, the daemon)
    mountpoint = "/mnt/stashfs"          $STASHFS_MOUNTPOINT
    backend = "s3://bucket"              $STASHFS_BACKEND
    endpoint_url = ""                    $AWS_ENDPOINT_URL (boto3's own)
    org_group = "stashfs"                $STASHFS_ORG_GROUP   pipelines and key/value stores are
                                                              shared with this group
    allow_other = false                  mount for every user of the node (root)
    cache_dir = "/var/cache/stashfs"     staged writes and pending uploads (default: per mount
                                         point under ~/.cache/stashfs)
    log_file = "/var/log/stashfs.log"    the daemon's log (default: none when started in the
                                         background, stderr with --foreground)

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


def load_section(section: str, defaults: dict, env: dict, overrides: dict | None = None,
                 error=ConfigError) -> dict:
    """The settings of one section in force (see the module docstring for the order)."""
    cfg = dict(defaults)
    for path in config_files():
        try:
            with open(path, "rb") as f:
                cfg.update(tomllib.load(f).get(section, {}))
        except FileNotFoundError:
            pass
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise error(f"{path}: cannot read the configuration: {e}") from None
    for key, var in env.items():
        if os.environ.get(var):
            cfg[key] = os.environ[var]
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cfg


MOUNT_DEFAULTS = {"mountpoint": "/mnt/stashfs", "backend": None, "endpoint_url": None,
                  "org_group": "", "allow_other": False, "cache_dir": None, "log_file": None}
MOUNT_ENV = {"mountpoint": "STASHFS_MOUNTPOINT", "backend": "STASHFS_BACKEND",
             "org_group": "STASHFS_ORG_GROUP"}


def mount_settings(**overrides) -> dict:
    """The [mount] settings; ``org_group`` falls back to [secrets] org_group (one organisation)."""
    cfg = load_section("mount", MOUNT_DEFAULTS, MOUNT_ENV, overrides)
    if not cfg["org_group"]:
        cfg["org_group"] = load_section("secrets", {"org_group": ""}, {})["org_group"]
    return cfg
