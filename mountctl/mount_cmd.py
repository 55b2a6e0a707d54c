"""``mountctl mount | umount | status | flush``: start, stop and inspect stashfs daemons.

The mount options are declared in `fsdriver.mountconfig` (shared with the daemon, ``mountctl exec``
and the fstab helper); starting a daemon is `mountctl.spawn`.
"""

import errno
import json
import os
import subprocess
import sys
import time

from fsdriver import mountconfig

from . import mounts, prometheus, spawn
from .errors import CLIError
from .formats import duration, human_bytes

EXIT_TIMEOUT = 60.0


def register(sub) -> None:
    # No secret goes near these commands: their usage errors name what was typed (mountctl.cli.Parser).
    p = sub.add_parser("mount", help="mount stashfs at MOUNTPOINT", shows_arguments=True)
    p.add_argument("mountpoint", nargs="?",
                   help="default: $STASHFS_MOUNTPOINT, [mount] mountpoint in the config file, "
                        f"{mountconfig.DEFAULTS.mountpoint}")
    mountconfig.add_arguments(p)
    p.add_argument("--foreground", action="store_true",
                   help="stay attached: exec the daemon (systemd Type=notify, containers)")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="upload what is pending, unmount and stop the daemon", shows_arguments=True)
    p.add_argument("mountpoint", nargs="?", help=DEFAULT_TARGET)
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("status", help="every stashfs mount on this machine", shows_arguments=True)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON array, one object per mount")
    out.add_argument("--prometheus", action="store_true",
                     help="print the counters in Prometheus text format (docs/operations.md lists them)")
    p.add_argument("--textfile", metavar="FILE",
                   help="write the Prometheus text to FILE atomically (node_exporter's textfile collector)")
    p.add_argument("--all", action="store_true",
                   help="list every pending upload (by default: their count, size and the first 20)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("flush", help="upload everything pending now (or drop pending uploads: --discard)",
                       shows_arguments=True)
    p.add_argument("mountpoint", nargs="?", help=DEFAULT_TARGET)
    p.add_argument("--discard", metavar="KEY", action="append",
                   help="drop this pending upload instead of uploading it: a key as `mountctl status` shows "
                        "it, or the file's path in the mount (repeatable); its data is deleted")
    p.add_argument("--discard-all", action="store_true", help="drop every pending upload; their data is deleted")
    p.set_defaults(func=cmd_flush)


DEFAULT_TARGET = ("default: the only stashfs mount when there is one, else the one at the configured mount "
                  "point ($STASHFS_MOUNTPOINT, [mount] mountpoint, /mnt/stashfs); with several mounts and "
                  "none there, name one")


def target_mountpoint(mountpoint: str | None, command: str) -> str:
    """The mount umount and flush act on: the one named, else the only stashfs mount (``make
    mount`` mounts at ~/stashfs, a node at /mnt/stashfs: either is found), else the one at the
    configured mount point; with several and none there, the user names one (exit status 2)."""
    if mountpoint:
        return os.path.abspath(mountpoint)
    try:
        mp = mounts.the_mount(mountconfig.configured_mountpoint)
    except mounts.SeveralMounts as e:
        raise CLIError(f"{e}: name the one to {_VERBS[command]} (mountctl {command} MOUNTPOINT)", 2) from None
    if mp is None:
        raise CLIError(f"no stashfs mount on this machine: nothing to {_VERBS[command]}")
    return mp


_VERBS = {"umount": "unmount", "flush": "flush"}


def _denied(mp: str, what: str) -> CLIError:
    """The control file answers EACCES to anyone but the mount's owner and root (and the kernel
    does, for a mount without allow_other): the daemon is fine, the caller may not."""
    return CLIError(f"cannot {what} {mp}: permission denied (only the user who mounted it and root may)")


def cmd_mount(args) -> int:
    cfg = mountconfig.MountConfig.load(mountconfig.given(args))  # a bad value: one line, exit 2
    cfg.mountpoint = spawn.preflight(cfg.mountpoint)
    cfg.check_backend_dir()
    cfg.check_paths()  # --log-file, --cache-dir: one line naming the option, exit 2
    if args.foreground:
        spawn.exec_foreground(cfg)
    spawn.start(cfg)
    return 0


