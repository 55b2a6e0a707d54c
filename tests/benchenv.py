"""The `env` fixture of the benchmark's tests: a `bench.harness.Env` (scratch directory, mounts,
moto) closed after the test, which fails if closing it found a problem (a mount left, a daemon
still running).  Import it into a test module to use it."""

import pytest

from bench.harness import Env


@pytest.fixture
def env():
    e = Env()
    try:
        yield e
    finally:
        assert e.close() == []
