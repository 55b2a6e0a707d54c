"""Secret names, scopes, configuration and the store protocol.

Two scopes: ``user`` secrets belong to one user (only they can read or change them); ``org``
secrets are shared by the organisation (members read them, admins change them).  A secret's name
is an environment variable name, because `mountctl exec` passes secrets in the environment.

Configuration, strongest first: command-line option, environment, ``~/.config/stashfs/config.toml``,
``/etc/stashfs/config.toml``, defaults::

    [secrets]
    store = "local"                      # or "ssm"                   $STASHFS_SECRETS_STORE
    org_dir = "/etc/stashfs/org-secrets" # local org store            $STASHFS_ORG_SECRETS_DIR
    admin_group = "stashfs-admin"        # may change org secrets     $STASHFS_ADMIN_GROUP
    org_group = "stashfs"                # may read org secrets       $STASHFS_ORG_GROUP
    ssm_prefix = "/stashfs"              # SSM parameter path prefix  $STASHFS_SSM_PREFIX
"""

import abc
import grp
import os
import re
from dataclasses import dataclass
from .. import config
from ..access import current_user  # noqa: F401  (re-exported for ssm.py and mountctl exec)
from ..config import config_home  # noqa: F401  (re-exported for the local store)

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SCOPES = ("user", "org")
# The kernel refuses an environment string over 128 KiB (MAX_ARG_STRLEN) and an environment
# plus argv over ARG_MAX; half the first leaves room for several secrets and the command.
MAX_VALUE_BYTES = 64 * 1024

DEFAULTS = {
    "store": "local",
    "org_dir": "/etc/stashfs/org-secrets",
    "admin_group": "stashfs-admin",
    "org_group": "",
    "ssm_prefix": "/stashfs",
}
ENV = {
    "store": "STASHFS_SECRETS_STORE",
    "org_dir": "STASHFS_ORG_SECRETS_DIR",
    "admin_group": "STASHFS_ADMIN_GROUP",
    "org_group": "STASHFS_ORG_GROUP",
    "ssm_prefix": "STASHFS_SSM_PREFIX",
}


class SecretsError(Exception):
    """A clear, one-line failure (never containing a secret value)."""


class SecretsPermissionError(SecretsError):
    pass


class InvalidSecretName(SecretsError):
    pass


class InvalidSecretValue(SecretsError):
    """A value no command could be given (the message never contains it)."""


class InvalidSecretsSetting(SecretsError):
    """A bad value of a [secrets] setting, named by where it came from (exit status 2)."""


@dataclass(frozen=True)
class SecretInfo:
    name: str
    scope: str
    updated: float  # seconds since the epoch


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidSecretName(  # the name is not repeated: it may be a value typed by mistake
            "invalid secret name (not shown): secrets are environment variables, "
            "so names match [A-Za-z_][A-Za-z0-9_]*"
        )
    return name


def check_value(value: str) -> str:
    """The value, if `mountctl exec` can pass it in an environment variable."""
    if "\0" in value:
        raise InvalidSecretValue("a secret value cannot contain a NUL byte: commands get secrets in "
                                 "their environment, which cannot hold one")
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > MAX_VALUE_BYTES:
        raise InvalidSecretValue(f"the value is {size} bytes, more than {MAX_VALUE_BYTES}: the kernel "
                                 "would refuse it in a command's environment")
    return value


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise SecretsError(f"unknown scope {scope!r}: user or org")
    return scope


def load_config(**overrides) -> dict:
    """The [secrets] settings in force (see the module docstring for the order)."""
    return config.load_section("secrets", DEFAULTS, ENV, overrides, error=SecretsError)


def is_admin(admin_group: str) -> bool:
    """Root, or a member of the admin group."""
    if os.geteuid() == 0:
        return True
    try:
        gid = grp.getgrnam(admin_group).gr_gid
    except KeyError:
        return False
    return gid in os.getgroups() or gid == os.getegid()


class SecretStore(abc.ABC):
    """Where secrets live.  Values never appear in errors or logs."""

    @abc.abstractmethod
    def get(self, scope: str, name: str) -> str:
        """The value; KeyError if there is no such secret."""

    @abc.abstractmethod
    def set(self, scope: str, name: str, value: str) -> None:
        """Create or replace a secret (org: admins only)."""

    @abc.abstractmethod
    def delete(self, scope: str, name: str) -> None:
        """Remove a secret; KeyError if there is none (org: admins only)."""

    @abc.abstractmethod
    def list(self, scope: str) -> list[SecretInfo]:
        """Names and update times, sorted by name; never values."""

    @abc.abstractmethod
    def values(self, scope: str) -> dict[str, str]:
        """Every secret of a scope, for `mountctl exec`."""

    def sharing_warning(self, scope: str) -> str | None:
        """Why the secrets of ``scope`` cannot be shared as docs/secrets.md says they are (one
        line, said after a write), or None."""
        return None


def open_store(store: str | None = None, **overrides) -> SecretStore:
    cfg = load_config(store=store, **overrides)
    if cfg["store"] == "local":
        from .local import LocalStore

        return LocalStore(cfg)
    if cfg["store"] == "ssm":
        from .ssm import SSMStore

        return SSMStore(cfg)
    # Where the bad name came from (--store is checked by the command line's own parser); the
    # value is not repeated, as for --store: it may be something pasted in the wrong place.
    if store is not None:
        where = "--store"
    elif os.environ.get(ENV["store"]):
        where = f"${ENV['store']}"
    else:
        where = "[secrets] store in the config file"
    raise InvalidSecretsSetting(f"{where}: unknown secrets store (the value is not shown): local or ssm")
