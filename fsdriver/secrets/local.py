"""The local secret store: one AES-GCM encrypted file per scope.

    ~/.config/stashfs/secrets.key          user key, 32 random bytes, 0600 (or $STASHFS_SECRETS_KEY)
    ~/.config/stashfs/secrets/user.enc     the user's secrets, 0600, in a 0700 directory
    <org_dir>/org.key                      org key, 0640, group <org_group> (or $STASHFS_ORG_SECRETS_KEY)
    <org_dir>/org.enc                      the org's secrets, 0640, group <org_group>

A file is ``MAGIC || nonce(12) || AES-256-GCM(json)``, authenticated with the scope as associated
data, so a wrong key, a modified byte or a user file swapped in for the org file is an error,
never garbage.  Writes are atomic (temp file, fsync, rename, fsync of the directory) and serialised
by an flock on the directory, so a crash leaves the old file or the new one.

Threat model (docs/secrets.md): the key file protects secrets at rest against anyone who can read
the store file but not the key file (backups, other users, a copied disk image without the config
dir).  It does not protect against root, against the user's own processes, or against someone who
can read both files.
"""

import base64
import binascii
import fcntl
import grp
import json
import os
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..fsutil import durable_temp, replace_durably
from .store import (
    SecretInfo,
    SecretsError,
    SecretsPermissionError,
    SecretStore,
    check_name,
    check_scope,
    check_value,
    config_home,
    is_admin,
)

MAGIC = b"STASHFS-SECRETS-1\n"
KEY_BYTES = 32


