"""``mountctl kv``: key/value stores from the shell."""

import json
import sys

from fsdriver import strictjson
from fsdriver.kv import DataStore

from .errors import CLIError
from .storecmd import store_command


def register(sub) -> None:
    p = sub.add_parser("kv", help="read and write key/value records without a mount")
    cmds = p.add_subparsers(dest="kv_command", required=True, metavar="ACTION")

    def common(cp, key=True, create=False):
        cp.add_argument("store")
        if key:
            cp.add_argument("key")
        cp.add_argument("--backend", metavar="URL",
                        help="backend URL (default: $STASHFS_BACKEND, [mount] backend in the config file, local disk)")
        if create:
            cp.add_argument("--create", action="store_true",
                            help="create the local backend directory if it does not exist (a mistyped path is "
                                 "refused otherwise; the default location is always created)")

    cp = cmds.add_parser("get", help="print a record's JSON value")
    common(cp)
    cp.set_defaults(func=cmd_get)
    cp = cmds.add_parser("set", help="store a JSON value ('-' reads it from stdin)")
    common(cp, create=True)
    cp.add_argument("value", help="JSON text, e.g. 42, '\"text\"', '{\"a\": 1}'")
    cp.add_argument("--ttl", type=float, metavar="SECONDS", help="the record expires after this long")
    cp.set_defaults(func=cmd_set)
    cp = cmds.add_parser("incr", help="add to a numeric record atomically and print the result")
    common(cp, create=True)
    cp.add_argument("--by", type=_number, default=1, help="an integer or a float (default 1)")
    cp.set_defaults(func=cmd_incr)
    cp = cmds.add_parser("keys", help="list the keys of a store")
    common(cp, key=False)
    cp.add_argument("--json", action="store_true", help="print a JSON array")
    cp.set_defaults(func=cmd_keys)
    cp = cmds.add_parser("rm", help="delete a record")
    common(cp)
    cp.set_defaults(func=cmd_rm)
    cp = cmds.add_parser("clear", help="delete every record of a store (irreversible)")
    common(cp, key=False)
    cp.add_argument("--yes", action="store_true", help="really delete everything")
    cp.set_defaults(func=cmd_clear)


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _store(args) -> DataStore:
    return DataStore(args.store, backend=args.backend, create=getattr(args, "create", False))


@store_command
def cmd_get(args) -> None:
    try:
        value = _store(args)[args.key]
    except KeyError:
        raise CLIError(f"no key {args.key!r} in store {args.store!r}") from None
    print(json.dumps(value, ensure_ascii=False))


@store_command
def cmd_set(args) -> None:
    text = sys.stdin.read() if args.value == "-" else args.value
    try:
        value = strictjson.loads(text)
    except strictjson.RecordTooLarge as e:
        raise CLIError(f"the value is {e}", status=2) from None
    except ValueError as e:
        raise CLIError(f"the value is not JSON ({e}); quote strings: '\"text\"'", status=2) from None
    _store(args).set(args.key, value, ttl=args.ttl)


@store_command
def cmd_incr(args) -> None:
    try:
        print(json.dumps(_store(args).incr(args.key, args.by)))
    except TypeError as e:
        raise CLIError(str(e)) from None


@store_command
def cmd_keys(args) -> None:
    keys = list(_store(args).keys())
    if args.json:
        print(json.dumps(keys, ensure_ascii=False))
    else:
        for k in keys:
            print(k)


@store_command
def cmd_rm(args) -> None:
    try:
        del _store(args)[args.key]
    except KeyError:
        raise CLIError(f"no key {args.key!r} in store {args.store!r}") from None


@store_command
def cmd_clear(args) -> None:
    if not args.yes:
        raise CLIError(f"clear deletes every record of {args.store!r}: add --yes to confirm", status=2)
    _store(args).clear()
