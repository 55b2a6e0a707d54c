"""Pipeline lifecycle: list, archive and gc, in Python and as `mountctl pipeline`, on disk and S3."""

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fsdriver import lifecycle, owners
from fsdriver.backend import ObjectInfo
from fsdriver.configured import open_backend
from fsdriver.backend.disk import DiskBackend
from fsdriver.errors import InvalidName, Unavailable
from mountctl import cli as mountctl_cli
from mountctl.pipeline_cmd import parse_duration

P1 = {  # pipeline p1: 3 objects, 105 bytes, nested directories and two markers
    "pipeline/p1/a.txt": b"aaa",
    "pipeline/p1/d1/d2/deep.bin": b"x" * 100,
    "pipeline/p1/d1/f": b"ff",
    "pipeline/p1/empty/": b"",
    "pipeline/p1/d1/d3/": b"",
}
OTHERS = {  # what archiving p1 must leave alone
    "pipeline/p10/a.txt": b"10",
    "pipeline/p10/empty/": b"",
    "pipeline/p1x/a.txt": b"1x",
    "pipeline/p2/b": b"bbbb",
    "pipeline/bad id/x": b"not a pipeline: invalid id",
    "user/p1/a.txt": b"u",
    "user/alice/pipeline/p1/a.txt": b"u2",
    "kv/p1/k.json": b"1",
}


def populate(b):
    for key, data in {**P1, **OTHERS}.items():
        b.put_bytes(key, data)
    if not isinstance(b, DiskBackend):
        b.put_bytes("pipeline/p1", b"an object named like the prefix (S3 only)")
    owners.claim(b, "p1", "alice", 1001)
    owners.claim(b, "p10", "bob", 1002)
    owners.claim(b, "p1x", "carol", 1003)
    owners.claim(b, "p7", "dave", 1004)  # a record and no data
    b.put_bytes(owners.record_key("p8"), b"{not json")  # a damaged record


def snapshot(b) -> set:
    return {(e.key, e.size) for e in b.list("") if isinstance(e, ObjectInfo)}


def without_p1(keys: set) -> set:
    return {(k, s) for k, s in keys if not k.startswith("pipeline/p1/") and k != "owners/pipeline/p1.json"}


def backdate(b, key_prefix: str, seconds: float) -> None:
    """Disk only: make everything at or below a key look ``seconds`` old (files and directories)."""
    t = time.time() - seconds
    path = b.root / key_prefix
    os.utime(path, (t, t))
    for dirpath, _, files in os.walk(path):
        os.utime(dirpath, (t, t))
        for f in files:
            os.utime(os.path.join(dirpath, f), (t, t))


# -- the backend's delete_many -------------------------------------------------------------------

def test_delete_many(backend):
    for k in ("d/a", "d/b", "d/c", "d/m/"):
        backend.put_bytes(k, b"" if k.endswith("/") else b"x")
    backend.delete_many(["d/a", "d/missing", "d/c", "d/m/", "never/there"])
    backend.delete_many([])
    assert [e.key for e in backend.list("d/") if not e.key.endswith("/")] == ["d/b"]
    assert "d/m/" not in {e.key for e in backend.list("d/")}


# -- archive -------------------------------------------------------------------------------------

def test_archive_removes_exactly_one_pipeline(backend):
    populate(backend)
    before = snapshot(backend)
    calls = []
    assert lifecycle.archive(backend, "p1", lambda *a: calls.append(a)) == (3, 105)
    assert calls == [(3, 105, 3, 105)]
    after = snapshot(backend)
    assert after == without_p1(before)
    assert not any(k.startswith("pipeline/p1/") for k, _ in after)
    assert ("pipeline/p10/a.txt", 2) in after and ("pipeline/p1x/a.txt", 2) in after
    assert owners.get(backend, "p1") is None and owners.get(backend, "p10").owner == "bob"
    assert lifecycle.archive(backend, "p1") == (0, 0)  # rerunning is harmless
    assert snapshot(backend) == after
    if isinstance(backend, DiskBackend):
        assert not (backend.root / "pipeline" / "p1").exists()


