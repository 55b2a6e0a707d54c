"""Worker nodes: `mountctl exec --pipeline` mounting on demand, the fstab line through mount(8),
systemd readiness of `mountctl mount --foreground`."""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fsdriver.configured import open_backend
from mountctl import mounts

from .conftest import backend_env
from .mounting import force_unmount, mountctl, require_fuse
from .namespaces import PrivateNamespace, open_namespace

BIN = Path(sys.executable).parent  # .venv/bin: mountctl and stashfs
TIMEOUT = 60  # seconds; nothing waits forever
NOBODY = (65534, 65534)


def stashfs_entries(mp: Path, mountinfo: str = "/proc/self/mountinfo") -> int:
    """How many stashfs mounts are stacked on ``mp`` (two would mean two daemons)."""
    count = 0
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[4] == str(mp) and right.split()[0] == mounts.FSTYPE:
                count += 1
    return count


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that is not us does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def backend_of(url: str, env: dict):
    return open_backend(url, **({"endpoint_url": env["AWS_ENDPOINT_URL"]} if url.startswith("s3://") else {}))


# -- mountctl exec --pipeline: the node's mount, made on demand


class Node:
    """A worker node's settings (config file and environment): nothing mounted, no mount point yet."""

    def __init__(self, base: Path, url: str, env: dict):
        self.base, self.url = base, url
        self.mp = base / "mnt"
        config = base / "config" / "stashfs"
        config.mkdir(parents=True)
        (config / "config.toml").write_text(f'[mount]\nmountpoint = "{self.mp}"\nallow_other = true\n')
        self.env = dict(env, STASHFS_BACKEND=url, XDG_CONFIG_HOME=str(base / "config"),
                        XDG_CACHE_HOME=str(base / "cache"), STASHFS_ORG_SECRETS_DIR=str(base / "org"))
        self.backend = backend_of(url, env)

    def exec(self, *args, env=None) -> subprocess.CompletedProcess:
        return mountctl("exec", *args, env=env or self.env, check=False, timeout=TIMEOUT)

    def start_exec(self, *args) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "mountctl", "exec", *args], env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def mounted_line(self) -> str:
        return f"mountctl: mounted {self.url} on {self.mp}\n"

    def pid(self) -> int:
        return mounts.status(str(self.mp))["pid"]


@pytest.fixture(params=["disk", "s3"])
def node(request, tmp_path):
    require_fuse()
    url, env = backend_env(request.param, request, tmp_path)
    # Not under pytest's private temp dir: user nobody must reach the mount point.
    base = Path(tempfile.mkdtemp(prefix="stashfs-node-"))
    os.chmod(base, 0o755)
    n = Node(base, url, env)
    yield n
    try:
        if mounts.is_stashfs(str(n.mp)):
            mountctl("umount", str(n.mp), env=n.env, check=False)
    finally:
        force_unmount(n.mp)
        shutil.rmtree(base, ignore_errors=True)


def test_exec_mounts_on_demand_and_reuses_the_mount(node):
    write = 'echo one > "$STASHFS_PIPELINE_DIR/out.txt" && echo "$STASHFS_PIPELINE_DIR"'
    p = node.exec("--pipeline", "p1", "--", "sh", "-c", write)
    assert p.returncode == 0, p.stderr
    assert p.stderr == node.mounted_line()  # one line, and only because it mounted
    assert p.stdout == f"{node.mp}/pipeline/p1\n"
    assert node.backend.get_range("pipeline/p1/out.txt", 0) == b"one\n"
    assert stashfs_entries(node.mp) == 1
    pid = node.pid()

    # The daemon outlived the command; the next job uses its mount.
    p = node.exec("--pipeline", "p1", "--", "sh", "-c", 'cat "$STASHFS_PIPELINE_DIR/out.txt"')
    assert (p.returncode, p.stdout, p.stderr) == (0, "one\n", "")
    p = node.exec("--pipeline", "p2", "--", "sh", "-c", 'echo two > "$STASHFS_PIPELINE_DIR/out.txt"')
    assert (p.returncode, p.stderr) == (0, "")
    assert node.backend.get_range("pipeline/p2/out.txt", 0) == b"two\n"
    assert node.pid() == pid and stashfs_entries(node.mp) == 1

    # umount without an argument: the configured mount point.
    p = mountctl("umount", env=node.env, check=False)
    assert p.returncode == 0, p.stderr
    assert stashfs_entries(node.mp) == 0 and not alive(pid)


