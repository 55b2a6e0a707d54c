"""`mountctl exec` and `mountctl secrets` beyond the basics: secret files (normal exit, SIGTERM,
SIGKILL), the access log, the short-value policy, bad values refused at `set`, unreadable org
secrets, and values never echoed. Real mountctl processes; values are generated per test."""

import hashlib
import json
import os
import secrets
import select
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .test_secrets import NOBODY, ctl, home, unprivileged  # noqa: F401  (fixtures)

TIMEOUT = 60


def fresh(n=20) -> str:
    return "v-" + secrets.token_urlsafe(n)


def run_ctl(*args, input=None, env=None, as_user=None):
    """mountctl, whatever its exit status (callers check for their own values in its output)."""
    return ctl(*args, input=input, env=env, as_user=as_user, check=False)


def assert_absent(values, *texts):
    for v in values:
        for t in texts:
            assert v not in (t.decode(errors="replace") if isinstance(t, bytes) else t), "a value was printed"


def files_base() -> Path:
    return Path(os.environ["XDG_RUNTIME_DIR"]) / "stashfs-secrets"


def exec_dirs() -> list:
    base = files_base()
    return sorted(p.name for p in base.iterdir() if p.name.startswith("exec-")) if base.is_dir() else []


def wait_exit(pid: int, timeout=TIMEOUT) -> None:
    """Waits, bounded, for a process that is not our child to end (a pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], timeout)[0], f"process {pid} still running after {timeout}s"
    finally:
        os.close(fd)


def readline(pipe, timeout=TIMEOUT) -> bytes:
    assert select.select([pipe], [], [], timeout)[0], "no output in time"
    return pipe.readline()


# -- bad values, refused at set, and nothing echoed


def test_set_refuses_nul_and_oversized_values_and_keeps_the_old_one(home):
    good = fresh()
    ctl("secrets", "set", "TOKEN", input=good)
    for bad in (fresh() + "\0" + fresh(), "x" * (200 * 1024)):
        p = run_ctl("secrets", "set", "TOKEN", input=bad)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert "NUL" in p.stderr or "bytes" in p.stderr
        assert_absent([bad[:20], bad[-20:]], p.stderr)
    assert ctl("secrets", "get", "TOKEN", "--reveal").stdout == good + "\n"
    code = "import os, hashlib; print(hashlib.sha256(os.environ['TOKEN'].encode()).hexdigest())"
    p = ctl("exec", "--no-mount", "--", sys.executable, "-c", code)
    assert p.stdout.strip() == hashlib.sha256(good.encode()).hexdigest()


def test_set_refuses_a_value_that_is_not_utf8_without_quoting_it(home):
    p = subprocess.run([sys.executable, "-m", "mountctl", "secrets", "set", "BIN"], input=b"ok\xff\xfe-" + os.urandom(8),
                       capture_output=True, timeout=TIMEOUT)
    assert p.returncode == 2 and p.stderr == b"mountctl: the value of BIN is not valid UTF-8\n"


def test_store_option_does_not_echo_its_value(home):
    value = fresh()
    for args in (["secrets", "list", "--store", value], ["secrets", "set", "A", f"--store={value}"],
                 ["exec", "--store", value, "--", "true"]):
        p = run_ctl(*args, input="x")
        assert p.returncode == 2 and "invalid choice" in p.stderr and value not in p.stderr


def test_values_typed_for_options_and_names_are_not_repeated(home):
    """Trial finding: exec --pipeline/--mount/--secret-file and secrets get/rm repeated what was
    typed (a token pasted in the wrong place is a valid name)."""
    value = "ghp_" + secrets.token_urlsafe(20).replace("-", "a")
    for args, code in ((["exec", "--pipeline", value + "!", "--", "true"], 2),
                       (["exec", "--mount", "/" + value, "--", "true"], 2),
                       (["exec", "--no-mount", "--secret-file", value, "--", "true"], 2),
                       (["secrets", "get", value, "--reveal"], 1), (["secrets", "rm", value], 1)):
        p = run_ctl(*args)
        assert p.returncode == code and p.stderr.count("\n") == 1, (args, p.stderr)
        assert_absent([value], p.stdout, p.stderr)


def test_the_stores_keys_never_reach_the_command(home):
    """Trial finding: with $STASHFS_SECRETS_KEY set (headless workers), `mountctl exec -- env`
    printed the key that decrypts every secret, unmasked."""
    import base64
    key = base64.b64encode(os.urandom(32)).decode()
    org_key = base64.b64encode(os.urandom(32)).decode()
    env = {**os.environ, "STASHFS_SECRETS_KEY": key, "STASHFS_ORG_SECRETS_KEY": org_key}
    value = fresh()
    ctl("secrets", "set", "HL_TOKEN", input=value, env=env)
    for flags in ([], ["--preserve-env"], ["--no-mask"]):
        p = run_ctl("exec", "--no-mount", *flags, "--", "env", env=env)
        assert p.returncode == 0, p.stderr
        assert "HL_TOKEN=" in p.stdout and "STASHFS_SECRETS_KEY" not in p.stdout, flags
        assert_absent([key, org_key], p.stdout, p.stderr)


def test_list_fails_when_a_store_cannot_be_decrypted(home):
    ctl("secrets", "set", "A", input=fresh())
    ctl("secrets", "set", "B", "--org", input=fresh())
    enc = home / "config" / "stashfs" / "secrets" / "user.enc"
    blob = bytearray(enc.read_bytes())
    blob[-3] ^= 1
    enc.write_bytes(bytes(blob))
    p = run_ctl("secrets", "list")
    assert p.returncode == 1 and "cannot decrypt" in p.stderr
    assert p.stdout.split() [:2] == ["org", "B"]  # what can be read is still listed


# -- short values


def test_short_values_warned_at_set_and_named_once_at_exec(home):
    short, long_ = secrets.token_hex(2) + "z", fresh()  # 5 bytes, and a maskable one
    p = ctl("secrets", "set", "PIN", input=short)
    assert "PIN is shorter than 6 bytes" in p.stderr and short not in p.stderr
    assert "warning" not in ctl("secrets", "set", "TOKEN", input=long_).stderr
    code = "import os; print(os.environ['TOKEN']); print(len(os.environ['PIN']))"
    p = ctl("exec", "--no-mount", "--", sys.executable, "-c", code)
    assert p.stdout == "****\n5\n"
    assert p.stderr == "mountctl: not masked in the output (shorter than 6 bytes): PIN\n"
    assert "not masked" not in ctl("exec", "--no-mount", "--no-mask", "--", "true").stderr


# -- org secrets a user may not read


def test_exec_runs_with_own_secrets_when_org_secrets_are_unreadable(home, unprivileged):
    org_value, mine = fresh(), fresh()
    ctl("secrets", "set", "ORG_TOKEN", "--org", input=org_value)
    ctl("secrets", "set", "MINE", input=mine, env=unprivileged, as_user=(*NOBODY, []))
    # sh, not this Python: the venv's interpreter need not be executable by user nobody.
    code = 'printf %s "$MINE" | sha256sum | cut -d" " -f1; [ -n "${ORG_TOKEN+x}" ] && echo True || echo False'
    p = ctl("exec", "--no-mount", "--", "sh", "-c", code, env=unprivileged, as_user=(*NOBODY, []), check=False)
    assert_absent([org_value, mine], p.stdout, p.stderr)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [hashlib.sha256(mine.encode()).hexdigest(), "False"]
    assert p.stderr.count("\n") == 1 and "org secrets not readable" in p.stderr
    # `list` shows the user's secrets and says why org ones are missing, without failing.
    p = ctl("secrets", "list", env=unprivileged, as_user=(*NOBODY, []), check=False)
    assert p.returncode == 0 and "MINE" in p.stdout and "permission denied" in p.stderr


# -- secret files


PRINT_FILE_AND_WAIT = """
import os, sys
path = os.environ["STASHFS_SECRET_FILE_DB_PASSWORD"]
print(os.getpid(), path, "DB_PASSWORD" in os.environ, flush=True)
sys.stdin.readline()
print(open(path).read(), flush=True)
"""


def start_exec(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "mountctl", "exec", "--no-mount", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or dict(os.environ))


def check_file(path: str, value: str) -> None:
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert Path(path).read_text() == value
    assert Path(path).parent.parent == files_base()


@pytest.mark.parametrize("flags", [["--secret-files"], ["--secret-file", "DB_PASSWORD"],
                                   ["--secret-file", "DB_PASSWORD", "--no-mask"]])
def test_secret_files_exist_for_the_command_only(home, flags):
    value, other = fresh(), fresh()
    ctl("secrets", "set", "DB_PASSWORD", input=value)
    ctl("secrets", "set", "OTHER", input=other)
    proc = start_exec(*flags, "--", sys.executable, "-c", PRINT_FILE_AND_WAIT)
    try:
        pid, path, in_env = readline(proc.stdout).split()
        assert in_env == b"False"  # a file instead of the variable, not both
        check_file(path.decode(), value)
        out, err = proc.communicate(b"go\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == (value.encode() if "--no-mask" in flags else b"****") + b"\n"
    assert_absent([value, other], err)
    assert not os.path.exists(path) and exec_dirs() == []


def test_secret_files_removed_when_exec_gets_sigterm(home):
    value = fresh()
    ctl("secrets", "set", "DB_PASSWORD", input=value)
    proc = start_exec("--secret-files", "--", sys.executable, "-c", PRINT_FILE_AND_WAIT)
    try:
        _, path, _ = readline(proc.stdout).split()
        check_file(path.decode(), value)
        proc.send_signal(signal.SIGTERM)  # forwarded: the command ends, then exec cleans up
        # Wait with stdin still open: communicate() would close it first, and the command would
        # then read EOF and exit 0 when it ran before the forwarded signal arrived.
        proc.wait(timeout=TIMEOUT)
        proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    assert not os.path.exists(path) and exec_dirs() == []


PRINT_FILE_AND_PAUSE = """
import os, signal
print(os.getpid(), os.environ["STASHFS_SECRET_FILE_DB_PASSWORD"], flush=True)
signal.pause()  # until killed: outlives the mountctl that started it
"""


def test_secret_files_of_a_killed_exec_are_removed_by_the_next_once_the_command_is_gone(home):
    value = fresh()
    ctl("secrets", "set", "DB_PASSWORD", input=value)
    proc = start_exec("--secret-files", "--", sys.executable, "-c", PRINT_FILE_AND_PAUSE)
    child = None
    try:
        child, path = readline(proc.stdout).split()
        child = int(child)
        proc.kill()  # SIGKILL: mountctl cannot clean up; its command lives on
        proc.communicate(timeout=TIMEOUT)
        # While the command lives, its files stay: another exec does not take them away.
        ctl("exec", "--no-mount", "--", "true")
        check_file(path.decode(), value)
        os.kill(child, signal.SIGKILL)
        wait_exit(child)
        child = None
        ctl("exec", "--no-mount", "--", "true")
        assert not os.path.exists(path) and exec_dirs() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if child is not None:
            os.kill(child, signal.SIGKILL)
            wait_exit(child)


def test_unknown_secret_file_is_refused_before_running(home):
    p = run_ctl("exec", "--no-mount", "--secret-file", "NOPE", "--", "touch", str(home / "ran"))
    assert p.returncode == 2 and p.stderr == ("mountctl: --secret-file: no such secret (the name, in --secret-file "
                                              "number 1, is not shown)\n")
    assert not (home / "ran").exists()


def test_secret_files_directory_choice(home, monkeypatch, tmp_path):
    from fsdriver.secrets import secret_files

    # A private tmpfs $XDG_RUNTIME_DIR (the fixture's, under /dev/shm) is used ...
    assert secret_files.base_dir() == files_base()
    assert stat.S_IMODE(files_base().stat().st_mode) == 0o700
    # ... one that others can enter is not: /dev/shm is used instead.
    other = tmp_path / "not-private"
    other.mkdir(mode=0o755)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(other))
    assert secret_files.base_dir(create=False) == Path("/dev/shm") / f"stashfs-secrets-{os.geteuid()}"
    # A disk directory is never taken for a tmpfs.
    assert secret_files._mount_type("/dev/shm") == "tmpfs"
    assert secret_files._mount_type(str(Path(__file__).parent)) not in secret_files.TMPFS_TYPES


# -- the access log


def test_access_log_records_names_never_values(home):
    a, b = fresh(), fresh()
    ctl("secrets", "set", "API_TOKEN", input=a)
    ctl("secrets", "set", "DB_PASSWORD", "--org", input=b)
    ctl("exec", "--no-mount", "--", "true")
    ctl("exec", "--no-mount", "--secret-file", "DB_PASSWORD", "--no-mask", "--", sys.executable, "-c", "pass")
    ctl("exec", "--no-mount", "--", a, check=False)  # a value typed as the command: masked in the log too
    entries = [json.loads(line) for line in ctl("secrets", "log", "--json").stdout.splitlines()]
    assert [e["command"] for e in entries] == ["true", os.path.basename(sys.executable), "****"]
    assert entries[0]["secrets"] == ["API_TOKEN", "DB_PASSWORD"] and entries[0]["files"] == []
    assert entries[1]["secrets"] == ["API_TOKEN"] and entries[1]["files"] == ["DB_PASSWORD"]
    assert all(e["uid"] == os.getuid() and e["time"].endswith("Z") for e in entries)
    text = ctl("secrets", "log", "-n", "1").stdout
    assert text.count("\n") == 1 and "****" in text and "API_TOKEN" in text
    log = Path(os.environ["XDG_STATE_HOME"]) / "stashfs" / "secrets-access.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert_absent([a, b], log.read_text())
    with open(log, "a") as f:
        f.write("not json\n")
    p = ctl("secrets", "log")
    assert p.stdout.count("\n") == 3 and p.stderr == f"mountctl: unreadable line(s) skipped: 1 of {log}\n"
    log.rename(log.with_name(log.name + ".1"))  # rotated: its bad line is named where it is (trial finding)
    ctl("exec", "--no-mount", "--", "true")
    p = ctl("secrets", "log")
    assert p.stdout.count("\n") == 4 and p.stderr == f"mountctl: unreadable line(s) skipped: 1 of {log}.1\n"
