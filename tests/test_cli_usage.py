"""mountctl's refusals and command-line conveniences (issue 14, issue 13 item 4): bad values exit 2
with one line naming them, before any daemon starts; dead mounts are detached; progress only on a
terminal; the counters in Prometheus format."""

import fcntl
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from fsdriver.access import login_name

from .mounting import force_unmount, make_mount, mountctl, require_fuse

TIMEOUT = 60


@pytest.fixture(autouse=True)
def _no_mount_left(tmp_path):
    """Most tests here expect a refusal: should a mount happen all the same (the refusal broke),
    it must not outlive the test."""
    yield
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[2].startswith("fuse")]
    for point in points:
        if point.startswith(str(tmp_path) + "/"):
            force_unmount(Path(point))


def one_line(p: subprocess.CompletedProcess, status: int, *words: str, prog: str = "mountctl") -> str:
    err = p.stderr if isinstance(p.stderr, str) else p.stderr.decode()
    assert p.returncode == status and err.count("\n") == 1 and err.startswith(f"{prog}: "), (p.returncode, err)
    for w in words:
        assert w in err, err
    return err


def clean_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STASHFS_")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "no-config"), **extra}


@pytest.mark.parametrize("args,words", [
    (["--memory-limit", "lots"], ["--memory-limit 'lots'", "not a size"]),
    (["--memory-limit", "1M"], ["--memory-limit '1M'", "at least 8M"]),
    (["--metadata-ttl", "0"], ["--metadata-ttl '0'", "positive"]),
    (["--backend-timeout", "soon"], ["--backend-timeout 'soon'"]),
    (["--log-level", "NOPE"], ["--log-level 'NOPE'", "DEBUG"]),
    (["--backend", "s3://"], ["--backend 's3://'", "no bucket"]),
    (["--backend", "ftp://host/x"], ["--backend 'ftp://host/x'", "unknown scheme"]),
    (["--endpoint-url", "localhost:9000"], ["--endpoint-url 'localhost:9000'"]),
    (["--uid", "-1"], ["--uid '-1'", "non-negative"]),
    (["--gid", "staff"], ["--gid 'staff'", "numeric"]),
    (["--uid", "4294967295"], ["--uid '4294967295'", "out of range"]),
    (["--file-mode", "0o8"], ["--file-mode '0o8'", "octal"]),
    (["--dir-mode", "17777"], ["--dir-mode '17777'", "at most 7777"]),
    (["--file-mode", "rw-r--r--"], ["--file-mode 'rw-r--r--'", "octal"]),
])
def test_mount_usage_errors_exit_2_before_any_daemon(tmp_path, args, words):
    (tmp_path / "mp").mkdir()
    p = mountctl("mount", str(tmp_path / "mp"), *args, env=clean_env(tmp_path), check=False, timeout=TIMEOUT)
    one_line(p, 2, *words)
    assert not os.path.ismount(tmp_path / "mp")


def test_the_daemon_and_the_fstab_helper_check_the_same_options(tmp_path):
    (tmp_path / "mp").mkdir()
    env = clean_env(tmp_path)
    p = subprocess.run([sys.executable, "-m", "fsdriver", str(tmp_path / "mp"), "--metadata-ttl", "-1"],
                       env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 2 and "--metadata-ttl '-1'" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "mountctl.fstab", str(tmp_path), str(tmp_path / "mp"),
                        "-o", "allow_other,memory_limit=lots"], env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    one_line(p, 2, "memory_limit= 'lots'", prog="stashfs")


def test_a_bad_value_in_the_config_file_is_named(tmp_path):
    cfg = tmp_path / "config" / "stashfs"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text('[mount]\nmemory_limit = "lots"\n')
    (tmp_path / "mp").mkdir()
    env = clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))
    p = mountctl("mount", str(tmp_path / "mp"), env=env, check=False, timeout=TIMEOUT)
    one_line(p, 2, "[mount] memory_limit in the config file 'lots'")


def test_status_fails_on_a_broken_config_file(tmp_path):
    cfg = tmp_path / "config" / "stashfs"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text("[mount\n")
    p = mountctl("status", "--json", env=clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config")),
                 check=False, timeout=TIMEOUT)
    one_line(p, 1, "cannot read the configuration")
    assert isinstance(json.loads(p.stdout), list)  # the mounts are still listed


