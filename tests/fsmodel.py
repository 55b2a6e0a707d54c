"""A reference model of what one mount must show, a Hypothesis state machine checking it, and the
drivers that apply its operations: to the core without the kernel (`CoreDriver`), or with os.*
calls to a real mount or to a plain local directory (`PathDriver`).

The model (docs/semantics.md, "Metadata and caching" and "Writing"):

- ``truth`` is what the backend holds below the namespace: ``path -> bytes`` (a file) or `DIR`.
- **Own writes are exact.**  Whatever this mount did (create, write, append, truncate, rename,
  unlink, mkdir, rmdir) it must show at once, in every view: content, size, ``stat``, the
  directory listing with its sizes (``ls -l``), and removals; whatever listing or attribute
  cache it holds.  Every ``close()`` of a written file returns only once the object is in the
  backend, so the backend is checked too.
- **Other nodes' changes may be stale for one TTL.**  An object put or deleted straight in the
  backend may be shown or not (``allowed[path]`` holds every state the mount may still show),
  until the metadata TTL has passed (the injected clock moves past it): from then on the mount
  must show ``truth`` exactly.  Reading a file another node rewrote within the TTL may also fail
  with ESTALE (the mount pins reads to the version it knows).
- Kept out of the model: writes that build on existing content (append, write at an offset,
  truncate, rename source) while another node's change to that file is within the TTL (their base
  is not defined by the docs beyond "last close wins"); other nodes' directory changes; files
  kept open across steps.

Names: files ``f1``..``f3`` and directories ``a``, ``b``, ``a/c`` inside a fresh namespace
``/pipeline/<id>`` per example, so a name is never a file on one side and a directory on the other.
"""

import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections import Counter
from pathlib import Path

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fsdriver.core import Filesystem, Options
from fsdriver.errno_boundary import errno_for
from fsdriver.inodes import ROOT_INO
from fsdriver.staging import Cache

DIR = "<dir>"
ABSENT = None
FILES = ("f1", "f2", "f3")
DIRS = ("a", "b", "a/c")
FILE_PATHS = tuple(f"{d}/{f}" if d else f for d in ("",) + DIRS for f in FILES)
TTL = 1.0

_ids = itertools.count()
log = logging.getLogger("stashfs.tests.model")


def parent_of(p: str) -> str:
    return p.rpartition("/")[0]


def name_of(p: str) -> str:
    return p.rpartition("/")[2]


def shape(state):
    """What ``stat`` shows of a state: (is_dir, size); a directory's size is not compared."""
    return (True, None) if state == DIR else (False, len(state))


def applied(base, how: str, data: bytes, off: int) -> bytes:
    """The content after writing ``data`` to ``base`` (None: no file) the way ``how`` says."""
    base = base or b""
    if how == "trunc":
        return data
    if how == "append":
        return base + data
    out = bytearray(base)
    if not data:
        return base  # writing nothing at an offset does not extend the file (pwrite)
    if off > len(out):
        out += bytes(off - len(out))
    out[off:off + len(data)] = data
    return bytes(out)


class Model:
    def __init__(self):
        self.truth: dict = {"": DIR}
        self.allowed: dict = {}  # path -> states the mount may still show (another node's change)

    def state(self, p):
        return self.truth.get(p, ABSENT)

    def may_show(self, p) -> set:
        return self.allowed.get(p) or {self.state(p)}

    def exact(self, p) -> bool:
        return p not in self.allowed

    def _set(self, p, state):
        if state is ABSENT:
            self.truth.pop(p, None)
        else:
            self.truth[p] = state

    def own(self, p, state):
        self._set(p, state)
        self.allowed.pop(p, None)

    def other(self, p, state):
        self.allowed[p] = self.may_show(p) | {state}
        self._set(p, state)

    def ttl_passed(self):
        self.allowed.clear()

    def children(self, d) -> list:
        return [p for p in self.truth if p and parent_of(p) == d]

    def universe(self, d) -> list:
        """Every name that may appear in a listing of ``d``."""
        return list(FILES) + [name_of(x) for x in DIRS if parent_of(x) == d]


