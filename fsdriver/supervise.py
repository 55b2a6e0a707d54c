"""The one way to start background work in the daemon's nursery.

An exception that escapes a task of the daemon's nursery cancels that nursery, ends
`pyfuse3.main()` and kills the mount ("Transport endpoint is not connected").  So every background
task (prefetch parts, the upload retry loop, expiry deletes, signal handling, the read-ahead knob)
starts through `spawn`, which:

- names the task (its log lines and its counter say which work failed);
- on an exception: counts it in ``stats.background_failures[kind]``, logs one line (with the
  traceback only when the failure is not a backend or OS error, i.e. a bug), and retries after a
  backoff while ``retries`` allow (``None``: forever, for loops that must keep running), else drops
  the work with a log line saying so;
- never lets an `Exception` propagate.  `trio.Cancelled` (a BaseException) passes, so shutting the
  nursery down still ends every task.

A task with its own error delivery (a prefetch part hands its failure to the waiting reader) keeps
it; the supervisor is the safety net for what escapes anyway.
"""

import logging
from typing import Awaitable, Callable, Optional

import trio

from .backend.aio import no_request_deadline
from .errors import BackendError
from .stats import Stats

log = logging.getLogger("stashfs.supervise")

RETRY_MAX = 60.0


def spawn(
    nursery: trio.Nursery,
    stats: Stats,
    kind: str,
    fn: Callable[..., Awaitable],
    *args,
    what: Optional[str] = None,
    retries: Optional[int] = 0,
    retry_delay: float = 1.0,
) -> None:
    """Start ``fn(*args)`` in ``nursery``, supervised.

    ``kind`` is a short fixed word for the counter ("expire", "prefetch"); ``what`` describes this
    instance for the log (names in it are quoted by the caller).  ``retries`` is how many times a
    failed run is started again (``None``: without limit), after ``retry_delay`` doubling up to
    `RETRY_MAX` seconds.
    """
    nursery.start_soon(_supervised, stats, kind, what or kind, fn, args, retries, retry_delay,
                       name=f"stashfs:{kind}")


async def _supervised(stats, kind, what, fn, args, retries, delay) -> None:
    no_request_deadline()  # started by a request, perhaps, but not bound by its deadline
    attempt = 0
    while True:
        try:
            await fn(*args)
            return
        except Exception as e:
            stats.background_failures[kind] += 1
            attempt += 1
            again = retries is None or attempt <= retries
            outcome = f"retrying in {delay:g}s" if again else "dropped"
            if isinstance(e, (BackendError, OSError)):
                log.error("background %s failed (%s); %s", what, e, outcome)
            else:  # a bug: keep its traceback, but keep the mount serving
                log.error("background %s failed unexpectedly; %s", what, outcome, exc_info=e)
            if not again:
                return
        await trio.sleep(delay)  # backoff before trying again, not a synchronisation
        delay = min(delay * 2, RETRY_MAX)