def test_a_missing_local_backend_is_refused_unless_create(tmp_path):
    require_fuse()
    mp, missing = tmp_path / "mp", tmp_path / "typo-store"
    mp.mkdir()
    env = clean_env(tmp_path)
    p = mountctl("mount", str(mp), "--backend", str(missing), env=env, check=False, timeout=TIMEOUT)
    one_line(p, 2, f"backend directory {missing} does not exist", "--create")
    assert not missing.exists() and not os.path.ismount(mp)
    p = subprocess.run([sys.executable, "-m", "mountctl.fstab", str(missing), str(mp)], env=env,
                       capture_output=True, text=True, timeout=TIMEOUT)
    one_line(p, 2, "does not exist", "-o create", prog="stashfs")
    assert not missing.exists()
    m = make_mount(tmp_path, f"file://{missing}", env, name="created", extra=["--create"])
    shutil.rmtree(missing)  # make_mount creates it, as a real store exists: this one must not
    try:
        m.mount()
        assert missing.is_dir() and os.path.ismount(m.path)
    finally:
        m.umount()
        force_unmount(m.path)


def test_exec_refuses_a_missing_local_backend(tmp_path):
    require_fuse()
    missing = tmp_path / "typo-store"
    cfg = tmp_path / "config" / "stashfs"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text(f'[mount]\nmountpoint = "{tmp_path / "mnt"}"\nbackend = "{missing}"\n')
    env = clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"),
                    STASHFS_ORG_SECRETS_DIR=str(tmp_path / "org"), XDG_DATA_HOME=str(tmp_path / "data"))
    p = mountctl("exec", "--pipeline", "p1", "--", "true", env=env, check=False, timeout=TIMEOUT)
    one_line(p, 2, f"backend directory {missing} does not exist", "--create")
    assert not missing.exists()


def test_umount_detaches_a_mount_whose_daemon_died(tmp_path):
    require_fuse()
    m = make_mount(tmp_path, str(tmp_path / "be"), dict(os.environ))
    m.mount()
    try:
        m.kill_daemon()
        p = mountctl("umount", str(m.path), env=m.env, check=False, timeout=TIMEOUT)
        one_line(p, 0, "detached", "daemon had exited")
        assert not os.path.ismount(m.path)
        m.mounted = False
    finally:
        force_unmount(m.path)


def test_umount_detaches_a_dead_mount_whose_root_still_answers_stat(tmp_path, monkeypatch, capsys):
    """Right after a kill -9, `stat` of the mount point can still succeed (the kernel answers it
    from the attributes it cached), so the mount does not look dead; the status request that
    follows then fails with ENOTCONN.  umount said "the daemon does not answer" and left the mount
    for a second try: it now detaches it as a dead one."""
    import argparse

    from mountctl import mount_cmd, spawn

    require_fuse()
    m = make_mount(tmp_path, str(tmp_path / "be"), dict(os.environ))
    m.mount()
    try:
        m.kill_daemon()
        monkeypatch.setattr(spawn, "is_dead", lambda mp: False)  # what a cached stat shows
        assert mount_cmd.cmd_umount(argparse.Namespace(mountpoint=str(m.path))) == 0
        assert "daemon had exited" in capsys.readouterr().err
        assert not os.path.ismount(m.path)
        m.mounted = False
    finally:
        force_unmount(m.path)


def test_umount_and_flush_without_argument_take_the_only_mount(tmp_path):
    """``make mount`` mounts at ~/stashfs; the configured default is /mnt/stashfs.  In a private
    mount namespace with only our mount, umount and flush without an argument find it."""
    require_fuse()
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private mount namespace")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "be").mkdir()
    script = tmp_path / "inside.py"
    script.write_text(f"""
import subprocess, sys
from mountctl import mounts
for m in mounts.stashfs_mounts():  # copies of other mounts: detached here only
    subprocess.run(["umount", "-l", m.mountpoint], capture_output=True)
run = lambda *a: subprocess.run([sys.executable, "-m", "mountctl", *a], capture_output=True, text=True)
p = run("mount", "{tmp_path / 'mnt'}", "--backend", "{tmp_path / 'be'}", "--cache-dir", "{tmp_path / 'cache'}")
assert p.returncode == 0, p.stderr
f, u = run("flush"), run("umount")
print(f.returncode, repr(f.stderr), u.returncode, repr(u.stderr), mounts.is_stashfs("{tmp_path / 'mnt'}"))
""")
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, str(script)],
                       env=clean_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["0", "''", "0", "''", "False"], (p.stdout, p.stderr)


