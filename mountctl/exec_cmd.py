"""``mountctl exec``: run a command with secrets and the stashfs paths in its environment.

The mount whose paths the command gets: ``--mount``, else the only stashfs mount on the machine,
else the one at the configured mount point; with several and none there, exec refuses (exit
status 2) rather than guess; ``--no-mount`` runs with secrets only.

With ``--pipeline`` the command works on the node's mount (the configured mount point): exec
mounts it when it is not mounted and a backend is configured (the daemon outlives the command);
with no backend configured it takes the mount chosen as above.  Either way it claims the
pipeline by creating its directory as the calling user, or fails: CMD never runs with a
pipeline directory that is not its user's.

``--secret-files`` / ``--secret-file NAME`` give secrets as files instead of variables
(`fsdriver.secrets.secret_files`); every exec is recorded in the user's access log
(`fsdriver.secrets.accesslog`).
"""

import contextlib
import fcntl
import os
import sys

from fsdriver import layout, mountconfig
from fsdriver.access import login_name
from fsdriver.errors import InvalidName
from fsdriver.secrets import accesslog, secret_files
from fsdriver.secrets.environment import compose
from fsdriver.secrets.mask import MIN_MASKED, Masker, unmasked
from fsdriver.secrets.store import (
    MAX_VALUE_BYTES, SecretsError, SecretsPermissionError, check_name, current_user, open_store,
)

from fsdriver.mountconfig import MountConfig

from . import mounts, spawn
from .errors import CLIError


def register(sub) -> None:
    p = sub.add_parser("exec", help="run a command with secrets in its environment")
    p.add_argument("--pipeline", metavar="ID",
                   help="claim pipeline ID (mounting the node's mount if needed); sets STASHFS_PIPELINE_ID "
                        "and STASHFS_PIPELINE_DIR")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--mount", metavar="MOUNTPOINT",
                       help="the stashfs mount (default: the only stashfs mount, else the one at the configured "
                            "mount point: $STASHFS_MOUNTPOINT, [mount] mountpoint in the config file, /mnt/stashfs; "
                            "with several mounts and none there, name one)")
    where.add_argument("--no-mount", action="store_true",
                       help="use no mount: secrets only, no STASHFS_USER_DIR or STASHFS_KV_DIR (not with --pipeline)")
    p.add_argument("--pristine", action="store_true", help="start from an empty environment (PATH, HOME kept)")
    p.add_argument("--preserve-env", action="store_true", help="never override an inherited variable")
    p.add_argument("--no-mask", action="store_true", help="exec the command directly, output unfiltered")
    p.add_argument("--secret-files", action="store_true",
                   help="give every secret as a 0600 file on a tmpfs, removed when CMD ends, its path in "
                        "$STASHFS_SECRET_FILE_<NAME> (and not the value in $NAME)")
    p.add_argument("--secret-file", action="append", default=[], metavar="NAME",
                   help="the same for secret NAME only (repeatable)")
    p.add_argument("--store", choices=("local", "ssm"), help="secrets store")
    p.add_argument("command", nargs="+", metavar="-- CMD")
    p.set_defaults(func=cmd_exec)


def find_mount(explicit: str | None, pipeline: str | None = None) -> str | None:
    """The mount to use without mounting: ``--mount`` (which must be stashfs), else the only
    stashfs mount, else the one at the configured mount point; None when there is no stashfs mount.
    Several and none at the configured mount point: CLIError (status 2), naming them."""
    if explicit is not None:
        if not mounts.is_stashfs(explicit):  # (what was typed is not repeated: see cli.py)
            raise CLIError("--mount: not a stashfs mount (the path is not shown)", 2)
        return explicit
    try:
        return mounts.the_mount(mountconfig.configured_mountpoint)
    except mounts.SeveralMounts as e:
        what = f"the one to claim pipeline {pipeline} on" if pipeline else "one"
        hint = "" if pipeline else " (or --no-mount to run with secrets only)"
        raise CLIError(f"{e}: name {what} with --mount MOUNTPOINT{hint}", 2) from None


def node_mount(explicit: str | None) -> str | None:
    """The node's mount (the configured mount point), mounted now if it is not; None when it is not
    mounted and no backend is configured (nothing says what to mount)."""
    cfg = MountConfig.load({"mountpoint": explicit})  # a bad option in the config file: one line, exit 2
    mp = os.path.abspath(cfg.mountpoint)
    spawn.detach_if_dead(mp)
    if mounts.is_stashfs(mp):
        return mp
    if not cfg.backend:
        return None
    cfg.check_backend_dir()  # as `mountctl mount`: a mistyped local path is not created silently
    cfg.check_paths()  # a log file or cache dir that cannot be made: named, exit 2
    os.makedirs(mp, exist_ok=True)
    # Concurrent execs on this node: each locks the mount point directory and looks again, so
    # only the first starts a daemon and the others find its mount.
    fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not mounts.is_stashfs(mp):
            cfg.mountpoint = spawn.preflight(mp)
            spawn.start(cfg)
            print(f"mountctl: mounted {cfg.backend} on {mp}", file=sys.stderr)
    finally:
        os.close(fd)
    return mp


