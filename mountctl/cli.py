"""mountctl: the control CLI.  Each subcommand group lives in its own module and registers itself.

Errors end as one line on stderr (``mountctl: <reason>``) and a non-zero exit status:
1 for an operation that failed, 2 for bad usage or input.
"""

import argparse
import logging
import os
import re
import sys

import argcomplete

from fsdriver import __version__
from fsdriver.config import ConfigError
from fsdriver.errors import BackendError, InvalidName, NoBackendDirectory
from fsdriver.mountconfig import MountConfigError
from fsdriver.secrets.store import InvalidSecretName, InvalidSecretsSetting, InvalidSecretValue, SecretsError

from .errors import CLIError


class Parser(argparse.ArgumentParser):
    """argparse, except that it never repeats stray arguments: one could be a secret typed by
    mistake on the command line (values are read from stdin or a prompt).

    A subcommand no secret goes near (``mount``, ``umount``, ``status``, ``flush``) is made with
    ``shows_arguments=True``: its errors name the unknown option as argparse words them.  Stray
    arguments are reported by the subcommand's own parser, with its usage (`main`)."""

    def __init__(self, *args, shows_arguments: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.shows_arguments = shows_arguments

    def error(self, message: str):
        if self.shows_arguments:  # argparse's own words (it exits)
            super().error(message)
        if message.startswith("unrecognized arguments"):
            n = len(message.split(":", 1)[1].split())
            message = (f"{n} unexpected argument(s), not shown (secret values are read from stdin "
                       "or a prompt, never from the command line)")
        elif "ignored explicit argument" in message:
            message = message.split("ignored explicit argument")[0] + "takes no value (the value is not shown)"
        elif "invalid choice: " in message:  # e.g. --store with a value pasted in the wrong place
            head, _, rest = message.partition("invalid choice: ")
            choices = rest[rest.rfind("(choose from"):] if "(choose from" in rest else ""
            message = f"{head}invalid choice (not shown) {choices}".rstrip()
        elif re.search(r"invalid \w+ value: ", message):
            message = re.split(r"(?<=value): ", message, maxsplit=1)[0] + " (not shown)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    from . import data_cmd, exec_cmd, kv_cmd, mount_cmd, pipeline_cmd, secrets_cmd


    parser = Parser(
        prog="mountctl", description="Control stashfs mounts, data and secrets."
    )
    parser.add_argument("--version", action="version", version=f"mountctl (stashfs) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (mount_cmd, data_cmd, kv_cmd, pipeline_cmd, secrets_cmd, exec_cmd):
        group.register(sub)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command's parser as a default of the namespaces it parses: the deepest one that
    parsed a command line is its `PARSER` (``mountctl secrets list`` -> that of ``list``)."""
    parser.set_defaults(**{PARSER: parser})
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _remember_parsers(sub)


PARSER = "_mountctl_parser"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Shell completion (bash, zsh, fish): `eval "$(register-python-argcomplete mountctl)"`.
    # Under completion this prints the candidates and exits; otherwise it returns at once.
    argcomplete.autocomplete(parser)
    args, stray = parser.parse_known_args(argv)
    if stray:  # said by the subcommand's parser (its usage; whether it may repeat them)
        getattr(args, PARSER, parser).error(f"unrecognized arguments: {' '.join(stray)}")
    logging.basicConfig(level=logging.WARNING, format="mountctl: %(message)s")
    try:
        status = args.func(args) or 0
        sys.stdout.flush()  # inside: a reader gone (`| head`) shows here, not at exit
        return status
    except BrokenPipeError:  # an OSError: before those
        _drop_stdout()
        return 0
    except CLIError as e:
        print(f"mountctl: {e}", file=sys.stderr)
        return e.status
    except SecretsError as e:
        print(f"mountctl: {e}", file=sys.stderr)
        return 2 if isinstance(e, (InvalidSecretName, InvalidSecretValue, InvalidSecretsSetting)) else 1
    except InvalidName as e:
        print(f"mountctl: {e}", file=sys.stderr)
        return 2
    except NoBackendDirectory as e:  # before FileNotFoundError: its message speaks Python (create=True)
        how = "add --create to create it" if hasattr(args, "create") else \
            "a new store is made by `data put`, `kv set` or `kv incr` with --create"
        print(f"mountctl: backend directory {e.path} does not exist (check the path, or {how})", file=sys.stderr)
        return 1
    except MountConfigError as e:  # a bad mount option value, refused before any daemon starts
        print(f"mountctl: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        print(f"mountctl: {e.strerror or e}: {e.filename}" if e.filename else f"mountctl: {e}", file=sys.stderr)
        return 1
    except (BackendError, ConfigError) as e:
        print(f"mountctl: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. ENOTCONN from a mount whose daemon died
        print(f"mountctl: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"mountctl: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: still one line, with the traceback on request
        if os.environ.get("STASHFS_DEBUG"):
            raise
        print(f"mountctl: internal error: {type(e).__name__}: {e} (STASHFS_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1



def _drop_stdout() -> None:
    """Output cut short by its reader (``mountctl kv keys crm | head -1``) ends the command quietly
    with status 0, as ``cat | head`` does: the rest is dropped, and stdout goes to /dev/null so that
    nothing fails again when Python flushes it at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing to flush at exit
        pass


if __name__ == "__main__":
    sys.exit(main())
