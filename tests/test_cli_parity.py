"""mountctl behaves like the Python API it sits on: the pipeline id from $STASHFS_PIPELINE_ID."""

import os
import subprocess
import sys


def run(*args, env, input=None):
    return subprocess.run([sys.executable, "-m", "mountctl", *args], env=env, input=input,
                          capture_output=True, timeout=60)


def test_data_commands_take_the_pipeline_from_the_environment(tmp_path):
    (tmp_path / "be").mkdir()
    env = dict(os.environ, STASHFS_BACKEND=str(tmp_path / "be"), STASHFS_PIPELINE_ID="p7")
    assert run("data", "put", "rows.csv", "-", env=env, input=b"a,b\n").returncode == 0
    assert run("data", "gets", "rows.csv", "--pipeline", "p7", env=env).stdout == b"a,b\n"
    assert run("data", "ls", env=env).stdout == b"rows.csv\n"
    assert run("data", "ls", "--user", "u1", env=env).stdout == b""  # --user still picks the user's store

    del env["STASHFS_PIPELINE_ID"]
    p = run("data", "ls", env=env)
    assert p.returncode == 2
    assert p.stderr.decode().splitlines() == [
        "mountctl: which store? give --pipeline ID or --user [NAME], or set STASHFS_PIPELINE_ID"]
