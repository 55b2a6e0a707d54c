import compileall
import fcntl
import functools
import importlib.util
import itertools
import logging
import os
import shutil
import sys
import time

import boto3
import pytest

from fsdriver.backend.disk import DiskBackend
from fsdriver.backend.s3 import S3Backend

from . import logguard, mounting, sharedpy
from .mounting import force_unmount, make_mount, require_fuse
from .servers import TEST_ENV, MotoServer

BUCKET = "stashfs-test"
_counter = itertools.count()


def pytest_configure(config):
    """Compile the project's packages once for the run (the controller, not each worker).  Every
    mount starts `python -m mountctl` and a daemon, hundreds in all, and where the environment
    says PYTHONDONTWRITEBYTECODE (as it may), each of them compiled fsdriver and mountctl from
    source: a fifth of their CPU.  The .pyc files go where Python puts them by itself
    (__pycache__, ignored by git); Python checks them against the sources' mtimes as always."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for name in ("fsdriver", "mountctl", "bench"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            for d in spec.submodule_search_locations:
                compileall.compile_dir(d, quiet=1)


def _share_botocore_data() -> None:
    """Every S3Backend (fixtures, DataStores, a mount's `backend`, hundreds per run) makes its own
    boto3 session, whose loader parsed botocore's S3 model and endpoint files again: JSON decoding
    was a third of the test processes' CPU.  Here the loaders of this process share what they
    load (per search path and arguments): what one session's clients already share.  Only the
    test processes; the daemons and commands they start load as they do in production."""
    from botocore import loaders

    shared: dict = {}

    def sharing(name, method):
        @functools.wraps(method)
        def load(self, *args, **kwargs):
            key = (name, tuple(self.search_paths), args, tuple(sorted(kwargs.items())))
            if key not in shared:
                shared[key] = method(self, *args, **kwargs)
            return shared[key]
        return load

    for name in ("list_available_services", "determine_latest_version", "list_api_versions",
                 "load_service_model", "load_data_with_path"):
        setattr(loaders.Loader, name, sharing(name, getattr(loaders.Loader, name)))


_share_botocore_data()


def _isolated(name: str) -> bool:
    """AWS and stashfs settings of the machine; not the variables that steer the test run itself
    (STASHFS_REQUIRE_FUSE in CI, STASHFS_MODEL_* for a longer model-based run)."""
    if name == "STASHFS_REQUIRE_FUSE" or name.startswith("STASHFS_MODEL_"):
        return False
    return name.startswith("AWS_") or name.startswith("STASHFS_")


@pytest.fixture(scope="session", autouse=True)
def _aws_test_env():
    """Tests never use real credentials or depend on the machine's AWS settings."""
    saved = {k: v for k, v in os.environ.items() if _isolated(k)}
    for k in saved:
        del os.environ[k]
    os.environ.update(TEST_ENV)
    yield
    for k in list(os.environ):
        if _isolated(k):
            del os.environ[k]
    os.environ.update(saved)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject.toml's addopts): one worker more than there are CPUs.  Most tests
    wait on the kernel, a daemon or the S3 server rather than compute; more workers than that only
    add load (the suite must pass on a loaded 2-core machine).  STASHFS_TEST_WORKERS overrides."""
    if os.environ.get("STASHFS_TEST_WORKERS"):
        return int(os.environ["STASHFS_TEST_WORKERS"])
    return len(os.sched_getaffinity(0)) + 1


SYSTEM_WIDE_WAIT = 900  # seconds: far above any one test's length, even on a loaded machine


def _flock(f, mode: int, what: str) -> None:
    """flock ``f``, bounded: a test never waits forever on another worker."""
    deadline = time.monotonic() + SYSTEM_WIDE_WAIT
    while True:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"waited {SYSTEM_WIDE_WAIT}s for {what}", pytrace=False)
            time.sleep(0.01)  # another worker's test holds the lock: flock has no timeout


@pytest.fixture(autouse=True)
def _system_wide(request, tmp_path_factory):
    """Tests marked ``system_wide`` change what every other test sees (dropping the kernel's
    caches): under pytest-xdist such a test runs alone.  Every test holds a shared lock for its
    set-up, call and teardown; a ``system_wide`` one takes it exclusively.  The turnstile gives
    the waiting exclusive test its turn: no new test starts while it waits."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield  # one process: tests run one at a time anyway
        return
    run_dir = tmp_path_factory.getbasetemp().parent  # shared by the workers of this run
    exclusive = request.node.get_closest_marker("system_wide") is not None
    with open(run_dir / "system-wide.turnstile", "a") as turnstile, open(run_dir / "system-wide.lock", "a") as lock:
        _flock(turnstile, fcntl.LOCK_EX, "the turnstile of system-wide tests")
        try:
            _flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH,
                   "the other workers' tests to end" if exclusive else "a system-wide test to end")
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def log_guard(request):
    """Fail the test if the core or a daemon it mounted logged a traceback or a warning that the
    test did not declare with ``@pytest.mark.expected_log(regex, ...)`` (tests/logguard.py)."""
    collector = logguard.Collector()
    logger = logging.getLogger(logguard.LOGGER)
    logger.addHandler(collector)
    mounting.MADE.clear()
    yield
    logger.removeHandler(collector)
    texts = list(collector.texts)
    for m in mounting.MADE:
        texts += [f"{m.log_file}: {t}" for t in logguard.daemon_records(m.log())]
    mounting.MADE.clear()
    bad = logguard.unexpected(texts, logguard.patterns_of(request.node))
    if bad:
        pytest.fail("unexpected warnings or tracebacks in the log (declare expected ones with "
                    "@pytest.mark.expected_log):\n" + "\n".join(bad)[-6000:], pytrace=False)


