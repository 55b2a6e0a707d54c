"""The measurements.  Each function returns a dict of plain numbers (it goes to the JSON file).

Every S3 figure, the mount's and the raw boto3 reference's, goes through the same counting proxy to
the same moto server; the proxy's counters give requests by kind and bytes downloaded.
"""

import contextlib
import os
import random
import shutil
import stat
import statistics
import subprocess
import time
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from . import appclient, rawclient
from .appclient import read_all
from .harness import MiB, Env, Timer, drop_caches, proc_cpu, proc_status

BIG_KEY = "pipeline/bench/big.bin"
MANY_PREFIX = "pipeline/bench/many/"


def _delta(env: Env, before: dict) -> dict:
    return env.proxy.counts.delta(before, env.proxy.snapshot())


def make_local_file(env: Env, size: int) -> Path:
    """The object's content, random (incompressible), written locally; `upload_big` puts it on moto."""
    path = env.root / "big.bin"
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(8 * MiB, left)
            f.write(os.urandom(n))
            left -= n
    return path


def upload_big(env: Env, path: Path) -> None:
    """The object of the sequential and random reads, put in ``env.bucket`` straight to moto."""
    env.direct.upload_file(str(path), env.bucket, BIG_KEY, Config=TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=8))


# -- S3: sequential read ------------------------------------------------------------------------

def _read_figures(seconds: float, size: int, proxy: dict, cpu_s: float) -> dict:
    """Throughput and the per-byte figures every sequential read reports."""
    return {"seconds": seconds, "mb_s": size / seconds / 1e6, "proxy": proxy,
            "requests_per_mib": proxy["total"] / (size / MiB), "bytes_per_byte": proxy["bytes"] / size,
            "cpu_s": cpu_s, "cpu_s_per_gib": cpu_s / (size / (1 << 30))}


def raw_single_get(env: Env, size: int) -> dict:
    """One plain GET of the whole object (body read in 1 MiB chunks), in a process of its own."""
    with traced(env) as t:
        r = rawclient.run(env, "get", BIG_KEY, size)
    return dict(_read_figures(r["seconds"], size, r["proxy"], r["cpu_s"]), max_rss=r["max_rss"], trace=t["trace"])


