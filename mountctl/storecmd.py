"""How the ``mountctl data`` and ``mountctl kv`` commands end: what they share.

- Output cut short by its reader (``mountctl kv keys crm | head -1``) ends the command quietly with
  status 0, as in ``cat | head``: the rest of the output is dropped (stdout goes to /dev/null, so
  that nothing fails again when Python flushes it at exit).
- A local backend directory that does not exist says how to create it (``--create``).
- The Python API's OSErrors for backend failures (`fsdriver.apierrors`) end as their message,
  which names the object or key.
"""

import functools
import os
import sys

from fsdriver.errors import BackendError, NoBackendDirectory

from .errors import CLIError


def store_command(func):
    """``func(args)``, a data or kv subcommand, with the endings above."""

    @functools.wraps(func)
    def run(args):
        try:
            status = func(args)
            sys.stdout.flush()  # inside: a reader gone shows here, not at exit
            return status
        except BrokenPipeError:
            _drop_stdout()
            return 0
        except NoBackendDirectory as e:
            raise CLIError(f"backend directory {e.path} does not exist (check the path, or add --create to "
                           "create it)") from None
        except BackendError as e:
            if isinstance(e, OSError) and e.strerror:
                raise CLIError(e.strerror) from None  # the backend's message names the key
            raise

    return run


def _drop_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing to flush at exit
        pass
