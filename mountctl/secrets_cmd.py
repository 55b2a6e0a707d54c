"""``mountctl secrets``: user and org secrets.  Values come from stdin or a prompt, never argv."""

import getpass
import json
import sys
from datetime import datetime, timezone

from fsdriver.secrets.store import SecretsError, check_name, open_store

from .cli import CLIError


def register(sub) -> None:
    p = sub.add_parser("secrets", help="encrypted user and org secrets")
    cmds = p.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")

    def common(cp):
        cp.add_argument("--store", choices=("local", "ssm"), help="default: $STASHFS_SECRETS_STORE, config, local")

    cp = cmds.add_parser("set", help="set NAME from stdin, or a prompt without echo")
    cp.add_argument("name")
    cp.add_argument("--org", action="store_true", help="an org secret (admins only)")
    common(cp)
    cp.set_defaults(func=cmd_set)
    cp = cmds.add_parser("list", help="names, scopes and update times (never values)")
    scope = cp.add_mutually_exclusive_group()
    scope.add_argument("--org", action="store_true")
    scope.add_argument("--user", action="store_true")
    cp.add_argument("--json", action="store_true")
    common(cp)
    cp.set_defaults(func=cmd_list)
    cp = cmds.add_parser("rm", help="remove a secret")
    cp.add_argument("name")
    cp.add_argument("--org", action="store_true")
    common(cp)
    cp.set_defaults(func=cmd_rm)
    cp = cmds.add_parser("get", help="print a secret's value (needs --reveal)")
    cp.add_argument("name")
    cp.add_argument("--org", action="store_true")
    cp.add_argument("--reveal", action="store_true", help="yes, print the value")
    common(cp)
    cp.set_defaults(func=cmd_get)


def _scope(args) -> str:
    return "org" if args.org else "user"


def _fail(e: SecretsError):
    return CLIError(str(e), status=1)


def cmd_set(args) -> None:
    name = check_name(args.name)
    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {name}: ")
    else:
        value = sys.stdin.read()
        if value.endswith("\n"):
            value = value[:-1]
            if value.endswith("\r"):
                value = value[:-1]
    if value == "":
        raise CLIError(f"refusing to set {name} to an empty value", status=2)
    try:
        open_store(args.store).set(_scope(args), name, value)
    except SecretsError as e:
        raise _fail(e) from None


def cmd_list(args) -> None:
    scopes = ["org"] if args.org else ["user"] if args.user else ["org", "user"]
    store = open_store(args.store)
    rows = []
    for scope in scopes:
        try:
            rows += store.list(scope)
        except SecretsError as e:
            if args.org or args.user:
                raise _fail(e) from None
            print(f"mountctl: {scope} secrets: {e}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"name": r.name, "scope": r.scope, "updated": r.updated} for r in rows]))
        return
    for r in rows:
        when = datetime.fromtimestamp(r.updated, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        print(f"{r.scope:<5} {r.name:<32} ****  {when}")


def cmd_rm(args) -> None:
    name = check_name(args.name)
    try:
        open_store(args.store).delete(_scope(args), name)
    except KeyError:
        raise CLIError(f"no {_scope(args)} secret {args.name}") from None
    except SecretsError as e:
        raise _fail(e) from None


def cmd_get(args) -> None:
    if not args.reveal:
        raise CLIError("get prints a secret's value: add --reveal to confirm", status=2)
    name = check_name(args.name)
    try:
        value = open_store(args.store).get(_scope(args), name)
    except KeyError:
        raise CLIError(f"no {_scope(args)} secret {args.name}") from None
    except SecretsError as e:
        raise _fail(e) from None
    sys.stdout.write(value + "\n")
