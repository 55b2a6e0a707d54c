"""The error every mountctl module raises to end a command with one line on stderr.

Its own module so that subcommand modules import it without importing `mountctl.cli` (which
imports them): no import circles in mountctl/.
"""


class CLIError(Exception):
    """A failure to report as one line; ``status`` is the exit code (1: failed, 2: bad usage)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status