def test_status_prometheus(tmp_path):
    require_fuse()
    m = make_mount(tmp_path, str(tmp_path / "be"), dict(os.environ))
    m.mount()
    try:
        (m.path / "pipeline" / "prom").mkdir()
        textfile = tmp_path / "stashfs.prom"
        p = mountctl("status", "--prometheus", "--textfile", str(textfile), env=m.env, timeout=TIMEOUT)
        assert p.stdout == textfile.read_text()
        mine = f'mountpoint="{m.path}"'
        lines = p.stdout.splitlines()
        assert f'stashfs_up{{{mine},backend="file://{tmp_path / "be"}"}} 1' in lines
        assert f'stashfs_requests_total{{{mine},op="mkdir"}} 1' in lines
        assert f'stashfs_memory_limit_bytes{{{mine}}} {512 << 20}' in lines
        assert f'stashfs_memory_overdrawn_total{{{mine}}} 0' in lines
        if os.geteuid() == 0:  # the daemon set it (--readahead's default) and reads it back
            assert f'stashfs_kernel_readahead_bytes{{{mine}}} {1 << 20}' in lines
            assert "kernel read-ahead 1.0 MiB" in mountctl("status", env=m.env, timeout=TIMEOUT).stdout
        assert "# TYPE stashfs_requests_total counter" in lines
        for line in lines:  # the exposition format: comments, or name{labels} value
            assert line.startswith("# ") or re.fullmatch(r'[a-z_]+\{[^}]*\} [0-9.e+-]+', line), line
    finally:
        m.umount()
        force_unmount(m.path)


def _on_a_terminal(args, env) -> tuple[int, bytes]:
    """Run mountctl with stderr on a pseudo-terminal; (status, what it wrote there)."""
    master, slave = pty.openpty()
    # A new pseudo-terminal has 0 columns: give it a real terminal's size.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "mountctl", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    out = b""
    try:
        # The slave stays open here until the end: reading never races the child's exit.
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None or select.select([master], [], [], 0)[0]:
            assert time.monotonic() < deadline, "mountctl did not finish"
            if select.select([master], [], [], 0.1)[0]:
                out += os.read(master, 65536)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(slave)
        os.close(master)
    return proc.returncode, out


def test_transfers_show_progress_on_a_terminal_only(tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(64 << 20))
    (tmp_path / "be").mkdir()
    env = clean_env(tmp_path, STASHFS_BACKEND=str(tmp_path / "be"))
    code, err = _on_a_terminal(["data", "put", "big.bin", str(src), "--pipeline", "p1"], env)
    assert code == 0 and b"put big.bin" in err and b"64.0M" in err and b"B/s" in err, err
    code, err = _on_a_terminal(["data", "get", "big.bin", str(tmp_path / "copy"), "--pipeline", "p1"], env)
    assert code == 0 and b"get big.bin" in err and b"64.0M" in err, err
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()
    p = subprocess.run([sys.executable, "-m", "mountctl", "data", "put", "again.bin", str(src), "--pipeline", "p1"],
                       env=env, capture_output=True, timeout=TIMEOUT)
    assert (p.returncode, p.stderr) == (0, b"")  # not a terminal: nothing


