"""Key/value stores through a real mount, checked against the backend and the Python API."""

import contextlib
import errno
import json
import os
import stat
import subprocess
import threading
import time

import pytest

from fsdriver.kv import DataStore


NOT_JSON = pytest.mark.expected_log(r"not saved( as \S+)?: not valid JSON: ")  # one line per refusal
CONFLICT = pytest.mark.expected_log("the record changed since it was read")


@pytest.fixture
def store(mount):
    mount.backend.put_bytes("kv/s/", b"")  # created elsewhere: this mount has not listed it yet
    return mount.path / "kv" / "s"


@pytest.fixture
def ds(mount, store):
    return DataStore("s", backend=mount.backend)


def test_stores_and_records(mount, store, ds):
    assert os.listdir(mount.path / "kv") == ["s"]
    os.mkdir(mount.path / "kv" / "made-here")
    assert mount.backend.head("kv/made-here/").size == 0
    os.rmdir(mount.path / "kv" / "made-here")
    (store / "counter.json").write_text("41")
    assert ds["counter"] == 41
    ds["greeting"] = {"hello": "world"}
    assert json.loads((store / "greeting.json").read_text()) == {"hello": "world"}
    assert sorted(os.listdir(store)) == ["counter.json", "greeting.json"]
    os.unlink(store / "counter.json")
    assert "counter" not in ds
    with pytest.raises(OSError) as e:
        os.rmdir(store)
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as e:
        os.mkdir(store / "sub")
    assert e.value.errno == errno.EPERM
    del ds["greeting"]
    os.rmdir(store)
    assert os.listdir(mount.path / "kv") == []


@NOT_JSON
def test_invalid_json_keeps_old_value(mount, store, ds):
    ds["k"] = [1, 2]
    f = open(store / "k.json", "w")
    f.write("{not json")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EINVAL
    assert ds["k"] == [1, 2]
    assert "kv/s/k.json" in mount.log() or "/kv/s/k.json" in mount.log()
    assert "not valid JSON" in mount.log()
    assert json.loads((store / "k.json").read_text()) == [1, 2]


def test_empty_file_stores_empty_string(store, ds):
    ds["k"] = {"a": 1}
    open(store / "k.json", "w").close()
    # Content that was only truncated is committed at release, which close() does not wait for;
    # the mount's next operation on the record does (the API reads the backend directly).
    assert (store / "k.json").read_text() == '""'
    assert ds["k"] == "" and "k" in ds
    (store / "new.json").touch()
    assert os.stat(store / "new.json").st_size == 2
    assert ds["new"] == ""


def test_special_keys_map_to_one_file_name(mount, store, ds):
    keys = ["a/b", "100%", ".hidden", "ünï", "x.json"]
    for k in keys:
        ds[k] = k
    assert sorted(os.listdir(store)) == sorted(["a%2Fb.json", "100%25.json", "%2Ehidden.json", "ünï.json", "x.json.json"])
    assert json.loads((store / "%2Ehidden.json").read_text()) == ".hidden"
    (store / "c%2Fd.json").write_text('"through the mount"')
    assert ds["c/d"] == "through the mount"
    with pytest.raises(OSError) as e:
        open(store / "bad%41.json", "w")
    assert e.value.errno == errno.EINVAL


def test_readers_see_whole_values_while_a_record_is_rewritten(store, ds):
    """`echo "x$RANDOM" > r.json` in a loop, and `cat r.json` in another: every read is one whole
    committed value.  Reads through the page cache stopped at the size a writer's O_TRUNC open had
    set in the kernel (an empty record), and on S3 a reader whose record was committed again
    between its open and its read got ESTALE."""
    ds["r"] = "init"
    done = threading.Event()

    def writer():
        i = 0
        while not done.is_set() and i < 5000:
            i += 1
            with open(store / "r.json", "w") as f:
                f.write(f'"x{i}"')

    t = threading.Thread(target=writer)
    t.start()
    bad = []
    try:
        for _ in range(300):
            try:
                text = (store / "r.json").read_bytes()
                value = json.loads(text)
                if not isinstance(value, str) or not (value == "init" or value.startswith("x")):
                    bad.append(text)
            except (OSError, ValueError) as e:
                bad.append(repr(e))
    finally:
        done.set()
        t.join(60)
    assert bad == []