def test_archive_refuses_bad_ids_before_touching_anything(backend):
    populate(backend)
    before = snapshot(backend)
    for bad in ("", "p1/..", "../user", "p1/", "bad id"):
        with pytest.raises(InvalidName):
            lifecycle.archive(backend, bad)
    assert snapshot(backend) == before


def test_archive_batches_over_1000_objects_on_s3(s3_backend):
    b = s3_backend
    keys = [f"pipeline/big/d{i % 7}/o{i:04d}" for i in range(1100)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: b.put_bytes(k, b"12"), keys))
    b.put_bytes("pipeline/big0/x", b"neighbour")
    b.put_bytes("pipeline/bi/x", b"neighbour")
    owners.claim(b, "big", "alice", 1001)
    calls = []
    assert lifecycle.archive(b, "big", lambda *a: calls.append(a)) == (1100, 2200)
    assert calls == [(1000, 2000, 1100, 2200), (1100, 2200, 1100, 2200)]
    assert {e.key for e in b.list("")} == {"pipeline/big0/x", "pipeline/bi/x"}


def test_interrupted_archive_keeps_the_pipeline_listed_and_can_be_rerun(backend, monkeypatch):
    populate(backend)
    before = snapshot(backend)
    monkeypatch.setattr(lifecycle, "BATCH", 2)
    real, calls = backend.delete_many, []

    def failing(keys):
        calls.append(keys)
        if len(calls) == 2:
            raise Unavailable("connection lost (test)")
        real(keys)

    monkeypatch.setattr(backend, "delete_many", failing)
    with pytest.raises(Unavailable):
        lifecycle.archive(backend, "p1")
    p1 = {s.id: s for s in lifecycle.pipelines(backend)}["p1"]
    assert p1.owner == "alice" and p1.objects == 1  # two of three deleted, the record kept
    monkeypatch.setattr(backend, "delete_many", real)
    assert lifecycle.archive(backend, "p1") == (1, 2)
    assert snapshot(backend) == without_p1(before)


# -- list ----------------------------------------------------------------------------------------

def test_pipelines_numbers(backend):
    populate(backend)
    disk = isinstance(backend, DiskBackend)
    if disk:
        backdate(backend, "pipeline/p1", 7200)
    ps = {s.id: s for s in lifecycle.pipelines(backend)}
    assert list(ps) == ["p1", "p10", "p1x", "p2", "p7", "p8"]  # sorted; "bad id" is not a pipeline
    got = {i: (s.owner, s.objects, s.bytes) for i, s in ps.items()}
    assert got == {"p1": ("alice", 3, 105), "p10": ("bob", 1, 2), "p1x": ("carol", 1, 2),
                   "p2": (None, 1, 4), "p7": ("dave", 0, 0), "p8": ("", 0, 0)}
    for pid in ("p1", "p10", "p2"):  # the newest mtime of anything below, markers included
        entries = [e for e in backend.list(f"pipeline/{pid}/") if isinstance(e, ObjectInfo)]
        assert ps[pid].last_write == max(e.mtime for e in entries)
    assert ps["p7"].last_write == backend.head(owners.record_key("p7")).mtime  # only a record
    # Written in this order: p1 (backdated on disk), p10, p2.
    assert ps["p1"].last_write <= ps["p10"].last_write <= ps["p2"].last_write
    if disk:
        assert ps["p1"].last_write < time.time() - 7000 < ps["p10"].last_write
    assert lifecycle.summary(backend, "p1") == ps["p1"] and lifecycle.summary(backend, "p7") == ps["p7"]
    assert lifecycle.summary(backend, "nope") is None


# -- gc selection --------------------------------------------------------------------------------

def test_idle_selection(backend):
    populate(backend)
    disk = isinstance(backend, DiskBackend)
    if disk:
        backdate(backend, "pipeline/p1", 7200)
        backdate(backend, owners.record_key("p7"), 7200)
    now = time.time()
    ids = [s.id for s in lifecycle.idle_pipelines(backend, 3600, now)]
    assert ids == (["p1", "p7"] if disk else [])
    # An injected clock, at the boundary of each pipeline: idle means last_write < now - idle.
    for s in lifecycle.pipelines(backend):
        assert s.id not in [c.id for c in lifecycle.idle_pipelines(backend, 60, s.last_write + 59.5)]
        assert s.id in [c.id for c in lifecycle.idle_pipelines(backend, 60, s.last_write + 60.5)]
    everything = lifecycle.idle_pipelines(backend, 60, now + 120)
    assert [s.id for s in everything] == ["p1", "p10", "p1x", "p2", "p7", "p8"]
    if disk:  # a write makes a selected pipeline active again: the re-check sees it
        backend.put_bytes("pipeline/p1/new", b"n")
        assert not lifecycle.is_idle(lifecycle.summary(backend, "p1"), 3600, time.time())


