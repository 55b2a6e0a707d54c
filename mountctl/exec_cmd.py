"""``mountctl exec``: run a command with secrets and the stashfs paths in its environment."""

import os
import sys

from fsdriver import layout
from fsdriver.secrets.environment import compose
from fsdriver.secrets.store import SecretsError, current_user, open_store

from . import mounts
from .cli import CLIError


def register(sub) -> None:
    p = sub.add_parser("exec", help="run a command with secrets in its environment")
    p.add_argument("--pipeline", metavar="ID", help="sets STASHFS_PIPELINE_ID and STASHFS_PIPELINE_DIR")
    p.add_argument("--mount", metavar="MOUNTPOINT", help="the stashfs mount (default: the one found)")
    p.add_argument("--pristine", action="store_true", help="start from an empty environment (PATH, HOME kept)")
    p.add_argument("--preserve-env", action="store_true", help="never override an inherited variable")
    p.add_argument("--no-mask", action="store_true", help="exec the command directly, output unfiltered")
    p.add_argument("--store", choices=("local", "ssm"), help="secrets store")
    p.add_argument("command", nargs="+", metavar="-- CMD")
    p.set_defaults(func=cmd_exec)


def stashfs_variables(pipeline: str | None, mount: str | None) -> dict:
    user = current_user()
    out = {"STASHFS_USER": user}
    if pipeline:
        out["STASHFS_PIPELINE_ID"] = layout.check_name(pipeline, "pipeline id")
    if mount is None:
        found = mounts.stashfs_mounts()
        mount = found[0].mountpoint if found else None
    elif not (os.path.ismount(mount) and (mounts.find(mount) or mounts.MountEntry("", "", "")).fstype == mounts.FSTYPE):
        raise CLIError(f"{mount} is not a stashfs mount")
    if mount:
        out["STASHFS_USER_DIR"] = os.path.join(mount, "user", user)
        out["STASHFS_KV_DIR"] = os.path.join(mount, "kv")
        if pipeline:
            out["STASHFS_PIPELINE_DIR"] = os.path.join(mount, "pipeline", pipeline)
    return out


def cmd_exec(args) -> int:
    from fsdriver.secrets import runner

    argv = args.command
    store = open_store(args.store)
    secrets = {}
    for scope in ("org", "user"):
        try:
            secrets[scope] = store.values(scope)  # {} when nothing is stored in that scope
        except SecretsError as e:
            raise CLIError(f"{scope} secrets: {e}") from None
    composed = compose(
        dict(os.environ), secrets["org"], secrets["user"], stashfs_variables(args.pipeline, args.mount),
        pristine=args.pristine, preserve=args.preserve_env,
    )
    for name in composed.overridden:
        print(f"mountctl: secret {name} overrides the inherited variable of the same name", file=sys.stderr)
    for name in composed.kept:
        print(f"mountctl: kept the inherited {name} (--preserve-env); the secret is not applied", file=sys.stderr)
    values = [v for scope in ("org", "user") for v in secrets[scope].values()]
    sys.stdout.flush()
    sys.stderr.flush()
    return runner.run(argv, composed.env, values, mask=not args.no_mask)
