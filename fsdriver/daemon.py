"""The stashfs daemon: ``python -m fsdriver MOUNTPOINT [options]``.

Order of events: open and check the backend, lock the cache dir, upload what a previous run left
pending, mount, report readiness (``--ready-fd`` for mountctl, ``$NOTIFY_SOCKET`` for systemd),
serve until unmounted or signalled.  SIGTERM/SIGINT upload what is pending and unmount.
Exit status: 0 after a clean unmount, 1 when the mount could not be made or served, 2 for a bad
option value (fsdriver.mountconfig, where the options are declared).
"""

import argparse
import errno
import hashlib
import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path

import pyfuse3
import trio

from . import allocator, config, mountconfig
from .access import group_id
from .configured import open_backend
from .core import Filesystem, Options
from .errors import BackendError
from .fuse_ops import Operations
from .logsafe import SafeFormatter
from .staging import Cache, CacheLocked
from .supervise import spawn

log = logging.getLogger("stashfs.daemon")

# pyfuse3's request tasks (its default: 99).  One waits per request in progress: a few hundred
# processes stat-ing below a directory an S3 rename copies must not keep every other request of
# the mount (reads and writes of open files, the control file) from being read.  A task costs a
# few KiB while it waits; the backend's own limit bounds the requests made to it.
MAX_REQUESTS = 1000


def default_cache_dir(backend_url: str, mountpoint: str) -> Path:
    """Stable per (backend, mount point), so a remount finds what a crash left pending."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    digest = hashlib.sha256(f"{backend_url}\0{os.path.abspath(mountpoint)}".encode()).hexdigest()[:16]
    return Path(base) / "stashfs" / digest


def build_parser() -> argparse.ArgumentParser:
    """The options are declared once, in fsdriver.mountconfig (mountctl passes them on)."""
    p = argparse.ArgumentParser(prog="python -m fsdriver", description="stashfs FUSE daemon")
    p.add_argument("mountpoint")
    mountconfig.add_arguments(p)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    return p


class Readiness:
    """Tell whoever started us (mountctl through a pipe, systemd through NOTIFY_SOCKET) the outcome."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def _send(self, line: str) -> None:
        if self.fd is not None:
            try:
                os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def progress(self, message: str) -> None:
        """Still working (e.g. uploading what a crash left): keeps mountctl waiting."""
        if self.fd is not None:
            try:
                os.write(self.fd, ("progress: " + message.replace("\n", " ") + "\n").encode())
            except OSError:
                pass

    def ok(self) -> None:
        self._send("ready")
        addr = os.environ.get("NOTIFY_SOCKET")
        if addr:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect("\0" + addr[1:] if addr.startswith("@") else addr)
                s.sendall(f"READY=1\nMAINPID={os.getpid()}".encode())

    def fail(self, message: str) -> None:
        log.error("%s", message)
        self._send("error: " + message)