def expect_errno(e: OSError, *codes):
    assert e.errno in codes, f"errno {e.errno} ({os.strerror(e.errno)}), expected one of {codes}: {e}"


class FsMachine(RuleBasedStateMachine):
    """Random operations on one namespace, checked against `Model` after each step.

    Subclasses set ``make_driver`` (a callable returning a driver) and ``other_nodes``.
    """

    make_driver = None
    other_nodes = True

    def __init__(self):
        super().__init__()
        self.driver = type(self).make_driver()
        self.model = Model()
        self.look_always = False

    @initialize(look=st.booleans())
    def look_after_every_step(self, look):
        """In half the examples, ``ls -l`` every directory after every step (as a file manager
        would): listings are then always fresh when the next operation runs."""
        self.look_always = look

    def teardown(self):
        self.driver.close()

    # -- checks ------------------------------------------------------------------------------

    def _in_backend(self, p, want):
        got = self.driver.backend_get(p)
        assert got == want, f"{p}: the backend holds {got!r}, expected {want!r} (close() returned)"

    def _check_shape(self, p, seen):
        shapes = {shape(s) for s in self.model.may_show(p) if s is not ABSENT}
        if seen[0]:
            assert (True, None) in shapes, f"{p}: shown as a directory; may show {self.model.may_show(p)}"
        else:
            assert (False, seen[1]) in shapes, (
                f"{p}: shown as a file of {seen[1]} bytes; may show {self.model.may_show(p)}")

    # -- this mount's own operations ---------------------------------------------------------

    @rule(p=st.sampled_from(FILE_PATHS), data=st.binary(max_size=20),
          how=st.sampled_from(["trunc", "append", "at"]), off=st.integers(0, 24))
    def write(self, p, data, how, off):
        if how != "trunc" and not self.model.exact(p):
            return  # builds on a base another node changed within the TTL: out of the model
        if self.model.state(parent_of(p)) != DIR:
            try:
                self.driver.write(p, data, how, off)
            except OSError as e:
                return expect_errno(e, errno.ENOENT)
            raise AssertionError(f"write {p}: succeeded in a missing directory")
        want = applied(self.model.state(p), how, data, off)
        self.driver.write(p, data, how, off)
        self.model.own(p, want)
        self._in_backend(p, want)

    @rule(p=st.sampled_from(FILE_PATHS), size=st.integers(0, 24))
    def truncate(self, p, size):
        if not self.model.exact(p):
            return
        base = self.model.state(p)
        try:
            self.driver.truncate(p, size)
        except OSError as e:
            assert base is ABSENT, f"truncate {p}: {e}"
            return expect_errno(e, errno.ENOENT)
        assert base is not ABSENT, f"truncate {p}: succeeded on a missing file"
        want = base[:size].ljust(size, b"\0")
        self.model.own(p, want)
        self._in_backend(p, want)

    @rule(src=st.sampled_from(FILE_PATHS), dst=st.sampled_from(FILE_PATHS))
    def rename(self, src, dst):
        if not self.model.exact(src) or src == dst:
            return
        content = self.model.state(src)
        try:
            self.driver.rename(src, dst)
        except OSError as e:
            assert content is ABSENT or self.model.state(parent_of(dst)) != DIR, f"rename {src} {dst}: {e}"
            return expect_errno(e, errno.ENOENT)
        assert content is not ABSENT and self.model.state(parent_of(dst)) == DIR, f"rename {src} {dst} succeeded"
        self.model.own(dst, content)
        self.model.own(src, ABSENT)
        self._in_backend(dst, content)
        self._in_backend(src, None)

    @rule(p=st.sampled_from(FILE_PATHS))
    def unlink(self, p):
        may = self.model.may_show(p)
        try:
            self.driver.unlink(p)
        except OSError as e:
            assert ABSENT in may, f"unlink {p}: {e}; may show {may}"
            return expect_errno(e, errno.ENOENT)
        assert may - {ABSENT}, f"unlink {p}: succeeded, but it was never there"
        self.model.own(p, ABSENT)
        self._in_backend(p, None)

    @rule(d=st.sampled_from(DIRS))
    def mkdir(self, d):
        parent_there, there = self.model.state(parent_of(d)) == DIR, self.model.state(d) == DIR
        try:
            self.driver.mkdir(d)
        except OSError as e:
            return expect_errno(e, errno.EEXIST if there else errno.ENOENT)
        assert parent_there and not there, f"mkdir {d}: succeeded"
        self.model.own(d, DIR)

    @rule(d=st.sampled_from(DIRS))
    def rmdir(self, d):
        there, children = self.model.state(d) == DIR, self.model.children(d)
        try:
            self.driver.rmdir(d)
        except OSError as e:
            return expect_errno(e, errno.ENOTEMPTY if there else errno.ENOENT)
        assert there and not children, f"rmdir {d}: succeeded, children {children}"
        self.model.own(d, ABSENT)
        for p in list(self.model.allowed):
            if p.startswith(d + "/"):
                self.model.own(p, ABSENT)

    # -- observations ------------------------------------------------------------------------

    @rule(p=st.sampled_from(FILE_PATHS))
    def read(self, p):
        may = self.model.may_show(p)
        try:
            data = self.driver.read(p)
        except OSError as e:
            if e.errno == errno.ESTALE:
                assert not self.model.exact(p), f"read {p}: ESTALE, but nobody else changed it"
                return
            assert ABSENT in may, f"read {p}: {e}; may show {may}"
            return expect_errno(e, errno.ENOENT)
        assert data in may, f"read {p}: {data!r}; may show {may}"

    @rule(p=st.sampled_from(FILE_PATHS + DIRS))
    def stat(self, p):
        may = self.model.may_show(p)
        try:
            seen = self.driver.stat(p)
        except OSError as e:
            assert ABSENT in may, f"stat {p}: {e}; may show {may}"
            return expect_errno(e, errno.ENOENT)
        for s in seen:
            self._check_shape(p, s)

    @rule(d=st.sampled_from(("",) + DIRS))
    def listdir(self, d):
        self._check_listing(d)

    def _check_listing(self, d):
        try:
            listing = self.driver.listdir(d)
        except OSError as e:
            assert self.model.state(d) != DIR, f"listdir {d!r}: {e}"
            return expect_errno(e, errno.ENOENT)
        assert self.model.state(d) == DIR, f"listdir {d!r}: listed a missing directory"
        universe = self.model.universe(d)
        assert set(listing) <= set(universe), f"listdir {d!r}: unexpected names {set(listing) - set(universe)}"
        for name in universe:
            p = f"{d}/{name}" if d else name
            if name in listing:
                self._check_shape(p, listing[name])
            else:
                assert ABSENT in self.model.may_show(p), (
                    f"listdir {d!r}: {name} missing; may show {self.model.may_show(p)}")

    # -- other nodes and time ----------------------------------------------------------------

    @precondition(lambda self: self.other_nodes)
    @rule(p=st.sampled_from(FILE_PATHS), data=st.binary(max_size=20))
    def other_node_puts(self, p, data):
        if self.model.state(parent_of(p)) != DIR:
            return
        self.driver.backend_put(p, data)
        self.model.other(p, data)

    @precondition(lambda self: self.other_nodes)
    @rule(p=st.sampled_from(FILE_PATHS))
    def other_node_deletes(self, p):
        if self.model.state(p) in (ABSENT, DIR):
            return
        self.driver.backend_delete(p)
        self.model.other(p, ABSENT)

    @precondition(lambda self: self.other_nodes or self.driver.ttl)
    @rule()
    def ttl_passes(self):
        self.driver.advance(self.driver.ttl + 0.001)
        self.model.ttl_passed()

    @rule()
    def kernel_forgets(self):
        self.driver.forget()

    @invariant()
    def nothing_left_open_or_pending(self):
        self.driver.check_idle()

    @invariant()
    def listings_agree(self):
        if self.look_always:
            for d in ("",) + DIRS:
                self._check_listing(d)