def test_parse_duration():
    assert [parse_duration(t) for t in ("30d", "12h", "90m", "45s", "2w", "1d12h", "1w1d1h1m1s")] == [
        30 * 86400, 12 * 3600, 90 * 60, 45, 14 * 86400, 36 * 3600, 694861]


# -- the CLI -------------------------------------------------------------------------------------

class CLI:
    def __init__(self, kind, url, env, backend):
        self.kind, self.url, self.env, self.backend = kind, url, env, backend

    def run(self, *args, check=True, **kw):
        p = subprocess.run([sys.executable, "-m", "mountctl", *args], env=self.env, capture_output=True,
                           text=True, timeout=60, stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"mountctl {args} -> {p.returncode}: {p.stderr}")
        return p

    def run_on_terminal(self, *args, answer=None, timeout=60):
        """Run with stdin and stderr on a pseudo-terminal (stdout a pipe); answer the [y/N] prompt.
        Returns (status, what the terminal showed, stdout)."""
        master, slave = os.openpty()
        p = subprocess.Popen([sys.executable, "-m", "mountctl", *args], env=self.env,
                             stdin=slave, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        shown, deadline = b"", time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"mountctl {args} still running after {timeout}s: {shown!r}")
                if not select.select([master], [], [], left)[0]:
                    continue
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every holder of the terminal has closed it
                    break
                if not chunk:
                    break
                shown += chunk
                if answer is not None and b"[y/N]" in shown:
                    os.write(master, answer.encode() + b"\n")
                    answer = None
            out = p.stdout.read().decode()
            return p.wait(timeout), shown.decode(), out
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            p.stdout.close()
            os.close(master)


@pytest.fixture(params=["disk", "s3"])
def cli(request, tmp_path):
    env = dict(os.environ, STASHFS_ADMIN_GROUP="stashfs-test-admins-none")
    if request.param == "disk":
        url = str(tmp_path / "be")
        backend = open_backend(url, create=True)
    else:
        server = request.getfixturevalue("moto_server")
        url = request.getfixturevalue("s3_url")
        env["AWS_ENDPOINT_URL"] = server.url
        backend = open_backend(url, endpoint_url=server.url)
    env["STASHFS_BACKEND"] = url
    yield CLI(request.param, url, env, backend)
    backend.close()


def test_cli_list(cli):
    populate(cli.backend)
    rows = json.loads(cli.run("pipeline", "list", "--json").stdout)
    assert all(list(r) == ["id", "owner", "objects", "bytes", "last_write"] for r in rows)
    expected = lifecycle.pipelines(cli.backend)
    assert [(r["id"], r["owner"], r["objects"], r["bytes"]) for r in rows] == [
        (s.id, s.owner, s.objects, s.bytes) for s in expected]
    assert [r["last_write"] for r in rows] == pytest.approx([s.last_write for s in expected])
    lines = cli.run("pipeline", "list").stdout.splitlines()
    assert lines[0].split() == ["ID", "OWNER", "OBJECTS", "BYTES", "LAST", "WRITE"]
    table = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert table["p1"][:4] == ["alice", "3", "105", "B"] and table["p1"][4].endswith("Z")
    assert table["p2"][0] == "-" and table["p8"][0] == "?"  # no record; a damaged record


def test_cli_archive_with_yes(cli):
    populate(cli.backend)
    before = snapshot(cli.backend)
    p = cli.run("pipeline", "archive", "p1", "--yes")
    assert p.stdout == "archived pipeline p1: 3 objects, 105 B removed\n"
    assert p.stderr == ""  # stderr is not a terminal: no progress output at all
    assert snapshot(cli.backend) == without_p1(before)
    p = cli.run("pipeline", "archive", "p1", "--yes", check=False)
    assert p.returncode == 1 and p.stderr.startswith("mountctl: no pipeline p1 ") and p.stderr.count("\n") == 1


