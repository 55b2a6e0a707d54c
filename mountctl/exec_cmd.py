"""``mountctl exec``: run a command with secrets and the stashfs paths in its environment.

With ``--pipeline`` the command works on the node's mount (the configured mount point): exec
mounts it when it is not mounted and a backend is configured (the daemon outlives the command),
then claims the pipeline by creating its directory as the calling user.
"""

import fcntl
import os
import sys

from fsdriver import layout
from fsdriver.access import login_name
from fsdriver.secrets.environment import compose
from fsdriver.secrets.store import SecretsError, current_user, open_store

from . import mount_cmd, mounts
from .cli import CLIError


def register(sub) -> None:
    p = sub.add_parser("exec", help="run a command with secrets in its environment")
    p.add_argument("--pipeline", metavar="ID",
                   help="claim pipeline ID (mounting the node's mount if needed); sets STASHFS_PIPELINE_ID "
                        "and STASHFS_PIPELINE_DIR")
    p.add_argument("--mount", metavar="MOUNTPOINT",
                   help="the stashfs mount (default: $STASHFS_MOUNTPOINT, [mount] mountpoint in the config "
                        "file, /mnt/stashfs; without --pipeline, else the one found)")
    p.add_argument("--pristine", action="store_true", help="start from an empty environment (PATH, HOME kept)")
    p.add_argument("--preserve-env", action="store_true", help="never override an inherited variable")
    p.add_argument("--no-mask", action="store_true", help="exec the command directly, output unfiltered")
    p.add_argument("--store", choices=("local", "ssm"), help="secrets store")
    p.add_argument("command", nargs="+", metavar="-- CMD")
    p.set_defaults(func=cmd_exec)


def find_mount(explicit: str | None) -> str | None:
    """The mount to use without mounting: ``--mount`` (which must be stashfs), else the configured
    mount point if it is mounted, else the first stashfs mount found."""
    if explicit is not None:
        if not mounts.is_stashfs(explicit):
            raise CLIError(f"{explicit} is not a stashfs mount")
        return explicit
    mp = mount_cmd.configured_mountpoint()
    if mounts.is_stashfs(mp):
        return mp
    found = mounts.stashfs_mounts()
    return found[0].mountpoint if found else None


def node_mount(explicit: str | None) -> str | None:
    """The node's mount (the configured mount point), mounted now if it is not; None when it is not
    mounted and no backend is configured (nothing says what to mount)."""
    cfg = mount_cmd.settings(mountpoint=explicit)
    mp = os.path.abspath(cfg["mountpoint"])
    mount_cmd.detach_if_dead(mp)
    if mounts.is_stashfs(mp):
        return mp
    if not cfg["backend"]:
        return None
    os.makedirs(mp, exist_ok=True)
    # Concurrent execs on this node: each locks the mount point directory and looks again, so
    # only the first starts a daemon and the others find its mount.
    fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not mounts.is_stashfs(mp):
            mount_cmd.start(mount_cmd.preflight(mp), {name: cfg[name] for name in mount_cmd.CONFIG_OPTIONS})
            print(f"mountctl: mounted {cfg['backend']} on {mp}", file=sys.stderr)
    finally:
        os.close(fd)
    return mp


def claim_pipeline(mount: str, pipeline: str) -> str:
    """Create the pipeline's directory as the calling user (the daemon records its creator as the
    owner); fails when it exists and belongs to someone else."""
    path = os.path.join(mount, "pipeline", pipeline)
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except PermissionError:
        if not os.path.isdir(path):
            raise
    except OSError as e:
        raise CLIError(f"cannot create {path}: {e.strerror} (is the stashfs daemon of {mount} running?)") from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise CLIError(f"pipeline {pipeline} belongs to another user")
    return path


def stashfs_variables(pipeline: str | None, mount: str | None) -> dict:
    user = current_user()
    out = {"STASHFS_USER": user}
    if pipeline:
        out["STASHFS_PIPELINE_ID"] = pipeline
    if mount:
        # The mount knows users by uid, whatever $STASHFS_USER says: the tree this user may use.
        out["STASHFS_USER_DIR"] = os.path.join(mount, "user", login_name())
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
    if args.pipeline:
        layout.check_name(args.pipeline, "pipeline id")
        mount = node_mount(args.mount)
        if mount is not None:
            claim_pipeline(mount, args.pipeline)
        else:  # e.g. a workstation with its own mount and no [mount] backend: as without --pipeline
            mount = find_mount(args.mount)
            if mount is None:
                print("mountctl: no stashfs mount, and none made: no backend configured ([mount] backend or "
                      "$STASHFS_BACKEND); STASHFS_PIPELINE_DIR is not set", file=sys.stderr)
    else:
        mount = find_mount(args.mount)
    composed = compose(
        dict(os.environ), secrets["org"], secrets["user"], stashfs_variables(args.pipeline, mount),
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
