"""The mount's configuration, declared once: every option of the daemon (``python -m fsdriver``),
``mountctl mount`` / ``exec`` and the fstab helper (``-o name=value``), with its default, its other
sources ([mount] in the config file, an environment variable) and its validation.

`MountConfig` is the one declaration: each field carries an `Opt` (how to parse and check a value,
its help text) in its metadata.  Command lines are generated from it (`add_arguments`), values from
every source go through `MountConfig.load` (strongest first: the given value, the environment
variable, the config files, the default), and the daemon is started with `MountConfig.argv`.  A bad
value is a `MountConfigError` naming the option and the value: mountctl and the fstab helper refuse
it with one line and exit status 2 before any daemon is started.

No pyfuse3/trio here: mountctl imports this module.
"""

import dataclasses
import errno
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlparse

from . import config
from .backend.base import PART_SIZE

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# one transfer part is the smallest memory budget
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class MountConfigError(ValueError):
    """A bad mount option value: one line naming the option and the value (exit status 2)."""


def parse_size(text) -> int:
    """Bytes in ``512M``, ``2G``, ``1MiB``, ``4096`` (an int from a config file is taken as is)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not m:
        raise ValueError("not a size (examples: 512M, 2G)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _size(minimum: int = 0):
    def parse(text) -> int:
        n = parse_size(text)
        if n < minimum:
            raise ValueError(f"must be at least {format_size(minimum)}")
        return n
    return parse


def format_size(n: int) -> str:
    """The shortest exact spelling of ``n`` bytes that `parse_size` reads back (512M, 1G, 1000)."""
    for unit in ("T", "G", "M", "K"):
        if n and n % _UNITS[unit.lower()] == 0:
            return f"{n // _UNITS[unit.lower()]}{unit}"
    return str(n)


def _seconds(text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError("not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a positive number of seconds")
    return value


def _bool(text) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("not a boolean (true or false)")


def _text(text) -> str:
    return str(text)


def _log_level(text) -> str:
    level = str(text).upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"not a log level ({', '.join(LOG_LEVELS)})")
    return level


def _backend(text) -> str:
    url = str(text)
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError("no bucket (s3://bucket[/prefix])")
    elif parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ValueError("file:// URLs take an absolute path (file:///...)")
    elif not (parsed.scheme == "" or len(parsed.scheme) == 1):
        raise ValueError(f"unknown scheme {parsed.scheme!r} (s3://bucket[/prefix], file:///path or a path)")
    elif not url:
        raise ValueError("empty")
    return url


MAX_ID = (1 << 32) - 2  # uid_t is 32 bits and (uid_t)-1 means "no change" to chown(2)


def _id(text) -> int:
    """A numeric uid or gid: ``1000`` (an int from a config file is taken as is)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str) and re.fullmatch(r"\s*[0-9]+\s*", text):
        value = int(text)
    else:
        raise ValueError("not a numeric id (a non-negative integer)")
    if not 0 <= value <= MAX_ID:
        raise ValueError(f"out of range (0 to {MAX_ID})")
    return value


def mode_spellings(example: str) -> str:
    """What `_mode` reads, as --help says it: ``octal: 644, 0644 or 0o644``."""
    return f"octal: {example}, 0{example} or 0o{example}"


def _mode(text) -> int:
    """Permission bits in octal: ``644``, ``0644`` or ``0o644`` -> 0o644 (at most 0o7777).  A number in
    a config file is refused: TOML reads ``644`` as decimal, so only a string says octal."""
    if not isinstance(text, str):
        raise ValueError('not an octal string (write it quoted: "0644")')
    m = re.fullmatch(r"\s*(?:0o)?([0-7]{1,5})\s*", text.lower())
    if not m:
        raise ValueError("not an octal mode (examples: 644, 0755)")
    value = int(m.group(1), 8)
    if value > 0o7777:
        raise ValueError("more than the permission bits (at most 7777)")
    return value


