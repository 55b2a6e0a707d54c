"""What the A/B tools share (`bench.ab_ls`, `bench.ab_read`): their common options, and the
revision compared with, checked out into a temporary git worktree.  A mount started with that
tree as the working directory runs its version: ``mountctl`` and the daemon run as ``python -m``,
which imports from the working directory first."""

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from .harness import REPO


def parser(prog: str, doc: str, rounds: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rev", help="the git revision to compare with (e.g. a commit before a change)")
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--latency-ms", type=float, default=10.0,
                   help="delay the proxy adds to every S3 request (default 10, as in make bench)")
    p.add_argument("--tls", action="store_true",
                   help="the proxy serves HTTPS, as S3 does (a self-signed certificate the clients are "
                        "given as AWS_CA_BUNDLE); make bench's S3 rows are plain HTTP")
    return p


@contextlib.contextmanager
def revision_tree(rev: str):
    """The path of ``rev`` checked out (removed afterwards)."""
    other = Path(tempfile.mkdtemp(prefix="stashfs-ab-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(other), rev], check=True)
    try:
        yield other
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)], capture_output=True)
        shutil.rmtree(other.parent, ignore_errors=True)


def paired(a: list[float], b: list[float]) -> tuple[float, float, int]:
    """``a`` against ``b``, round by round (the rounds' conditions cancel out): the mean of the
    differences, its standard error (0 with fewer than two rounds) and the rounds ``a`` was ahead."""
    diffs = [x - y for x, y in zip(a, b)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return statistics.mean(diffs), se, sum(d > 0 for d in diffs)


def summary(args, what: str, reference: str, per: str, names, ratios: dict, cpu: dict) -> None:
    """Print the medians (and means) of every variant's ratios to the round's ``reference`` and of
    its daemon's CPU seconds per ``per``; then each variant against the first (the revision),
    paired by round.  Two runs of the same code differ by about 0.1 in a single round here: a
    difference within two standard errors is not one."""
    scheme = "https" if args.tls else "http"
    print(f"{what} over {scheme} at {args.latency_ms:g} ms per request, {args.rounds} rounds: "
          f"ratio to the round's {reference}, daemon CPU s per {per} (medians, means)")
    for name in names:
        print(f"  {name:20} ratio {statistics.median(ratios[name]):.3f} (mean {statistics.mean(ratios[name]):.3f})"
              f"   CPU {statistics.median(cpu[name]):.3f} s (mean {statistics.mean(cpu[name]):.3f})")
    base = names[0]
    for name in names[1:]:
        d, se, ahead = paired(ratios[name], ratios[base])
        dc, sec, _ = paired(cpu[name], cpu[base])
        print(f"  {name} - {base}, paired by round: ratio {d:+.3f} (se {se:.3f}), ahead in {ahead} of "
              f"{len(ratios[name])}; CPU {dc:+.3f} s (se {sec:.3f})")
