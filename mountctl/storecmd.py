"""How the ``mountctl data`` and ``mountctl kv`` commands end: what they share.

- A local backend directory that does not exist says how to create it (``--create``).
- The Python API's OSErrors for backend failures (`fsdriver.apierrors`) end as their message,
  which names the object or key.
"""

import functools

from fsdriver.errors import BackendError, NoBackendDirectory

from .errors import CLIError


def store_command(func):
    """``func(args)``, a data or kv subcommand, with the endings above."""

    @functools.wraps(func)
    def run(args):
        try:
            return func(args)
        except NoBackendDirectory as e:
            raise CLIError(f"backend directory {e.path} does not exist (check the path, or add --create to "
                           "create it)") from None
        except BackendError as e:
            if isinstance(e, OSError) and e.strerror:
                raise CLIError(e.strerror) from None  # the backend's message names the key
            raise

    return run