def test_data_put_to_a_missing_bucket_is_one_line(tmp_path, moto_server):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=moto_server.url)
    p = mountctl("data", "put", "f", str(src), "--pipeline", "p1", "--backend", "s3://no-such-bucket",
                 env=env, check=False, timeout=TIMEOUT)
    one_line(p, 1, "bucket 'no-such-bucket' does not exist")
    p = mountctl("data", "put", "f", str(src), "--pipeline", "p1", "--backend", "s3://b",
                 env=dict(env, AWS_ENDPOINT_URL="http://127.0.0.1:9"), check=False, timeout=TIMEOUT)
    one_line(p, 1, "cannot reach S3")
    p = mountctl("data", "put", "f", str(src), "--pipeline", "p1", "--backend", "s3://b",
                 env=dict(env, AWS_PROFILE="no-such-profile"), check=False, timeout=TIMEOUT)
    one_line(p, 1, "no-such-profile", "AWS_PROFILE")
    assert "internal error" not in p.stderr


def test_datastore_reports_a_missing_bucket_as_missing(moto_server):
    from fsdriver.backend.s3 import S3Backend
    from fsdriver.errors import BucketNotFound
    from fsdriver.kv import DataStore

    ds = DataStore("crm", backend=S3Backend("no-such-bucket-kv", "", endpoint_url=moto_server.url))
    with pytest.raises(BucketNotFound, match="does not exist"):
        ds.get("x")
    with pytest.raises(BucketNotFound):
        ds["x"] = 1