def raw_parallel_get(env: Env, size: int, part: int = 8 * MiB, threads: int = 8) -> dict:
    """GETs of 8 MiB ranges on 8 threads, in a process of its own (moto copies the whole object
    for each ranged GET, which makes this slower than one GET there, unlike on S3)."""
    r = rawclient.run(env, "ranged", BIG_KEY, size)
    return dict(_read_figures(r["seconds"], size, r["proxy"], r["cpu_s"]), max_rss=r["max_rss"],
                parts=-(-size // part), part_size=part, threads=threads)


def trace_summary(trace: list) -> dict:
    """GETs of a traced run: how many, their sizes in order, how many were in flight at most, and
    for the largest, how long its answer took to begin (``first_byte_ms``: from the request's
    arrival at the proxy to the server's answer, the proxy's latency included) and how long its
    body then took to pass (``body_ms``)."""
    gets = sorted((t for t in trace if t[2].startswith("GET")), key=lambda t: t[:2])
    events = sorted([(t[0], 1) for t in gets] + [(t[1], -1) for t in gets])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    out = {"gets": len(gets), "sizes_mib": [round(t[4] / MiB, 2) for t in gets], "max_in_flight": peak}
    big = max(gets, key=lambda t: t[4], default=None)
    if big is not None and len(big) > 6 and big[6] is not None:
        out["first_byte_ms"] = (big[6] - big[0]) * 1000
        out["body_ms"] = (big[1] - big[6]) * 1000
    return out


@contextlib.contextmanager
def traced(env: Env):
    """The proxy's trace of the requests made in the block: ``with traced(env) as t: ...``, then
    ``t["trace"]`` (`trace_summary`)."""
    out: dict = {}
    env.proxy.counts.start_trace()
    try:
        yield out
    finally:
        out["trace"] = trace_summary(env.proxy.counts.stop_trace())


def floor_sequential(env: Env, size: int, name: str = "s3floor") -> dict:
    """The same read through `bench.s3floor` (a fresh floor mount): one GET, its body read on the
    trio thread into each FUSE reply, nothing else.  What any pyfuse3 daemon streaming the object
    reaches at best on this machine: beside the row, not a target."""
    with env.mount_s3_floor(name, BIG_KEY, size) as floor:
        path = floor.path / "object"
        os.stat(path)
        cpu0 = proc_cpu(floor.proc.pid)
        before = env.proxy.snapshot()
        with traced(env) as t:
            app = appclient.run(env, "read", path, size)  # a process of its own, as the reference
        proxy = _delta(env, before)
        cpu = proc_cpu(floor.proc.pid) - cpu0
    assert app["bytes"] == size, f"bench.s3floor gave {app['bytes']} bytes of {size}"
    return {**_read_figures(app["seconds"], size, proxy, cpu), "app_cpu_s": app["cpu_s"], "trace": t["trace"]}


def mount_sequential(env: Env, size: int, memory_limit: str, name: str = "seq") -> dict:
    """A fresh mount: read the object with 1 MiB reads; the daemon's memory is measured here."""
    with env.mount_s3(name, "--memory-limit", memory_limit) as m:
        path = m.path / BIG_KEY
        os.stat(path)  # the lookup (HEAD/LIST) is not part of the read
        st = m.status()
        pid, limit = st["pid"], st["memory"]["limit"]
        baseline = proc_status(pid)
        cpu0 = proc_cpu(pid)
        before = env.proxy.snapshot()
        env.proxy.counts.start_trace()
        try:
            app = appclient.run(env, "read", path, size)  # a process of its own, as the reference
        finally:
            trace = env.proxy.counts.stop_trace()
        proxy = _delta(env, before)
        cpu = proc_cpu(pid) - cpu0
        after = m.status()
        mem = proc_status(pid)
    reads = after["requests"].get("read", 0) - st["requests"].get("read", 0)
    return {
        **_read_figures(app["seconds"], size, proxy, cpu), "trace": trace_summary(trace), "app_cpu_s": app["cpu_s"],
        "daemon_cpu_s": cpu, "fuse_reads": reads, "fuse_read_kib": size / max(reads, 1) / 1024,
        "daemon": {"backend_requests": after["backend_requests"], "bytes_down": after["bytes_down"],
                   "prefetch_hit_bytes": after["prefetch_hit_bytes"]},
        "memory": {"limit": limit, "budget_peak": after["memory"]["peak"],
                   "rss_after_mount": baseline["VmRSS"], "vm_hwm": mem["VmHWM"], "rss_end": mem["VmRSS"]},
    }


# -- S3: random 4 KiB reads ---------------------------------------------------------------------

def random_offsets(size: int, count: int, block: int = 4096, aligned: bool = True, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    if aligned:
        return [rng.randrange(0, size // block) * block for _ in range(count)]
    return [rng.randrange(0, size - block) for _ in range(count)]


def mount_random(env: Env, local: Path, size: int, offsets: list[int], block: int = 4096, name: str = "rand") -> dict:
    lat = []
    with env.mount_s3(name) as m, open(local, "rb") as ref:
        fd = os.open(m.path / BIG_KEY, os.O_RDONLY)  # opened once: the lookup is not timed
        try:
            before = env.proxy.snapshot()
            for off in offsets:
                t0 = time.perf_counter()
                data = os.pread(fd, block, off)
                lat.append(time.perf_counter() - t0)
                if data != os.pread(ref.fileno(), block, off):
                    raise AssertionError(f"the mount returned wrong bytes at offset {off}")
            proxy = _delta(env, before)
        finally:
            os.close(fd)
        st = m.status()
    read = block * len(offsets)
    return {"count": len(offsets), "block": block, "aligned": all(o % block == 0 for o in offsets),
            "median_ms": statistics.median(lat) * 1e3,
            "p90_ms": _pct(lat, 0.9) * 1e3, "proxy": proxy, "bytes_read": read,
            "amplification": proxy["bytes"] / read, "random_reads": st["random_reads"]}


def raw_random(env: Env, offsets: list[int], block: int = 4096) -> dict:
    lat = []
    before = env.proxy.snapshot()
    for off in offsets:
        t0 = time.perf_counter()
        data = env.raw.get_object(Bucket=env.bucket, Key=BIG_KEY, Range=f"bytes={off}-{off + block - 1}")["Body"].read()
        lat.append(time.perf_counter() - t0)
        assert len(data) == block
    proxy = _delta(env, before)
    return {"count": len(offsets), "median_ms": statistics.median(lat) * 1e3, "p90_ms": _pct(lat, 0.9) * 1e3,
            "proxy": proxy, "amplification": proxy["bytes"] / (block * len(offsets))}


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- disk backend: sequential read -------------------------------------------------------------

def disk_sequential(env: Env, store: Path, local: Path, size: int, rounds: int = 1) -> dict:
    """The backing file, then the same file through `bench.floorfs` (the pyfuse3 floor), then through
    the disk mount, each read cold (page cache dropped before it), ``rounds`` times.  Each round
    reads the three back to back, so the ratios of a round compare reads made under the same disk
    and machine conditions (the backing disk's cold speed varies 2x from minute to minute here);
    judged on the middle round by ratio (`judge_rounds`)."""
    target = store / BIG_KEY
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(local, target)
    runs = []
    with env.mount_disk("disk-seq", store) as m, env.mount_floor("floor-seq", store) as floor:
        path, floor_path = m.path / BIG_KEY, floor.path / BIG_KEY
        os.stat(path)
        os.stat(floor_path)
        dropped = drop_caches()
        st0 = m.status()
        cpu = 0.0
        for _ in range(rounds):
            timers = {}
            for name, p in (("direct", target), ("floor", floor_path), ("mount", path)):
                if dropped:
                    drop_caches()
                else:  # cannot drop: read warm, so none has an unfair advantage
                    read_all(p)
                cpu0 = proc_cpu(st0["pid"])
                with Timer() as timers[name]:
                    n = read_all(p)
                if name == "mount":
                    cpu += proc_cpu(st0["pid"]) - cpu0
                assert n == size, f"{name}: the disk read gave {n} bytes of {size}"
            runs.append({k: size / t.seconds / 1e6 for k, t in timers.items()})
        st1 = m.status()
        cached = cached_backing_reads(target, {"floor": floor_path, "mount": path}, size)
    reads = st1["requests"].get("read", 0) - st0["requests"].get("read", 0)
    judged = judge_rounds(runs, "direct")
    cold = judged["mount"]["direct"]
    return {"caches_dropped": dropped, "rounds": runs, "cached": cached,
            "cached_ratio": cached["mount"] / cold, "cached_floor_ratio": cached["floor"] / cold,
            "direct_mb_s": cold, "mount_mb_s": judged["mount"]["mount"],
            "floor_direct_mb_s": judged["floor"]["direct"], "floor_mb_s": judged["floor"]["floor"],
            "ratio": judged["mount_ratio"], "floor_ratio": judged["floor_ratio"],
            "daemon_cpu_s": cpu / len(runs), "fuse_reads": reads // len(runs),
            "fuse_read_kib": size * len(runs) / max(reads, 1) / 1024}


def drop_file_cache(path) -> None:
    """Drop one file's clean pages from the page cache (on a FUSE mount: the mount's own pages,
    not the backing file's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_backing_reads(target: Path, paths: dict, size: int) -> dict:
    """The FUSE path alone: the backing file ``target`` read from the page cache, then each of
    ``paths`` (the same file through a FUSE mount) read with only the mount's own pages dropped,
    so that no read waits for the disk -> MB/s by name ("direct" for the backing file).  What a
    FUSE daemon can carry on this machine, whatever the disk does."""
    read_all(target)  # into the page cache; reads through the mounts keep it there
    out = {}
    for name, p in {"direct": target, **paths}.items():
        if name != "direct":
            drop_file_cache(p)
        with Timer() as t:
            n = read_all(p)
        assert n == size, f"{name}: the cached read gave {n} bytes of {size}"
        out[name] = size / t.seconds / 1e6
    return out


def judge_rounds(runs: list[dict], ref: str) -> dict:
    """Rounds of {ref: x, "floor": y, "mount": z} (higher is better) -> the middle round by the
    mount's ratio to ``ref`` and by the floor's (the lower middle one for an even count), and those
    ratios: each row then shows the figures of one round, whose quotient is the ratio shown."""
    def middle(name):
        ordered = sorted(runs, key=lambda r: r[name] / r[ref])
        return ordered[(len(ordered) - 1) // 2]

    mount, floor = middle("mount"), middle("floor")
    return {"mount": mount, "floor": floor, "mount_ratio": mount["mount"] / mount[ref],
            "floor_ratio": floor["floor"] / floor[ref]}


# -- POSIX attributes (issue 11): ls -l of files with their own modes, tar x ----------------------

OLD_MTIME = 981173106  # 2001-02-03 04:05:06 UTC: explicit old times, distinct per entry
OTHER_UID, OTHER_GID = 4321, 5432  # owners that need not exist in /etc/passwd (tar keeps the numbers)
FILE_MODES = (0o644, 0o755, 0o600)


def parse_ls_lr(text: str, top: str) -> dict[str, tuple]:
    """``ls -lRn --time-style=+%s`` output -> {path relative to ``top``: (mode string, uid, gid,
    size or None for a directory, mtime, symlink target or None)}.

    A plain ``ls -ln`` (no -R) works too: its entries are relative to ``top``.  The link count is
    left out (directories count their subdirectories on ext4, not on every filesystem), and so is a
    directory's size; an ACL/label marker after the mode ("+", ".") is dropped.
    """
    out: dict[str, tuple] = {}
    prefix = ""
    for line in text.splitlines():
        parts = line.split(None, 6)
        if len(parts) < 7 or len(parts[0]) < 10 or parts[0][:1] not in "-dlpscb" or not parts[1].isdigit():
            if line.endswith(":"):  # "pkg/d01:", the directory whose entries follow
                d = line[:-1]
                prefix = "" if d == top else str(Path(d).relative_to(top)) + "/"
            continue  # else "total N", a blank line
        mode, _nlink, uid, gid, size, mtime, name = parts
        target = None
        if mode[0] == "l" and " -> " in name:
            name, target = name.split(" -> ", 1)
        out[prefix + name] = (mode[:10], int(uid), int(gid), None if mode[0] == "d" else int(size),
                              int(mtime), target)
    return out


def _ls_lr(env: Env, path: Path, recursive: bool) -> tuple[float, dict, dict, str]:
    """``ls -ln[R]`` of ``path`` (a subprocess, cwd = its parent) -> seconds, requests, entries, stderr."""
    before = env.proxy.snapshot()
    with Timer() as t:
        p = subprocess.run(["ls", "-lRn" if recursive else "-ln", "--time-style=+%s", path.name],
                           cwd=path.parent, capture_output=True, text=True, timeout=1800)
    proxy = _delta(env, before)
    if p.returncode != 0:
        raise RuntimeError(f"ls -l{'R' if recursive else ''} {path} failed ({p.returncode}): "
                           f"{p.stderr.strip()[-2000:]}")
    return t.seconds, proxy, parse_ls_lr(p.stdout, path.name), p.stderr


def _ls_differences(expected: dict, actual: dict) -> list[str]:
    """One line per entry that ``ls`` shows differently (or only on one side)."""
    fields = ("mode", "uid", "gid", "size", "mtime", "target")
    lines = []
    for name in sorted(expected.keys() | actual.keys()):
        e, a = expected.get(name), actual.get(name)
        if e == a:
            continue
        if e is None or a is None:
            lines.append(f"{name}: {'missing' if a is None else 'unexpected'}")
        else:
            lines.append(f"{name}: " + ", ".join(f"{f} {x} shown as {y}" for f, x, y in zip(fields, e, a) if x != y))
    return lines


def mount_ls_attrs(env: Env, count: int) -> dict:
    """``count`` files written *through* an S3 mount, each chmod-ed (0644/0755/0600/0640/0700) and
    given an old mtime; then ``ls -l`` of the directory from a fresh mount: no request per entry
    (HEAD = 0) and every mode and mtime shown as set (the directory index, docs/storage-layout.md).
    """
    modes = (0o644, 0o755, 0o600, 0o640, 0o700)
    rel = Path("pipeline") / "bench" / "attrs"
    expected = {}
    with env.mount_s3("attrs-w") as m:
        d = m.path / rel
        d.mkdir(parents=True)
        before = env.proxy.snapshot()
        with Timer() as t:
            for i in range(count):
                path = d / f"a{i:05d}.dat"
                data = f"attributes {i}\n".encode() * 8
                path.write_bytes(data)
                os.chmod(path, modes[i % len(modes)])
                mtime = OLD_MTIME + 3601 * i
                os.utime(path, (mtime, mtime))
                st = os.lstat(path)  # the owner the mount gave it (the caller's, or a setgid group)
                expected[path.name] = (stat.filemode(stat.S_IFREG | modes[i % len(modes)]), st.st_uid,
                                       st.st_gid, len(data), mtime, None)
        written = _delta(env, before)
        before = env.proxy.snapshot()
    flush = _delta(env, before)  # the unmount: the directory index is written at the latest here
    with env.mount_s3("attrs-ls") as m:
        os.stat(m.path / "pipeline")  # the fixed top level: no backend request
        before = env.proxy.snapshot()
        with Timer() as r:
            os.stat(m.path / rel)
        resolve = {"seconds": r.seconds, "proxy": _delta(env, before)}
        seconds, proxy, shown, _ = _ls_lr(env, m.path / rel, recursive=False)
    diffs = _ls_differences(expected, shown)
    return {"count": count, "write_seconds": t.seconds, "write_files_s": count / t.seconds,
            "write_proxy": written, "unmount_proxy": flush, "resolve": resolve,
            "seconds": seconds, "listed": len(shown), "proxy": proxy,
            "heads": proxy["requests"].get("HEAD", 0), "differences": len(diffs), "difference_lines": diffs[:10]}


def make_tar_tree(root: Path, count: int, subdirs: int = 10) -> dict:
    """A tree of ``count`` files and symlinks (about 5% symlinks) spread over ``subdirs``
    directories under ``root`` (which must not exist), like an unpacked package.

    Files have modes 0644/0755/0600 in turn and sizes of 18 B to 10 KiB; every fourth file, and
    one directory, belongs to OTHER_UID:OTHER_GID when run as root; directories are 0755, 0750 or
    0775.  Every entry, symlinks included, has its own old mtime (children first, so setting one
    does not move its directory's afterwards).  Returns the numbers of files, symlinks, dirs.
    """
    root.mkdir()
    dirs = [root / f"d{j:02d}" for j in range(subdirs)]
    for d in dirs:
        d.mkdir()
    files, links = [], []
    for i in range(count):
        d = dirs[i % subdirs]
        if i % 20 == 19:  # 5%: a symlink to a file of another directory, or of the same
            target = f"../d{(i + 3) % subdirs:02d}/f{i - 19:05d}" if i % 40 == 39 else f"f{i - 10:05d}"
            os.symlink(target, d / f"l{i:05d}")
            links.append(d / f"l{i:05d}")
            continue
        path = d / f"f{i:05d}"
        path.write_bytes(f"file {i:05d} of the archive\n".encode() * (1 + (i * 37) % 360))
        os.chmod(path, FILE_MODES[i % len(FILE_MODES)])
        if os.geteuid() == 0 and i % 4 == 1:
            os.chown(path, OTHER_UID, OTHER_GID)
        files.append(path)
    for j, d in enumerate(dirs):
        os.chmod(d, (0o755, 0o750, 0o775)[j % 3])
    if os.geteuid() == 0:
        os.chown(dirs[1], OTHER_UID, OTHER_GID)
    for i, path in enumerate(files + links):
        t = OLD_MTIME + 3601 * i
        os.utime(path, (t, t), follow_symlinks=False)
    for j, d in enumerate([*dirs, root]):
        t = OLD_MTIME - 86400 * (j + 1)
        os.utime(d, (t, t))
    return {"files": len(files), "symlinks": len(links), "dirs": len(dirs) + 1}


def _tar(args: list, where: Path, *members: str, timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
    """``tar ARGS -C WHERE MEMBERS``, timed."""
    with Timer() as t:
        p = subprocess.run(["tar", *args, "-C", str(where), *members], capture_output=True, text=True,
                           timeout=timeout)
    return t.seconds, p


def _tar_d(archive: Path, where: Path) -> dict:
    """``tar dzf`` (compare the archive with the tree): exit status and the differences it prints
    (modes, owners, mtimes, sizes, contents, symlink targets; a missing file is one too)."""
    seconds, p = _tar(["dzf", str(archive)], where)
    lines = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    return {"exit": p.returncode, "seconds": seconds, "differences": len(lines), "lines": lines[:10]}


def mount_tar_x(env: Env, count: int) -> dict:
    """``tar xzf`` (as root: owners too) of a .tar.gz of ``count`` files and symlinks into a new
    pipeline directory of a fresh S3 mount, and onto a local directory as the time reference.

    Then, from another fresh mount: ``ls -lR`` of the extracted tree (requests by kind: no HEAD, a
    GET per directory for its index; and every line compared with ``ls -lR`` of the local copy),
    and ``tar dzf`` (tar's compare) for modes, owners, mtimes, contents and symlinks.
    """
    src_parent = env.root / f"tarx-src{env.tag}"
    src_parent.mkdir()
    tree = make_tar_tree(src_parent / "pkg", count)
    entries = tree["files"] + tree["symlinks"] + tree["dirs"]
    archive = env.root / f"tarx{env.tag}.tar.gz"
    _, p = _tar(["czf", str(archive)], src_parent, "pkg")
    if p.returncode != 0:
        raise RuntimeError(f"tar czf failed ({p.returncode}): {p.stderr.strip()[-2000:]}")

    local = env.root / f"tarx-local{env.tag}"
    local.mkdir()
    local_s, p = _tar(["xzf", str(archive)], local)
    if p.returncode != 0:
        raise RuntimeError(f"tar xzf onto a local directory failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    local_ls = subprocess.run(["ls", "-lRn", "--time-style=+%s", "pkg"], cwd=local, capture_output=True,
                              text=True, timeout=600)
    local_listing = parse_ls_lr(local_ls.stdout, "pkg")
    out = {"entries": entries, **tree, "archive_bytes": archive.stat().st_size,
           "local": {"seconds": local_s, "files_s": entries / local_s, "tar_d": _tar_d(archive, local)}}

    rel = Path("pipeline") / "tarx"
    with env.mount_s3("tarx") as m:
        (m.path / rel).mkdir()  # a new pipeline: its owner record is written here, not counted
        st0 = m.status()
        before = env.proxy.snapshot()
        seconds, p = _tar(["xzf", str(archive)], m.path / rel)
        proxy = _delta(env, before)
        st1 = m.status()
        before = env.proxy.snapshot()
        with Timer() as u:
            m.umount()
    flush = _delta(env, before)
    total = dict(proxy["requests"])
    for k, v in flush["requests"].items():
        total[k] = total.get(k, 0) + v
    out["mount"] = {
        "exit": p.returncode, "stderr_lines": p.stderr.splitlines()[:10], "seconds": seconds,
        "files_s": entries / seconds, "proxy": proxy, "unmount": {"seconds": u.seconds, "proxy": flush},
        "requests_total": sum(total.values()), "requests_by_kind": dict(sorted(total.items())),
        "requests_per_entry": sum(total.values()) / entries,
        "fuse_requests": {k: v - st0["requests"].get(k, 0) for k, v in st1["requests"].items()
                          if v - st0["requests"].get(k, 0)},
    }

    with env.mount_s3("tarx-ls") as m:
        os.stat(m.path / "pipeline")
        before = env.proxy.snapshot()
        with Timer() as r:
            os.stat(m.path / rel / "pkg")
        resolve = {"seconds": r.seconds, "proxy": _delta(env, before)}
        ls_s, ls_proxy, shown, _ = _ls_lr(env, m.path / rel / "pkg", recursive=True)
        diffs = _ls_differences(local_listing, shown)
        before = env.proxy.snapshot()
        tar_d = _tar_d(archive, m.path / rel)
        tar_d["proxy"] = _delta(env, before)
    out["ls"] = {"resolve": resolve, "seconds": ls_s, "proxy": ls_proxy, "listed": len(shown),
                 "heads": ls_proxy["requests"].get("HEAD", 0), "gets": ls_proxy["requests"].get("GET", 0),
                 "get_ranges": ls_proxy["requests"].get("GET range", 0),
                 "differences": len(diffs), "difference_lines": diffs[:10]}
    out["tar_d"] = tar_d
    return out
