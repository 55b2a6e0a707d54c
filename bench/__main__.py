"""stashfs benchmark (``make bench``): the S3 and disk mounts against raw boto3 and the backing files.

Every S3 request of the mount and of the raw boto3 references goes through one counting proxy to a
local moto server.  Prints a table with pass/fail against the targets, writes the figures as JSON,
and exits 0 even when targets are missed.  See docs/performance.md.
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from . import masking, readers, report, scenarios
from .harness import Env
from .scenarios import random_offsets

FULL = {"object_mib": 256, "files": 5000, "random_reads": 200, "creates": 300, "repeat": 3, "tar_files": 500}
QUICK = {"object_mib": 64, "files": 1000, "random_reads": 100, "creates": 100, "repeat": 1, "tar_files": 100}


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput, plus every run's figure (and the worst memory peak)."""
    ordered = sorted(runs, key=lambda r: r["mb_s"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["runs_mb_s"] = [round(r["mb_s"], 1) for r in runs]
    if "memory" in out:
        out["memory"] = dict(out["memory"], vm_hwm=max(r["memory"]["vm_hwm"] for r in runs),
                             budget_peak=max(r["memory"]["budget_peak"] for r in runs))
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64 MiB object, 1,000 files, 100 random reads, 100 creates, "
                        "100 files in the tar x archive, 1 run each")
    p.add_argument("--json", default="/tmp/stashfs-bench.json", metavar="FILE",
                   help="write the results here as JSON (default /tmp/stashfs-bench.json)")
    p.add_argument("--object-mib", type=int, help="size of the object read sequentially and randomly")
    p.add_argument("--files", type=int, help="objects in the directory listed with ls -l")
    p.add_argument("--random-reads", type=int, help="number of random 4 KiB reads")
    p.add_argument("--creates", type=int, help="number of 1 KiB files created (and of files chmod-ed through "
                   "the mount for the second ls -l)")
    p.add_argument("--tar-files", type=int, help="files and symlinks in the archive extracted with tar xzf "
                   "(default 500)")
    p.add_argument("--repeat", type=int, help="runs of each sequential read (the median is reported)")
    p.add_argument("--memory-limit", default="256M", help="--memory-limit of the S3 mount (default 256M)")
    p.add_argument("--readers", type=int, default=8,
                   help="concurrent sequential readers in the memory row (default 8; objects of a quarter "
                        "of --object-mib, at least 16 MiB)")
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
    code = report.code_version()  # the package is installed editable: record what was measured
    loads = [os.getloadavg()[0]]
    results: dict = {}
    error = None
    problems: list[str] = []

    def step(text):
        loads.append(os.getloadavg()[0])
        print(f"bench [{time.time() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    env = Env(keep=args.keep)
    try:
        step("masking: 100 MB of command output with 50 secrets through exec's filter, and as a plain copy")
        results["masking"] = masking.measure()
        step(f"starting moto and the counting proxy (temp dir {env.root})")
        env.start()
        step(f"uploading a {cfg['object_mib']} MiB object")
        local = scenarios.make_big_file(env, size)

        runs = {"seq_raw_single": [], "seq_raw_parallel": [], "seq_mount": []}
        for i in range(cfg["repeat"]):  # interleaved, so a slow phase of the machine hits all three
            step(f"sequential read {i + 1}/{cfg['repeat']}: raw single GET")
            runs["seq_raw_single"].append(scenarios.raw_single_get(env, size))
            step(f"sequential read {i + 1}/{cfg['repeat']}: raw parallel ranged GETs")
            runs["seq_raw_parallel"].append(scenarios.raw_parallel_get(env, size))
            step(f"sequential read {i + 1}/{cfg['repeat']}: through a fresh S3 mount")
            runs["seq_mount"].append(scenarios.mount_sequential(env, size, args.memory_limit, f"seq{i + 1}"))
        results.update({k: median_run(v) for k, v in runs.items()})

        each = max(16, cfg["object_mib"] // 4) << 20
        step(f"memory: {args.readers} concurrent sequential readers of {each >> 20} MiB objects, one S3 mount")
        results["readers"] = readers.mount_concurrent_readers(env, args.readers, each, args.memory_limit)

        offsets = random_offsets(size, cfg["random_reads"])
        step(f"random reads: {len(offsets)} x 4 KiB (4096-aligned) through the S3 mount")
        results["random_mount"] = scenarios.mount_random(env, local, size, offsets)
        step(f"random reads: {len(offsets)} x 4 KiB raw ranged GETs")
        results["random_raw"] = scenarios.raw_random(env, offsets)
        unaligned = random_offsets(size, max(1, cfg["random_reads"] // 2), aligned=False, seed=2)
        step(f"random reads: {len(unaligned)} x 4 KiB (unaligned) through the S3 mount")
        results["random_mount_unaligned"] = scenarios.mount_random(env, local, size, unaligned, name="rand-u")

        step(f"ls -l: creating {cfg['files']} objects")
        results["many_setup_s"] = scenarios.make_many(env, cfg["files"])
        step("ls -l: raw ListObjectsV2")
        results["ls_raw"] = scenarios.raw_listing(env, cfg["files"])
        step("ls -l: through a fresh S3 mount")
        results["ls_mount"] = scenarios.mount_ls(env, cfg["files"])
        step(f"ls -l: {cfg['creates']} files written and chmod-ed through an S3 mount, listed from a fresh mount")
        results["ls_attrs"] = scenarios.mount_ls_attrs(env, cfg["creates"])
        step(f"tar x: {cfg['tar_files']} files and symlinks into a new pipeline of a fresh S3 mount (and locally); "
             "ls -lR and tar d from another fresh mount")
        results["tar_x"] = scenarios.mount_tar_x(env, cfg["tar_files"])

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
        problems = env.close(save_logs_to=Path(args.json).resolve().parent)

    verdict = report.evaluate(results)
    doc = report.document(results, cfg, verdict, started, problems, error)
    doc["code"] = code
    loads.append(os.getloadavg()[0])
    doc["machine"]["load_avg_1m"] = {"start": loads[0], "max": max(loads), "end": loads[-1]}
    m = doc["machine"]
    print()
    print(f"stashfs benchmark, {doc['date']}, {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
          f"kernel {m['kernel']}, Python {m['python']}{', --quick' if args.quick else ''}")
    load = m["load_avg_1m"]
    print(f"load average (1 min): {load['start']:.1f} at start, {load['max']:.1f} at most between steps, "
          f"{load['end']:.1f} at end (the run itself accounts for about 2; more means other work)")
    print(f"code: commit {code['commit'] or '?'}"
          + (f" plus uncommitted changes in {len(code['uncommitted_changes'])} files of fsdriver/ and mountctl/"
             if code["uncommitted_changes"] else ""))
    print("S3 = moto server on loopback, reached through a counting proxy by both the mount and raw boto3")
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
