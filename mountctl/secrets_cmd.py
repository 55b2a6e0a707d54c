"""``mountctl secrets``: user and org secrets.  Values come from stdin or a prompt, never argv."""

import getpass
import json
import sys

from fsdriver.secrets import accesslog
from fsdriver.secrets.mask import MIN_MASKED, unmasked
from fsdriver.secrets.store import (
    InvalidSecretsSetting, InvalidSecretValue, SecretsError, SecretsPermissionError, check_name, check_value,
    open_store,
)

from .errors import CLIError
from .formats import utc


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
    scope.add_argument("--org", action="store_true", help="only the org's secrets")
    scope.add_argument("--user", action="store_true", help="only your own secrets")
    cp.add_argument("--json", action="store_true", help="print a JSON array")
    common(cp)
    cp.set_defaults(func=cmd_list)
    cp = cmds.add_parser("rm", help="remove a secret")
    cp.add_argument("name")
    cp.add_argument("--org", action="store_true", help="an org secret (admins only)")
    common(cp)
    cp.set_defaults(func=cmd_rm)
    cp = cmds.add_parser("get", help="print a secret's value (needs --reveal)")
    cp.add_argument("name")
    cp.add_argument("--org", action="store_true", help="the org secret of that name")
    cp.add_argument("--reveal", action="store_true", help="yes, print the value")
    common(cp)
    cp.set_defaults(func=cmd_get)
    cp = cmds.add_parser("log", help="which secrets mountctl exec gave to which command (names, never values)")
    cp.add_argument("-n", "--lines", type=int, default=20, metavar="N", help="the last N entries (default 20; 0: all)")
    cp.add_argument("--json", action="store_true", help="one JSON object per line")
    cp.set_defaults(func=cmd_log)


def _scope(args) -> str:
    return "org" if args.org else "user"


def _fail(e: SecretsError):
    return CLIError(str(e), status=2 if isinstance(e, InvalidSecretsSetting) else 1)


def _read_value(name: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"value of {name}: ")
    try:  # bytes, so that a decoding error cannot quote the value's bytes
        value = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError:
        raise CLIError(f"the value of {name} is not valid UTF-8", status=2) from None
    if value.endswith("\n"):
        value = value[:-1]
        if value.endswith("\r"):
            value = value[:-1]
    return value


def cmd_set(args) -> None:
    name = check_name(args.name)
    value = _read_value(name)
    if value == "":
        raise CLIError(f"refusing to set {name} to an empty value", status=2)
    try:
        check_value(value)
    except InvalidSecretValue as e:
        raise CLIError(f"refusing to set {name}: {e}", status=2) from None
    store = open_store(args.store)
    try:
        store.set(_scope(args), name, value)
    except SecretsError as e:
        raise _fail(e) from None
    _warn_sharing(store, _scope(args))
    if unmasked([value]):
        print(f"mountctl: warning: {name} is shorter than {MIN_MASKED} bytes: mountctl exec passes it to commands "
              "but does not mask it in their output", file=sys.stderr)


def cmd_list(args) -> None:
    scopes = ["org"] if args.org else ["user"] if args.user else ["org", "user"]
    store = open_store(args.store)
    rows = []
    failed = False
    for scope in scopes:
        try:
            rows += store.list(scope)
        except SecretsError as e:
            if args.org or args.user:
                raise _fail(e) from None
            print(f"mountctl: {scope} secrets: {e}", file=sys.stderr)
            # Not being an org member is a normal state; a store that cannot be read is a failure.
            failed = failed or not (scope == "org" and isinstance(e, SecretsPermissionError))
    if args.json:
        print(json.dumps([{"name": r.name, "scope": r.scope, "updated": r.updated} for r in rows]))
    else:
        for r in rows:
            print(f"{r.scope:<5} {r.name:<32} ****  {utc(r.updated)}")
    return 1 if failed else 0


def _warn_sharing(store, scope: str) -> None:
    warning = store.sharing_warning(scope)
    if warning:
        print(f"mountctl: warning: {warning}", file=sys.stderr)


def cmd_rm(args) -> None:
    name = check_name(args.name)
    store = open_store(args.store)
    try:
        store.delete(_scope(args), name)
    except KeyError:
        raise CLIError(f"no {_scope(args)} secret by that name (not shown)") from None
    except SecretsError as e:
        raise _fail(e) from None
    _warn_sharing(store, _scope(args))


def cmd_get(args) -> None:
    if not args.reveal:
        raise CLIError("get prints a secret's value: add --reveal to confirm", status=2)
    name = check_name(args.name)
    try:
        value = open_store(args.store).get(_scope(args), name)
    except KeyError:
        raise CLIError(f"no {_scope(args)} secret by that name (not shown)") from None
    except SecretsError as e:
        raise _fail(e) from None
    sys.stdout.write(value + "\n")


def cmd_log(args) -> None:
    if args.lines < 0:
        raise CLIError("-n must be 0 or more", status=2)
    entries, bad = accesslog.read()
    if args.lines:
        entries = entries[-args.lines:]
    for e in entries:
        if args.json:
            print(json.dumps(e))
            continue
        names = ", ".join(list(e.get("secrets") or []) + [f"{n} (file)" for n in e.get("files") or []]) or "-"
        where = f"  pipeline {e['pipeline']}" if e.get("pipeline") else ""
        print(f"{e.get('time', '?')}  {e.get('user', '?')}  {e.get('command', '?')}{where}  {names}")
    if bad:
        where = ", ".join(f"{n} of {path}" for path, n in bad.items())
        print(f"mountctl: unreadable line(s) skipped: {where}", file=sys.stderr)