def _require_stashfs(mountpoint: str | None, command: str) -> str:
    mp = target_mountpoint(mountpoint, command)
    entry = mounts.find(mp)
    if entry is None or entry.fstype != mounts.FSTYPE:
        raise CLIError(f"{mp} is not a stashfs mount")
    return mp


def _detach_dead(mp: str) -> int:
    """umount of a mount whose daemon is gone: nothing to flush; what it had not uploaded is
    journaled in its cache dir and uploaded at the next mount with that cache dir."""
    subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, text=True)
    if mounts.is_stashfs(mp):
        raise CLIError(f"cannot detach the dead stashfs mount at {mp} (its daemon exited): ask root")
    print(f"mountctl: detached {mp}: its daemon had exited (pending uploads, if any, are uploaded at the "
          "next mount with the same cache dir)", file=sys.stderr)
    return 0


def cmd_umount(args) -> int:
    mp = _require_stashfs(args.mountpoint, "umount")
    if spawn.is_dead(mp):
        return _detach_dead(mp)
    pid, cache_dir = None, "?"
    failed = []
    try:
        st = mounts.status(mp)
        pid, cache_dir = st["pid"], st.get("cache_dir", "")
        mounts.flush(mp)
    except OSError as e:
        if e.errno == errno.ENOTCONN:  # it died meanwhile (a kill -9 a moment ago)
            return _detach_dead(mp)
        if e.errno in (errno.EACCES, errno.EPERM):
            raise _denied(mp, "unmount") from None
        if e.errno != errno.EIO:
            raise CLIError(f"{mp}: the daemon does not answer ({e.strerror})")
    try:
        failed = mounts.pending(mp)  # every one, page by page: the status shows only the first ones
    except OSError:
        pass
    p = subprocess.run(["fusermount3", "-u", mp], capture_output=True, text=True)
    if p.returncode != 0:
        raise CLIError(f"cannot unmount {mp}: {p.stderr.strip() or 'fusermount3 failed'}")
    if pid is not None:
        deadline = time.monotonic() + EXIT_TIMEOUT
        while spawn.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for another process to exit: there is no event to wait on
    if failed:
        for item in failed:
            fate = "" if item.get("kept", True) else " - LOST: it could not be journaled"
            print(f"mountctl: not uploaded: {item['key']} ({item['bytes']} bytes): {item['error']}{fate}",
                  file=sys.stderr)
        lost = sum(not item.get("kept", True) for item in failed)
        raise CLIError(f"unmounted {mp}, but {len(failed)} uploads are still pending: "
                       + (f"{lost} of them could not be journaled and are lost; the others' " if lost else "their ")
                       + f"data stays in the cache dir {cache_dir} and is uploaded at the next mount with the "
                       "same cache dir (to drop them instead: mount again, then `mountctl flush --discard KEY` "
                       "or --discard-all)")
    return 0


def cmd_status(args) -> int:
    out = []
    for entry in mounts.stashfs_mounts():
        try:
            st = mounts.status(entry.mountpoint)
            if args.all:
                st["pending_uploads"] = mounts.pending(entry.mountpoint)
        except OSError as e:
            why = ("its status is for the mount's owner and root only" if e.errno == errno.EACCES
                   else f"daemon does not answer: {e.strerror}")
            st = {"mountpoint": entry.mountpoint, "error": why, "denied": e.errno == errno.EACCES}
        st["mountpoint"] = entry.mountpoint
        out.append(st)
    if args.prometheus or args.textfile:
        # A mount whose status this user may not read is not a mount that is down: no sample
        # (stashfs_up 0 would page for a healthy mount, from a collector run as another user).
        denied = [st["mountpoint"] for st in out if st.get("denied")]
        if denied:
            print(f"mountctl: left out {len(denied)} mount(s) whose status is for their owner and root only: "
                  f"{', '.join(denied)}", file=sys.stderr)
        text = prometheus.render([st for st in out if not st.get("denied")])
        if args.textfile:
            prometheus.write_textfile(args.textfile, text)
        if args.prometheus:
            sys.stdout.write(text)
    elif args.json:
        print(json.dumps(out, indent=2))
    elif not out:
        print("no stashfs mounts")
    else:
        _print_status(out)
    # A config file that cannot be read (or holds a bad mount option) is a node that will not mount
    # at its next boot: say so, and fail, even though the mounts of today are fine.
    mountconfig.MountConfig.load()
    return 0


