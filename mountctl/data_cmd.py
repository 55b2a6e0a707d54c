"""``mountctl data``: the pipeline and user object stores from the shell."""

import json
import os
import shutil
import sys
import tempfile

from fsdriver import data

from .errors import CLIError
from .formats import utc
from .progress import IOProgress
from .storecmd import store_command


def register(sub) -> None:
    p = sub.add_parser("data", help="read and write pipeline/user data without a mount")
    cmds = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    def store_args(cp):
        scope = cp.add_mutually_exclusive_group()
        scope.add_argument("--pipeline", metavar="ID",
                           help="the pipeline's store (the default, with the id from $STASHFS_PIPELINE_ID)")
        scope.add_argument("--user", nargs="?", const="", metavar="NAME",
                           help="a user's store (default: $STASHFS_USER or the login name)")
        cp.add_argument("--backend", metavar="URL",
                        help="backend URL (default: $STASHFS_BACKEND, [mount] backend in the config file, local disk)")

    cp = cmds.add_parser("put", help="store a local file ('-' for stdin) at NAME")
    cp.add_argument("name"); cp.add_argument("file"); store_args(cp); cp.set_defaults(func=cmd_put)
    cp.add_argument("--create", action="store_true",
                    help="create the local backend directory if it does not exist (a mistyped path is refused "
                         "otherwise; the default location is always created)")
    cp = cmds.add_parser("get", help="store object NAME into a local file ('-' for stdout)")
    cp.add_argument("name"); cp.add_argument("file"); store_args(cp); cp.set_defaults(func=cmd_get)
    cp = cmds.add_parser("gets", help="print object NAME (or a byte range of it) to stdout")
    cp.add_argument("name"); store_args(cp)
    cp.add_argument("--range", metavar="BEGIN:END", help="half-open byte range; END may be empty")
    cp.set_defaults(func=cmd_gets)
    cp = cmds.add_parser("ls", help="list objects at or below PREFIX")
    cp.add_argument("prefix", nargs="?", default=""); store_args(cp)
    cp.add_argument("-l", "--long", action="store_true", help="show size and mtime")
    cp.add_argument("--json", action="store_true", help="print a JSON array of {name,size,mtime,etag}")
    cp.set_defaults(func=cmd_ls)
    cp = cmds.add_parser("size", help="print the size of NAME in bytes")
    cp.add_argument("name"); store_args(cp); cp.set_defaults(func=cmd_size)
    cp = cmds.add_parser("rm", help="delete NAME")
    cp.add_argument("name"); store_args(cp)
    cp.add_argument("-r", "--recursive", action="store_true", help="also everything below NAME/")
    cp.set_defaults(func=cmd_rm)


def _store(args) -> data.ObjectStore:
    create = getattr(args, "create", False)
    if args.user is not None:
        return data.user(args.user or None, backend=args.backend, create=create)
    pipeline_id = args.pipeline or os.environ.get("STASHFS_PIPELINE_ID")  # as the Python API does
    if not pipeline_id:
        raise CLIError("which store? give --pipeline ID or --user [NAME], or set STASHFS_PIPELINE_ID", 2)
    return data.pipeline(pipeline_id, backend=args.backend, create=create)


@store_command
def cmd_put(args) -> None:
    store = _store(args)
    # A missing bucket or an unreachable endpoint: one line about it, before a pipeline's owner
    # record is tried (whose failure would be reported first, as a second line).
    store.backend.check()
    if args.file != "-":
        _put_file(store, args.name, args.file)
        return
    with tempfile.NamedTemporaryFile(prefix="stashfs-stdin-") as tmp:
        shutil.copyfileobj(sys.stdin.buffer, tmp, 1 << 20)
        tmp.flush()
        _put_file(store, args.name, tmp.name)


def _put_file(store: data.ObjectStore, name: str, path: str) -> None:
    try:
        total = os.path.getsize(path)
    except OSError:
        total = None  # put says why, in its own words
    with IOProgress(f"put {name}", total, "rchar"):
        store.put(name, path)


@store_command
def cmd_get(args) -> None:
    store = _store(args)
    if args.file == "-":
        sys.stdout.buffer.write(store.gets(args.name))
        sys.stdout.buffer.flush()
    else:
        # The size only for the bar: no extra request when nobody watches.
        total = store.size(args.name) if sys.stderr.isatty() else None
        with IOProgress(f"get {args.name}", total, "wchar"):
            store.get(args.name, args.file)


def _parse_range(text: str) -> list:
    begin, sep, end = text.partition(":")
    if not sep:
        raise ValueError(f"--range {text!r}: expected BEGIN:END")
    try:
        return [int(begin or 0), int(end) if end else None]
    except ValueError:
        raise ValueError(f"--range {text!r}: BEGIN and END must be integers") from None


@store_command
def cmd_gets(args) -> None:
    rng = _parse_range(args.range) if args.range else None
    sys.stdout.buffer.write(_store(args).gets(args.name, byte_range=rng))
    sys.stdout.buffer.flush()


@store_command
def cmd_ls(args) -> None:
    infos = _store(args).list_tree_info(args.prefix)
    if args.json:
        print(json.dumps([{"name": i.key, "size": i.size, "mtime": i.mtime, "etag": i.etag} for i in infos]))
        return
    for i in infos:
        if args.long:
            print(f"{i.size:>12} {utc(i.mtime)} {i.key}")
        else:
            print(i.key)


@store_command
def cmd_size(args) -> None:
    print(_store(args).size(args.name))


@store_command
def cmd_rm(args) -> None:
    _store(args).delete(args.name, recursive=args.recursive)
