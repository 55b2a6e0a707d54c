"""AsyncBackend: blocking backend calls run in threads, never on the trio thread."""

import threading

import trio
import trio.testing

from fsdriver.backend.aio import AsyncBackend
from fsdriver.backend.disk import DiskBackend


class GatedDisk(DiskBackend):
    """head() blocks until the trio side opens the gate: it deadlocks if run on the trio thread."""

    def __init__(self, root):
        super().__init__(root)
        self.gate = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def head(self, key):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            assert self.gate.wait(10), "gate never opened: the call blocked the event loop"
            return super().head(key)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_calls_do_not_block_the_event_loop(tmp_path):
    backend = GatedDisk(tmp_path)
    backend.put_bytes("k", b"abc")
    ab = AsyncBackend(backend, max_concurrency=2)

    async def main():
        results = []
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(lambda: _head(ab, results))
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()  # only reachable because the heads wait in threads
        return results

    results = trio.run(main)
    assert [r.size for r in results] == [3] * 5
    assert backend.max_in_flight <= 2  # the CapacityLimiter bounds requests in flight


async def _head(ab, results):
    results.append(await ab.head("k"))


def test_async_round_trip(tmp_path):
    ab = AsyncBackend(DiskBackend(tmp_path))

    async def main():
        await ab.put_bytes("d/a", b"1")
        await ab.put_bytes("d/b", b"22")
        listing = await ab.list("d/", "/")
        data = await ab.get_range("d/b", 1)
        await ab.delete("d/a")
        return [e.key for e in listing], data, await ab.list("d/")

    keys, data, after = trio.run(main)
    assert keys == ["d/", "d/a", "d/b"] and data == b"2"
    assert [e.key for e in after] == ["d/", "d/b"]


def test_an_unresponsive_backend_costs_one_bound_then_short_probes(tmp_path):
    """Issue 10, item 9: a stat that needs two lookups against a black-holed endpoint waited two
    whole bounds.  After one read was abandoned, reads wait a probe bound until the backend answers."""
    import pytest

    from fsdriver.errors import Unavailable

    backend = GatedDisk(tmp_path / "b")
    backend.put_bytes("k", b"v")
    ab = AsyncBackend(backend, 4, timeout=30.0)

    clock = trio.testing.MockClock(autojump_threshold=0)  # a wait for a thread jumps to the deadline

    async def main():
        t0 = trio.current_time()
        with pytest.raises(Unavailable):
            await ab.head("k")  # the gate is shut: nobody answers
        t1 = trio.current_time()
        with pytest.raises(Unavailable):
            await ab.head("k")
        t2 = trio.current_time()
        assert t1 - t0 == pytest.approx(30.0) and t2 - t1 == pytest.approx(3.0)
        assert ab.unresponsive
        clock.autojump_threshold = float("inf")  # from here on, virtual time stands still
        backend.gate.set()  # it answers again (the abandoned calls too)
        assert (await ab.head("k")).size == 1
        assert not ab.unresponsive
        while backend.in_flight:  # the abandoned threads end once the gate is open (each waits <= 10 s)
            await trio.to_thread.run_sync(threading.Event().wait, 0.01)

    trio.run(main, clock=clock)


def test_a_call_the_clients_own_timeouts_end_counts_as_unresponsive(tmp_path):
    """The S3 client's timeouts end a request to a black-holed endpoint at about half the bound
    (NoAnswer), before the bound does: that, too, must switch later reads to the probe bound (an
    `ls` of a directory holding a pending upload took 95 s at a 30 s bound).  An error answer (a
    503, throttling) or a quick refusal does not: the backend is there."""
    import pytest

    from fsdriver.errors import NoAnswer, Unavailable

    class Failing(DiskBackend):
        error = Unavailable("k: S3 unavailable (503)")

        def head(self, key):
            raise self.error

    backend = Failing(tmp_path / "b")
    ab = AsyncBackend(backend, 4, timeout=30.0)

    async def main():
        with pytest.raises(Unavailable):
            await ab.head("k")  # a 503
        assert not ab.unresponsive
        backend.error = NoAnswer("k: S3 did not answer (read timeout)")
        with pytest.raises(NoAnswer):
            await ab.head("k")
        assert ab.unresponsive

    trio.run(main)
