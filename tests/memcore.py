"""Run a `core.Filesystem` over a `MemoryBackend` inside trio, without the kernel: the harness of
the core and adapter tests of the test ladder's middle rung (tests/test_fuse_ops.py,
tests/test_core_kv.py)."""

import os

import trio

from fsdriver.backend.memory import Gate, MemoryBackend
from fsdriver.core import Filesystem, Options
from fsdriver.staging import Cache

LIMIT = 60  # seconds any test body may take: every wait is bounded


def run_core(tmp_path, body, backend=None, **options) -> None:
    """``await body(fs, backend, nursery)`` with the core's background work running in ``nursery``;
    the mount owner is this process's uid unless ``options`` say otherwise."""
    backend = backend if backend is not None else MemoryBackend()
    opts = Options(**{"uid": os.getuid(), "gid": os.getgid(), **options})

    async def main():
        fs = Filesystem(backend, Cache(tmp_path / "cache"), opts)
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            with trio.fail_after(LIMIT):
                await body(fs, backend, nursery)
            nursery.cancel_scope.cancel()

    trio.run(main)


async def entered(gate: Gate) -> None:
    """Wait (bounded) until a backend call reached ``gate``."""
    await trio.to_thread.run_sync(gate.wait_entered)
