"""``mountctl pipeline``: list, archive and garbage-collect pipelines (docs/lifecycle.md).

- ``list``: every pipeline with its owner, object count, bytes and last write.
- ``archive ID``: delete all of one pipeline's data, then its owner record.  Only its owner
  (the user name of the real uid, `fsdriver.access.login_name`), root or a member of the admin
  group may.  Asks on a terminal, refuses (status 2) without ``--yes`` when there is none to ask on.
- ``chown ID USER``: give a pipeline to USER (root or admin group).
- ``gc --idle DURATION``: a dry run listing the pipelines not written for DURATION; with ``--yes``
  (root or admin group) it archives them, re-checking each one's last write just before.

Progress (bytes, rate, ETA: `mountctl.progress`) goes to stderr only when stderr is a terminal.
"""

import json
import pwd
import re
import sys
import time

from fsdriver import layout, lifecycle, owners
from fsdriver.access import login_name
from fsdriver.configured import open_backend
from fsdriver.errors import BackendError
from fsdriver.secrets.store import is_admin, load_config

from .errors import CLIError
from .formats import human_bytes as human, utc as when
from .progress import Progress

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:[0-9]+[wdhms])+\Z")


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="list, archive and garbage-collect pipelines")
    cmds = p.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")

    def backend_arg(cp):
        cp.add_argument("--backend", metavar="URL",
                        help="backend URL (default: $STASHFS_BACKEND, [mount] backend in the config file, local disk)")

    cp = cmds.add_parser("list", help="every pipeline: owner, objects, bytes, last write")
    cp.add_argument("--json", action="store_true",
                    help="print a JSON array of {id,owner,objects,bytes,last_write}")
    backend_arg(cp)
    cp.set_defaults(func=cmd_list)
    cp = cmds.add_parser("archive", help="delete all data of a pipeline and its owner record (irreversible)")
    cp.add_argument("id", metavar="ID")
    cp.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    backend_arg(cp)
    cp.set_defaults(func=cmd_archive)
    cp = cmds.add_parser("chown", help="make USER the owner of pipeline ID (root or admin group)")
    cp.add_argument("id", metavar="ID")
    cp.add_argument("user", metavar="USER")
    backend_arg(cp)
    cp.set_defaults(func=cmd_chown)
    cp = cmds.add_parser("gc", help="archive the pipelines not written for DURATION (dry run without --yes)")
    cp.add_argument("--idle", required=True, metavar="DURATION", help="e.g. 30d, 12h, 90m, 45s, 2w, 1d12h")
    cp.add_argument("--yes", action="store_true", help="really archive them (root or admin group)")
    backend_arg(cp)
    cp.set_defaults(func=cmd_gc)