def test_cli_archive_without_yes_and_without_a_terminal_refuses(cli):
    populate(cli.backend)
    before = snapshot(cli.backend)
    p = cli.run("pipeline", "archive", "p1", check=False)
    assert p.returncode == 2 and "--yes" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("mountctl: ") and p.stdout == ""
    assert snapshot(cli.backend) == before
    p = cli.run("pipeline", "archive", "bad/id", "--yes", check=False)
    assert p.returncode == 2 and "invalid pipeline id" in p.stderr


@pytest.mark.parametrize("answer", ["y", "n"])
def test_cli_archive_asks_on_a_terminal(cli, answer):
    populate(cli.backend)
    before = snapshot(cli.backend)
    status, shown, out = cli.run_on_terminal("pipeline", "archive", "p1", answer=answer)
    assert "archive pipeline p1 (3 objects, 105 B)? [y/N]" in shown
    if answer == "y":
        assert status == 0, shown
        assert out == "archived pipeline p1: 3 objects, 105 B removed\n"
        assert "\rarchiving pipeline p1:" in shown and "/105 [" in shown and "0/3 objects" in shown  # tqdm's bar
        assert snapshot(cli.backend) == without_p1(before)
    else:
        assert status == 1 and "mountctl: pipeline p1 not archived" in shown and out == ""
        assert snapshot(cli.backend) == before


def test_cli_progress_only_on_a_terminal(cli):
    b = cli.backend
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: b.put_bytes(f"pipeline/q/f{i}", b"x" * 10), range(20)))
    b.put_bytes("pipeline/r/f", b"r")
    status, shown, out = cli.run_on_terminal("pipeline", "archive", "q", "--yes")
    assert status == 0 and out == "archived pipeline q: 20 objects, 200 B removed\n"
    # tqdm's bar: label, bytes of the total, rate, and the objects as its postfix
    assert "\rarchiving pipeline q:" in shown and "0.00/200 [" in shown and "B/s" in shown, shown
    assert "0/20 objects" in shown
    p = cli.run("pipeline", "archive", "r", "--yes")  # stderr a pipe
    assert p.stderr == "" and p.stdout == "archived pipeline r: 1 object, 1 B removed\n"


def test_cli_gc(cli):
    populate(cli.backend)
    disk = cli.kind == "disk"
    if disk:
        backdate(cli.backend, "pipeline/p1", 7200)
        backdate(cli.backend, owners.record_key("p7"), 7200)
    before = snapshot(cli.backend)
    p = cli.run("pipeline", "gc", "--idle", "1h")
    assert snapshot(cli.backend) == before  # a dry run deletes nothing
    if not disk:  # everything on S3 was just written
        assert p.stdout == "no pipeline idle for 1h\n"
        return
    lines = p.stdout.splitlines()
    assert [line.split()[:3] for line in lines[1:3]] == [["p1", "alice", "3"], ["p7", "dave", "0"]]
    assert lines[3] == "would archive 2 pipeline(s): 3 objects, 105 B (dry run: add --yes to archive)"
    p = cli.run("pipeline", "gc", "--idle", "1h", "--yes")
    assert p.stdout.splitlines() == [
        "archived pipeline p1: 3 objects, 105 B removed",
        "archived pipeline p7: 0 objects, 0 B removed",
        "gc: archived 2 pipeline(s), 3 objects, 105 B; skipped 0",
    ]
    assert p.stderr == ""
    assert snapshot(cli.backend) == {(k, s) for k, s in without_p1(before) if k != "owners/pipeline/p7.json"}
    assert cli.run("pipeline", "gc", "--idle", "1h").stdout == "no pipeline idle for 1h\n"


@pytest.mark.parametrize("duration", ["1x", "0s", "", "1d12", "-1h", "h", "1.5h", "１h"])
def test_cli_gc_bad_durations(cli, duration):
    p = cli.run("pipeline", "gc", f"--idle={duration}", check=False)
    assert p.returncode == 2 and p.stderr.startswith("mountctl: invalid duration") and p.stderr.count("\n") == 1


