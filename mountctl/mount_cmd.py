"""``mountctl mount | umount | status | flush``: start, stop and inspect stashfs daemons."""

import errno
import json
import os
import select
import shutil
import subprocess
import sys
import time

from fsdriver import config

from . import mounts
from .cli import CLIError

READY_TIMEOUT = 60.0
EXIT_TIMEOUT = 60.0
_CONFIGURED = "default: [mount] in the config file"
# Options that default from [mount] in the config file.
CONFIG_OPTIONS = ("backend", "endpoint_url", "org_group", "allow_other", "cache_dir", "log_file")


def register(sub) -> None:
    p = sub.add_parser("mount", help="mount stashfs at MOUNTPOINT")
    p.add_argument("mountpoint", nargs="?",
                   help="default: $STASHFS_MOUNTPOINT, [mount] mountpoint in the config file, /mnt/stashfs")
    p.add_argument("--backend", metavar="URL",
                   help="s3://bucket[/prefix], file:///path or a path (default: $STASHFS_BACKEND, else [mount] in "
                        "the config file)")
    p.add_argument("--endpoint-url", metavar="URL", help=f"S3-compatible endpoint ({_CONFIGURED})")
    p.add_argument("--cache-dir", metavar="DIR", help="staged writes and pending uploads")
    p.add_argument("--memory-limit", metavar="SIZE", default="512M", help="prefetch and transfer buffers (default 512M)")
    p.add_argument("--max-prefetch", metavar="SIZE", help="largest read-ahead window per file (default 64M)")
    p.add_argument("--metadata-ttl", metavar="SECONDS", help="how long attributes and listings are cached (default 1)")
    p.add_argument("--readahead", metavar="SIZE", help="kernel read-ahead of the mount (default 1M, root only)")
    p.add_argument("--backend-timeout", metavar="SECONDS",
                   help="a backend call without an answer fails with EIO after this long (default 30)")
    p.add_argument("--read-only", action="store_true", help="refuse every change (EROFS); reads only")
    p.add_argument("--allow-other", action="store_true", default=None,
                   help=f"let other users use the mount ({_CONFIGURED})")
    p.add_argument("--org-group", metavar="GROUP",
                   help="share pipelines and key/value stores with this group (default: $STASHFS_ORG_GROUP, else "
                        "[mount] in the config file)")
    p.add_argument("--foreground", action="store_true",
                   help="stay attached: exec the daemon (systemd Type=notify, containers)")
    p.add_argument("--log-file", metavar="FILE",
                   help="the daemon's log, created 0600 (default: none in the background, stderr with --foreground)")
    p.add_argument("--log-level", dest="daemon_log_level", metavar="LEVEL", default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="upload what is pending, unmount and stop the daemon")
    p.add_argument("mountpoint", nargs="?", help="default: the configured mount point")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("status", help="every stashfs mount on this machine")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per mount")
    p.add_argument("--all", action="store_true",
                   help="list every pending upload (by default: their count, size and the first 20)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("flush", help="upload everything pending now (or drop pending uploads: --discard)")
    p.add_argument("mountpoint", nargs="?", help="default: the configured mount point")
    p.add_argument("--discard", metavar="KEY", action="append",
                   help="drop this pending upload instead of uploading it: a key as `mountctl status` shows "
                        "it, or the file's path in the mount (repeatable); its data is deleted")
    p.add_argument("--discard-all", action="store_true", help="drop every pending upload; their data is deleted")
    p.set_defaults(func=cmd_flush)


def settings(**overrides) -> dict:
    """The [mount] settings in force (fsdriver.config), as a CLI error when the file is unreadable."""
    try:
        return config.mount_settings(**overrides)
    except config.ConfigError as e:
        raise CLIError(str(e)) from None


def configured_mountpoint(mountpoint: str | None = None) -> str:
    """``mountpoint`` if given, else the configured one; absolute."""
    return os.path.abspath(mountpoint or settings()["mountpoint"])


def preflight(mountpoint: str) -> str:
    """Check what can be checked before starting a daemon; returns the absolute mount point."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        raise CLIError(f"no usable /dev/fuse ({e.strerror}): FUSE is not available here")
    if shutil.which("fusermount3") is None:
        raise CLIError("fusermount3 not found: install the fuse3 package")
    mp = os.path.abspath(mountpoint)
    detach_if_dead(mp)
    if mounts.find(mp) is not None and os.path.ismount(mp):
        raise CLIError(f"{mp} is already mounted")
    if not os.path.exists(mp):
        raise CLIError(f"mount point {mp} does not exist")
    if not os.path.isdir(mp):
        raise CLIError(f"mount point {mp} is not a directory")
    return mp


def detach_if_dead(mp: str) -> None:
    """A stashfs mount whose daemon is gone (killed, crashed) answers ENOTCONN and cannot be
    mounted over: detach it, so a restart (systemd, exec, mount(8)) can mount again."""
    entry = mounts.find(mp)
    if entry is None or entry.fstype != mounts.FSTYPE:
        return
    try:
        os.stat(mp)
        return
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return
    p = subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, text=True)
    if p.returncode != 0:
        raise CLIError(f"the stashfs mount at {mp} is dead (its daemon exited) and cannot be detached "
                       f"by this user: {p.stderr.strip() or 'fusermount3 failed'}; ask root to restart it")
    print(f"mountctl: detached the stashfs mount at {mp}: its daemon had exited", file=sys.stderr)


def daemon_options(args, cfg: dict) -> dict:
    """The daemon's options (flag name -> value; True for a bare flag) from mount's arguments and
    the [mount] settings ``cfg``."""
    opts = {name: getattr(args, name) for name in (
        "cache_dir", "memory_limit", "max_prefetch", "metadata_ttl", "readahead", "backend_timeout", "log_file",
        "read_only")}
    opts.update({name: cfg[name] for name in CONFIG_OPTIONS})
    opts["log_level"] = args.daemon_log_level
    return opts


def daemon_command(mp: str, opts: dict) -> list[str]:
    cmd = [sys.executable, "-m", "fsdriver", mp]
    for name, value in opts.items():
        if value is True:
            cmd.append("--" + name.replace("_", "-"))
        elif value not in (None, False, ""):
            cmd += ["--" + name.replace("_", "-"), str(value)]
    return cmd


def start(mp: str, opts: dict) -> None:
    """Start the daemon in the background (its own session) and return once its mount is ready;
    CLIError with the daemon's reason otherwise.  Used by mount, exec and the fstab helper."""
    cmd = daemon_command(mp, opts)
    read_fd, write_fd = os.pipe()
    log_file = opts.get("log_file")
    # The log names users' paths: created private (0600), like the daemon creates it.
    log_target = (os.fdopen(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
                  if log_file else subprocess.DEVNULL)
    # Readiness goes through the pipe; $NOTIFY_SOCKET belongs to whoever started us (a systemd
    # service running jobs), not to a daemon that outlives us.
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    try:
        proc = subprocess.Popen(
            cmd + ["--ready-fd", str(write_fd)], pass_fds=(write_fd,), start_new_session=True, env=env,
            stdin=subprocess.DEVNULL, stdout=log_target, stderr=log_target,
        )
    finally:
        os.close(write_fd)
        if log_target is not subprocess.DEVNULL:
            log_target.close()
    line = _read_line(read_fd, READY_TIMEOUT)
    if line == "ready":
        return
    if line.startswith("error: "):
        raise CLIError(line[len("error: "):])
    code = proc.poll()
    if code is None:
        proc.kill()
        raise CLIError(f"the daemon did not become ready within {READY_TIMEOUT:.0f}s; stopped it")
    raise CLIError(f"the daemon exited with status {code} before mounting" +
                   (f"; see {log_file}" if log_file else "; use --log-file to see why"))


def cmd_mount(args) -> int:
    cfg = settings(mountpoint=args.mountpoint, backend=args.backend, endpoint_url=args.endpoint_url,
                   org_group=args.org_group, allow_other=args.allow_other, cache_dir=args.cache_dir,
                   log_file=args.log_file)
    mp = preflight(cfg["mountpoint"])
    opts = daemon_options(args, cfg)
    if args.foreground:
        # The daemon becomes this process: systemd (Type=notify) sees READY=1 from its main pid.
        os.execv(sys.executable, daemon_command(mp, opts))
    start(mp, opts)
    return 0


def _read_line(fd: int, timeout: float) -> str:
    """The daemon's verdict; each "progress:" line (recovery at work) restarts the timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while True:
            while b"\n" in data:
                line, data = data.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if not text.startswith("progress:"):
                    return text
                print(f"mountctl: {text[len('progress:'):].strip()}", file=sys.stderr)
                deadline = time.monotonic() + timeout
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                return data.decode(errors="replace").strip()
            data += chunk
    finally:
        os.close(fd)


def _require_stashfs(mountpoint: str | None) -> str:
    mp = configured_mountpoint(mountpoint)
    entry = mounts.find(mp)
    if entry is None or entry.fstype != mounts.FSTYPE:
        raise CLIError(f"{mp} is not a stashfs mount")
    return mp


def cmd_umount(args) -> int:
    mp = _require_stashfs(args.mountpoint)
    pid, cache_dir = None, "?"
    failed = []
    try:
        st = mounts.status(mp)
        pid, cache_dir = st["pid"], st.get("cache_dir", "")
        mounts.flush(mp)
    except OSError as e:
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
        while _alive(pid) and time.monotonic() < deadline:
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


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


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
            st = {"mountpoint": entry.mountpoint, "error": why}
        st["mountpoint"] = entry.mountpoint
        out.append(st)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if not out:
        print("no stashfs mounts")
        return 0
    for st in out:
        if "error" in st:
            print(f"{st['mountpoint']}: {st['error']}")
            continue
        req = st["requests"]
        print(f"{st['mountpoint']}: {st['backend']} pid {st['pid']} up {_duration(st['uptime'])}")
        print(f"  requests {sum(req.values())} ({', '.join(f'{k} {v}' for k, v in sorted(req.items()))})")
        print(f"  backend requests {sum(st['backend_requests'].values())}, "
              f"down {_bytes(st['bytes_down'])}, up {_bytes(st['bytes_up'])}, "
              f"prefetch hits {_bytes(st['prefetch_hit_bytes'])}")
        print(f"  memory {_bytes(st['memory']['in_use'])} of {_bytes(st['memory']['limit'])} "
              f"(peak {_bytes(st['memory']['peak'])}), open files {st['open_files']}, "
              f"pending uploads {_pending_count(st)} ({_bytes(st.get('pending', {}).get('bytes', 0))})")
        for item in st["pending_uploads"]:
            print(f"    pending: {item['key']} ({_bytes(item['bytes'])}): {item['error']}")
        more = _pending_count(st) - len(st["pending_uploads"])
        if more > 0:
            print(f"    ... and {more} more (mountctl status --all)")
    return 0


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
    before = {(i["key"], i["bytes"]) for i in mounts.pending(mp)}  # all pages, not the status's first few
    try:
        mounts.discard(mp, keys)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise CLIError(f"{mp}: no pending upload of {', '.join(keys or [])} (see `mountctl status`)")
        raise CLIError(f"{mp}: the daemon does not answer ({e.strerror})")
    after = {i["key"] for i in mounts.pending(mp)}
    for key, size in sorted(before):
        if key not in after:
            print(f"mountctl: discarded {key} ({size} bytes), not uploaded", file=sys.stderr)
    return 0


def cmd_flush(args) -> int:
    mp = _require_stashfs(args.mountpoint)
    if args.discard or args.discard_all:
        return _discard(mp, args)
    try:
        mounts.flush(mp)
    except OSError as e:
        if e.errno != errno.EIO:
            raise CLIError(f"{mp}: the daemon does not answer ({e.strerror})")
        st = mounts.status(mp)
        left = st["pending_uploads"][:5]  # one line: the first few, the rest in `mountctl status --all`
        raise CLIError(f"{_pending_count(st)} uploads are still pending (retried; `mountctl flush --discard KEY` "
                       "drops one): " + "; ".join(f"{i['key']}: {i['error']}" for i in left) +
                       ("; ..." if _pending_count(st) > len(left) else ""))
    return 0


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