def parse_duration(text: str) -> int:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a combination like ``1d12h``."""
    if not _DURATION.match(text):
        raise CLIError(f"invalid duration {text!r}: expected e.g. 30d, 12h, 90m, 45s, 2w or 1d12h", 2)
    seconds = sum(int(n) * _UNITS[unit] for n, unit in re.findall(r"([0-9]+)([wdhms])", text))
    if seconds <= 0:
        raise CLIError(f"invalid duration {text!r}: must be longer than 0s", 2)
    return seconds


def _owner_text(owner: str | None) -> str:
    return "-" if owner is None else owner or "?"  # "?": a damaged record


def _print_table(summaries: list[lifecycle.PipelineSummary]) -> None:
    rows = [("ID", "OWNER", "OBJECTS", "BYTES", "LAST WRITE")] + [
        (s.id, _owner_text(s.owner), str(s.objects), human(s.bytes), when(s.last_write)) for s in summaries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        cells = [c.rjust(w) if i in (2, 3) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        print("  ".join(cells).rstrip())


def _admin_group() -> str:
    return load_config()["admin_group"]


def _archive(backend, s: lifecycle.PipelineSummary, written_before: float | None = None) -> tuple[int, int]:
    with Progress(f"archiving pipeline {s.id}", s.bytes, f"0/{s.objects} objects") as progress:
        def step(done_objects: int, done_bytes: int, total_objects: int, total_bytes: int) -> None:
            progress.update(done_bytes, f"{done_objects}/{total_objects} objects")

        return lifecycle.archive(backend, s.id, step, written_before)


def _summary_text(objects: int, nbytes: int) -> str:
    return f"{objects} object{'' if objects == 1 else 's'}, {human(nbytes)}"


def cmd_list(args) -> None:
    backend = open_backend(args.backend)
    try:
        summaries = lifecycle.pipelines(backend)
    finally:
        backend.close()
    if args.json:
        print(json.dumps([{"id": s.id, "owner": s.owner, "objects": s.objects, "bytes": s.bytes,
                           "last_write": s.last_write} for s in summaries]))
    elif summaries:
        _print_table(summaries)


def cmd_archive(args) -> None:
    pid = layout.check_name(args.id, "pipeline id")
    backend = open_backend(args.backend)
    try:
        s = lifecycle.summary(backend, pid)
        if s is None:
            raise CLIError(f"no pipeline {pid} in {backend.url}")
        if not (s.owner and s.owner == login_name()) and not is_admin(_admin_group()):
            whose = {None: "has no owner record", "": "has a damaged owner record"}.get(
                s.owner, f"belongs to {s.owner}")
            raise CLIError(f"pipeline {pid} {whose}: only its owner, root or members of "
                           f"{_admin_group()} may archive it")
        what = _summary_text(s.objects, s.bytes)
        if not args.yes:
            if not (sys.stdin.isatty() and sys.stderr.isatty()):
                raise CLIError(f"archiving deletes all data of pipeline {pid} ({what}): "
                               "add --yes to confirm (no terminal to ask on)", 2)
            sys.stderr.write(f"archive pipeline {pid} ({what})? [y/N] ")
            sys.stderr.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                raise CLIError(f"pipeline {pid} not archived")
        objects, nbytes = _archive(backend, s)
        print(f"archived pipeline {pid}: {_summary_text(objects, nbytes)} removed")
    finally:
        backend.close()


def cmd_chown(args) -> None:
    """Pipelines written by other tools have no owner record, and an owner may leave: an admin
    gives the pipeline to someone (every node enforces it within 30 s, docs/permissions.md)."""
    pid = layout.check_name(args.id, "pipeline id")
    try:
        uid = pwd.getpwnam(args.user).pw_uid
    except KeyError:
        raise CLIError(f"no user {args.user!r} on this node", 2) from None
    if not is_admin(_admin_group()):
        raise CLIError(f"only root or members of {_admin_group()} may change a pipeline's owner")
    backend = open_backend(args.backend)
    try:
        if lifecycle.summary(backend, pid) is None:
            raise CLIError(f"no pipeline {pid} in {backend.url}")
        owners.set_owner(backend, pid, args.user, uid)
        print(f"pipeline {pid} now belongs to {args.user}")
    finally:
        backend.close()


def cmd_gc(args) -> int:
    idle = parse_duration(args.idle)
    if args.yes and not is_admin(_admin_group()):
        raise CLIError(f"gc --yes archives other users' pipelines: only root or members of "
                       f"{_admin_group()} may run it (without --yes it is a dry run)")
    backend = open_backend(args.backend)
    try:
        candidates = lifecycle.idle_pipelines(backend, idle, time.time())
        if not candidates:
            print(f"no pipeline idle for {args.idle}")
            return 0
        if not args.yes:
            _print_table(candidates)
            total = _summary_text(sum(s.objects for s in candidates), sum(s.bytes for s in candidates))
            print(f"would archive {len(candidates)} pipeline(s): {total} (dry run: add --yes to archive)")
            return 0
        archived = skipped = failed = objects = nbytes = 0
        for s in candidates:
            # Re-check just before deleting: a pipeline written since the listing is kept.
            now = time.time()
            fresh = lifecycle.summary(backend, s.id)
            if fresh is None or not lifecycle.is_idle(fresh, idle, now):
                why = "gone meanwhile" if fresh is None else f"written since ({when(fresh.last_write)})"
                print(f"skipped pipeline {s.id}: {why}")
                skipped += 1
                continue
            try:
                o, b = _archive(backend, fresh, written_before=now - idle)
            except lifecycle.StillActive as e:
                print(f"skipped pipeline {s.id}: {e} ({_summary_text(e.objects, e.bytes)} of old data removed)")
                skipped += 1
                continue
            except BackendError as e:
                print(f"mountctl: pipeline {s.id}: {e}", file=sys.stderr)
                failed += 1
                continue
            print(f"archived pipeline {s.id}: {_summary_text(o, b)} removed")
            archived, objects, nbytes = archived + 1, objects + o, nbytes + b
        print(f"gc: archived {archived} pipeline(s), {_summary_text(objects, nbytes)}; "
              f"skipped {skipped}" + (f"; {failed} failed" if failed else ""))
        return 1 if failed else 0
    finally:
        backend.close()
