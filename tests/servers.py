"""Local servers for tests: moto's S3/SSM server as a separate process on a loopback port."""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``moto_server`` in its own process; `stop()`/`start()` simulate an outage on one port."""

    def __init__(self, log_dir: Path, extra_env: dict | None = None, buckets: tuple = ()):
        """``buckets``: made before the server answers, at every start (a restart after an outage
        finds them, as on S3, before any client can ask)."""
        self.extra_env = extra_env or {}
        self.buckets = tuple(buckets)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / "moto.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        # moto_server's own main, by way of tests/motoserve.py (it skips a per-request scan)
        launcher = Path(__file__).with_name("motoserve.py")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | TEST_ENV | self.extra_env
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(launcher), "-H", "127.0.0.1", "-p", str(self.port),
             *(a for b in self.buckets for a in ("--bucket", b))],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).close()
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)  # polling a server's readiness, not synchronising tests
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