def raise_descriptor_limit() -> None:
    """Every open file for writing holds a staged file and every S3 request a socket: the usual soft
    limit of 1,024 descriptors runs out long before the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the descriptor limit from %s to %s: %s", soft, hard, e)
            return
    log.info("descriptor limit: %s", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def main(argv: list[str] | None = None) -> int:
    parsed = build_parser().parse_args(argv)
    try:
        args = mountconfig.MountConfig.load(mountconfig.given(parsed))
        args.check_backend_dir()
    except mountconfig.MountConfigError as e:
        Readiness(parsed.ready_fd).fail(str(e))  # before logging is set up: to stderr
        return 2
    except config.ConfigError as e:
        Readiness(parsed.ready_fd).fail(str(e))
        return 1
    try:
        if args.log_file:
            # It names users' paths: private to the mount's owner from its creation.
            os.close(os.open(args.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    except OSError as e:
        Readiness(parsed.ready_fd).fail(f"--log-file {args.log_file}: {e.strerror}")
        return 1
    handler.setFormatter(SafeFormatter())  # names cannot forge log lines
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("stashfs").setLevel(args.log_level)
    allocator.configure()  # before any worker thread: freed part buffers go back to the kernel
    ready = Readiness(parsed.ready_fd)
    raise_descriptor_limit()

    org_gid = None
    org_group = args.org_group
    if org_group:
        try:
            org_gid = group_id(org_group)
        except KeyError:
            ready.fail(f"--org-group {org_group}: no such group on this node")
            return 1
    mountpoint = os.path.abspath(parsed.mountpoint)
    url = args.backend_url()
    try:
        options = {}
        if url.startswith("s3://"):
            from .backend.s3 import request_settings

            # Each request (retries included) ends within about the bound: so do the mount-time
            # check and the calls that are never abandoned (fsdriver/backend/aio.py).
            options = {"endpoint_url": args.endpoint_url, **request_settings(args.backend_timeout)}
        # A missing local directory was refused above unless --create (check_backend_dir).
        backend = open_backend(url, create=True, **options)
        backend.check()
    except (BackendError, ValueError, OSError) as e:
        ready.fail(f"backend {url}: {e}")
        return 1
    cache_root = Path(args.cache_dir) if args.cache_dir else default_cache_dir(backend.url, mountpoint)
    try:
        cache = Cache(cache_root)
    except CacheLocked as e:
        ready.fail(str(e))
        return 1
    except OSError as e:  # the reason and the path, not Python's repr of the exception
        about = f" ({e.filename})" if e.filename is not None and str(e.filename) != str(cache_root) else ""
        reason = "not a directory" if e.errno in (errno.EEXIST, errno.ENOTDIR) else e.strerror or str(e)
        ready.fail(f"cache dir {cache_root}: {reason}{about}")
        return 1
    fs = Filesystem(backend, cache, Options(
        metadata_ttl=args.metadata_ttl, memory_limit=args.memory_limit,
        max_prefetch=args.max_prefetch, read_only=args.read_only, org_gid=org_gid,
        backend_timeout=args.backend_timeout, default_uid=args.uid, default_gid=args.gid,
        file_mode=args.file_mode, dir_mode=args.dir_mode,
    ))
    try:
        code = trio.run(_serve, fs, mountpoint, args, ready)
    finally:
        backend.close()
        cache.close()
    if fs.backend.in_flight:
        # Threads cannot be cancelled, and the interpreter would wait for the transfer threads of
        # an abandoned upload at exit: the daemon must not outlive its unmount for them.  What they
        # were uploading is still journaled and is uploaded at the next mount.
        log.warning("exiting with %d backend calls abandoned in flight", fs.backend.in_flight)
        logging.shutdown()
        os._exit(code)
    return code


async def _serve(fs: Filesystem, mountpoint: str, args, ready: Readiness) -> int:
    await fs.uploader.recover(ready.progress)
    opts = set(pyfuse3.default_options) | {"fsname=stashfs", "subtype=stashfs"}
    if args.allow_other:
        opts.add("allow_other")
    if args.read_only:
        opts.add("ro")
    try:
        pyfuse3.init(Operations(fs, mountpoint), mountpoint, opts)
    except RuntimeError as e:
        ready.fail(f"cannot mount on {mountpoint}: {e} (see the daemon log)")
        return 1
    log.info("mounted %s on %s (pid %d)", fs.sync_backend.url, mountpoint, os.getpid())
    unmount = True
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            spawn(nursery, fs.stats, "signals", _on_signals, fs, what="signal handling", retries=None)
            nursery.start_soon(_readahead_then_ready, fs, mountpoint, args.readahead, ready)
            # Requests below a directory being renamed wait for it (fsdriver.treelock), each in
            # one of pyfuse3's request tasks: enough of them that the others are still read.
            await pyfuse3.main(max_tasks=MAX_REQUESTS)
            with trio.move_on_after(fs.backend.timeout or 30) as bound:  # the backend may be gone
                await fs.flush_metadata()
            unwritten = fs.dirindex.unwritten()
            if bound.cancelled_caught or unwritten:
                log.error("directory times and index rows not stored at unmount (%s): the files' own "
                          "attributes are stored, but listings on other nodes may show the attributes "
                          "the index held before (a chmod, chown or touch made within a second of the "
                          "file's write) until the file next changes%s",
                          f"the backend did not answer within {fs.backend.timeout or 30:g} s" if bound.cancelled_caught
                          else f"the last write failed: {fs.dirindex.last_error or 'see above'}",
                          "" if not unwritten else ": " + ", ".join(n.display for n in unwritten[:10]))
            # Unmounted: stop waiting for backend calls in flight (an upload retry against a dead
            # endpoint), or the daemon would outlive its mount by as long as they take.
            fs.backend.abandon_all()
            nursery.cancel_scope.cancel()
    except BaseException:
        unmount = False
        raise
    finally:
        pyfuse3.close(unmount=unmount)
    left = fs.uploader.describe_pending()
    kept = [i for i in left if i.get("kept", True)]
    if kept:
        log.error("%d uploads still pending; they stay in %s and are uploaded at the next mount with that "
                  "cache dir (or dropped there with `mountctl flush --discard`)", len(kept), fs.cache.root)
    for item in left:
        if not item.get("kept", True):
            log.error("%r: pending upload LOST: its journal entry could not be written, so the next "
                      "mount discards its data (%s)", item["key"], item["error"])
    log.info("unmounted %s", mountpoint)
    return 0


async def _readahead_then_ready(fs: Filesystem, mountpoint: str, size: int, ready: Readiness) -> None:
    """Report readiness once the kernel read-ahead is set (``size`` 0: left as it is), so the very
    first sequential read is already made of large FUSE reads.  It cannot be set before the main
    loop answers: the kernel takes the smaller of its setting and the one the FUSE init handshake
    (answered by the main loop) reports, and asks nothing until that handshake is done.  The
    setting's sysfs file is handed to the filesystem, which reads it to know how far ahead of each
    other a reader's reads may arrive (fsdriver.kernelra)."""
    try:
        st = await trio.to_thread.run_sync(os.stat, mountpoint)  # answered by our own main loop
        path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        if size:
            await _set_readahead(mountpoint, path, size)
        fs.kernel_readahead.found(path)
    except OSError as e:
        log.info("kernel read-ahead of %s not known (%s)", mountpoint, e.strerror)
    except Exception:  # advice only: it never keeps the mount from being used
        log.exception("kernel read-ahead of %s not set", mountpoint)
    ready.ok()


async def _set_readahead(mountpoint: str, path: str, size: int) -> None:
    """Larger kernel read-ahead: fewer, larger FUSE reads for sequential readers (random reads are
    not read ahead by the kernel).  The knob is the mount's backing-device setting in sysfs."""

    def write():
        with open(path, "w") as f:
            f.write(str(max(size // 1024, 4)))

    try:
        await trio.to_thread.run_sync(write)
        log.info("kernel read-ahead of %s set to %d KiB", mountpoint, size // 1024)
    except OSError as e:
        log.info("kernel read-ahead left at its default (%s)", e.strerror)


async def _on_signals(fs: Filesystem) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for sig in signals:
            if sig == signal.SIGHUP:
                continue
            log.info("signal %d: uploading what is pending, then unmounting", sig)
            await fs.uploader.flush_all()
            pyfuse3.terminate()
            return