def _print_status(out: list[dict]) -> None:
    for st in out:
        if "error" in st:
            print(f"{st['mountpoint']}: {st['error']}")
            continue
        req = st["requests"]
        print(f"{st['mountpoint']}: {st['backend']} pid {st['pid']} up {duration(st['uptime'])}")
        print(f"  requests {sum(req.values())} ({', '.join(f'{k} {v}' for k, v in sorted(req.items()))})")
        print(f"  backend requests {sum(st['backend_requests'].values())}, "
              f"down {human_bytes(st['bytes_down'])}, up {human_bytes(st['bytes_up'])}, "
              f"prefetch hits {human_bytes(st['prefetch_hit_bytes'])}")
        print(f"  memory {human_bytes(st['memory']['in_use'])} of {human_bytes(st['memory']['limit'])} "
              f"(peak {human_bytes(st['memory']['peak'])}), open files {st['open_files']}, "
              f"pending uploads {_pending_count(st)} ({human_bytes(st.get('pending', {}).get('bytes', 0))}), "
              f"kernel read-ahead {human_bytes(st.get('kernel_readahead', 0))}")
        for item in st["pending_uploads"]:
            print(f"    pending: {item['key']} ({human_bytes(item['bytes'])}): {item['error']}")
        more = _pending_count(st) - len(st["pending_uploads"])
        if more > 0:
            print(f"    ... and {more} more (mountctl status --all)")


def _pending_count(st: dict) -> int:
    return st.get("pending", {}).get("count", len(st["pending_uploads"]))


def _discard(mp: str, args) -> int:
    keys = None
    if not args.discard_all:
        keys = []
        for item in args.discard:
            path = os.path.abspath(item) if item.startswith((os.sep, ".")) else None
            if path is not None and (path + os.sep).startswith(mp + os.sep):
                item = os.path.relpath(path, mp)  # a path in the mount names its key
            keys.append(item)
    try:
        before = {(i["key"], i["bytes"]) for i in mounts.pending(mp)}  # all pages, not the status's first few
        mounts.discard(mp, keys)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise _denied(mp, "discard pending uploads of") from None
        if e.errno == errno.ENOENT:
            raise CLIError(f"{mp}: no pending upload of {', '.join(keys or [])} (see `mountctl status`)")
        raise CLIError(f"{mp}: the daemon does not answer ({e.strerror})")
    after = {i["key"] for i in mounts.pending(mp)}
    for key, size in sorted(before):
        if key not in after:
            print(f"mountctl: discarded {key} ({size} bytes), not uploaded", file=sys.stderr)
    return 0


def cmd_flush(args) -> int:
    mp = _require_stashfs(args.mountpoint, "flush")
    if args.discard or args.discard_all:
        return _discard(mp, args)
    try:
        mounts.flush(mp)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise _denied(mp, "flush") from None
        if e.errno != errno.EIO:
            raise CLIError(f"{mp}: the daemon does not answer ({e.strerror})")
        st = mounts.status(mp)
        left = st["pending_uploads"][:5]  # one line: the first few, the rest in `mountctl status --all`
        raise CLIError(f"{_pending_count(st)} uploads are still pending (retried; `mountctl flush --discard KEY` "
                       "drops one): " + "; ".join(f"{i['key']}: {i['error']}" for i in left) +
                       ("; ..." if _pending_count(st) > len(left) else ""))
    return 0