def _write_atomic(path: Path, data: bytes, mode: int, group: int | None = None) -> None:
    tmp = durable_temp(path.parent, data, prefix=f".{path.name}.", mode=mode, group=group)
    try:
        replace_durably(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Scope:
    """One encrypted file and its key."""

    def __init__(self, label: str, path: Path, key_path: Path, key_env: str, mode: int, group: int | None):
        self.label, self.path, self.key_path, self.key_env = label, path, key_path, key_env
        self.mode, self.group = mode, group

    def key(self, create: bool) -> bytes:
        env = os.environ.get(self.key_env)
        if env:
            try:
                key = base64.b64decode(env, validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != KEY_BYTES:
                raise SecretsError(f"${self.key_env} must be {KEY_BYTES} random bytes in base64")
            return key
        try:
            key = self.key_path.read_bytes()
        except FileNotFoundError:
            if not create:
                raise SecretsError(f"{self.path} exists but its key {self.key_path} is missing") from None
            key = AESGCM.generate_key(bit_length=256)
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.key_path, key, self.mode, self.group)
            return key
        except PermissionError:
            raise SecretsPermissionError(
                f"cannot read the {self.label} key {self.key_path}: permission denied"
                + (" (org members need to be in the org group)" if self.label == "org" else "")
            ) from None
        if len(key) != KEY_BYTES:
            raise SecretsError(f"{self.key_path} is not a stashfs key ({len(key)} bytes, expected {KEY_BYTES})")
        return key

    def load(self) -> dict:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except PermissionError:
            raise SecretsPermissionError(f"cannot read {self.path}: permission denied") from None
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
            raise SecretsError(f"{self.path} is not a stashfs secrets file (damaged?)")
        nonce = blob[len(MAGIC): len(MAGIC) + 12]
        try:
            plain = AESGCM(self.key(create=False)).decrypt(nonce, blob[len(MAGIC) + 12:], self._aad())
        except InvalidTag:
            raise SecretsError(
                f"{self.path}: cannot decrypt: wrong key, or the file was modified"
            ) from None
        return json.loads(plain)["secrets"]

    def save(self, secrets: dict) -> None:
        nonce = os.urandom(12)
        plain = json.dumps({"secrets": secrets}).encode()
        blob = MAGIC + nonce + AESGCM(self.key(create=True)).encrypt(nonce, plain, self._aad())
        _write_atomic(self.path, blob, self.mode, self.group)

    def _aad(self) -> bytes:
        return MAGIC + self.label.encode()

    def locked(self):
        return _DirLock(self.path.parent)


class _DirLock:
    """An flock on the store's directory: one writer at a time, across processes."""

    def __init__(self, directory: Path):
        self.directory = directory

    def __enter__(self):
        self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _gid(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid if group else None
    except KeyError:
        return None


class LocalStore(SecretStore):
    def __init__(self, cfg: dict):
        self.cfg = cfg
        home = config_home()
        self._user = _Scope("user", home / "secrets" / "user.enc", home / "secrets.key",
                            "STASHFS_SECRETS_KEY", 0o600, None)
        org_dir = Path(cfg["org_dir"])
        self.admin_gid = _gid(cfg["admin_group"])
        readers = _gid(cfg["org_group"]) if cfg.get("org_group") else self.admin_gid
        if cfg.get("org_group") and readers is None:
            raise SecretsError(f"org group {cfg['org_group']!r} does not exist")
        self._org = _Scope("org", org_dir / "org.enc", org_dir / "org.key",
                           "STASHFS_ORG_SECRETS_KEY", 0o640 if readers is not None else 0o600, readers)

    def sharing_warning(self, scope: str) -> str | None:
        """Org secrets are shared through a group's read access (org_group, else admin_group): with
        neither group on this machine the files are made 0600, readable by their writer (root)
        only, and org members would get "permission denied" with nothing said at the write."""
        if check_scope(scope) != "org" or self._org.group is not None:
            return None
        group = self.cfg["admin_group"]
        return (f"org secrets in {self._org.path.parent} are readable by root only (0600): there is no group "
                f"{group!r} on this machine (and no [secrets] org_group) to share them with, so org members "
                f"cannot read them (create the group and give the files to it: docs/secrets.md)")

    def _scope(self, scope: str) -> _Scope:
        return self._user if check_scope(scope) == "user" else self._org

    def _prepare_write(self, scope: str) -> _Scope:
        s = self._scope(scope)
        if scope == "org":
            if not is_admin(self.cfg["admin_group"]):
                raise SecretsPermissionError(
                    f"only admins can change org secrets (root, or members of group {self.cfg['admin_group']!r})"
                )
            if not s.path.parent.exists():
                # Admins write (group admin, setgid), members read through the files' group.
                s.path.parent.mkdir(parents=True, exist_ok=True)
                if self.admin_gid is not None:
                    os.chown(s.path.parent, -1, self.admin_gid)
                os.chmod(s.path.parent, 0o2775 if self.admin_gid is not None else 0o755)
        else:
            s.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(s.path.parent, 0o700)
        return s

    def get(self, scope: str, name: str) -> str:
        check_name(name)
        secrets = self._scope(scope).load()
        if name not in secrets:
            raise KeyError(name)
        return secrets[name]["value"]

    def set(self, scope: str, name: str, value: str) -> None:
        check_name(name)
        check_value(value)
        s = self._prepare_write(scope)
        try:
            with s.locked():
                secrets = s.load()
                secrets[name] = {"value": value, "updated": time.time()}
                s.save(secrets)
        except PermissionError as e:
            raise SecretsPermissionError(f"cannot write {s.path}: {e.strerror}") from None

    def delete(self, scope: str, name: str) -> None:
        check_name(name)
        s = self._prepare_write(scope)
        try:
            with s.locked():
                secrets = s.load()
                if name not in secrets:
                    raise KeyError(name)
                del secrets[name]
                s.save(secrets)
        except PermissionError as e:
            raise SecretsPermissionError(f"cannot write {s.path}: {e.strerror}") from None

    def list(self, scope: str) -> list[SecretInfo]:
        return [SecretInfo(n, scope, v["updated"]) for n, v in sorted(self._scope(scope).load().items())]

    def values(self, scope: str) -> dict[str, str]:
        return {n: v["value"] for n, v in self._scope(scope).load().items()}