def format_mode(mode: int) -> str:
    """``0644``: what `_mode` reads back."""
    return f"{mode:04o}"


def _endpoint(text) -> str:
    parsed = urlparse(str(text))
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("not an http(s):// URL")
    return str(text)


@dataclass(frozen=True)
class Opt:
    """How one option is given and checked.  ``env``: its environment variable; ``fstab``: its
    name in an fstab line's ``-o`` list when not the field name; ``flag``: takes no value."""

    parse: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    flag: bool = False
    env: str | None = None
    fstab: str | None = None
    shown_default: str | None = None  # for --help, when the default is not a plain value
    size: bool = False  # bytes: shown and passed on as 512M, not 536870912
    octal: bool = False  # permission bits: shown and passed on as 0644, not 420


def _field(default, opt: Opt):
    return field(default=default, metadata={"opt": opt})


@dataclass
class MountConfig:
    mountpoint: str = _field("/mnt/stashfs", Opt(_text, "where to mount", env="STASHFS_MOUNTPOINT"))
    backend: str | None = _field(None, Opt(
        _backend, "s3://bucket[/prefix], file:///path or a path", "URL", env="STASHFS_BACKEND",
        shown_default="$STASHFS_BACKEND, [mount] backend, else ~/.local/share/stashfs"))
    create: bool = _field(False, Opt(
        _bool, "create the local backend directory if it does not exist (a mistyped path is refused "
               "otherwise; the default location is always created)", flag=True))
    endpoint_url: str | None = _field(None, Opt(_endpoint, "S3-compatible endpoint", "URL",
                                                shown_default="$AWS_ENDPOINT_URL"))
    cache_dir: str | None = _field(None, Opt(_text, "staged writes and pending uploads", "DIR",
                                             shown_default="~/.cache/stashfs/<hash>"))
    memory_limit: int = _field(512 << 20, Opt(_size(PART_SIZE), "prefetch and transfer buffers", "SIZE", size=True))
    max_prefetch: int = _field(64 << 20, Opt(_size(), "how far ahead of a file's reads a read is still its "
                                             "stream's, and how long unread streamed bytes are kept", "SIZE",
                                             size=True))
    metadata_ttl: float = _field(1.0, Opt(_seconds, "how long attributes and listings are cached",
                                          "SECONDS"))
    readahead: int = _field(1 << 20, Opt(_size(), "kernel read-ahead of the mount (root only; 0 keeps the "
                                                  "kernel's)", "SIZE", size=True))
    backend_timeout: float = _field(30.0, Opt(
        _seconds, "a backend call without an answer fails with EIO after this long", "SECONDS",
        env="STASHFS_BACKEND_TIMEOUT"))
    read_only: bool = _field(False, Opt(_bool, "refuse every change (EROFS); reads only", flag=True, fstab="ro"))
    allow_other: bool = _field(False, Opt(_bool, "let other users use the mount", flag=True))
    org_group: str = _field("", Opt(_text, "share pipelines and key/value stores with this group", "GROUP",
                                    env="STASHFS_ORG_GROUP", shown_default="[secrets] org_group"))
    # Objects that carry no attributes of their own (written by boto3, the Python API, other tools)
    # are shown with these; not set: the namespace's owner and modes (fsdriver.access).
    uid: int | None = _field(None, Opt(
        _id, "owner shown for objects that carry no attributes of their own (written by other tools)",
        "UID", shown_default="the namespace owner"))
    gid: int | None = _field(None, Opt(
        _id, "group shown for objects that carry no attributes of their own (written by other tools)",
        "GID", shown_default="the namespace's group"))
    file_mode: int | None = _field(None, Opt(
        _mode, f"mode ({mode_spellings('644')}) shown for files that carry no attributes of their own (written by "
               "other tools)",
        "MODE", shown_default="the namespace's: 0600, 0660 or 0666", octal=True))
    dir_mode: int | None = _field(None, Opt(
        _mode, f"mode ({mode_spellings('755')}) shown for directories that carry no attributes of their own (written "
               "by other tools)", "MODE", shown_default="the namespace's: 0700, 0770 or 0777", octal=True))
    log_file: str | None = _field(None, Opt(
        _text, "the daemon's log, created 0600", "FILE",
        shown_default="none in the background, stderr with --foreground"))
    log_level: str = _field("INFO", Opt(_log_level, "DEBUG, INFO, WARNING or ERROR", "LEVEL"))

    @classmethod
    def load(cls, given: dict | None = None, spelling: str = "cli",
             only: tuple[str, ...] | None = None) -> "MountConfig":
        """The configuration in force: ``given`` values (None: not given) over the environment over
        [mount] in the config files over the defaults.  ``spelling`` names options in errors as on a
        command line (``--memory-limit``) or in an fstab line (``memory_limit=``).  ``only``: read
        and check just these options (the others keep their defaults): a bad value elsewhere in
        [mount] does not stop a command that needs one option (`configured_mountpoint`)."""
        given = {k: v for k, v in (given or {}).items() if v is not None}
        unknown = set(given) - set(NAMES)
        if unknown:
            raise TypeError(f"not mount options: {sorted(unknown)}")
        files = config.load_section("mount", {}, {})  # config.ConfigError: the file cannot be read
        values, sources = {}, {}
        for f in dataclasses.fields(cls):
            if only is not None and f.name not in only:
                continue
            opt: Opt = f.metadata["opt"]
            if f.name in given:
                raw, where = given[f.name], option_name(f.name, spelling)
            elif opt.env and os.environ.get(opt.env):
                raw, where = os.environ[opt.env], f"${opt.env}"
            elif f.name in files:
                raw, where = files[f.name], f"[mount] {f.name} in the config file"
            else:
                continue
            if raw == "" and where != option_name(f.name, spelling):
                continue  # `endpoint_url = ""` in a config file (or an empty variable): not set
            try:
                values[f.name] = opt.parse(raw)
            except ValueError as e:
                shown = "" if opt.flag else f" {raw!r}"
                raise MountConfigError(f"{where}{shown}: {e}") from None
            sources[f.name] = where
        cfg = cls(**values)
        cfg._sources = sources
        if not cfg.org_group and (only is None or "org_group" in only):  # one organisation: [secrets] names it too
            cfg.org_group = config.load_section("secrets", {"org_group": ""}, {})["org_group"]
        return cfg

    def source(self, name: str, spelling: str = "cli") -> str:
        """Where the value of option ``name`` came from, as errors name it: ``--log-file``,
        ``$STASHFS_BACKEND``, ``[mount] log_file in the config file``."""
        return getattr(self, "_sources", {}).get(name) or option_name(name, spelling)

    def check_paths(self, spelling: str = "cli") -> None:
        """The log file and the cache dir, when given, must be usable before a daemon is started
        (a bad one is a bad value: one line naming the option, exit status 2).  Both are created
        here as the daemon would create them: the log file 0600, the cache dir 0700 with its
        parents; trying is the only sure test (root may write anywhere but in /proc)."""
        if self.log_file:
            where, path = self.source("log_file", spelling), self.log_file
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
            except OSError as e:
                raise MountConfigError(f"{where} {path!r}: {_path_reason(path, e)}") from None
        if self.cache_dir:
            where, path = self.source("cache_dir", spelling), self.cache_dir
            try:
                _make_dir(path)
            except OSError as e:
                raise MountConfigError(f"{where} {path!r}: {_path_reason(path, e)}") from None

    def backend_url(self) -> str:
        """The backend URL in force: the configured one, else the local default."""
        from .configured import default_url

        return self.backend or default_url()

    def check_backend_dir(self, spelling: str = "cli") -> None:
        """A local backend given by name (option, environment, config file) must exist, unless
        ``create``: a mistyped path would otherwise mount a new, empty tree.  The default location
        (no backend configured) is created by the daemon as before."""
        if self.backend is None or self.create:
            return
        parsed = urlparse(self.backend)
        if parsed.scheme == "s3":
            return
        path = parsed.path if parsed.scheme == "file" else self.backend
        if not os.path.isdir(path):
            what = "is not a directory" if os.path.exists(path) else "does not exist"
            how = "-o create" if spelling == "fstab" else option_name("create")
            raise MountConfigError(f"backend directory {path} {what} (check the path, or add {how} to "
                                   "create it)")

    def argv(self) -> list[str]:
        """The daemon's command line for this configuration (after ``python -m fsdriver``)."""
        out = [os.path.abspath(self.mountpoint)]
        for f in dataclasses.fields(self):
            opt, value = f.metadata["opt"], getattr(self, f.name)
            if f.name == "mountpoint" or value is None or value is False or value == "":
                continue
            out.append(option_name(f.name))
            if not opt.flag:
                out.append(format_size(value) if opt.size else format_mode(value) if opt.octal else str(value))
        return out