def test_empty_values_in_the_config_file_mean_not_set(tmp_path):
    """Review finding: `endpoint_url = ""` (the example in fsdriver/config.py) made every mountctl
    command exit 2; the Python API reads it as "not set", and so must the mount."""
    from fsdriver.mountconfig import MountConfig

    conf = tmp_path / "no-config" / "stashfs"
    conf.mkdir(parents=True)
    (conf / "config.toml").write_text('[mount]\nendpoint_url = ""\nbackend = ""\n')
    env = clean_env(tmp_path)
    p = mountctl("status", env=env, check=False, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    saved = dict(os.environ)
    try:
        os.environ.update({"XDG_CONFIG_HOME": env["XDG_CONFIG_HOME"]})
        cfg = MountConfig.load()
        assert cfg.endpoint_url is None and cfg.backend is None
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_exec_without_mounting_ignores_options_only_mounting_uses(tmp_path):
    """Review finding: a bad memory_limit in [mount] made a secrets-only `mountctl exec` exit 2.
    The configured mount point is still read (other tests' mounts may be on the machine: exec
    takes the one at the configured mount point, and refuses to guess among several)."""
    require_fuse()
    m = make_mount(tmp_path, str(tmp_path / "be"), dict(os.environ))
    m.mount()
    try:
        conf = tmp_path / "no-config" / "stashfs"
        conf.mkdir(parents=True)
        (conf / "config.toml").write_text(f'[mount]\nmountpoint = "{m.path}"\nmemory_limit = "1X"\n')
        env = clean_env(tmp_path, HOME=str(tmp_path), XDG_STATE_HOME=str(tmp_path / "state"),
                        STASHFS_ORG_SECRETS_DIR=str(tmp_path / "org"))
        p = mountctl("exec", "--", "sh", "-c", 'echo "$STASHFS_USER_DIR"', env=env, check=False, timeout=TIMEOUT)
        assert (p.returncode, p.stderr, p.stdout) == (0, "", f"{m.path}/user/{login_name()}\n")
    finally:
        m.umount()
        force_unmount(m.path)


# -- owner and mode shown for objects without attributes of their own (issue 11)


@pytest.mark.parametrize("text,mode", [("644", 0o644), ("0644", 0o644), ("0o644", 0o644), ("0O755", 0o755),
                                       ("7777", 0o7777), ("0", 0), (" 0750 ", 0o750)])
def test_modes_are_octal_in_every_spelling(text, mode):
    from fsdriver.mountconfig import MountConfig

    assert MountConfig.load({"file_mode": text, "dir_mode": text}).file_mode == mode
    assert MountConfig.load({"dir_mode": text}).dir_mode == mode


def test_owner_and_mode_options_reach_the_daemon_unchanged(tmp_path, monkeypatch):
    """Given on mountctl's command line or in [mount], the values arrive in the daemon's own parse
    of the command line mountctl starts it with (modes passed on in octal, not as 420)."""
    from fsdriver.daemon import build_parser
    from fsdriver.mountconfig import MountConfig, given

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    cfg = MountConfig.load({"uid": "1000", "gid": "0", "file_mode": "0644", "dir_mode": "0o2775"})
    assert (cfg.uid, cfg.gid, cfg.file_mode, cfg.dir_mode) == (1000, 0, 0o644, 0o2775)
    argv = cfg.argv()
    assert argv[argv.index("--file-mode") + 1] == "0644" and argv[argv.index("--dir-mode") + 1] == "2775"
    assert argv[argv.index("--gid") + 1] == "0"  # root's group is a value, not "not set"
    assert MountConfig.load(given(build_parser().parse_args(argv))) == cfg
    unset = MountConfig.load()
    assert (unset.uid, unset.gid, unset.file_mode, unset.dir_mode) == (None, None, None, None)
    assert not {"--uid", "--gid", "--file-mode", "--dir-mode"} & set(unset.argv())

    conf = tmp_path / "no-config" / "stashfs"
    conf.mkdir(parents=True)
    (conf / "config.toml").write_text('[mount]\nuid = 1001\ngid = "100"\nfile_mode = "640"\ndir_mode = "0750"\n')
    cfg = MountConfig.load()
    assert (cfg.uid, cfg.gid, cfg.file_mode, cfg.dir_mode) == (1001, 100, 0o640, 0o750)
    cfg = MountConfig.load({"uid": "7"})  # the command line over the config file
    assert (cfg.uid, cfg.gid) == (7, 100)


def test_a_mode_written_as_a_toml_number_is_refused(tmp_path):
    """``file_mode = 644`` in TOML is the decimal 644 (0o1204): only a string can say octal."""
    conf = tmp_path / "config" / "stashfs"
    conf.mkdir(parents=True)
    (conf / "config.toml").write_text("[mount]\nfile_mode = 644\n")
    (tmp_path / "mp").mkdir()
    p = mountctl("mount", str(tmp_path / "mp"), env=clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config")),
                 check=False, timeout=TIMEOUT)
    one_line(p, 2, "[mount] file_mode in the config file 644", 'quoted: "0644"')
    assert not os.path.ismount(tmp_path / "mp")


@pytest.mark.parametrize("option,words", [("uid=-5", ["uid= '-5'", "non-negative"]),
                                          ("gid=wheel", ["gid= 'wheel'", "numeric"]),
                                          ("file_mode=0999", ["file_mode= '0999'", "octal"]),
                                          ("dir_mode=u+rwx", ["dir_mode= 'u+rwx'", "octal"]),
                                          ("dir_mode", ["mount option dir_mode needs a value"])])
def test_the_fstab_helper_refuses_bad_owner_and_mode_options(tmp_path, option, words):
    (tmp_path / "mp").mkdir()
    p = subprocess.run([sys.executable, "-m", "mountctl.fstab", str(tmp_path), str(tmp_path / "mp"),
                        "-o", f"rw,allow_other,{option}"], env=clean_env(tmp_path), capture_output=True,
                       text=True, timeout=TIMEOUT)
    one_line(p, 2, *words, prog="stashfs")
    assert not os.path.ismount(tmp_path / "mp")


@pytest.mark.parametrize("args,expected", [
    (["--uid", "1234", "--gid", "0", "--file-mode", "640", "--dir-mode", "0o2750"], (1234, 0, 0o640, 0o2750)),
    ([], (None, None, None, None)),
])
def test_the_daemon_hands_the_owner_and_mode_options_to_the_core(tmp_path, monkeypatch, args, expected):
    """What the daemon parses reaches the core's `Options` (None: not set, the namespace's own)."""
    import logging

    from fsdriver import daemon

    class Built(Exception):
        pass

    def filesystem(backend, cache, options):
        backend.close()
        cache.close()
        raise Built(options)

    monkeypatch.setattr(daemon, "Filesystem", filesystem)
    monkeypatch.setattr(daemon, "raise_descriptor_limit", lambda: None)
    monkeypatch.setattr(daemon.allocator, "configure", lambda: None)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    root, ours = logging.getLogger(), logging.getLogger("stashfs")
    handlers, levels = list(root.handlers), (root.level, ours.level)
    try:
        with pytest.raises(Built) as built:
            daemon.main([str(tmp_path / "mp"), "--backend", str(tmp_path / "be"), "--create",
                         "--cache-dir", str(tmp_path / "cache"), "--log-file", str(tmp_path / "log"), *args])
    finally:
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
    options = built.value.args[0]
    assert (options.default_uid, options.default_gid, options.file_mode, options.dir_mode) == expected


# -- user trial findings: what was wrong, named on one line


def _path_cases(tmp_path: Path) -> list:
    """(option, value, reason): paths mountctl cannot make, and why, as it says it."""
    (tmp_path / "a-file").write_text("x")
    return [
        ("log_file", f"{tmp_path}/no-dir/log", f"cannot create it: no directory {tmp_path}/no-dir"),
        ("log_file", str(tmp_path), "is a directory"),
        ("cache_dir", str(tmp_path / "a-file"), "not a directory"),
        ("cache_dir", f"{tmp_path}/a-file/cache", f"{tmp_path}/a-file is not a directory"),
        ("cache_dir", "/proc/stashfs-no-such-dir", "cannot create it: No such file or directory"),
    ]


def test_path_options_that_cannot_be_made_exit_2_naming_the_option(tmp_path):
    """User trial: `--log-file /nonexistent/dir/log` exited 1 with "No such file or directory:
    <path>" (the option not named), `--cache-dir /proc/x` exited 1 with Python's repr of the
    error from the daemon.  Now each is a bad value: one line naming the option, the path and the
    reason, exit 2, before any daemon starts; from the command line, the config file and an fstab
    line alike."""
    require_fuse()
    mp, be = tmp_path / "mp", tmp_path / "be"
    mp.mkdir()
    be.mkdir()
    for name, value, reason in _path_cases(tmp_path):
        option = "--" + name.replace("_", "-")
        p = mountctl("mount", str(mp), "--backend", str(be), option, value, env=clean_env(tmp_path), check=False,
                     timeout=TIMEOUT)
        assert (p.returncode, p.stderr) == (2, f"mountctl: {option} {value!r}: {reason}\n"), p.stderr
        conf = tmp_path / f"config-{name}" / "stashfs"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "config.toml").write_text(f'[mount]\nbackend = "{be}"\n{name} = "{value}"\n')
        p = mountctl("mount", str(mp), env=clean_env(tmp_path, XDG_CONFIG_HOME=str(conf.parent)), check=False,
                     timeout=TIMEOUT)
        assert (p.returncode, p.stderr) == (2, f"mountctl: [mount] {name} in the config file {value!r}: {reason}\n")
        p = subprocess.run([sys.executable, "-m", "mountctl.fstab", str(be), str(mp), "-o", f"{name}={value}"],
                           env=clean_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
        assert (p.returncode, p.stderr) == (2, f"stashfs: {name}= {value!r}: {reason}\n")
        assert not os.path.ismount(mp)
    assert not (tmp_path / "no-dir").exists()  # the missing directory is named, not created


def test_exec_names_a_bad_log_file_before_mounting_on_demand(tmp_path):
    require_fuse()
    (tmp_path / "be").mkdir()
    conf = tmp_path / "config" / "stashfs"
    conf.mkdir(parents=True)
    log = f"{tmp_path}/no-dir/log"
    (conf / "config.toml").write_text(f'[mount]\nmountpoint = "{tmp_path / "mnt"}"\nbackend = "{tmp_path / "be"}"\n'
                                      f'log_file = "{log}"\n')
    env = clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"), STASHFS_ORG_SECRETS_DIR=str(tmp_path / "org"),
                    XDG_STATE_HOME=str(tmp_path / "state"))
    p = mountctl("exec", "--pipeline", "p1", "--", "touch", str(tmp_path / "ran"), env=env, check=False,
                 timeout=TIMEOUT)
    assert (p.returncode, p.stderr) == (
        2, f"mountctl: [mount] log_file in the config file {log!r}: cannot create it: no directory {tmp_path}/no-dir\n")
    assert not (tmp_path / "ran").exists() and not os.path.ismount(tmp_path / "mnt")


