"""Masking throughput: 100 MB of a command's output through `mountctl exec`'s filter, 50 secrets.

The output is ordinary log lines with, every 64 KiB or so, one secret in one of its encoded forms.
Measured in the same run, each in its own process, with ``fsdriver.secrets.runner.run`` running
``cat`` of the file and its stdout on /dev/null:

- masked: the filter with the 50 secrets (every form of docs/secrets.md);
- reference: the same pump with no secrets, i.e. a plain copy of the same stream;
- in-process: `Masker.feed` alone over the stream in 64 KiB chunks (no pipes), for the filter's cost.

``python -m bench.masking [--mb N]`` runs it alone (about 10-20 s on 2 cores).
"""

import argparse
import base64
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECRETS = 50
CHUNK = 64 * 1024
REPO = Path(__file__).resolve().parent.parent

# Runs a command through the runner with the secrets from the environment (never argv), our
# stdout on /dev/null; prints the seconds taken.
_PUMP = """
import json, os, sys, time
from fsdriver.secrets.runner import run
values = json.loads(os.environ.pop("BENCH_SECRETS"))
t = time.perf_counter()
rc = run(["cat", sys.argv[1]], dict(os.environ), values)
print(time.perf_counter() - t, rc, file=sys.stderr)
"""


def make_secrets(seed: int = 1) -> list:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_/+=!&"
    out = ["".join(rng.choice(alphabet) for _ in range(rng.randint(16, 48))) for _ in range(SECRETS - 1)]
    out.append("-----BEGIN KEY-----\n" + "\n".join("".join(rng.choice(string.ascii_letters) for _ in range(64))
                                                   for _ in range(8)) + "\n-----END KEY-----")
    return out


def make_output(path: Path, size: int, values: list, seed: int = 2) -> int:
    """Writes ``size`` bytes of log lines with a secret form every ~64 KiB; returns how many."""
    rng = random.Random(seed)
    words = [w.encode() for w in ("request", "GET", "/api/v1/items", "200", "ms", "user", "id", "ok", "retry",
                                  "cache", "miss", "hit", "upload", "part", "of", "bytes", "INFO", "DEBUG")]
    block = b"".join(b"2026-11-22T08:00:00Z " + b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
                     for _ in range(800))  # ~64 KiB
    forms = [lambda v: v.encode(), lambda v: base64.b64encode(v.encode()), lambda v: v.encode().hex().encode(),
             lambda v: json.dumps(v)[1:-1].encode()]
    inserted = 0
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = block + b"token=" + rng.choice(forms)(rng.choice(values)) + b"\n"
            f.write(piece[:size - written])
            written += len(piece)
            inserted += 1
    return inserted


def _pump_seconds(path: Path, values: list) -> float:
    env = dict(os.environ, BENCH_SECRETS=json.dumps(values), PYTHONPATH=str(REPO))
    with open(os.devnull, "wb") as null:
        p = subprocess.run([sys.executable, "-c", _PUMP, str(path)], env=env, stdout=null,
                           stderr=subprocess.PIPE, timeout=600, check=True)
    seconds, rc = p.stderr.decode().split()[-2:]
    if rc != "0":
        raise RuntimeError(f"cat through the runner exited {rc}")
    return float(seconds)


def _in_process_seconds(path: Path, values: list) -> tuple:
    from fsdriver.secrets.mask import Masker

    t = time.perf_counter()
    m = Masker(values)
    build = time.perf_counter() - t
    masked = 0
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            masked += m.feed(chunk).count(b"****")
    masked += m.flush().count(b"****")
    return time.perf_counter() - t, build, masked


def measure(mb: int = 100) -> dict:
    values = make_secrets()
    size = mb * 1000 * 1000
    with tempfile.TemporaryDirectory(prefix="stashfs-bench-mask-") as tmp:
        path = Path(tmp) / "output.log"
        inserted = make_output(path, size, values)
        plain = _pump_seconds(path, [])
        masked = _pump_seconds(path, values)
        feed, build, found = _in_process_seconds(path, values)
    from fsdriver.secrets.mask import patterns_for

    patterns = len({p.lower() for v in values for p in patterns_for(v, 6)})
    return {"bytes": size, "secrets": len(values), "patterns": patterns, "inserted": inserted, "masked": found,
            "plain_s": plain, "masked_s": masked, "feed_s": feed, "build_s": build,
            "plain_mb_s": size / plain / 1e6, "masked_mb_s": size / masked / 1e6, "feed_mb_s": size / feed / 1e6}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.masking", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=100, help="MB of output (default 100)")
    args = p.parse_args(argv)
    r = measure(args.mb)
    print(json.dumps(r, indent=2))
    print(f"masking {r['bytes'] / 1e6:.0f} MB, {r['secrets']} secrets ({r['patterns']} patterns): "
          f"{r['masked_mb_s']:.0f} MB/s through exec's pump, plain copy {r['plain_mb_s']:.0f} MB/s "
          f"({r['masked_mb_s'] / r['plain_mb_s']:.2f}x); Masker.feed alone {r['feed_mb_s']:.0f} MB/s; "
          f"{r['masked']} of {r['inserted']} inserted occurrences masked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
