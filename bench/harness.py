"""The benchmark's environment: temp dirs, the moto server, the counting proxy, boto3 clients, mounts.

Everything lives under one temp dir in /tmp and is torn down by `Env.close()`: every mount is
unmounted (``mountctl umount``, then ``fusermount3 -u -z`` in a finally block), the proxy and the
moto server are stopped, and the temp dir is removed.

S3 mounts use ``env.bucket`` (`Env.use_bucket`: one bucket per latency pass) and are named with
``env.tag`` appended, so each pass has its own mount points and caches.  An S3 mount records the
proxy's counts over its whole life (``Mount.lifetime``: requests, errors, 404s by path, and the
GETs answered 404 again within the daemon's ``--metadata-ttl``).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

from .proxy import CountingProxy
from .tls import self_signed

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests.servers is part of the repository, not of the package
    sys.path.insert(0, str(REPO))

from tests.servers import TEST_ENV, MotoServer  # noqa: E402

BUCKET = "stashfs-bench"
MiB = 1 << 20


def clean_env() -> dict:
    """The environment for everything the benchmark starts: test credentials, no AWS_CA_BUNDLE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STASHFS_"))}
    env.update(TEST_ENV)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def s3_client(endpoint: str, pool: int = 16, verify=None):
    """``verify``: the CA bundle of an https endpoint (None: boto3's default)."""
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", verify=verify,
        config=Config(max_pool_connections=pool, s3={"addressing_style": "path"},
                      retries={"mode": "standard", "max_attempts": 3}),
    )


def drop_caches() -> bool:
    """Drop the kernel page cache (root only); False when not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def proc_status(pid: int) -> dict:
    """VmRSS / VmHWM of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) * 1024
    return out


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds used by a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Mount:
    """One stashfs mount made with ``mountctl``; a context manager that always unmounts."""

    def __init__(self, env: "Env", name: str, backend: str, *, s3: bool, extra: tuple = ()):
        self.env = env
        self.name = name
        self.path = env.root / f"mnt-{name}"
        self.cache_dir = env.root / f"cache-{name}"
        self.log_file = env.root / f"{name}.log"
        self.backend = backend
        self.s3 = s3
        self.extra = list(extra)
        self.mounted = False
        self._before: dict | None = None
        self._t0 = 0.0
        self.metadata_ttl = 1.0  # the daemon's --metadata-ttl (read from its command line)
        self.lifetime: dict | None = None  # S3: the proxy's counts from mounting to unmounted

    def _mountctl(self, *args, check=True):
        p = subprocess.run([sys.executable, "-m", "mountctl", *args], env=self.env.child_env,
                           capture_output=True, text=True, timeout=180)
        if check and p.returncode != 0:
            raise RuntimeError(f"mountctl {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}"
                               f"\n--- daemon log ---\n{self.log()[-3000:]}")
        return p

    def __enter__(self) -> "Mount":
        self.path.mkdir(exist_ok=True)
        args = ["mount", str(self.path), "--backend", self.backend, "--cache-dir", str(self.cache_dir),
                "--log-file", str(self.log_file), *self.extra]
        if self.s3:
            args += ["--endpoint-url", self.env.proxy.url]
        else:
            args.append("--create")  # a fresh local store for each run
        self.env.mounts.append(self)
        if self.s3:
            self._before = self.env.proxy.snapshot()
            self._t0 = time.perf_counter()
        self._mountctl(*args)
        self.mounted = True
        if self.s3:
            self.metadata_ttl = daemon_metadata_ttl(self.status()["pid"])
        return self

    def __exit__(self, *exc) -> None:
        self.umount()

    def umount(self) -> None:
        try:
            if self.mounted:
                p = self._mountctl("umount", str(self.path), check=False)
                if p.returncode != 0:
                    print(f"bench: mountctl umount {self.path}: {p.stderr.strip()}", file=sys.stderr)
        finally:
            self.mounted = False
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True, timeout=30)
            if self._before is not None and self.lifetime is None:
                self.lifetime = self.env.proxy.counts.delta(self._before, self.env.proxy.snapshot())
                times = self.env.proxy.counts.not_found_between(self._t0, time.perf_counter())
                self.lifetime["repeated_404"] = repeated_404(times, self.metadata_ttl)
                self.lifetime["metadata_ttl"] = self.metadata_ttl

    def status(self) -> dict:
        return json.loads(os.getxattr(self.path / ".stashfs-control", "user.stashfs.status"))

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