def machine_settings(examples: int, steps: int) -> settings:
    """Hypothesis settings for a run; $STASHFS_MODEL_EXAMPLES and $STASHFS_MODEL_STEPS raise both
    (nightly runs: `STASHFS_MODEL_EXAMPLES=500 STASHFS_MODEL_STEPS=100 make test`)."""
    return settings(
        max_examples=int(os.environ.get("STASHFS_MODEL_EXAMPLES", examples)),
        stateful_step_count=int(os.environ.get("STASHFS_MODEL_STEPS", steps)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        print_blob=True,
    )


def run_machine(make_driver, other_nodes: bool, config: settings) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    machine = type("Machine", (FsMachine,), {"make_driver": staticmethod(make_driver), "other_nodes": other_nodes})
    run_state_machine_as_test(machine, settings=config)


# -- drivers -----------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves: the core's every TTL decision reads it."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


OP_TIMEOUT = 60  # seconds one core operation may take on a loaded machine before the step fails


class CoreDriver:
    ttl = TTL

    """Drives `core.Filesystem` in a trio loop of its own thread, doing what the kernel does
    around each operation: lookups of every path component (no dentry cache: the kernel may
    always ask again), a lookup before open/create/unlink/rename/rmdir, attributes from lookup,
    getattr and readdir (with the lookup count readdirplus adds), forget on request."""

    def __init__(self, backend, cache_dir: Path, ns: str | None = None):
        self.backend = backend
        self.ns = ns or f"p{next(_ids)}"
        self.prefix = f"pipeline/{self.ns}/"
        self.clock = FakeClock()
        self.lookups: Counter = Counter()
        self._cache_dir = cache_dir
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name=f"trio-{self.ns}", daemon=True)
        self._thread.start()
        assert self._ready.wait(OP_TIMEOUT), "the core did not start"
        if self._failed:
            raise self._failed
        self.ns_ino = self._call(self._make_namespace)

    def _thread_main(self):
        try:
            trio.run(self._main)
        except BaseException as e:  # reported to the test thread
            self._failed = e
            self._ready.set()

    async def _main(self):
        self.token = trio.lowlevel.current_trio_token()
        self.cache = Cache(self._cache_dir)
        self.fs = Filesystem(self.backend, self.cache, Options(uid=0, gid=0, metadata_ttl=TTL), clock=self.clock)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.fs.run)
                self._cancel = nursery.cancel_scope
                self._ready.set()
                await trio.sleep_forever()
        finally:
            self.cache.close()

    def close(self):
        if self._thread.is_alive():
            trio.from_thread.run_sync(self._cancel.cancel, trio_token=self.token)
            self._thread.join(OP_TIMEOUT)
        assert not self._thread.is_alive(), "the core's trio loop did not stop"

    def _call(self, fn, *args):
        """Run ``await fn(*args)`` on the core's loop; FS errors come back as OSError(errno)."""

        async def bounded():
            with trio.fail_after(OP_TIMEOUT):
                try:
                    return await fn(*args)
                except trio.TooSlowError:
                    raise
                except Exception as e:
                    code = errno_for(e, fn.__name__, repr(args))
                    raise OSError(code, os.strerror(code)) from e

        return trio.from_thread.run(bounded, trio_token=self.token)

    # -- kernel emulation (runs on the core's loop) ------------------------------------------

    async def _make_namespace(self):
        tree = await self._lookup(ROOT_INO, "pipeline")
        ns = await self.fs.mkdir(tree.ino, self.ns)
        self.lookups.clear()  # the namespace and its tree stay known: never forgotten
        return ns.ino

    async def _lookup(self, parent_ino, name):
        attr = await self.fs.lookup(parent_ino, name)
        self.lookups[attr.ino] += 1
        return attr

    async def _walk(self, p):
        """The attributes of ``p`` (None for the namespace itself), looking up each component."""
        ino, attr = self.ns_ino, None
        for name in p.split("/") if p else ():
            attr = await self._lookup(ino, name)
            ino = attr.ino
        return ino, attr

    async def _write(self, p, data, how, off):
        parent, _ = await self._walk(parent_of(p))
        try:
            existing = await self._lookup(parent, name_of(p))
        except Exception as e:
            if getattr(e, "errno", None) != errno.ENOENT:
                raise
            existing = None
        flags = {"trunc": os.O_WRONLY | os.O_TRUNC, "append": os.O_WRONLY | os.O_APPEND, "at": os.O_RDWR}[how]
        if existing is None:
            fh, attr, _ = await self.fs.create(parent, name_of(p), flags | os.O_CREAT)
            self.lookups[attr.ino] += 1
        else:
            fh, _, _ = await self.fs.open(existing.ino, flags)
        try:
            if data:
                assert await self.fs.write(fh, 0 if how == "trunc" else off, data) == len(data)
            await self.fs.flush(fh)
        finally:
            await self.fs.release(fh)

    async def _read(self, p):
        ino, _ = await self._walk(p)
        fh, _, _ = await self.fs.open(ino, os.O_RDONLY)
        try:
            out = b""
            while chunk := await self.fs.read(fh, len(out), 1 << 16):
                out += chunk
            return out
        finally:
            await self.fs.release(fh)

    async def _stat(self, p):
        ino, attr = await self._walk(p)
        again = await self.fs.getattr(ino)
        return [(a.is_dir, None if a.is_dir else a.size) for a in (attr, again) if a is not None]

    async def _listdir(self, d):
        ino, _ = await self._walk(d)
        fh = await self.fs.opendir(ino)
        try:
            out = {}
            for name, node in await self.fs.readdir(fh):
                a = self.fs.attr(node)
                node.lookups += 1  # what fuse_ops does for every entry the kernel accepts
                self.lookups[node.ino] += 1
                out[name] = (a.is_dir, None if a.is_dir else a.size)
            return out
        finally:
            self.fs.releasedir(fh)

    async def _truncate(self, p, size):
        ino, _ = await self._walk(p)
        await self.fs.setattr(ino, size=size)

    async def _rename(self, src, dst):
        sp, _ = await self._walk(parent_of(src))
        dp, _ = await self._walk(parent_of(dst))
        await self._lookup(sp, name_of(src))
        try:
            await self._lookup(dp, name_of(dst))
        except Exception as e:
            if getattr(e, "errno", None) != errno.ENOENT:
                raise
        await self.fs.rename(sp, name_of(src), dp, name_of(dst), 0)

    async def _unlink(self, p):
        parent, _ = await self._walk(parent_of(p))
        await self._lookup(parent, name_of(p))
        await self.fs.unlink(parent, name_of(p))

    async def _mkdir(self, d):
        parent, _ = await self._walk(parent_of(d))
        try:
            await self._lookup(parent, name_of(d))
        except Exception as e:
            if getattr(e, "errno", None) != errno.ENOENT:
                raise
        else:
            raise OSError(errno.EEXIST, "exists")  # the kernel answers this itself
        attr = await self.fs.mkdir(parent, name_of(d))
        self.lookups[attr.ino] += 1

    async def _rmdir(self, d):
        parent, _ = await self._walk(parent_of(d))
        await self._lookup(parent, name_of(d))
        await self.fs.rmdir(parent, name_of(d))

    async def _forget(self):
        self.fs.forget(list(self.lookups.items()))
        self.lookups.clear()

    async def _idle(self):
        assert self.fs.files.handles == {} and self.fs.dir_handles == {}, "handles left open"
        assert self.fs.status()["pending_uploads"] == [], self.fs.status()["pending_uploads"]

    # -- the driver interface ----------------------------------------------------------------

    def write(self, p, data, how, off):
        self._call(self._write, p, data, how, off)

    def read(self, p):
        return self._call(self._read, p)

    def stat(self, p):
        return self._call(self._stat, p)

    def listdir(self, d):
        return self._call(self._listdir, d)

    def truncate(self, p, size):
        self._call(self._truncate, p, size)

    def rename(self, src, dst):
        self._call(self._rename, src, dst)

    def unlink(self, p):
        self._call(self._unlink, p)

    def mkdir(self, d):
        self._call(self._mkdir, d)

    def rmdir(self, d):
        self._call(self._rmdir, d)

    def forget(self):
        self._call(self._forget)

    def check_idle(self):
        self._call(self._idle)

    def advance(self, seconds):
        self.clock.now += seconds

    def backend_get(self, p):
        try:
            return self.backend.get_range(self.prefix + p, 0)
        except Exception as e:
            if type(e).__name__ == "NotFound":
                return None
            raise

    def backend_put(self, p, data):
        self.backend.put_bytes(self.prefix + p, data)

    def backend_delete(self, p):
        self.backend.delete(self.prefix + p)