def pipeline_mount(explicit: str | None, pipeline: str) -> str:
    """The mount to claim ``pipeline`` on: the node's (mounted now if a backend is configured),
    else the one `find_mount` chooses; CLIError when there is none (CMD must not run with a
    pipeline directory that does not exist)."""
    mount = node_mount(explicit)
    if mount is None:  # e.g. a workstation with its own mount and no [mount] backend
        mount = find_mount(explicit, pipeline)
    if mount is None:
        raise CLIError(f"no stashfs mount to claim pipeline {pipeline} on, and none made: no backend configured "
                       "([mount] backend or $STASHFS_BACKEND)")
    return mount


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


def load_secrets(store_name: str | None) -> dict:
    """{"org": {...}, "user": {...}}; org secrets the user may not read are left out, once said."""
    store = open_store(store_name)
    secrets = {}
    for scope in ("org", "user"):
        try:
            secrets[scope] = store.values(scope)  # {} when nothing is stored in that scope
        except SecretsPermissionError as e:
            if scope != "org":
                raise CLIError(f"{scope} secrets: {e}") from None
            print(f"mountctl: org secrets not readable, running with your own secrets only ({e})", file=sys.stderr)
            secrets[scope] = {}
        except SecretsError as e:
            raise CLIError(f"{scope} secrets: {e}") from None
    return secrets


def split_files(args, merged: dict) -> tuple[dict, dict]:
    """(secrets for the environment, secrets for files), from --secret-files / --secret-file."""
    wanted = set(merged) if args.secret_files else set()
    for name in args.secret_file:
        check_name(name)
        if name not in merged:  # the name is not repeated: it may be a value pasted there
            nth = args.secret_file.index(name) + 1
            raise CLIError(f"--secret-file: no such secret (the name, in --secret-file number {nth}, is not "
                           "shown)", status=2)
        wanted.add(name)
    env = {n: v for n, v in merged.items() if n not in wanted}
    for name, value in env.items():  # stored before `secrets set` checked values
        if "\0" in value or len(value.encode("utf-8", "surrogateescape")) > MAX_VALUE_BYTES:
            raise CLIError(f"secret {name} cannot be put in an environment variable (a NUL byte, or more than "
                           f"{MAX_VALUE_BYTES} bytes): set it again, or pass it with --secret-file {name}")
    return env, {n: merged[n] for n in sorted(wanted)}


def log_access(argv: list, env_names: list, file_names: list, pipeline: str | None, values: list) -> None:
    masker = Masker(values)
    command = masker.feed(os.path.basename(argv[0]).encode("utf-8", "surrogateescape")) + masker.flush()
    try:
        accesslog.record(command.decode("utf-8", "replace"), env_names, file_names, pipeline)
    except OSError as e:
        print(f"mountctl: cannot write the access log {accesslog.log_path()}: {e.strerror or e}", file=sys.stderr)


def cmd_exec(args) -> int:
    from fsdriver.secrets import runner

    argv = args.command
    if args.pipeline and args.no_mount:
        raise CLIError("--pipeline claims the pipeline on a mount: it cannot go with --no-mount", 2)
    secrets = load_secrets(args.store)
    merged = {**secrets["org"], **secrets["user"]}
    env_secrets, file_secrets = split_files(args, merged)  # bad input fails before anything is mounted
    if args.pipeline:
        try:
            layout.check_name(args.pipeline, "pipeline id")
        except InvalidName:
            raise CLIError("--pipeline: invalid pipeline id (not shown): must match "
                           "[A-Za-z0-9][A-Za-z0-9._-]{0,127}", 2) from None
        mount = pipeline_mount(args.mount, args.pipeline)
        claim_pipeline(mount, args.pipeline)
    else:
        mount = None if args.no_mount else find_mount(args.mount)
    org = {n: v for n, v in secrets["org"].items() if n in env_secrets}
    user = {n: v for n, v in secrets["user"].items() if n in env_secrets}
    values = [v for scope in ("org", "user") for v in secrets[scope].values()]
    secret_files.sweep()  # what a killed run left behind
    with contextlib.ExitStack() as stack:
        stashfs = stashfs_variables(args.pipeline, mount)
        files = stack.enter_context(secret_files.SecretFiles(file_secrets)) if file_secrets else None
        if files is not None:
            stashfs.update(files.environment())
        composed = compose(dict(os.environ), org, user, stashfs, pristine=args.pristine, preserve=args.preserve_env)
        for name in composed.overridden:
            print(f"mountctl: secret {name} overrides the inherited variable of the same name", file=sys.stderr)
        for name in composed.kept:
            print(f"mountctl: kept the inherited {name} (--preserve-env); the secret is not applied", file=sys.stderr)
        given = {n: v for n, v in env_secrets.items() if n not in composed.kept} | file_secrets
        if not args.no_mask:
            short = sorted(n for n, v in given.items() if unmasked([v]))
            if short:
                print(f"mountctl: not masked in the output (shorter than {MIN_MASKED} bytes): {', '.join(short)}",
                      file=sys.stderr)
        log_access(argv, [n for n in given if n not in file_secrets], list(file_secrets), args.pipeline, values)
        sys.stdout.flush()
        sys.stderr.flush()
        # With files, mountctl stays the parent, even unmasked, to remove them when CMD is over.
        return runner.run(argv, composed.env, values, mask=not args.no_mask, supervise=files is not None,
                          pass_fds=(files.lock_fd,) if files is not None else ())