def test_gc_skips_a_pipeline_written_after_it_was_selected(tmp_path, monkeypatch, capsys):
    b = open_backend(str(tmp_path / "be"), create=True)
    populate(b)
    backdate(b, "pipeline/p1", 7200)
    backdate(b, owners.record_key("p7"), 7200)
    real = lifecycle.idle_pipelines

    def select_then_write(*args):
        selected = real(*args)
        b.put_bytes("pipeline/p1/late.txt", b"written after the selection")
        return selected

    monkeypatch.setattr(lifecycle, "idle_pipelines", select_then_write)
    assert mountctl_cli.main(["pipeline", "gc", "--idle", "1h", "--yes", "--backend", str(tmp_path / "be")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("skipped pipeline p1: written since (")
    assert out[1:] == ["archived pipeline p7: 0 objects, 0 B removed",
                       "gc: archived 1 pipeline(s), 0 objects, 0 B; skipped 1"]
    assert lifecycle.summary(b, "p1").objects == 4 and owners.get(b, "p7") is None


def test_gc_archive_keeps_writes_made_during_it(tmp_path):
    """With a cutoff (gc), objects written after it survive, and so do the pipeline and its owner."""
    b = open_backend(str(tmp_path / "be"), create=True)
    populate(b)
    backdate(b, "pipeline/p1", 7200)
    old = {k for k, _ in snapshot(b) if k.startswith("pipeline/p1/") and not k.endswith("/")}
    b.put_bytes("pipeline/p1/closed-during-gc.txt", b"acknowledged")
    with pytest.raises(lifecycle.StillActive) as e:
        lifecycle.archive(b, "p1", written_before=time.time() - 3600)
    assert e.value.kept == 1 and e.value.objects == len(old)
    objects = {k for k, _ in snapshot(b) if k.startswith("pipeline/p1/") and not k.endswith("/")}
    assert objects == {"pipeline/p1/closed-during-gc.txt"}  # directories stay with it
    assert owners.get(b, "p1") is not None
    assert lifecycle.archive(b, "p1", written_before=time.time() + 1) == (1, len(b"acknowledged"))
    assert owners.get(b, "p1") is None


# -- permissions ---------------------------------------------------------------------------------

NOBODY = (65534, 65534)


@pytest.fixture
def as_nobody(moto_server, s3_url, other_user_python):
    """Run mountctl as user nobody against S3 (disk objects are private to root)."""
    home = Path(tempfile.mkdtemp(prefix="stashfs-lifecycle-"))
    os.chmod(home, 0o755)
    os.chown(home, *NOBODY)
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), USER="nobody",
               LOGNAME="nobody", AWS_ENDPOINT_URL=moto_server.url, STASHFS_BACKEND=s3_url,
               STASHFS_ADMIN_GROUP="stashfs-test-admins-none")

    def run(*args):
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               other_user_python, "-m", "mountctl", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd="/",
                              stdin=subprocess.DEVNULL)

    backend = open_backend(s3_url, endpoint_url=moto_server.url)
    yield run, backend
    backend.close()
    shutil.rmtree(home)


def test_only_the_owner_or_an_admin_may_archive(as_nobody):
    run, b = as_nobody
    populate(b)
    owners.claim(b, "mine", "nobody", 65534)
    b.put_bytes("pipeline/mine/f", b"nobody's")
    before = snapshot(b)
    for pid, whose in (("p1", "belongs to alice"), ("p2", "has no owner record"),
                       ("p8", "has a damaged owner record")):
        p = run("pipeline", "archive", pid, "--yes")
        assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
        assert p.stderr.startswith(f"mountctl: pipeline {pid} {whose}: only its owner, root or members of ")
    p = run("pipeline", "gc", "--idle", "1s", "--yes")
    assert p.returncode == 1 and "only root or members of stashfs-test-admins-none" in p.stderr
    assert snapshot(b) == before
    p = run("pipeline", "archive", "mine", "--yes")  # its owner may
    assert p.returncode == 0 and p.stdout == "archived pipeline mine: 1 object, 8 B removed\n", p.stderr
    assert not any(k.startswith("pipeline/mine/") or k == "owners/pipeline/mine.json" for k, _ in snapshot(b))
    assert json.loads(run("pipeline", "list", "--json").stdout)[0]["id"] == "p1"  # listing is for everyone
