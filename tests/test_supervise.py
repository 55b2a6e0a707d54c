"""Supervised background work and bounded backend calls, without the kernel.

A background task that fails must be logged, counted and retried or dropped, never end the
daemon's nursery (which would kill the mount); read-only backend calls end with Unavailable (EIO)
at the bound; calls that change the backend are never abandoned while the mount runs, and are
abandoned at shutdown.
"""

import errno
import logging
import threading

import pytest
import trio
import trio.testing

import fsdriver.kv as kvmod
from fsdriver.backend.aio import AsyncBackend
from fsdriver.backend.disk import DiskBackend
from fsdriver.core import Filesystem, Options
from fsdriver.errors import Unavailable
from fsdriver.errno_boundary import errno_for
from fsdriver.inodes import ROOT_INO
from fsdriver.kv import DataStore
from fsdriver.staging import Cache
from fsdriver.stats import Stats
from fsdriver.supervise import spawn


async def until(predicate, timeout=30):
    """Wait (bounded) for a state that background work reaches on its own schedule."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


@pytest.mark.expected_log(r"background demo task 'x' failed unexpectedly; dropped")
def test_a_failing_task_is_logged_counted_and_contained(caplog):
    stats = Stats()
    ran = []

    async def broken():
        ran.append(1)
        raise RuntimeError("boom")

    async def main():
        async with trio.open_nursery() as nursery:
            spawn(nursery, stats, "demo", broken, what="demo task 'x'")
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return "nursery survived"

    with caplog.at_level(logging.ERROR, "stashfs.supervise"):
        assert trio.run(main) == "nursery survived"
    assert ran == [1] and stats.background_failures["demo"] == 1
    assert "demo task 'x' failed unexpectedly; dropped" in caplog.text
    assert stats.as_dict()["background_failures"] == {"demo": 1}


@pytest.mark.expected_log(r"background (flaky|always) failed \(S3 unreachable\)")
def test_a_failing_task_is_retried_then_dropped(caplog):
    stats = Stats()
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise Unavailable("S3 unreachable")

    async def always():
        raise Unavailable("S3 unreachable")

    async def main():
        async with trio.open_nursery() as nursery:
            spawn(nursery, stats, "flaky", flaky, retries=5, retry_delay=0.01)
            spawn(nursery, stats, "always", always, retries=2, retry_delay=0.01)
            await until(lambda: len(calls) == 3 and stats.background_failures["always"] == 3)
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.ERROR, "stashfs.supervise"):
        trio.run(main)
    assert stats.background_failures == {"flaky": 2, "always": 3}
    assert "background always failed (S3 unreachable); dropped" in caplog.text
    assert "Traceback" not in caplog.text  # a backend failure is one line, not a bug report


def test_cancellation_passes_through_the_supervisor():
    stats = Stats()
    started = trio.Event()

    async def forever():
        started.set()
        await trio.sleep_forever()

    async def main():
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                spawn(nursery, stats, "loop", forever, retries=None)
                await started.wait()
                nursery.cancel_scope.cancel()  # must end the task, not be "retried"

    trio.run(main)
    assert stats.background_failures == {}


class FailingDeletes(DiskBackend):
    """A real disk backend whose deletes fail while ``failing`` is set (S3 briefly unreachable)."""

    def __init__(self, root):
        super().__init__(root)
        self.failing = threading.Event()
        self.failing.set()
        self.failed = 0

    def delete(self, key, **kw):
        if self.failing.is_set():
            self.failed += 1
            raise Unavailable(f"{key}: cannot reach S3 (test)", key)
        return super().delete(key, **kw)


@pytest.mark.expected_log(r"background expiry of 'kv/s/lock.json' failed \(.*cannot reach S3 \(test\)\); retrying")
def test_a_failed_expiry_delete_keeps_the_mount_and_is_retried(tmp_path, monkeypatch, caplog):
    be = FailingDeletes(tmp_path / "be")
    now = [1_000_000.0]
    monkeypatch.setattr(kvmod.time, "time", lambda: now[0])
    be.failing.clear()
    DataStore("s", be).set("lock", "worker-1", ttl=60)
    be.failing.set()
    now[0] += 61

    async def main():
        fs = Filesystem(be, Cache(tmp_path / "cache"), Options(uid=0, gid=0))
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            store = (await fs.lookup((await fs.lookup(ROOT_INO, "kv")).ino, "s")).ino
            with pytest.raises(Exception) as e:
                await fs.lookup(store, "lock.json")
            assert errno_for(e.value, "lookup", "/kv/s/lock.json") == errno.ENOENT  # expired: missing
            await until(lambda: fs.stats.background_failures["expire"] >= 1)
            # the daemon's nursery is alive: the mount keeps serving
            assert (await fs.lookup(ROOT_INO, "pipeline")).is_dir
            be.failing.clear()  # the backend is back: the retry removes the record
            await until(lambda: not any("lock" in e.key for e in be.list("kv/s/")))
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.ERROR):
        trio.run(main)
    assert "cannot reach S3 (test)" in caplog.text and "retrying in" in caplog.text


class Blocking(DiskBackend):
    """A real disk backend whose ``head`` and ``put_bytes`` can be held (a black-holed endpoint)."""

    def __init__(self, root):
        super().__init__(root)
        self.release = threading.Event()

    def head(self, key):
        self.release.wait(30)
        return super().head(key)

    def put_bytes(self, key, data, **cond):
        self.release.wait(30)
        return super().put_bytes(key, data, **cond)


@pytest.mark.expected_log(r"getattr '/x': the backend did not answer within 0.2s")
def test_a_read_only_call_gives_unavailable_at_the_bound(tmp_path):
    be = Blocking(tmp_path / "be")
    ab = AsyncBackend(be, 4, timeout=0.2)

    async def main():
        with pytest.raises(Unavailable) as e:
            await ab.head("missing")
        assert "0.2" in str(e.value) and errno_for(e.value, "getattr", "/x") == errno.EIO
        assert ab.limiter.borrowed_tokens == 1  # the abandoned thread still holds its slot
        be.release.set()
        await until(lambda: ab.limiter.borrowed_tokens == 0)

    trio.run(main)


def test_a_change_is_not_abandoned_at_the_bound_but_is_at_shutdown(tmp_path):
    be = Blocking(tmp_path / "be")
    ab = AsyncBackend(be, 4, timeout=0.05)

    async def main():
        async def release_later():
            await trio.sleep(0.3)  # longer than the bound: the put must still be waited for
            be.release.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_later)
            info = await ab.put_bytes("k", b"v")
        assert info.size == 1 and be.get_range("k", 0) == b"v"

        be.release.clear()
        outcome = []
        caller = trio.CancelScope()

        async def put():
            with caller:
                try:
                    await ab.put_bytes("k2", b"v2")
                except trio.Cancelled:
                    outcome.append("abandoned")
                    raise

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(put)
                await until(lambda: ab.limiter.borrowed_tokens == 1)
                caller.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert outcome == []  # cancelled, but still waiting for the put (a change)
                ab.abandon_all()  # shutting down
        assert outcome == ["abandoned"] and ab.in_flight == 1
        be.release.set()
        await until(lambda: ab.in_flight == 0)

    trio.run(main)


def test_rmdir_of_a_directory_is_bounded_by_the_backend_timeout(tmp_path):
    """Review finding: the LIST that checks a directory is empty ran as an anonymous function, so it
    counted as a change (never abandoned): rmdir hung against a black-holed endpoint."""
    from fsdriver.errors import Unavailable
    from fsdriver.inodes import ROOT_INO
    from fsdriver.staging import Cache

    from .test_core_races import GatedDisk

    backend = GatedDisk(tmp_path / "be")
    clock = trio.testing.MockClock()  # virtual time stands still while the set-up's threads work

    async def main():
        fs = Filesystem(backend, Cache(tmp_path / "cache"), Options(uid=0, gid=0, backend_timeout=30.0))
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            ns = (await fs.mkdir((await fs.lookup(ROOT_INO, "user")).ino, "alice")).ino
            await fs.mkdir(ns, "d")
            entered, release = backend.gate("list")
            clock.autojump_threshold = 0  # now a wait for a thread jumps to the next deadline
            t0 = trio.current_time()
            with pytest.raises(Unavailable):
                await fs.rmdir(ns, "d")
            assert trio.current_time() - t0 <= 30.0 + 1e-6
            release.set()  # the abandoned LIST ends
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)
