"""``python -m bench.ab_write REV``: the S3 big write (write + fsync + close), this checkout
against REV.

One full ``make bench`` runs the big write 3 times; single runs swing by more than most changes to
the write path.  This writes the same local file through a fresh mount of each version, in
interleaved rounds: in every round one boto3 ``upload_file`` of the file first (the reference of
that round, in a process of its own as in `bench.writes`), then the two mounts in alternating
order, so the machine's load drifts over both alike.  Each mount's object is checked on moto
(size and SHA-256).  REV is checked out into a temporary git worktree, and each mount's
``mountctl``/daemon runs from its version's directory (``python -m`` imports from the working
directory first).  Prints every round (ratio, daemon CPU, parts phase and completion from the
proxy's trace) and the medians of the ratios to the round's ``upload_file`` and of the daemon's
CPU seconds per write.  ``--floor`` adds `bench.s3writefloor` (the pyfuse3 floor) to every round,
as a third variant: the three rotate (`round_order`).
"""

import os
import sys
from pathlib import Path

from . import writes
from .abrun import parser, revision_tree, summary
from .harness import Env

HERE = Path(__file__).resolve().parents[1]
MiB = 1 << 20
FLOOR = "bench.s3writefloor"


def round_order(names: tuple, i: int) -> tuple:
    """The order of round ``i`` (0-based): two variants alternate; three rotate, each round's order
    reversed every other round, so that each comes first, second and last as often."""
    if len(names) == 2:
        return names if i % 2 == 0 else names[::-1]
    k = i % len(names)
    order = names[k:] + names[:k]
    return order if (i // len(names)) % 2 == 0 else order[::-1]


def main(argv=None) -> int:
    p = parser("python -m bench.ab_write", __doc__, rounds=8)
    p.add_argument("--write-mib", type=int, default=128)
    p.add_argument("--memory-limit", default="256M", help="--memory-limit of the mounts (default 256M)")
    p.add_argument("--floor", action="store_true", help="also write through bench.s3writefloor in every round")
    args = p.parse_args(argv)
    env = Env(keep=False, tls=args.tls)
    names = (args.rev, "this checkout") + ((FLOOR,) if args.floor else ())
    ratios: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    cwd = os.getcwd()
    try:
        with revision_tree(args.rev) as other:
            env.start()
            env.use_bucket("stashfs-ab-write")
            local = writes.make_write_file(env, args.write_mib * MiB)
            env.proxy.latency = args.latency_ms / 1000
            for i in range(args.rounds):
                raw = writes.raw_upload(env, local, f"pipeline/bench/ab-raw/w{i}.bin")
                order = round_order(names, i)
                line = []
                for name in order:
                    print(f"ab_write: round {i + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                    key = f"pipeline/bench/ab/w{i}-{names.index(name)}.bin"
                    if name == FLOOR:
                        r = writes.floor_big_write(env, local, key)
                        r["daemon"] = {"cpu_s": r["cpu_s"]}
                    else:
                        os.chdir(other if name == args.rev else HERE)
                        try:
                            r = writes.mount_big_write(env, local, args.memory_limit, key)
                        finally:
                            os.chdir(cwd)
                    ratios[name].append(r["mb_s"] / raw["mb_s"])
                    cpu[name].append(r["daemon"]["cpu_s"])
                    line.append(f"{name} {ratios[name][-1]:.3f} ({cpu[name][-1]:.2f} s, parts {r['parts_s']:.2f} s"
                                f" + completion {r['completion_s']:.2f} s)")
                print(f"round {i + 1}: upload_file {raw['mb_s']:.0f} MB/s (parts {raw['parts_s']:.2f} s + completion"
                      f" {raw['completion_s']:.2f} s, CPU {raw['cpu_s']:.2f} s); " + ", ".join(line), flush=True)
    finally:
        os.chdir(cwd)
        env.close()
    summary(args, f"S3 big write of {args.write_mib} MiB", "upload_file", "write", names, ratios, cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
