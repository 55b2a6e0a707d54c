"""Progress of long transfers on a terminal (bytes, rate, ETA), drawn by tqdm; nothing at all when
stderr is not a terminal (scripts and logs get only the result lines).

`Progress` is a context manager; call ``update(done_bytes)`` with the running total, and set
``postfix`` for anything else to show (e.g. objects done).  `IOProgress` measures a transfer made
by a call that reports no progress (``data put``/``get``): see its docstring.
"""

import os
import sys
import threading

from tqdm import tqdm


class Progress:
    def __init__(self, label: str, total_bytes: int | None, postfix: str | None = None):
        self.label = label
        self.total = total_bytes
        self.postfix = postfix
        self.bar = None
        self.done = 0

    def __enter__(self) -> "Progress":
        if sys.stderr.isatty():
            try:
                size = os.get_terminal_size(sys.stderr.fileno())
            except OSError:
                size = os.terminal_size((0, 0))
            # leave=False: the bar disappears at the end, leaving the command's own result line.
            # A terminal that reports no size (a bare pseudo-terminal: 0x0) gets 80x24: tqdm draws
            # nothing at all on a terminal of 0 rows.
            self.bar = tqdm(total=self.total, desc=self.label, unit="B", unit_scale=True, unit_divisor=1024,
                            leave=False, file=sys.stderr, ncols=size.columns or 80, nrows=size.lines or 24,
                            postfix=self.postfix)
        return self

    def update(self, done_bytes: int, postfix: str | None = None) -> None:
        if self.bar is None:
            return
        if postfix is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(done_bytes - self.done)
        self.done = done_bytes

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


class IOProgress(Progress):
    """A `Progress` fed from this process's own I/O counters (/proc/self/io): ``rchar`` counts the
    bytes read (a put reads its source file), ``wchar`` the bytes written (a get writes its
    destination), whatever the backend.  The Python API's put/get take no progress callback, and
    this needs none; the few bytes of requests and answers on the sockets are within a bar's
    precision.  A thread samples the counter every ``interval`` s while the transfer runs."""

    def __init__(self, label: str, total_bytes: int | None, counter: str, interval: float = 0.2):
        super().__init__(label, total_bytes)
        self.counter, self.interval = counter, interval
        self._stop = threading.Event()
        self._thread = None
        self._start = 0

    def _read(self) -> int:
        with open("/proc/self/io") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name == self.counter:
                    return int(value)
        return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):  # sampling a counter to draw it, not synchronising
            done = self._read() - self._start
            self.update(min(done, self.total) if self.total is not None else done)

    def __enter__(self) -> "IOProgress":
        super().__enter__()
        if self.bar is not None:
            try:
                self._start = self._read()
            except OSError:  # no /proc: no bar
                return self
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        super().__exit__(*exc)