NAMES = tuple(f.name for f in dataclasses.fields(MountConfig))
DEFAULTS = MountConfig()


def configured_mountpoint(given: str | None = None) -> str:
    """The node's mount point, absolute: ``given``, else $STASHFS_MOUNTPOINT, [mount] mountpoint,
    /mnt/stashfs.  Reads no other option."""
    return os.path.abspath(MountConfig.load({"mountpoint": given}, only=("mountpoint",)).mountpoint)


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _make_dir(path: str) -> None:
    """``path`` as a directory (0700 when made here, its parents as mkdir -p makes them)."""
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), existing)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None


def _path_reason(path: str, e: OSError) -> str:
    """Why ``path`` cannot be used, in words: the OS's reason, and the path it is about when that
    is another one (a parent that does not exist or is not a directory)."""
    path = os.path.abspath(path)
    about = os.path.abspath(os.fsdecode(e.filename)) if e.filename is not None else path
    if e.errno == errno.ENOTDIR:
        return "not a directory" if about == path else f"{about} is not a directory"
    if e.errno == errno.EISDIR:
        return "is a directory"
    if e.errno == errno.ENOENT and not os.path.isdir(os.path.dirname(path)):
        return f"cannot create it: no directory {os.path.dirname(path)}"
    return f"cannot create it: {e.strerror}" + ("" if about == path else f" ({about})")