class PathDriver:
    """The same operations as os.* calls below ``root`` (a mount, or a plain directory as the
    reference); ``backend`` (optional) is the mount's backend, opened directly."""

    def __init__(self, root: Path, backend=None, prefix: str = "", ttl: float = 0.0):
        self.root, self.backend, self.prefix = root, backend, prefix
        self.ttl = ttl  # the mount's --metadata-ttl: `advance` lets that much real time pass
        self.root.mkdir()

    def _p(self, p) -> Path:
        return self.root / p if p else self.root

    def close(self):
        pass

    def write(self, p, data, how, off):
        flags = {"trunc": os.O_WRONLY | os.O_TRUNC, "append": os.O_WRONLY | os.O_APPEND, "at": os.O_RDWR}[how]
        fd = os.open(self._p(p), flags | os.O_CREAT, 0o644)
        try:
            if data:
                n = os.write(fd, data) if how != "at" else os.pwrite(fd, data, off)
                assert n == len(data)
        finally:
            os.close(fd)

    def read(self, p):
        with open(self._p(p), "rb") as f:
            return f.read()

    def stat(self, p):
        st_ = os.stat(self._p(p))
        is_dir = stat.S_ISDIR(st_.st_mode)
        return [(is_dir, None if is_dir else st_.st_size)]

    def listdir(self, d):
        out = {}
        for name in os.listdir(self._p(d)):  # then a stat of each: what `ls -l` does
            st_ = os.lstat(self._p(d) / name)
            is_dir = stat.S_ISDIR(st_.st_mode)
            out[name] = (is_dir, None if is_dir else st_.st_size)
        return out

    def truncate(self, p, size):
        os.truncate(self._p(p), size)

    def rename(self, src, dst):
        os.rename(self._p(src), self._p(dst))

    def unlink(self, p):
        os.unlink(self._p(p))

    def mkdir(self, d):
        os.mkdir(self._p(d))

    def rmdir(self, d):
        os.rmdir(self._p(d))

    def forget(self):
        pass

    def check_idle(self):
        pass

    def advance(self, seconds):
        # A real mount's clock cannot be moved: let its (short) TTL pass.  Not synchronisation:
        # the expectations are exact whether or not the caches expired; waking late only means
        # more of them did.
        time.sleep(self.ttl * 1.2)

    def backend_get(self, p):
        if self.backend is None:  # the plain reference directory is its own backend
            try:
                return self.read(p)
            except FileNotFoundError:
                return None
        try:
            return self.backend.get_range(self.prefix + p, 0)
        except Exception as e:
            if type(e).__name__ == "NotFound":
                return None
            raise