def test_concurrent_execs_start_one_daemon(node):
    procs = [node.start_exec("--pipeline", f"c{i}", "--", "sh", "-c", f'echo {i} > "$STASHFS_PIPELINE_DIR/n"')
             for i in range(4)]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
        results.append((proc.returncode, err))
    assert [rc for rc, _ in results] == [0] * 4, results
    assert sum(err.count("mountctl: mounted") for _, err in results) == 1, results
    assert stashfs_entries(node.mp) == 1
    for i in range(4):
        assert node.backend.get_range(f"pipeline/c{i}/n", 0) == f"{i}\n".encode()


@pytest.mark.parametrize("node", ["disk"], indirect=True)
def test_exec_refuses_a_pipeline_of_another_user(node, other_user_python):
    """root's pipeline: user nobody gets one line and the command does not run."""
    assert node.exec("--pipeline", "mine", "--", "true").returncode == 0  # root claims it (mounting)
    home = node.base / "nobody"
    home.mkdir()
    os.chown(home, *NOBODY)
    env = dict(node.env, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"),
               STASHFS_MOUNTPOINT=str(node.mp))
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", other_user_python, "-m",
                        "mountctl", "exec", "--pipeline", "mine", "--", "sh", "-c", "echo ran"],
                       env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
    assert (p.returncode, p.stdout, p.stderr) == (1, "", "mountctl: pipeline mine belongs to another user\n")


@pytest.mark.parametrize("node", ["disk"], indirect=True)
def test_exec_without_a_configured_backend_does_not_mount(node):
    env = {k: v for k, v in node.env.items() if k != "STASHFS_BACKEND"}
    p = node.exec("--pipeline", "p1", "--mount", str(node.mp), "--", "true", env=env)
    assert p.returncode == 2 and p.stderr == "mountctl: --mount: not a stashfs mount (the path is not shown)\n"
    assert not node.mp.exists()


# -- the fstab line, through mount(8) and mount.fuse3


class Namespace(PrivateNamespace):
    """A private mount namespace whose /usr/local/sbin holds a `stashfs` link to .venv/bin/stashfs.

    mount(8) passes no PATH to its helpers: mount.fuse3 runs `stashfs` through /bin/sh with the
    default PATH, where `make install` puts it (/usr/local/bin).  Binding a directory over
    /usr/local/sbin (also on that PATH, empty on Debian) in a namespace of its own does the same
    without changing the machine; its mounts are invisible outside."""

    def __init__(self, tmp_path: Path):
        sbin = tmp_path / "sbin"
        sbin.mkdir()
        (sbin / "stashfs").symlink_to(BIN / "stashfs")
        super().__init__('mount --bind "$1" /usr/local/sbin', (sbin,))

    def stashfs_entries(self, mp: Path) -> int:
        return stashfs_entries(mp, self.mountinfo)


@pytest.fixture
def namespace(tmp_path):
    ns = open_namespace(Namespace, tmp_path)
    mps = []
    ns.mps = mps
    yield ns
    try:
        for mp in mps:
            if ns.stashfs_entries(mp):
                ns.run(BIN / "mountctl", "umount", mp)
            ns.run("fusermount3", "-u", "-z", mp)
    finally:
        ns.close()


@pytest.mark.parametrize("kind", ["disk", "s3"])
def test_fstab_line_through_mount(kind, namespace, request, tmp_path):
    url, env = backend_env(kind, request, tmp_path)
    mp = tmp_path / "mnt"
    mp.mkdir()
    namespace.mps.append(mp)
    log = tmp_path / "daemon.log"
    # The documented line: source `stashfs` takes the configured backend ($STASHFS_BACKEND here,
    # which mount(8) passes on, like the AWS_* variables), plus generic options to ignore.
    options = ("defaults,_netdev,nofail,noatime,x-systemd.mount-timeout=30,allow_other,"
               f"cache_dir={tmp_path / 'cache'},log_file={log},metadata_ttl=2")
    if kind == "s3":
        options += f",endpoint_url={env['AWS_ENDPOINT_URL']}"
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# a comment\nstashfs {mp} fuse.stashfs {options} 0 0\n")
    env = dict(env, STASHFS_BACKEND=url)

    p = namespace.run("mount", "-T", fstab, mp, env=env)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert namespace.stashfs_entries(mp) == 1 and stashfs_entries(mp) == 0  # private to the namespace
    inside = namespace.path(mp)
    (inside / "pipeline" / "p").mkdir()
    (inside / "pipeline" / "p" / "f").write_bytes(b"through fstab")
    assert backend_of(url, env).get_range("pipeline/p/f", 0) == b"through fstab"
    assert (inside / "pipeline" / "p" / "f").read_bytes() == b"through fstab"
    with open(f"/proc/{namespace.holder.pid}/mountinfo") as f:
        assert any(f" {mp} " in line and "allow_other" in line for line in f)
    status = json.loads(os.getxattr(inside / ".stashfs-control", "user.stashfs.status"))
    assert status["cache_dir"] == str(tmp_path / "cache")

    # `mount -a` finds it mounted (same source, "stashfs"); mounting it again is one line.
    p = namespace.run("mount", "-a", "-T", fstab, env=env)
    assert (p.returncode, p.stderr) == (0, "")
    p = namespace.run("mount", "-T", fstab, mp, env=env)
    assert p.returncode != 0 and p.stderr == f"stashfs: {mp} is already mounted\n"
    assert namespace.stashfs_entries(mp) == 1

    p = namespace.run(BIN / "mountctl", "umount", mp, env=env)
    assert p.returncode == 0, p.stderr
    assert namespace.stashfs_entries(mp) == 0
    assert "Traceback" not in log.read_text()