class FloorMount:
    """A pyfuse3 floor daemon (``python -m MODULE ARGS... MOUNTPOINT``: `bench.floorfs`, a do-nothing
    passthrough over a directory, or `bench.s3floor`, one object streamed by one GET), with the
    stashfs mounts' 1 MiB kernel read-ahead; a context manager that always unmounts (``fusermount3
    -u -z``)."""

    s3 = False
    lifetime = None

    def __init__(self, env: "Env", name: str, module: str, *args: str):
        self.env, self.name, self.module, self.args = env, name, module, args
        self.path = env.root / f"mnt-{name}"
        self.log_file = env.root / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "FloorMount":
        self.path.mkdir(exist_ok=True)
        dev = os.stat(self.path).st_dev
        self.env.mounts.append(self)
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args, str(self.path)],
                                         cwd=REPO, env=self.env.child_env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while os.stat(self.path).st_dev == dev:  # mounted once the mount point is another device
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.umount()
                raise RuntimeError(f"{self.module} did not mount {self.path}:\n{self.log()[-2000:]}")
            time.sleep(0.05)
        st = os.stat(self.path)
        try:  # as stashfs's mounts set it (fsdriver.daemon): 1 MiB
            with open(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb", "w") as f:
                f.write("1024")
        except OSError:
            pass
        return self

    def __exit__(self, *exc) -> None:
        self.umount()

    def umount(self) -> None:
        if self.proc is None:
            return
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True, timeout=30)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


