"""``mountctl data`` run as a real command against disk and S3."""

import json
import os
import subprocess
import sys

import pytest

from fsdriver import data
from fsdriver.kv import DataStore


@pytest.fixture(params=["disk", "s3"])
def cli(request, tmp_path):
    env = dict(os.environ)
    if request.param == "disk":
        (tmp_path / "be").mkdir()  # a named backend directory must exist (else --create)
        env["STASHFS_BACKEND"] = str(tmp_path / "be")
    else:
        server = request.getfixturevalue("moto_server")
        env["STASHFS_BACKEND"] = request.getfixturevalue("s3_url")
        env["AWS_ENDPOINT_URL"] = server.url

    def run(*args, input=None, check=True):
        p = subprocess.run([sys.executable, "-m", "mountctl", *args], env=env, input=input,
                           capture_output=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"mountctl {args} -> {p.returncode}: {p.stderr.decode()}")
        return p

    return run


def test_data_round_trip(cli, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"0123456789")
    cli("data", "put", "dir/f.bin", str(src), "--pipeline", "p1")
    cli("data", "put", "g", "-", "--pipeline", "p1", input=b"from stdin")
    assert cli("data", "gets", "dir/f.bin", "--pipeline", "p1").stdout == b"0123456789"
    assert cli("data", "gets", "dir/f.bin", "--pipeline", "p1", "--range", "2:5").stdout == b"234"
    assert cli("data", "gets", "dir/f.bin", "--pipeline", "p1", "--range", "7:").stdout == b"789"
    assert cli("data", "get", "g", "-", "--pipeline", "p1").stdout == b"from stdin"
    cli("data", "get", "g", str(tmp_path / "out"), "--pipeline", "p1")
    assert (tmp_path / "out").read_bytes() == b"from stdin"
    assert cli("data", "size", "dir/f.bin", "--pipeline", "p1").stdout == b"10\n"
    assert cli("data", "ls", "--pipeline", "p1").stdout.decode().split() == ["dir/f.bin", "g"]
    listing = json.loads(cli("data", "ls", "dir", "--pipeline", "p1", "--json").stdout)
    assert [(e["name"], e["size"]) for e in listing] == [("dir/f.bin", 10)]
    cli("data", "rm", "dir", "-r", "--pipeline", "p1")
    assert cli("data", "ls", "--pipeline", "p1").stdout.decode().split() == ["g"]


def test_user_scope(cli):
    cli("data", "put", "f", "-", "--user", "alice", input=b"a")
    assert cli("data", "gets", "f", "--user", "alice").stdout == b"a"
    assert cli("data", "ls", "--user", "bob").stdout == b""


@pytest.mark.parametrize("args,status,words", [
    (["data", "gets", "missing", "--pipeline", "p1"], 1, "no object 'missing'"),
    (["data", "rm", "missing", "--pipeline", "p1"], 1, "no object"),
    (["data", "gets", "../x", "--pipeline", "p1"], 2, "'..'"),
    (["data", "ls", "--pipeline", "bad/id"], 2, "invalid pipeline id"),
    (["data", "gets", "f", "--pipeline", "p1", "--range", "5:2"], 2, "before begin"),
    (["data", "put", "f", "/no/such/file", "--pipeline", "p1"], 1, "/no/such/file"),
])
def test_errors_are_one_line(cli, args, status, words):
    p = cli(*args, check=False)
    err = p.stderr.decode()
    assert p.returncode == status, err
    assert err.count("\n") == 1 and err.startswith("mountctl: ") and words in err, err


def test_backend_and_endpoint_from_the_config_file(tmp_path, moto_server, s3_url):
    """A worker node's /etc/stashfs/config.toml (here: $XDG_CONFIG_HOME's) names the bucket and the
    endpoint once; mountctl and the Python API use them without options."""
    cfg = tmp_path / "config" / "stashfs"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text(f'[mount]\nbackend = "{s3_url}"\nendpoint_url = "{moto_server.url}"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("STASHFS_BACKEND", "AWS_ENDPOINT_URL")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    run = lambda *a: subprocess.run([sys.executable, "-m", "mountctl", *a], env=env, capture_output=True,
                                    text=True, timeout=60)
    p = run("data", "put", "x.txt", "-", "--pipeline", "cfg1")
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-c", "from fsdriver.data import pipeline; "
                        "print(pipeline(id='cfg1').gets('x.txt') == b'', pipeline(id='cfg1').backend.url)"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["True", s3_url + "/"], p.stderr
    listed = json.loads(run("pipeline", "list", "--json").stdout)
    assert [(e["id"], e["objects"]) for e in listed] == [("cfg1", 1)]
    (cfg / "config.toml").write_text("[mount\n")
    p = run("pipeline", "list")
    assert p.returncode == 1 and "cannot read the configuration" in p.stderr and "Traceback" not in p.stderr


