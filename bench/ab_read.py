"""``python -m bench.ab_read REV``: the S3 sequential read, this checkout against REV.

One full ``make bench`` runs the sequential read 3 times; two runs on the same code differ by
more than most changes to the read path.  This reads the same object through a fresh mount of
each version and through the pyfuse3 floor (`bench.s3floor`), interleaved: in every round one
raw GET of the whole object first (the reference of that round), then the three in alternating
order, so the machine's load drifts over all of them alike.  REV is checked out into a temporary
git worktree, and each mount's ``mountctl``/daemon runs from its version's directory (``python
-m`` imports from the working directory first).  Prints every round and the medians of the
ratios to the round's raw GET and of the daemon's CPU seconds per read.
"""

import os
import sys
from pathlib import Path

from . import scenarios
from .abrun import parser, revision_tree, summary
from .harness import Env

HERE = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def main(argv=None) -> int:
    p = parser("python -m bench.ab_read", __doc__, rounds=8)
    p.add_argument("--object-mib", type=int, default=256)
    p.add_argument("--memory-limit", default="256M", help="--memory-limit of the mounts (default 256M)")
    args = p.parse_args(argv)
    size = args.object_mib * MiB
    env = Env(keep=False, tls=args.tls)
    names = (args.rev, "this checkout", "bench.s3floor")
    ratios: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    cwd = os.getcwd()
    try:
        with revision_tree(args.rev) as other:
            env.start()
            env.use_bucket("stashfs-ab-read")
            scenarios.upload_big(env, scenarios.make_local_file(env, size))
            env.proxy.latency = args.latency_ms / 1000
            for i in range(args.rounds):
                raw = scenarios.raw_single_get(env, size)["mb_s"]
                order = names if i % 2 == 0 else names[::-1]
                line = []
                for name in order:
                    print(f"ab_read: round {i + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                    if name == "bench.s3floor":
                        r = scenarios.floor_sequential(env, size, f"floor{i}")
                        seconds = r["cpu_s"]
                    else:
                        os.chdir(other if name == args.rev else HERE)
                        try:
                            r = scenarios.mount_sequential(env, size, args.memory_limit, f"r{i}{names.index(name)}")
                        finally:
                            os.chdir(cwd)
                        seconds = r["daemon_cpu_s"]
                    ratios[name].append(r["mb_s"] / raw)
                    cpu[name].append(seconds)
                    line.append(f"{name} {ratios[name][-1]:.3f} ({seconds:.2f} s)")
                print(f"round {i + 1}: one GET {raw:.0f} MB/s; " + ", ".join(line), flush=True)
    finally:
        os.chdir(cwd)
        env.close()
    summary(args, f"S3 sequential read of {args.object_mib} MiB", "one GET", "read", names, ratios, cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