def option_name(name: str, spelling: str = "cli") -> str:
    """``--memory-limit`` on a command line, ``memory_limit=`` (or ``ro``) in an fstab line."""
    if spelling == "fstab":
        opt = _opt(name)
        return opt.fstab or (name if opt.flag else f"{name}=")
    return "--" + name.replace("_", "-")


def _opt(name: str) -> Opt:
    return MountConfig.__dataclass_fields__[name].metadata["opt"]


def options() -> list[tuple[str, Opt]]:
    """(field name, Opt) of every option but the mount point."""
    return [(f.name, f.metadata["opt"]) for f in dataclasses.fields(MountConfig) if f.name != "mountpoint"]


def default_text(name: str) -> str:
    opt, value = _opt(name), getattr(DEFAULTS, name)
    if opt.shown_default:
        return opt.shown_default
    if opt.flag:
        return "off"
    if opt.size:
        return format_size(value)
    if opt.octal:
        return format_mode(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_arguments(parser, *, helps: bool = True) -> None:
    """Every option (but the mount point) on an argparse parser, default None ("not given"), so
    that `MountConfig.load` can tell a given value from the lower sources."""
    for name, opt in options():
        text = f"{opt.help} (default: {default_text(name)})" if helps else None
        if opt.flag:
            parser.add_argument(option_name(name), dest=name, action="store_true", default=None, help=text)
        else:
            parser.add_argument(option_name(name), dest=name, metavar=opt.metavar, default=None, help=text)


def given(args) -> dict:
    """The option values an argparse namespace carries (None: not given)."""
    return {name: getattr(args, name, None) for name in NAMES}