@pytest.fixture(scope="session")
def other_user_python():
    """An interpreter with this project and its packages that other users (nobody, the test
    users) can run, also when the test interpreter or the checkout lives under /root (0700):
    this one, or a world-readable copy made for the session (tests/sharedpy.py)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run commands as another user")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if sharedpy.usable_by(sys.executable):
        sharedpy.PYTHON = sys.executable
        yield sys.executable
        return
    wrapper = sharedpy.build()
    try:
        assert sharedpy.usable_by(str(wrapper)), f"{wrapper} does not work for user nobody"
        sharedpy.PYTHON = str(wrapper)
        yield str(wrapper)
    finally:
        sharedpy.PYTHON = None
        sharedpy.remove(wrapper)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory, _aws_test_env):
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture
def s3_url(moto_server):
    """A fresh, empty S3 backend URL: its own bucket (moto scans a whole bucket on every LIST),
    with a prefix, so the prefix handling is exercised too."""
    bucket = f"{BUCKET}-{next(_counter)}"
    boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/data"


@pytest.fixture
def s3_backend(moto_server, s3_url):
    bucket = s3_url.split("/")[2]
    b = S3Backend(bucket, "data", endpoint_url=moto_server.url,
                  multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024)
    yield b
    b.close()


@pytest.fixture
def disk_backend(tmp_path):
    return DiskBackend(tmp_path / "store")


@pytest.fixture(params=["disk", "s3"])
def backend(request):
    """The same test body against each backend."""
    return request.getfixturevalue(f"{request.param}_backend")


def backend_env(kind: str, request, tmp_path):
    """(url, env) of a fresh backend of ``kind`` for a daemon or CLI process."""
    env = dict(os.environ)
    if kind == "disk":
        (tmp_path / "backend").mkdir(exist_ok=True)  # mountctl refuses a local backend that does not exist
        return str(tmp_path / "backend"), env
    server = request.getfixturevalue("moto_server")
    env["AWS_ENDPOINT_URL"] = server.url
    return request.getfixturevalue("s3_url"), env


@pytest.fixture(params=["disk", "s3"])
def mount(request, tmp_path):
    """A real stashfs mount through the kernel, on disk or S3; unmounted even if the test fails."""
    require_fuse()
    url, env = backend_env(request.param, request, tmp_path)
    m = make_mount(tmp_path, url, env, extra=getattr(request, "param_extra", ()))
    m.kind = request.param
    m.mount()
    yield m
    if m.mounted:
        m.umount()
    force_unmount(m.path)
    log = m.log()
    assert "Traceback" not in log, f"the daemon logged a traceback:\n{log[-5000:]}"
