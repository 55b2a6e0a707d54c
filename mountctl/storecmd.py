"""How the ``mountctl data`` and ``mountctl kv`` commands end: what they share.

- The Python API's OSErrors for backend failures (`fsdriver.apierrors`) end as their message,
  which names the object or key.
"""

import functools

from fsdriver.errors import BackendError

from .errors import CLIError


def store_command(func):
    """``func(args)``, a data or kv subcommand, with the endings above."""

    @functools.wraps(func)
    def run(args):
        try:
            return func(args)
        except BackendError as e:
            if isinstance(e, OSError) and e.strerror:
                raise CLIError(e.strerror) from None  # the backend's message names the key
            raise

    return run