def test_rsync_a_into_a_store(mount, store, ds, tmp_path):
    """rsync -a writes a temp file (a scratch file), sets its mode, owner and times, then renames
    it to the record: the scratch file takes them, the record shows the store's."""
    src = tmp_path / "x.json"
    src.write_text('{"synced": [1, 2]}')
    os.chmod(src, 0o600)
    for args in (["-a"], ["-rt"], []):
        p = subprocess.run(["rsync", *args, str(src), str(store / "rs.json")], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, (args, p.stderr)
        assert ds["rs"] == {"synced": [1, 2]}
        os.unlink(store / "rs.json")  # through the mount: its view stays its own
    assert [n for n in os.listdir(store) if n != "rs.json"] == []  # no temp file left behind


def test_record_times_from_touch_and_rsync(mount, store, ds, tmp_path):
    """`touch -d` of a record (futimens through a descriptor that writes nothing): disk keeps the
    time on the record's file, S3 shows it until the attributes are read again (a record's mtime is
    its LastModified).  rsync -a into a store succeeds every time: a record's time is its commit's,
    so a second run sends the records again instead of trying to chmod them (EPERM)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"r{i}.json").write_text(json.dumps({"i": i}))
        os.utime(src / f"r{i}.json", (1_000_000_000 + i, 1_000_000_000 + i))
    files = [str(src / f"r{i}.json") for i in range(3)]  # not the directory: a store's mode is fixed
    for _ in range(2):
        run = subprocess.run(["rsync", "-a", *files, f"{store}/"], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert [ds[f"r{i}"] for i in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]

    subprocess.run(["touch", "-d", "2002-02-02 02:02:02 UTC", str(store / "r0.json")], check=True, timeout=30)
    stored = mount.backend.head("kv/s/r0.json").mtime  # stored when touch's close returned (review)
    assert os.stat(store / "r0.json").st_mtime == 1_012_615_322  # shown at once on both
    assert (stored == 1_012_615_322) if mount.backend.keeps_mtime else stored > 1_500_000_000
    assert ds["r0"] == {"i": 0}


@CONFLICT
def test_read_modify_write_conflict_gives_estale(store, ds):
    ds["n"] = 1
    with pytest.raises(OSError) as e:
        with open(store / "n.json", "r+") as f:
            value = json.load(f)
            ds["n"] = 100  # another writer commits meanwhile
            f.seek(0)
            f.truncate()
            f.write(json.dumps(value + 1))
    assert e.value.errno == errno.ESTALE
    assert ds["n"] == 100  # the other writer's value stays


def test_blind_overwrite_replaces(store, ds):
    ds["n"] = 1
    with open(store / "n.json", "w") as f:  # O_TRUNC without reading
        ds["n"] = 100
        f.write("7")
    assert ds["n"] == 7


@pytest.mark.expected_log("the record was created meanwhile")
def test_exclusive_create_loses_to_a_record_that_appeared(store, ds):
    fd = os.open(store / "once.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.write(fd, b'"mine"')
    ds["once"] = "theirs"
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EEXIST
    assert ds["once"] == "theirs"


@CONFLICT
@pytest.mark.expected_log("precondition failed|changed since it was opened")  # an r+ read of a replaced version
def test_counter_from_mount_and_api_loses_no_update(store, ds):
    """The mount does read-modify-write with r+ and retries on ESTALE; the API uses incr."""
    ds["c"] = 0
    stale = []
    errors = []

    def mount_worker():
        try:
            for _ in range(20):
                while True:
                    try:
                        with open(store / "c.json", "r+") as f:
                            v = json.load(f)
                            f.seek(0)
                            f.truncate()
                            f.write(str(v + 1))
                        break
                    except OSError as e:
                        if e.errno != errno.ESTALE:
                            raise
                        stale.append(1)
        except Exception as e:
            errors.append(e)

    def api_worker():
        try:
            for _ in range(20):
                ds.incr("c")
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=mount_worker), threading.Thread(target=mount_worker),
               threading.Thread(target=api_worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert ds["c"] == 60
    assert stale, "the workers never collided: the test did not exercise conflicts"


@NOT_JSON
def test_temp_file_then_rename(mount, store, ds):
    ds["cfg"] = {"v": 1}
    tmp = store / ".cfg.json.tmp123"
    tmp.write_text('{"v": 2}')
    assert ".cfg.json.tmp123" in os.listdir(store)  # a scratch file, kept by the daemon
    assert [e.key for e in mount.backend.list("kv/s/") if "tmp" in e.key] == []  # not persisted
    os.rename(tmp, store / "cfg.json")
    assert ds["cfg"] == {"v": 2}
    assert sorted(os.listdir(store)) == ["cfg.json"]
    bad = store / "cfg.json.swp"
    bad.write_text("not json")
    with pytest.raises(OSError) as e:
        os.rename(bad, store / "cfg.json")
    assert e.value.errno == errno.EBADMSG  # EINVAL would make mv say "to a subdirectory of itself"
    assert ds["cfg"] == {"v": 2} and bad.read_text() == "not json"
    os.unlink(bad)
    os.rename(store / "cfg.json", store / "cfg.json~")  # a record turned into a backup copy
    assert "cfg" not in ds and (store / "cfg.json~").read_text() == '{"v": 2}'


def test_xattrs(store, ds):
    ds["k"] = 1
    etag = os.getxattr(store / "k.json", "user.stashfs.etag").decode()
    assert etag == ds.backend.head("kv/s/k.json").etag
    mtime = os.getxattr(store / "k.json", "user.stashfs.mtime").decode()
    assert mtime.endswith("Z") and mtime.startswith("20")
    assert os.listxattr(store / "k.json") == []  # read by name, never carried by cp -a / rsync -X


def test_ttl_expiry_seen_through_mount(store, ds):
    ds.set("short", 1, ttl=1)
    ds["long"] = 2
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if "short.json" not in os.listdir(store) and not (store / "short.json").exists():
            break
        time.sleep(0.2)  # waiting for the TTL (and the kernel's 1 s caches) is the behaviour under test
    assert os.listdir(store) == ["long.json"]
    assert not (store / "short.json").exists()
    assert "short" not in ds
    with pytest.raises(FileNotFoundError):
        (store / "short.json").read_text()


def test_store_with_more_than_1000_keys(mount, store, ds):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: mount.backend.put_bytes(f"kv/s/k{i:04d}.json", str(i).encode()), range(1050)))
    names = os.listdir(store)
    assert len(names) == 1050
    assert json.loads((store / "k1049.json").read_text()) == 1049


def test_records_cannot_move_to_files(mount, store, ds):
    ds["k"] = 1
    (mount.path / "pipeline" / "p").mkdir()
    with pytest.raises(OSError) as e:
        os.rename(store / "k.json", mount.path / "pipeline" / "p" / "k.json")
    assert e.value.errno == errno.EXDEV


# -- record commits through the shell (issue 10) --------------------------------------------------


def sh(script: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60)


REDIRECTIONS = {
    ">": "echo {text} > r.json",
    ">>": "echo {text} >> r.json",
    "exec 3>": "exec 3> r.json; echo {text} >&3; exec 3>&-",
    "tee": "echo {text} | tee r.json > /dev/null",
    "/bin/echo": "/bin/echo {text} > r.json",
}


@pytest.mark.parametrize("how", REDIRECTIONS)
@NOT_JSON
def test_shell_redirections_keep_the_old_value_on_invalid_content(mount, store, ds, how):
    ds["r"] = {"a": 1}
    sh(REDIRECTIONS[how].format(text="bad"), store)
    assert ds["r"] == {"a": 1}
    assert json.loads((store / "r.json").read_text()) == {"a": 1}
    assert "/kv/s/r.json" in mount.log() and "not valid JSON" in mount.log()


@pytest.mark.parametrize("how", [h for h in REDIRECTIONS if h != ">>"])
def test_shell_redirections_replace_a_record(mount, store, ds, how):
    ds["r"] = {"a": 1}
    p = sh(REDIRECTIONS[how].format(text="'{\"b\": 2}'"), store)
    assert p.returncode == 0, p.stderr
    assert ds["r"] == {"b": 2}
    assert json.loads((store / "r.json").read_text()) == {"b": 2}


def test_appending_whitespace_keeps_a_valid_record(store, ds):
    ds["r"] = {"a": 1}
    assert sh("echo '  ' >> r.json", store).returncode == 0
    assert json.loads((store / "r.json").read_text()) == {"a": 1}
    assert (store / "r.json").read_text() == '{"a": 1}  \n'


def test_truncated_record_reads_as_empty_string_at_once(store, ds):
    ds["old"] = [1, 2, 3]
    p = sh(': > e.json; cat e.json; echo; : > old.json; cat old.json; echo; '
           'echo 7 > t.json; truncate -s 0 t.json; cat t.json', store)
    assert p.returncode == 0, p.stderr
    assert p.stdout == '""\n""\n""'
    assert ds["e"] == "" and ds["old"] == "" and ds["t"] == ""


@NOT_JSON
def test_a_record_cut_to_a_length_that_is_not_json_fails_the_command(mount, store, ds):
    """``truncate -s 3 r.json`` (ftruncate, then close) used to exit 0 and only log the refusal
    at release, naming "handle N": the record is checked at the close, which fails with EINVAL,
    and the log line names the record.  truncate(2) on the path fails at once.  The value stays."""
    ds["r"] = {"abc": 12345}
    p = sh("truncate -s 3 r.json", store)
    assert p.returncode != 0 and "Invalid argument" in p.stderr, (p.returncode, p.stderr)
    with pytest.raises(OSError) as e:
        os.truncate(store / "r.json", 5)
    assert e.value.errno == errno.EINVAL
    assert ds["r"] == {"abc": 12345} and (store / "r.json").read_text() == '{"abc": 12345}'
    log = mount.log()
    assert "/kv/s/r.json" in log and "handle " not in log
    ds["n"] = 12345
    p = sh("truncate -s 3 n.json", store)  # still JSON: stored
    assert p.returncode == 0, p.stderr
    assert ds["n"] == 123


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", '{"a": NaN}', "[1e5, -Infinity]"])
@NOT_JSON
def test_nan_and_infinity_are_refused(mount, store, ds, text):
    ds["k"] = {"v": 1}
    f = open(store / "k.json", "w")
    f.write(text)
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EINVAL
    assert ds["k"] == {"v": 1}
    assert ds.backend.get_range("kv/s/k.json", 0) == b'{"v": 1}'
    assert "is not a JSON value" in mount.log()


@pytest.mark.parametrize("text", ["1" * 5000, "[1e400]", '{"s": "\\ud800"}'], ids=["digits", "1e400", "surrogate"])
@NOT_JSON
def test_values_no_reader_could_give_back_are_refused(mount, store, ds, text):
    """Trial finding: the mount stored them; then DataStore could not list the store (5,000
    digits), read Infinity back (1e400), or mountctl kv get crashed (a lone surrogate)."""
    ds["k"] = {"v": 1}
    p = sh(f"/usr/bin/printf '%s' '{text}' > k.json; cat k.json", store)
    assert p.stdout == '{"v": 1}' and "Invalid argument" in p.stderr
    assert dict(ds.items()) == {"k": {"v": 1}}
    assert "records must read back as written" in mount.log() or "lone surrogate" in mount.log()


@NOT_JSON
def test_deep_nesting_is_einval_with_one_log_line(mount, store, ds):
    ds["k"] = "old"
    with pytest.raises(OSError) as e:
        with open(store / "k.json", "w") as f:
            f.write("[" * 100_000 + "]" * 100_000)
    assert e.value.errno == errno.EINVAL
    assert ds["k"] == "old"
    lines = [line for line in mount.log().splitlines() if "/kv/s/k.json" in line]
    assert len(lines) == 1 and "nested more than" in lines[0], lines
    # the mount fixture fails the test if the daemon logged a traceback


def test_mv_from_local_disk_then_cat_shows_the_new_value(mount, store, ds, tmp_path):
    ds["other"] = 1
    ds["rec"] = {"v": 1}
    assert json.loads((store / "rec.json").read_text()) == {"v": 1}  # cached by the kernel now
    src = tmp_path / "new.json"
    src.write_text('{"v": 2, "longer": true}')
    os.chmod(src, stat.S_IMODE(os.stat(store / "other.json").st_mode))  # mv keeps the mode
    p = sh(f"mv {src} rec.json && cat rec.json", store)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"v": 2, "longer": True}
    assert os.stat(store / "rec.json").st_size == len('{"v": 2, "longer": true}')


def test_a_record_written_shows_in_ls_at_once(mount, store, ds):
    ds["a"] = 1
    assert os.listdir(store) == ["a.json"]  # the store's listing is fresh now
    (store / "b.json").write_text("2")
    p = sh(": > c.json; ls", store)
    assert p.stdout.split() == ["a.json", "b.json", "c.json"]
    assert sorted(os.listdir(store)) == ["a.json", "b.json", "c.json"]


@NOT_JSON
def test_a_refused_mv_says_what_happened(mount, store, ds):
    ds["rec"] = {"v": 1}
    (store / "tmp").write_text("junk")
    p = sh("mv tmp rec.json", store)
    assert p.returncode != 0
    assert "subdirectory" not in p.stderr
    assert p.stderr.strip() == "mv: cannot move 'tmp' to 'rec.json': Bad message"
    assert ds["rec"] == {"v": 1} and (store / "tmp").read_text() == "junk"
    lines = [line for line in mount.log().splitlines() if "/kv/s/rec.json" in line]
    assert len(lines) == 1 and "not valid JSON" in lines[0], lines


@pytest.mark.expected_log(r"write refused: the record would be \d+ bytes; a record is at most")
def test_records_larger_than_the_limit_are_efbig_at_write(mount, store, ds):
    from fsdriver.strictjson import MAX_RECORD_BYTES

    ds["big"] = "old"
    fd = os.open(store / "big.json", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"[" + b" " * (MAX_RECORD_BYTES - 2) + b"]")  # exactly the limit: fine
        with pytest.raises(OSError) as e:
            os.write(fd, b" ")
        assert e.value.errno == errno.EFBIG
    finally:
        with pytest.raises(OSError) as e:
            os.close(fd)  # what was written is not stored either
        assert e.value.errno == errno.EFBIG
    assert ds["big"] == "old"
    p = sh(f"head -c {MAX_RECORD_BYTES + 1} /dev/zero | tr '\\0' ' ' > big.json", store)
    assert "File too large" in p.stderr
    assert ds["big"] == "old"


@pytest.mark.expected_log(r"write refused: the record would be \d+ bytes; a record is at most")
def test_a_new_record_refused_as_too_large_can_be_written_at_once(store, ds):
    """Trial finding: after a new record was refused with EFBIG, writing a small value to its name
    failed with ENOENT for a TTL (the kernel still had the refused record's name)."""
    from fsdriver.strictjson import MAX_RECORD_BYTES

    p = sh(f"head -c {MAX_RECORD_BYTES + 1} /dev/zero | tr '\\0' 1 > new.json", store)
    assert "File too large" in p.stderr and "new" not in ds
    p = sh("echo '\"small\"' > new.json", store)
    assert p.returncode == 0, p.stderr
    assert ds["new"] == "small"


def test_a_record_built_by_several_commands_under_one_redirection(store, ds):
    """Trial finding: each external command's exit (a close of the inherited descriptor) committed
    the half-built record, which was refused: seq failed with EINVAL, and under set -e the record
    was never written.  A child's close while the shell holds the descriptor commits nothing."""
    p = sh("set -e; { echo '{\"items\": ['; seq -s, 1 3; echo ']}'; } > r.json; echo done", store)
    assert (p.returncode, p.stdout, p.stderr) == (0, "done\n", "")
    assert ds["r"] == {"items": [1, 2, 3]}
    p = sh("{ echo '{\"a\":'; /bin/echo 1; echo '}'; } > r.json", store)  # a record that was there
    assert (p.returncode, p.stderr) == (0, "")
    assert ds["r"] == {"a": 1}


@pytest.mark.expected_log("the record was created meanwhile")
def test_a_second_writer_of_a_record_being_created_opens_it(store, ds):
    """Trial finding: while one process held a new record open for writing, another's `>` failed
    with ENOENT (the record was not in the backend yet).  Both open it; the last commit wins, and
    a second writer that does not truncate commits only if the record is still absent."""
    fd = os.open(store / "new.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        p = sh("echo '\"second\"' > new.json", store)
        assert (p.returncode, p.stderr) == (0, "")
        assert ds["new"] == "second"
        os.write(fd, b'"first"')
    finally:
        os.close(fd)
    assert ds["new"] == "first"
    fd = os.open(store / "other.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        fd2 = os.open(store / "other.json", os.O_RDWR | os.O_CREAT)  # built on no version
        os.write(fd, b"1")
        os.close(fd)  # the first commit
        os.write(fd2, b"2")
        with pytest.raises(OSError) as e:
            os.close(fd2)
        assert e.value.errno == errno.EEXIST
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    assert ds["other"] == 1


def test_touch_while_the_shell_holds_the_record_read_write(store, ds):
    """Review finding: touch inherits the shell's read-write descriptor and closes it at exit; that
    close applied the time, which (on disk) changed the version the shell's handle commits
    against: its write failed with ESTALE.  The time waits for the last writing handle."""
    ds["m"] = "old"
    p = sh("exec 3<>m.json; touch -d '2003-03-03 UTC' m.json; printf '\"new\"' >&3; exec 3>&-; cat m.json", store)
    assert (p.returncode, p.stdout, p.stderr) == (0, '"new"', "")  # (as long as "old": no truncate)
    assert ds["m"] == "new"


@NOT_JSON
def test_a_writer_holding_read_descriptors_of_the_record_still_commits_at_its_close(store, ds):
    """Review finding: descriptors open for reading that the writer inherited were counted as
    copies of its own, so its close committed nothing and the refusal was only logged."""
    ds["r"] = "old"
    p = sh("exec 4<r.json 5<&4; /bin/echo '{bad' > r.json", store)
    assert p.returncode != 0 and "Invalid argument" in p.stderr
    p = sh("exec 4<r.json 5<&4; /bin/echo '\"new\"' > r.json; cat r.json", store)
    assert (p.returncode, p.stdout) == (0, '"new"\n')
    assert ds["r"] == "new"

