"""``python -m bench.ab_ls REV``: ``ls -l`` of a large S3 directory, this checkout against REV.

The machine's noise is larger than most changes to the listing path, so a figure from one full
``make bench`` cannot say whether a change made ``ls -l`` slower.  This runs the `mount_ls`
scenario for both versions interleaved, on one moto server and one set of objects: REV is checked
out into a temporary git worktree, and each mount's ``mountctl``/daemon runs from the version's
directory (``python -m`` imports from the working directory first).  Prints the seconds of every
run and the medians; raw ListObjectsV2 is measured between rounds as the reference.
"""

import os
import statistics
import sys
from pathlib import Path

from . import listing
from .abrun import parser, revision_tree
from .harness import Env

HERE = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = parser("python -m bench.ab_ls", __doc__, rounds=3)
    p.add_argument("--files", type=int, default=5000)
    args = p.parse_args(argv)
    env = Env(keep=False, tls=args.tls)
    runs = {args.rev: [], "this checkout": [], "raw ListObjectsV2": []}
    cwd = os.getcwd()
    try:
        with revision_tree(args.rev) as other:
            env.start()
            listing.make_many(env, args.files)
            env.proxy.latency = args.latency_ms / 1000
            for i in range(args.rounds):
                for name, tree in ((args.rev, other), ("this checkout", HERE)):
                    print(f"ab_ls: round {i + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                    os.chdir(tree)
                    r = listing.mount_ls(env, args.files)
                    runs[name].append(r["seconds"])
                    if r["split"]:
                        runs[name].append(r["split"]["ls"]["seconds"])
                os.chdir(cwd)
                runs["raw ListObjectsV2"].append(listing.raw_listing(env, args.files, repeat=1)["seconds"])
    finally:
        os.chdir(cwd)
        env.close()
    print(f"ls -l of {args.files} objects on S3 (moto, over {'https' if args.tls else 'http'}), seconds per run")
    for name, values in runs.items():
        print(f"  {name:20} median {statistics.median(values):6.2f}   runs {' '.join(f'{v:.2f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
