"""Which close() uploads (fsdriver.closes): the writer's close is durable, a spawned child's close of
the descriptor it inherited uploads nothing (issue 12: every fork/exec uploaded the whole file)."""

import os
import subprocess
import sys


def puts(mount) -> int:
    """Uploads of file content the daemon made so far."""
    return mount.status()["backend_requests"].get("put_file", 0)


def test_children_spawned_by_a_writer_do_not_upload_its_file(mount):
    d = mount.path / "pipeline" / "p1"
    d.mkdir(parents=True)
    path = d / "log.bin"
    chunk = os.urandom(256 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        before = puts(mount)
        for i in range(4):
            os.write(fd, chunk)
            os.set_inheritable(fd, i % 2 == 0)  # inherited through exec, or closed by it
            subprocess.run([sys.executable, "-c", "pass"], close_fds=False, check=True)
        assert mount.status()["inherited_closes"] >= 4
        assert puts(mount) == before  # nothing uploaded by the children's closes
    finally:
        os.close(fd)  # the writer's close: durable on return
    assert puts(mount) == before + 1
    assert mount.backend.get_range("pipeline/p1/log.bin", 0) == chunk * 4


def test_the_openers_close_is_durable_while_a_child_still_holds_the_file(mount):
    d = mount.path / "pipeline" / "p1"
    d.mkdir(parents=True)
    path = d / "shared.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"written by the parent\n")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             pass_fds=(fd,))
    try:
        os.close(fd)  # the child still holds the open file; this close ends the opener's use of it
        assert mount.backend.get_range("pipeline/p1/shared.txt", 0) == b"written by the parent\n"
    finally:
        child.communicate(b"", timeout=60)
    assert child.returncode == 0


def test_a_child_that_writes_after_the_opener_closed_uploads_at_its_close(mount):
    d = mount.path / "pipeline" / "p1"
    d.mkdir(parents=True)
    path = d / "out.txt"
    with open(path, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys, os; sys.stdin.read(); os.write(1, b'from the child\\n')"],
            stdin=subprocess.PIPE, stdout=out)
    # the parent closed its copy (uploading the empty file); the child writes and exits
    child.communicate(b"", timeout=60)
    assert child.returncode == 0
    assert mount.backend.get_range("pipeline/p1/out.txt", 0) == b"from the child\n"
    assert path.read_bytes() == b"from the child\n"


def test_a_writers_close_uploads_though_another_thread_holds_the_file(mount):
    """The opener's id is the thread's: a reader opened by another thread of the same process is
    another handle of the file, not a copy of the writer's descriptor."""
    import threading

    d = mount.path / "pipeline" / "p1"
    d.mkdir(parents=True)
    path = d / "threads.txt"
    fds = {}
    t = threading.Thread(target=lambda: fds.setdefault("w", os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)))
    t.start()
    t.join()
    t = threading.Thread(target=lambda: fds.setdefault("r", os.open(path, os.O_RDONLY)))
    t.start()
    t.join()
    try:
        os.write(fds["w"], b"written while another thread reads\n")
        skipped = mount.status()["inherited_closes"]
        os.close(fds["w"])
        assert mount.status()["inherited_closes"] == skipped  # this close uploaded, not the release after it
        assert mount.backend.get_range("pipeline/p1/threads.txt", 0) == b"written while another thread reads\n"
    finally:
        os.close(fds["r"])


def test_a_job_appending_to_the_log_it_inherited_uploads_at_its_close(mount):
    """``exec >>log 2>&1`` then ``cmd >> log``: the job's own open of the log is uploaded by its
    close, although its stderr (inherited from the opener, who still writes) is the same file."""
    d = mount.path / "pipeline" / "p1"
    d.mkdir(parents=True)
    log = d / "job.log"
    job = ("import os, sys\n"
           "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
           "os.write(fd, b'from the job\\n')\n"
           "os.close(fd)\n")
    with open(log, "ab") as out:
        out.write(b"started\n")
        out.flush()
        skipped = mount.status()["inherited_closes"]
        subprocess.run([sys.executable, "-c", job, str(log)], stderr=out, check=True, timeout=60)
        # one close skipped: the job's exit closing the stderr it inherited; not its own close
        assert mount.status()["inherited_closes"] == skipped + 1
        assert mount.backend.get_range("pipeline/p1/job.log", 0) == b"started\nfrom the job\n"