def mountctl(*args, env=None, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "mountctl", *args], env=env or dict(os.environ),
                          stdout=stdout, stderr=subprocess.PIPE, timeout=60)


@pytest.mark.parametrize("args", [
    ["data", "ls", "--pipeline", "p1"], ["data", "gets", "f", "--pipeline", "p1"],
    ["data", "put", "f", "-", "--pipeline", "p1"], ["kv", "keys", "crm"], ["kv", "get", "crm", "a"],
    ["kv", "set", "crm", "a", "1"], ["kv", "incr", "crm", "a"], ["pipeline", "list"],
])
def test_a_mistyped_local_backend_is_refused_not_made(tmp_path, args):
    typo = tmp_path / "typo-store"
    p = mountctl(*args, "--backend", str(typo))
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count("\n") == 1, err
    # A command that has --create says to add it; the others never suggest what they refuse (review).
    how = ("add --create to create it" if args[:2] in (["data", "put"], ["kv", "set"], ["kv", "incr"])
           else "a new store is made by `data put`, `kv set` or `kv incr` with --create")
    assert err == f"mountctl: backend directory {typo} does not exist (check the path, or {how})\n"
    assert not typo.exists()


def test_create_makes_a_new_local_store(tmp_path):
    new = tmp_path / "new-store"
    assert mountctl("data", "put", "f", "/dev/null", "--pipeline", "p1", "--backend", str(new), "--create"
                    ).returncode == 0
    assert mountctl("kv", "set", "crm", "a", "1", "--backend", str(tmp_path / "kv-store"), "--create"
                    ).returncode == 0
    assert mountctl("data", "ls", "--pipeline", "p1", "--backend", str(new)).stdout == b"f\n"
    assert mountctl("kv", "keys", "crm", "--backend", str(tmp_path / "kv-store")).stdout == b"a\n"


@pytest.mark.parametrize("args", [
    ["kv", "keys", "crm"], ["kv", "get", "crm", "k1"], ["kv", "incr", "crm", "n"],
    ["data", "gets", "big", "--pipeline", "p1"], ["data", "get", "big", "-", "--pipeline", "p1"],
    ["data", "ls", "--pipeline", "p1"], ["data", "ls", "--pipeline", "p1", "--json"],
    ["data", "size", "big", "--pipeline", "p1"],
    ["pipeline", "list"], ["pipeline", "list", "--json"],  # any command: cli.main's ending
])
def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path, args):
    """`mountctl kv keys crm | head -1`: stdout closed by its reader is not an error (status 0,
    nothing on stderr), as for cat.  The reader here is gone before the first write: no race."""
    be = tmp_path / "be"
    be.mkdir()
    DataStore("crm", backend=str(be)).update({f"k{i}": i for i in range(100)})
    data.pipeline("p1", backend=str(be)).puts("big", b"x" * 1_000_000)
    read, write = os.pipe()
    os.close(read)
    try:
        p = mountctl(*args, "--backend", str(be), stdout=write)
    finally:
        os.close(write)
    assert (p.returncode, p.stderr) == (0, b"")
    if "incr" in args:
        assert DataStore("crm", backend=str(be))["n"] == 1  # done before its result was printed


def test_a_missing_bucket_is_one_line(moto_server):
    env = dict(os.environ, AWS_ENDPOINT_URL=moto_server.url)
    for args in (["data", "ls", "--pipeline", "p1"], ["data", "gets", "f", "--pipeline", "p1"],
                 ["kv", "keys", "crm"], ["kv", "get", "crm", "a"]):
        p = mountctl(*args, "--backend", "s3://no-such-bucket", env=env)
        assert (p.returncode, p.stderr) == (1, b"mountctl: bucket 'no-such-bucket' does not exist\n"), args


def test_get_into_a_place_it_cannot_write_names_that_place(tmp_path):
    """The local file is written through a temp file beside it: an error named the temp file."""
    be = tmp_path / "be"
    be.mkdir()
    data.pipeline("p1", backend=str(be)).puts("f", b"x")
    (tmp_path / "adir").mkdir()
    for target, reason in ((tmp_path / "nodir" / "out", "No such file or directory"),
                           (tmp_path / "adir", "Is a directory")):
        with pytest.raises(OSError) as e:
            data.pipeline("p1", backend=str(be)).get("f", target)
        assert (e.value.strerror, e.value.filename) == (reason, str(target))
        p = mountctl("data", "get", "f", str(target), "--pipeline", "p1", "--backend", str(be))
        assert (p.returncode, p.stderr.decode()) == (1, f"mountctl: {reason}: {target}\n")
    assert sorted(os.listdir(tmp_path / "adir")) == []  # no temp file left behind
