"""``python -m bench [--quick] [--json FILE] [--keep]``: run every measurement, print the table."""

import argparse
import json
import sys
import time
import traceback

from . import report, scenarios
from .harness import Env
from .scenarios import random_offsets

FULL = {"object_mib": 256, "files": 5000, "random_reads": 200, "creates": 300}
QUICK = {"object_mib": 64, "files": 1000, "random_reads": 100, "creates": 100}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64 MiB object, 1,000 files, 100 random reads, 100 creates")
    p.add_argument("--json", default="/tmp/stashfs-bench.json", metavar="FILE",
                   help="write the results here as JSON (default /tmp/stashfs-bench.json)")
    p.add_argument("--object-mib", type=int, help="size of the object read sequentially and randomly")
    p.add_argument("--files", type=int, help="objects in the directory listed with ls -l")
    p.add_argument("--random-reads", type=int, help="number of random 4 KiB reads")
    p.add_argument("--creates", type=int, help="number of 1 KiB files created")
    p.add_argument("--memory-limit", default="256M", help="--memory-limit of the S3 mount (default 256M)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (daemon logs) for inspection")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for k in FULL:
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg["quick"] = args.quick
    cfg["memory_limit"] = args.memory_limit
    size = cfg["object_mib"] << 20
    started = time.time()
    results: dict = {}
    error = None
    problems: list[str] = []

    def step(text):
        print(f"bench [{time.time() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    env = Env(keep=args.keep)
    try:
        step(f"starting moto and the counting proxy (temp dir {env.root})")
        env.start()
        step(f"uploading a {cfg['object_mib']} MiB object")
        local = scenarios.make_big_file(env, size)

        step("sequential read: raw single GET")
        results["seq_raw_single"] = scenarios.raw_single_get(env, size)
        step("sequential read: raw parallel ranged GETs")
        results["seq_raw_parallel"] = scenarios.raw_parallel_get(env, size)
        step("sequential read: through the S3 mount")
        results["seq_mount"] = scenarios.mount_sequential(env, size, args.memory_limit)

        offsets = random_offsets(size, cfg["random_reads"])
        step(f"random reads: {len(offsets)} x 4 KiB through the S3 mount")
        results["random_mount"] = scenarios.mount_random(env, local, size, offsets)
        step(f"random reads: {len(offsets)} x 4 KiB raw ranged GETs")
        results["random_raw"] = scenarios.raw_random(env, offsets)

        step(f"ls -l: creating {cfg['files']} objects")
        results["many_setup_s"] = scenarios.make_many(env, cfg["files"])
        step("ls -l: raw ListObjectsV2")
        results["ls_raw"] = scenarios.raw_listing(env, cfg["files"])
        step("ls -l: through a fresh S3 mount")
        results["ls_mount"] = scenarios.mount_ls(env, cfg["files"])

        step(f"creates: {cfg['creates']} x 1 KiB through the S3 mount")
        results["create_s3"] = scenarios.mount_s3_creates(env, cfg["creates"])
        step(f"creates: {cfg['creates']} x 1 KiB raw put_object")
        results["create_raw"] = scenarios.raw_puts(env, cfg["creates"])
        store = env.root / "disk-store"
        step("disk: sequential read through the disk mount and of the backing file")
        results["disk_seq"] = scenarios.disk_sequential(env, store, local, size)
        step(f"creates: {cfg['creates']} x 1 KiB through the disk mount")
        results["create_disk"] = scenarios.mount_disk_creates(env, store, cfg["creates"])
    except KeyboardInterrupt:
        error = "interrupted"
    except Exception as e:  # report what was measured so far
        traceback.print_exc()
        error = f"{type(e).__name__}: {e}"
    finally:
        step("cleaning up")
        problems = env.close()

    verdict = report.evaluate(results)
    doc = report.document(results, cfg, verdict, started, problems, error)
    m = doc["machine"]
    print()
    print(f"stashfs benchmark, {doc['date']}, {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
          f"kernel {m['kernel']}, Python {m['python']}{', --quick' if args.quick else ''}")
    print(f"S3 = moto server on loopback, reached through a counting proxy by both the mount and raw boto3")
    print()
    print(report.table(results, cfg, verdict))
    print()
    print(report.summary(verdict))
    for p in problems:
        print(f"problem: {p}")
    if error:
        print(f"benchmark stopped early: {error}")
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"\nresults written to {args.json} (run took {doc['duration_s']:.0f} s)")
    return 0  # the benchmark reports; missed targets are not a failure


if __name__ == "__main__":
    sys.exit(main())
