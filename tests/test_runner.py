"""fsdriver.secrets.runner.run, each call in its own helper process (it installs signal handlers)."""

import base64
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from . import secret_forms

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30  # seconds; generous for a loaded machine, but nothing waits forever

# Calls run(); the spec (argv, extra env, secrets, mask) comes in the environment, never in argv.
HELPER = textwrap.dedent("""
    import json, os, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    from fsdriver.secrets.runner import run
    spec = json.loads(os.environ.pop("RUNNER_TEST_SPEC"))
    env = dict(os.environ)
    env.update(spec["env"])
    kw = {"supervise": True} if spec.get("supervise") else {}
    sys.exit(run(spec["argv"], env, spec["secrets"], mask=spec["mask"], **kw))
""")

SECRET = "Sup3r-s3cret/v?lue+42"  # its base64 has "/"


WAIT_FOR_SIGNAL = """
    import signal, sys, time
    def handler(signum, frame):
        print(f"got {signum}", flush=True)
        sys.exit(100 + signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(99)
"""


def child(code):
    """argv of a Python child running ``code``."""
    return [sys.executable, "-S", "-c", textwrap.dedent(code)]


@pytest.fixture
def start():
    procs = []

    def start(argv, secrets=(), env=None, mask=True, stdin=subprocess.DEVNULL, supervise=False):
        spec = {"argv": argv, "env": env or {}, "secrets": list(secrets), "mask": mask, "supervise": supervise}
        penv = dict(os.environ, RUNNER_TEST_SPEC=json.dumps(spec), PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-c", HELPER], env=penv, stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


def finish(proc, stdin=None):
    out, err = proc.communicate(stdin, timeout=TIMEOUT)
    return proc.returncode, out, err


def read_until(pipe, marker, timeout=TIMEOUT):
    """Reads ``pipe`` (unbuffered, fd level) until ``marker`` has arrived; returns all bytes read."""
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(pipe, selectors.EVENT_READ)
        while marker not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"timed out waiting for {marker!r}; got {buf!r}")
            data = os.read(pipe.fileno(), 65536)
            if not data:
                raise AssertionError(f"EOF before {marker!r}; got {buf!r}")
            buf += data
    return buf


# -- exit status


@pytest.mark.parametrize("mask, code", [(True, 0), (True, 3), (False, 3)])
def test_exit_code(start, mask, code):
    rc, out, err = finish(start(child(f"print('hi'); raise SystemExit({code})"), mask=mask))
    assert (rc, out, err) == (code, b"hi\n", b"")


def test_killed_by_signal_gives_128_plus_n(start):
    rc, out, _ = finish(start(child("""
        import os, signal, sys
        print("dying", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
    """)))
    assert rc == 128 + signal.SIGTERM
    assert out == b"dying\n"


def test_environment_is_exactly_env(start):
    os.environ.setdefault("RUNNER_TEST_ONLY_IN_PARENT", "1")
    rc, out, _ = finish(start(child("""
        import os
        print(os.environ.get("FOO"), os.environ.get("RUNNER_TEST_SPEC"))
    """), env={"FOO": "bar"}))
    assert (rc, out) == (0, b"bar None\n")


def test_no_mask_replaces_the_process(start):
    proc = start(child("import os; print(os.getpid())"), secrets=[SECRET], mask=False)
    rc, out, _ = finish(proc)
    assert (rc, out) == (0, f"{proc.pid}\n".encode())


def test_no_mask_supervised_runs_a_child_unfiltered(start):
    # For secret files: mountctl stays the parent to remove them, but filters nothing.
    proc = start(child("""
        import os, sys
        print(os.getpid(), os.environ["SECRET"])
        sys.exit(5)
    """), secrets=[SECRET], env={"SECRET": SECRET}, mask=False, supervise=True)
    rc, out, err = finish(proc)
    pid, value = out.split()
    assert (rc, err) == (5, b"") and int(pid) != proc.pid
    assert value == SECRET.encode()  # unmasked, as asked (the value is in a pipe to this test only)


def test_no_mask_supervised_forwards_signals(start):
    proc = start(child(WAIT_FOR_SIGNAL), mask=False, supervise=True)
    assert read_until(proc.stdout, b"ready\n") == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    rc, out, _ = finish(proc)
    assert (rc, out) == (100 + signal.SIGTERM, f"got {int(signal.SIGTERM)}\n".encode())


# -- signals




@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_forwarded_to_child(start, sig):
    proc = start(child(WAIT_FOR_SIGNAL))
    assert read_until(proc.stdout, b"ready\n") == b"ready\n"
    proc.send_signal(sig)
    rc, out, err = finish(proc)
    assert (rc, out, err) == (100 + sig, f"got {int(sig)}\n".encode(), b"")


def test_sigterm_forwarded_kills_child_with_default_handler(start):
    proc = start(child("""
        import time
        print("ready", flush=True)
        time.sleep(30)
    """))
    assert read_until(proc.stdout, b"ready\n") == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    rc, out, err = finish(proc)
    assert (rc, out, err) == (128 + signal.SIGTERM, b"", b"")


# -- command errors