class Env:
    """Temp dir, moto server, counting proxy and boto3 clients for one benchmark run."""

    def __init__(self, keep: bool = False, tls: bool = False):
        """``tls``: the proxy serves HTTPS (a self-signed certificate that every client of it, the
        mounts' daemons included, is given as ``AWS_CA_BUNDLE``), as S3 does."""
        self.keep = keep
        self.tls = tls
        self.root = Path(tempfile.mkdtemp(prefix="stashfs-bench-", dir="/tmp"))
        self.child_env = clean_env()
        self.mounts: list[Mount] = []
        self.moto: MotoServer | None = None
        self.proxy: CountingProxy | None = None
        self.bucket = BUCKET  # the bucket S3 mounts and scenarios use; see `use_bucket`
        self.buckets = {BUCKET}
        self.tag = ""  # appended to the names of S3 mounts (and so to their mount points and cache dirs)

    def start(self) -> "Env":
        # boto3 in this process reads the same variables as the processes it starts.
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[k]
        os.environ.update(TEST_ENV)
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
        self.moto = MotoServer(self.root)
        self.moto.start()
        cert = None
        if self.tls:
            cert, key = self_signed(self.root)
            self.child_env["AWS_CA_BUNDLE"] = str(cert)
        self.proxy = CountingProxy(self.moto.url, tls=(cert, key) if cert else None).start()
        self.direct = s3_client(self.moto.url, pool=32)  # set-up only: not counted
        # the references: counted by the proxy
        self.raw = s3_client(self.proxy.url, pool=32, verify=str(cert) if cert else None)
        self.direct.create_bucket(Bucket=BUCKET)
        return self

    def use_bucket(self, name: str) -> None:
        """Create bucket ``name`` straight on moto (uncounted) and make it the one scenarios use:
        each latency pass gets a bucket of its own, so no pass sees what another left behind."""
        if name not in self.buckets:
            self.direct.create_bucket(Bucket=name)
            self.buckets.add(name)
        self.bucket = name

    def mount_s3(self, name: str, *extra) -> Mount:
        """A fresh S3 mount of ``env.bucket``, named ``name`` + ``env.tag`` (its own mount point and cache)."""
        return Mount(self, name + self.tag, f"s3://{self.bucket}", s3=True, extra=extra)

    def mount_disk(self, name: str, store: Path, *extra) -> Mount:
        return Mount(self, name, str(store), s3=False, extra=extra)

    def mount_floor(self, name: str, backing: Path) -> FloorMount:
        """`bench.floorfs` over ``backing``: what any pyfuse3 daemon costs at the least."""
        return FloorMount(self, name, "bench.floorfs", str(backing))

    def mount_s3_floor(self, name: str, key: str, size: int) -> FloorMount:
        """`bench.s3floor` serving ``key`` of ``env.bucket`` (``size`` bytes) through the proxy: what
        any pyfuse3 daemon costs at the least to stream an object to a sequential reader."""
        url = self.raw.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=3600)
        return FloorMount(self, name + self.tag, "bench.s3floor", url, str(size))

    def mount_s3_write_floor(self, name: str, prefix: str) -> FloorMount:
        """`bench.s3writefloor` uploading the files created in it to ``prefix`` of ``env.bucket``
        through the proxy: what a pyfuse3 daemon that uploads as ``upload_file`` does costs at the
        least for the big write."""
        return FloorMount(self, name + self.tag, "bench.s3writefloor", self.proxy.url, self.bucket, prefix)

    def close(self, save_logs_to: Path | None = None) -> list[str]:
        """Tear everything down; returns problems seen (daemon tracebacks, leftover mounts).

        A daemon log with a traceback is copied to ``save_logs_to`` (the temp dir is removed).
        """
        problems = []
        for m in self.mounts:
            try:
                m.umount()
            except Exception as e:  # keep tearing down the rest
                print(f"bench: unmounting {m.path}: {e}", file=sys.stderr)
        for m in {m.log_file: m for m in self.mounts}.values():
            text = m.log()
            if "Traceback" not in text:
                continue
            where = m.log_file
            if save_logs_to is not None:
                where = save_logs_to / f"stashfs-bench-{m.name}.log"
                shutil.copyfile(m.log_file, where)
            lines = text[text.index("Traceback"):].splitlines()[1:]
            last = next((l for l in lines if l and not l[0].isspace()
                         and not l.startswith(("Traceback", "During handling", "The above"))), "?")
            problems.append(f"daemon log of mount '{m.name}' has a traceback ({last}); log: {where}")
        if self.proxy is not None:
            self.proxy.stop()
        if self.moto is not None:
            self.moto.stop()
        still = [m.path for m in self.mounts if os.path.ismount(m.path)]
        if still:  # never delete through a mount that is still there
            problems.append(f"still mounted, temp dir {self.root} left in place: {still}")
        elif not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        return problems


def daemon_metadata_ttl(pid: int, default: float = 1.0) -> float:
    """The ``--metadata-ttl`` on a daemon's command line (``default``, the daemon's, when absent)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
        return float(args[args.index("--metadata-ttl") + 1])
    except (OSError, ValueError, IndexError):
        return default


def repeated_404(times: dict[str, list[float]], ttl: float) -> dict[str, int]:
    """GETs answered 404 sooner than ``ttl`` (less 10% for timing) after the previous 404 of the
    same key: requests a mount that cached the absence for its metadata TTL would not have sent."""
    out = {}
    for key, ts in times.items():
        if not key.startswith("GET "):
            continue
        n = sum(1 for a, b in zip(ts, ts[1:]) if b - a < 0.9 * ttl)
        if n:
            out[key] = n
    return out


def daemon_figures(m: "Mount", cpu0: float | None = None) -> dict:
    """The daemon's pid, peak RSS (VmHWM), RSS now and CPU seconds (since ``cpu0`` when given)."""
    pid = m.status()["pid"]
    mem = proc_status(pid)
    cpu = proc_cpu(pid)
    return {"pid": pid, "vm_hwm": mem["VmHWM"], "rss": mem["VmRSS"],
            "cpu_s": cpu - cpu0 if cpu0 is not None else cpu}


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
