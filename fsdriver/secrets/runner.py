"""Runs a command with a prepared environment, optionally masking secrets in its output.

``run(argv, env, secrets, mask=True)`` starts the command with stdin inherited and its stdout and
stderr on pipes, and copies both to this process's file descriptors 1 and 2 through one
`fsdriver.secrets.mask.Masker` each, as soon as data arrives. SIGINT, SIGTERM and SIGHUP received
while the command runs are forwarded to it. ``mask=False`` replaces this process with the command
(``os.execvpe``): no filtering, and signals go straight to the command -- unless ``supervise`` is
set (the caller has something to clean up when the command is over, e.g. secret files): then the
command runs as a child with our stdout and stderr, signals forwarded, and `run` returns. The
descriptors in ``pass_fds`` stay open in the command.

Exit status: the command's, or 128+N when a signal N killed it; 127 when the command is not found
and 126 when it cannot be executed, with a one-line message on stderr, as a shell does.

Notes:

- Secret values are never printed, logged or put in an argv; error messages name only
  ``argv[0]``, itself passed through the masker.
- A signal whose disposition is "ignored" when `run` starts (``nohup``, a background job of a
  non-interactive shell) stays ignored and is not forwarded; the command inherits the ignored
  disposition anyway.
- Ctrl-C at a terminal sends SIGINT to the whole foreground process group, so the command gets it
  from the terminal and once more from us (we cannot tell the two apart). Most programs treat a
  second SIGINT like the first.
- Signals are only handled when `run` is called from the main thread (Python's rule); from any
  other thread the command runs without forwarding.
- As with ``command | cat``, `run` returns when the command has exited *and* both pipes are
  closed: a background process the command started that keeps stdout or stderr open keeps `run`
  waiting.
- If our stdout or stderr is closed or a broken pipe, we stop reading the command's corresponding
  pipe and close it, so the command gets EPIPE / SIGPIPE just as it would writing there itself.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import sys
import threading
from typing import Iterable

from .mask import Masker

__all__ = ["run", "FORWARDED_SIGNALS"]

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_READ_SIZE = 65536


def run(argv: list[str], env: dict[str, str], secrets: Iterable[str] = (), mask: bool = True,
        supervise: bool = False, pass_fds: tuple = ()) -> int:
    """Runs ``argv`` with exactly the environment ``env``; returns its exit status (see module doc)."""
    argv = list(argv)
    if not argv:
        raise ValueError("run: empty command")
    secrets = [s for s in secrets if s]
    _flush_python_streams()
    if not mask and not supervise:
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            return _exec_error(argv[0], e, secrets)
        raise AssertionError("unreachable")  # pragma: no cover
    return _run_child(argv, env, secrets, mask, tuple(pass_fds))


# -- errors


def _exec_error(cmd: str, e: OSError, secrets: list[str]) -> int:
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        status, what = 127, "command not found"
    elif isinstance(e, PermissionError):
        status, what = 126, "permission denied"
    else:
        status, what = 126, (e.strerror or type(e).__name__).lower()
    masker = Masker(secrets)
    line = masker.feed(f"mountctl: {cmd}: {what}\n".encode("utf-8", "surrogateescape"))
    line += masker.flush()
    _write_all(2, line)
    return status


def _flush_python_streams() -> None:
    """Output buffered by Python so far goes before the command's own output."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


# -- masked run


class _Forwarder:
    """Signal handlers that forward to the child; signals before it exists are replayed."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.pending: list[int] = []
        self.saved: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in FORWARDED_SIGNALS:
            old = signal.getsignal(sig)
            if old == signal.SIG_IGN:
                continue
            self.saved[sig] = old
            signal.signal(sig, self._handle)

    def started(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        pending, self.pending = self.pending, []
        for sig in pending:
            self._send(sig)

    def restore(self) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self.saved.clear()

    def _handle(self, signum, frame) -> None:
        if self.proc is None:
            self.pending.append(signum)
        else:
            self._send(signum)

    def _send(self, signum: int) -> None:
        try:
            self.proc.send_signal(signum)  # a no-op once the child has been reaped
        except ProcessLookupError:
            pass


def _run_child(argv: list[str], env: dict[str, str], secrets: list[str], mask: bool, pass_fds: tuple) -> int:
    fwd = _Forwarder()
    fwd.install()
    pipe = subprocess.PIPE if mask else None
    try:
        try:
            proc = subprocess.Popen(
                argv, env=env, stdin=None, stdout=pipe, stderr=pipe,
                bufsize=0, start_new_session=False, pass_fds=pass_fds,
            )
        except OSError as e:
            return _exec_error(argv[0], e, secrets)
        fwd.started(proc)
        try:
            if mask:
                _pump(proc, secrets)
        except BaseException:
            _stop(proc)
            raise
        status = proc.wait()
    finally:
        fwd.restore()
        if fwd.proc is None:
            # The command never started: a signal received meanwhile is ours after all.
            for sig in fwd.pending:
                signal.raise_signal(sig)
    return 128 - status if status < 0 else status


def _pump(proc: subprocess.Popen, secrets: list[str]) -> None:
    """Copies the child's stdout/stderr to fds 1/2 through a masker each, until both close."""
    streams = {}
    sel = selectors.DefaultSelector()
    try:
        for pipe, out_fd in ((proc.stdout, 1), (proc.stderr, 2)):
            fd = pipe.fileno()
            streams[fd] = (pipe, out_fd, Masker(secrets))
            sel.register(fd, selectors.EVENT_READ)
        while streams:
            for key, _ in sel.select():
                fd = key.fd
                pipe, out_fd, masker = streams[fd]
                data = os.read(fd, _READ_SIZE)
                emit = masker.feed(data) if data else masker.flush()
                if emit and not _write_all(out_fd, emit):
                    data = b""  # our side is gone: let the child see a closed pipe
                if not data:
                    sel.unregister(fd)
                    pipe.close()
                    del streams[fd]
    finally:
        for pipe, _, _ in streams.values():
            pipe.close()
        sel.close()


def _write_all(fd: int, data: bytes) -> bool:
    """Writes all of ``data`` to ``fd``; False if it is closed or a broken pipe."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:  # a non-blocking fd we inherited: wait until it takes more
            sel = selectors.DefaultSelector()
            try:
                sel.register(fd, selectors.EVENT_WRITE)
                sel.select()
            finally:
                sel.close()
            continue
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.EBADF, errno.EIO, errno.ECONNRESET):
                return False
            raise
        view = view[n:]
    return True


def _stop(proc: subprocess.Popen) -> None:
    """Unexpected error while copying output: do not leave the child behind."""
    for pipe in (proc.stdout, proc.stderr):
        if pipe is None:  # not masked: the command writes to our stdout and stderr itself
            continue
        try:
            pipe.close()
        except OSError:
            pass
    try:
        proc.terminate()
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except OSError:
        pass
