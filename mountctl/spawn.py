"""Starting a stashfs daemon and waiting until its mount is ready: the checks before it
(`preflight`), the start in the background (`start`) or in place (`exec_foreground`), and the
readiness protocol (the daemon writes ``ready``, ``error: <reason>`` or ``progress: <what>``
lines to the pipe given as ``--ready-fd``).  Used by ``mountctl mount``, ``mountctl exec`` and the
fstab helper, each with a `fsdriver.mountconfig.MountConfig`.
"""

import errno
import os
import select
import shutil
import subprocess
import sys
import time

from fsdriver.mountconfig import MountConfig
from fsdriver.secrets.environment import without_store_keys

from . import mounts
from .errors import CLIError

READY_TIMEOUT = 60.0


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


def is_dead(mp: str) -> bool:
    """Whether ``mp`` is a stashfs mount whose daemon is gone (it answers ENOTCONN)."""
    entry = mounts.find(mp)
    if entry is None or entry.fstype != mounts.FSTYPE:
        return False
    try:
        os.stat(mp)
        return False
    except OSError as e:
        return e.errno == errno.ENOTCONN


def detach_if_dead(mp: str) -> bool:
    """A stashfs mount whose daemon is gone (killed, crashed) cannot be mounted over or unmounted
    the usual way: detach it (lazily), so a restart (systemd, exec, mount(8)) can mount again.
    Returns whether it detached one."""
    if not is_dead(mp):
        return False
    p = subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, text=True)
    if p.returncode != 0:
        raise CLIError(f"the stashfs mount at {mp} is dead (its daemon exited) and cannot be detached "
                       f"by this user: {p.stderr.strip() or 'fusermount3 failed'}; ask root to restart it")
    print(f"mountctl: detached the stashfs mount at {mp}: its daemon had exited", file=sys.stderr)
    return True


def daemon_command(cfg: MountConfig) -> list[str]:
    return [sys.executable, "-m", "fsdriver", *cfg.argv()]


def exec_foreground(cfg: MountConfig) -> None:
    """Become the daemon: systemd (Type=notify) sees READY=1 from its main pid.  Without the
    secrets stores' keys in its environment, as `start` gives it."""
    os.execve(sys.executable, daemon_command(cfg), without_store_keys(os.environ))


def start(cfg: MountConfig) -> None:
    """Start the daemon in the background (its own session) and return once its mount is ready;
    CLIError with the daemon's reason otherwise."""
    cmd = daemon_command(cfg)
    read_fd, write_fd = os.pipe()
    # The log names users' paths: created private (0600), like the daemon creates it.
    log_target = (os.fdopen(os.open(cfg.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
                  if cfg.log_file else subprocess.DEVNULL)
    # Readiness goes through the pipe; $NOTIFY_SOCKET belongs to whoever started us (a systemd
    # service running jobs), not to a daemon that outlives us.
    # Nor the secrets stores' keys: the daemon has no use for them (`mountctl exec` starts it).
    env = {k: v for k, v in without_store_keys(os.environ).items() if k != "NOTIFY_SOCKET"}
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
                   (f"; see {cfg.log_file}" if cfg.log_file else "; use --log-file to see why"))


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


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that is not us does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False