def test_fstab_helper_options(tmp_path):
    from mountctl.fstab import parse_options

    assert parse_options(["rw,defaults,dev,suid,nofail,_netdev,x-systemd.automount,allow_other",
                          "ro,org_group=staff,cache_dir=/var/cache/stashfs,memory_limit=1G"]) == {
        "allow_other": True, "read_only": True, "org_group": "staff", "cache_dir": "/var/cache/stashfs",
        "memory_limit": "1G"}
    # s3fs's and mountpoint-s3's spellings: the owner and mode shown for objects of other tools
    assert parse_options(["rw,nofail,uid=1000,gid=100", "file_mode=0644,dir_mode=0o755"]) == {
        "uid": "1000", "gid": "100", "file_mode": "0644", "dir_mode": "0o755"}
    mp = tmp_path / "mnt"
    mp.mkdir()
    for opts, message in [("allow_other,default_permissions", "unknown mount option 'default_permissions'"),
                          ("org_group", "mount option org_group needs a value"),
                          ("ro=1", "unknown mount option 'ro=1'")]:
        p = subprocess.run([BIN / "stashfs", str(tmp_path / "be"), str(mp), "-o", opts],
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert p.returncode == 2 and p.stderr.startswith(f"stashfs: {message}") and p.stderr.count("\n") == 1
    p = subprocess.run([BIN / "stashfs", str(tmp_path / "be"), str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert (p.returncode, p.stderr) == (1, f"stashfs: mount point {tmp_path / 'missing'} does not exist\n")
    env = {k: v for k, v in os.environ.items() if k != "STASHFS_BACKEND"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "no-config")
    p = subprocess.run([BIN / "stashfs", "stashfs", str(mp)], env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 1 and p.stderr.startswith("stashfs: source stashfs: no backend configured")
    assert not mounts.is_stashfs(str(mp))


# -- systemd: Type=notify readiness of `mountctl mount --foreground`


def test_foreground_mount_notifies_systemd(tmp_path):
    require_fuse()
    mp, backend_dir = tmp_path / "mnt", tmp_path / "backend"
    mp.mkdir()
    backend_dir.mkdir()  # a configured local backend must exist (mountctl refuses a mistyped path)
    config = tmp_path / "config" / "stashfs"
    config.mkdir(parents=True)
    (config / "config.toml").write_text(f'[mount]\nmountpoint = "{mp}"\nbackend = "{backend_dir}"\n')
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    log = tmp_path / "daemon.log"
    # What the unit runs: mount point and backend from the config file.
    proc = subprocess.Popen([BIN / "mountctl", "mount", "--foreground", "--cache-dir", tmp_path / "cache",
                             "--log-file", log], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        message = ""
        deadline = time.monotonic() + 30
        while "READY=1" not in message:
            left = deadline - time.monotonic()
            assert left > 0, "no READY=1 within 30 s"
            if select.select([sock], [], [], min(left, 0.5))[0]:
                message = sock.recv(4096).decode()
            assert proc.poll() is None, f"exited with {proc.returncode}: {proc.stderr.read().decode()}"
        # The main pid is the daemon itself (mountctl exec'd it), as Type=notify expects.
        assert f"MAINPID={proc.pid}" in message.split("\n")
        assert stashfs_entries(mp) == 1
        (mp / "pipeline" / "svc").mkdir()
        (mp / "pipeline" / "svc" / "f").write_bytes(b"under systemd")
        assert (backend_dir / "pipeline" / "svc" / "f").read_bytes() == b"under systemd"

        proc.send_signal(signal.SIGTERM)  # systemctl stop without ExecStop
        assert proc.wait(TIMEOUT) == 0
        assert stashfs_entries(mp) == 0
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        proc.stderr.close()
        sock.close()
        force_unmount(mp)