def test_the_daemon_names_a_cache_dir_it_cannot_make_without_a_repr(tmp_path):
    """Started directly (as systemd's unit does through `mountctl mount --foreground`, or should
    mountctl's check be passed by a race), the daemon says the path and the reason."""
    (tmp_path / "be").mkdir()
    (tmp_path / "mp").mkdir()
    (tmp_path / "a-file").write_text("x")
    p = subprocess.run([sys.executable, "-m", "fsdriver", str(tmp_path / "mp"), "--backend", str(tmp_path / "be"),
                        "--cache-dir", str(tmp_path / "a-file")], env=clean_env(tmp_path), capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert p.returncode == 1 and "[Errno" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert f"cache dir {tmp_path / 'a-file'}: not a directory" in p.stderr, p.stderr


@pytest.mark.parametrize("args,stray", [
    (["mount", "{mp}", "--bogus"], "--bogus"),
    (["mount", "{mp}", "extra"], "extra"),
    (["status", "/path"], "/path"),
    (["status", "--bogus"], "--bogus"),
    (["umount", "{mp}", "--bogus"], "--bogus"),
    (["flush", "--bogus"], "--bogus"),
])
def test_unknown_options_of_mount_commands_are_named_with_their_usage(tmp_path, args, stray):
    """User trial: these printed the top-level usage and "1 unexpected argument(s), not shown (secret
    values are read from stdin...)": no secret goes near them, so the option is named."""
    (tmp_path / "mp").mkdir()
    args = [a.format(mp=tmp_path / "mp") for a in args]
    p = mountctl(*args, env=clean_env(tmp_path), check=False, timeout=TIMEOUT)
    assert p.returncode == 2 and p.stderr.startswith(f"usage: mountctl {args[0]} "), p.stderr
    assert p.stderr.splitlines()[-1] == f"mountctl {args[0]}: error: unrecognized arguments: {stray}"
    assert "not shown" not in p.stderr and not os.path.ismount(tmp_path / "mp")


@pytest.mark.parametrize("args,usage", [
    (["secrets", "set", "A", "{v}"], "mountctl secrets set"),
    (["secrets", "list", "{v}"], "mountctl secrets list"),
    (["secrets", "list", "--{v}"], "mountctl secrets list"),
    (["secrets", "get", "A", "--reveal", "{v}"], "mountctl secrets get"),
    (["exec", "--{v}", "--", "true"], "mountctl exec"),
    (["{v}"], "mountctl"),
])
def test_stray_arguments_near_secrets_are_never_repeated(tmp_path, args, usage):
    """What `secrets` and `exec` (and the top level) are given by mistake may be a secret: counted,
    never shown, with the usage of the command it was given to."""
    value = "sk-live-" + os.urandom(8).hex()
    args = [a.format(v=value) for a in args]
    p = mountctl(*args, env=clean_env(tmp_path, STASHFS_ORG_SECRETS_DIR=str(tmp_path / "org")), check=False,
                 timeout=TIMEOUT)
    assert p.returncode == 2 and value not in p.stderr and value not in p.stdout, p.stderr
    assert p.stderr.startswith(f"usage: {usage} "), p.stderr
    assert ("1 unexpected argument(s), not shown (secret values are read from stdin or a prompt, never from the "
            "command line)" in p.stderr or "invalid choice (not shown)" in p.stderr), p.stderr


def test_status_textfile_errors_name_the_given_path(tmp_path):
    """User trial: a --textfile in a missing directory was reported as `.stashfs-33v98jt7.prom.tmp`
    (the temp file written beside it)."""
    env = clean_env(tmp_path)
    target = f"{tmp_path}/no-dir/x.prom"
    p = mountctl("status", "--textfile", target, env=env, check=False, timeout=TIMEOUT)
    assert (p.returncode, p.stderr) == (2, f"mountctl: --textfile {target!r}: no directory {tmp_path}/no-dir\n")
    p = mountctl("status", "--textfile", str(tmp_path), env=env, check=False, timeout=TIMEOUT)
    assert (p.returncode, p.stderr) == (2, f"mountctl: --textfile {str(tmp_path)!r}: is a directory\n")
    assert [f for f in os.listdir(tmp_path) if f.startswith(".stashfs-")] == []  # no temp file left