@pytest.mark.parametrize("mask", [True, False])
def test_missing_command(start, mask):
    rc, out, err = finish(start(["stashfs-no-such-command-xyz", "arg"], mask=mask))
    assert (rc, out, err) == (127, b"", b"mountctl: stashfs-no-such-command-xyz: command not found\n")


@pytest.mark.parametrize("mask", [True, False])
def test_not_executable(start, tmp_path, mask):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    rc, out, err = finish(start([str(script)], mask=mask))
    assert (rc, out, err) == (126, b"", f"mountctl: {script}: permission denied\n".encode())


@pytest.mark.parametrize("mask", [True, False])
def test_error_message_never_contains_a_secret(start, mask):
    rc, _, err = finish(start([SECRET], secrets=[SECRET], mask=mask))
    assert (rc, err) == (127, b"mountctl: ****: command not found\n")


# -- masking


def test_secret_printed_in_pieces_is_masked_on_both_streams(start):
    proc = start(child("""
        import os, sys
        s = os.environ["SECRET"].encode()
        h = len(s) // 2
        out, err = sys.stdout.buffer, sys.stderr.buffer
        out.write(b"hello\\n10%\\r" + s[:h]); out.flush()
        err.write(b"oops " + s[:h]); err.flush()
        sys.stdin.readline()
        out.write(s[h:] + b"\\n"); out.flush()
        err.write(s[h:] + b" done\\n"); err.flush()
    """), secrets=[SECRET], env={"SECRET": SECRET}, stdin=subprocess.PIPE)
    # What cannot be part of the secret is passed on at once; its first half is held back.
    assert read_until(proc.stdout, b"10%\r") == b"hello\n10%\r"
    rc, out, err = finish(proc, b"go\n")
    assert rc == 0
    assert out == b"****\n"
    assert err == b"oops **** done\n"


def test_encoded_forms_masked_and_secret_never_appears(start):
    b64 = base64.b64encode(SECRET.encode()).decode()
    assert "/" in b64
    rc, out, err = finish(start(child("""
        import base64, os, sys, urllib.parse
        s = os.environ["SECRET"]
        print(s)
        print(base64.b64encode(s.encode()).decode())
        print(base64.urlsafe_b64encode(s.encode()).decode().rstrip("="))
        print(urllib.parse.quote(s, safe=""), file=sys.stderr)
        print(urllib.parse.quote_plus(s), file=sys.stderr)
        print("x" + s + s + "y", file=sys.stderr)
    """), secrets=[SECRET, "unused-other"], env={"SECRET": SECRET}))
    assert rc == 0
    assert out == b"****\n****\n****\n"
    assert err == b"****\n****\nx********y\n"
    assert SECRET.encode() not in out + err


def test_both_pipes_full_no_deadlock(start):
    # The child fills stderr while we might be waiting on stdout, and the other way round.
    rc, out, err = finish(start(child("""
        import os, sys
        s = os.environ["SECRET"].encode()
        line = b"y" * 99 + b"\\n"
        for i in range(3):
            sys.stderr.buffer.write(line * 3000 + s); sys.stderr.buffer.flush()
            sys.stdout.buffer.write(line * 3000 + s); sys.stdout.buffer.flush()
    """), secrets=[SECRET], env={"SECRET": SECRET}))
    assert rc == 0
    expected = (b"y" * 99 + b"\n") * 3000 + b"****"
    assert out == expected * 3
    assert err == expected * 3


def test_broken_stdout_closes_childs_pipe():
    # `mountctl exec -- yes | head -1`: the child must see a broken pipe, not run forever.
    yes = shutil.which("yes")
    if yes is None:
        pytest.skip("no yes(1)")
    helper_env = dict(os.environ, PYTHONPATH=str(ROOT), RUNNER_TEST_SPEC=json.dumps(
        {"argv": [yes], "env": {}, "secrets": [SECRET], "mask": True}))
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", HELPER], env=helper_env, stdout=w,
                            stderr=subprocess.PIPE)
    os.close(w)
    try:
        with os.fdopen(r, "rb", buffering=0) as reader:
            assert read_until(reader, b"y\n").startswith(b"y\n")
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err) == (128 + signal.SIGPIPE, b"")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_form_masked_on_both_streams_in_random_writes(start, seed):
    # The table of tests/secret_forms.py: the child gets it on stdin (no value in a file or an
    # argv) and writes it to stdout and stderr, interleaved, in writes of random sizes.
    values = secret_forms.generated_secrets(seed)
    rows = secret_forms.table(values)
    data = secret_forms.stream(rows)
    proc = start(child("""
        import os, random, sys
        data = sys.stdin.buffer.read()
        rng = random.Random(int(os.environ["CHUNK_SEED"]))
        sent = {1: 0, 2: 0}
        while sent:
            fd = rng.choice(sorted(sent))
            end = min(len(data), sent[fd] + rng.randint(1, 300))
            while sent[fd] < end:
                sent[fd] += os.write(fd, data[sent[fd]:end])
            if sent[fd] == len(data):
                del sent[fd]
    """), secrets=values.values(), env={"CHUNK_SEED": str(seed)}, stdin=subprocess.PIPE)
    rc, out, err = finish(proc, data)
    assert rc == 0
    assert secret_forms.check(rows, out) == []
    assert secret_forms.check(rows, err) == []
    for v in values.values():
        assert v.encode() not in out + err
