"""``stashfs SOURCE MOUNTPOINT [-o OPTIONS]``: the program mount(8) runs for an fstab line::

    stashfs  /mnt/stashfs  fuse.stashfs  _netdev,allow_other  0  0

There is no /sbin/mount.fuse.stashfs, so mount(8) runs /sbin/mount.fuse (fuse3), which drops
``_netdev``, ``nofail``, ``user``... and runs ``stashfs SOURCE MOUNTPOINT -o OPTIONS`` through
/bin/sh.  mount(8) does not pass its caller's PATH on, so the shell's default PATH
(/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin) must find ``stashfs``: ``make
install`` links it into /usr/local/bin.

SOURCE is the backend URL, or ``stashfs`` for the configured one ([mount] backend).  The options
are `fsdriver.mountconfig`'s, by their names (``memory_limit=1G``, ``allow_other``, ``ro``,
``create``; ``uid=``, ``gid=`` as in s3fs, ``file_mode=``, ``dir_mode=`` as mountpoint-s3's
``--file-mode``, ``--dir-mode``: the owner and mode shown for objects written by other tools);
options not given fall back to the [mount] section like ``mountctl mount``.  Returns once the
mount is ready; an error is one line on stderr and exit status 1 (2 for a bad option).
"""

import argparse
import sys

from fsdriver import config, mountconfig

from . import spawn
from .errors import CLIError

# -o name=value and -o flag, as fsdriver.mountconfig declares them (the source gives the backend)
VALUE_OPTIONS = tuple(name for name, opt in mountconfig.options() if not opt.flag and name != "backend")
FLAG_OPTIONS = {opt.fstab or name: name for name, opt in mountconfig.options() if opt.flag}
# mount(8)'s generic options (and what mount.fuse adds): nothing for stashfs to do.
GENERIC = {"defaults", "rw", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users", "owner",
           "group", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "diratime",
           "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime",
           "sync", "async", "dirsync", "silent", "loud", "iversion", "noiversion", "mand", "nomand"}
GENERIC_PREFIXES = ("x-", "comment=")
SOURCE_CONFIGURED = "stashfs"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise CLIError(message, 2)


def parse_options(groups: list[str]) -> dict:
    """``-o`` option lists -> {daemon option: value}; CLIError(status 2) for an unknown one."""
    opts = {}
    for group in groups:
        for opt in filter(None, group.split(",")):
            name, eq, value = opt.partition("=")
            if opt in GENERIC or opt.startswith(GENERIC_PREFIXES):
                continue
            if name in FLAG_OPTIONS and not eq:
                opts[FLAG_OPTIONS[name]] = True
            elif name in VALUE_OPTIONS and value:
                opts[name] = value
            elif name in VALUE_OPTIONS:
                raise CLIError(f"mount option {name} needs a value ({name}=...)", 2)
            else:
                raise CLIError(f"unknown mount option {opt!r} (stashfs takes {', '.join(FLAG_OPTIONS)}, "
                               f"{'=, '.join(VALUE_OPTIONS)}=)", 2)
    return opts


def mount(argv: list[str]) -> None:
    p = _Parser(prog="stashfs", description="mount stashfs (the program behind an fstab line)")
    p.add_argument("source", help=f"backend URL, or {SOURCE_CONFIGURED} for [mount] backend")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    # What mount(8) passes to a /sbin/mount.TYPE helper (if one links here): nothing to do.
    p.add_argument("-t", dest="fstype", help=argparse.SUPPRESS)
    for flag in ("-n", "-s", "-v"):
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    opts = parse_options(args.options)
    try:
        cfg = mountconfig.MountConfig.load(
            dict(opts, backend=None if args.source == SOURCE_CONFIGURED else args.source), spelling="fstab")
        if not cfg.backend:
            raise CLIError(f"source {SOURCE_CONFIGURED}: no backend configured ([mount] backend in "
                           "/etc/stashfs/config.toml, or $STASHFS_BACKEND)")
        cfg.mountpoint = spawn.preflight(args.mountpoint)
        cfg.check_backend_dir("fstab")
        cfg.check_paths("fstab")
    except mountconfig.MountConfigError as e:
        raise CLIError(str(e), 2) from None
    spawn.start(cfg)


def main(argv: list[str] | None = None) -> int:
    try:
        mount(sys.argv[1:] if argv is None else argv)
    except CLIError as e:
        print(f"stashfs: {e}", file=sys.stderr)
        return e.status
    except config.ConfigError as e:
        print(f"stashfs: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"stashfs: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
