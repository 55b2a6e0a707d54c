"""Turn the measurements into the printed table, the target checks and the JSON document."""

import os
import platform
import time

from .harness import MiB

TARGETS = {
    "sequential": "S3 sequential read >= 0.8x parallel raw ranged GETs",
    "amplification": "random 4 KiB reads: bytes downloaded per byte read <= 2",
    "ls_heads": "ls -l of a large directory: zero HEAD requests",
    "ls_time": "ls -l of a large directory <= 1.5x raw ListObjectsV2 time",
    "memory_rss": "daemon peak RSS (VmHWM) during the sequential read <= --memory-limit",
    "memory_budget": "memory budget peak <= --memory-limit",
}


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(next(l for l in f if l.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem / (1 << 30), 1),
            "kernel": platform.release(), "python": platform.python_version()}


def _kinds(proxy: dict) -> str:
    req = proxy["requests"]
    return ", ".join(f"{k} {v}" for k, v in req.items()) or "none"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def evaluate(r: dict) -> dict:
    """name -> True (met) / False (missed) / None (not measured)."""
    out = dict.fromkeys(TARGETS)
    if "seq_mount" in r and "seq_raw_parallel" in r:
        out["sequential"] = r["seq_mount"]["mb_s"] >= 0.8 * r["seq_raw_parallel"]["mb_s"]
        mem = r["seq_mount"]["memory"]
        out["memory_rss"] = mem["vm_hwm"] <= mem["limit"]
        out["memory_budget"] = mem["budget_peak"] <= mem["limit"]
    if "random_mount" in r:
        out["amplification"] = r["random_mount"]["amplification"] <= 2
    if "ls_mount" in r and "ls_raw" in r:
        out["ls_heads"] = r["ls_mount"]["heads"] == 0
        out["ls_time"] = r["ls_mount"]["seconds"] <= 1.5 * r["ls_raw"]["seconds"]
    return out


def table(r: dict, cfg: dict, verdict: dict) -> str:
    """The table: one row per figure, with its reference, ratio and target."""
    mark = {True: "met", False: "MISSED", None: ""}
    rows = [("measurement", "stashfs", "reference", "ratio", "target")]
    notes = []
    size_mib = cfg["object_mib"]

    if "seq_mount" in r:
        m, single, par = r["seq_mount"], r.get("seq_raw_single"), r.get("seq_raw_parallel")
        if single:
            rows.append((f"S3 sequential read {size_mib} MiB", f"{m['mb_s']:.1f} MB/s",
                         f"raw single GET {single['mb_s']:.1f} MB/s", f"{m['mb_s'] / single['mb_s']:.2f}x", ""))
        if par:
            rows.append(("  vs parallel ranged GETs", f"{m['mb_s']:.1f} MB/s",
                         f"raw 8 MiB x 8 threads {par['mb_s']:.1f} MB/s", f"{m['mb_s'] / par['mb_s']:.2f}x",
                         f">= 0.80x {mark[verdict['sequential']]}"))
        rows.append(("  requests / bytes (mount)", f"{m['proxy']['total']} req, {_mb(m['proxy']['bytes'])}",
                     f"raw parallel {par['proxy']['total']} req, {_mb(par['proxy']['bytes'])}" if par else "",
                     f"{m['proxy']['bytes'] / (size_mib * MiB):.2f}x obj", ""))
        notes.append(f"S3 sequential read through the mount: {_kinds(m['proxy'])}")
        mem = m["memory"]
        lim = mem["limit"] / MiB
        rows.append(("daemon peak RSS (VmHWM), seq read", f"{mem['vm_hwm'] / MiB:.0f} MiB",
                     f"--memory-limit {lim:.0f} MiB", f"{mem['vm_hwm'] / mem['limit']:.2f}x",
                     f"<= limit {mark[verdict['memory_rss']]}"))
        rows.append(("memory budget peak (status xattr)", f"{mem['budget_peak'] / MiB:.0f} MiB",
                     f"--memory-limit {lim:.0f} MiB", f"{mem['budget_peak'] / mem['limit']:.2f}x",
                     f"<= limit {mark[verdict['memory_budget']]}"))
        notes.append(f"daemon RSS right after mounting {mem['rss_after_mount'] / MiB:.0f} MiB, "
                     f"at the end of the read {mem['rss_end'] / MiB:.0f} MiB")

    if "random_mount" in r:
        m, raw = r["random_mount"], r.get("random_raw")
        what = f"S3 random {m['block'] // 1024} KiB preads ({m['count']})"
        rows.append((what + ", median", f"{m['median_ms']:.1f} ms",
                     f"raw ranged GET {raw['median_ms']:.1f} ms" if raw else "",
                     f"{m['median_ms'] / raw['median_ms']:.2f}x" if raw else "", ""))
        rows.append(("  bytes downloaded / byte read", f"{m['amplification']:.2f}",
                     f"raw {raw['amplification']:.2f}" if raw else "", "",
                     f"<= 2 {mark[verdict['amplification']]}"))
        notes.append(f"random reads through the mount: {_kinds(m['proxy'])}, {m['proxy']['bytes']} bytes "
                     f"for {m['bytes_read']} read; p90 {m['p90_ms']:.1f} ms (raw p90 "
                     f"{raw['p90_ms']:.1f} ms)" if raw else "")

    if "ls_mount" in r:
        m, raw = r["ls_mount"], r.get("ls_raw")
        rows.append((f"ls -l {m['listed']} objects, fresh mount", f"{m['seconds']:.2f} s",
                     f"raw ListObjectsV2 {raw['seconds']:.2f} s" if raw else "",
                     f"{m['seconds'] / raw['seconds']:.2f}x" if raw else "",
                     f"<= 1.50x {mark[verdict['ls_time']]}"))
        rows.append(("  HEAD requests during ls -l", str(m["heads"]), "", "",
                     f"0 {mark[verdict['ls_heads']]}"))
        notes.append(f"ls -l (cold): {_kinds(m['proxy'])}; raw listing: {_kinds(raw['proxy'])}" if raw else "")
        notes.append(f"ls -l again on the same mount: {m['warm_seconds']:.2f} s, {_kinds(m['warm_proxy'])}")

    if "create_s3" in r:
        m, raw = r["create_s3"], r.get("create_raw")
        rows.append((f"creates of 1 KiB files ({m['count']}), S3", f"{m['files_s']:.0f} files/s",
                     f"raw put_object {raw['files_s']:.0f} files/s" if raw else "",
                     f"{m['files_s'] / raw['files_s']:.2f}x" if raw else "", ""))
        notes.append(f"S3 creates: {_kinds(m['proxy'])} "
                     f"({m['proxy']['total'] / m['count']:.1f} requests per file)")
    if "create_disk" in r:
        m = r["create_disk"]
        rows.append((f"creates of 1 KiB files ({m['count']}), disk", f"{m['files_s']:.0f} files/s", "", "", ""))

    if "disk_seq" in r:
        d = r["disk_seq"]
        rows.append((f"disk sequential read {size_mib} MiB", f"{d['mount_mb_s']:.0f} MB/s",
                     f"backing file {d['direct_mb_s']:.0f} MB/s", f"{d['mount_mb_s'] / d['direct_mb_s']:.2f}x", ""))
        notes.append("disk reads: page cache dropped before each read (cold)" if d["caches_dropped"] else
                     "disk reads: page cache could NOT be dropped; both reads are warm (file read once before)")

    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [""] + [f"* {n}" for n in notes if n]
    return "\n".join(lines)


def summary(verdict: dict) -> str:
    met = [k for k, v in verdict.items() if v is True]
    missed = [k for k, v in verdict.items() if v is False]
    unmeasured = [k for k, v in verdict.items() if v is None]
    lines = [f"targets met: {len(met)} of {len(TARGETS)}"]
    lines += [f"  MISSED: {TARGETS[k]}" for k in missed]
    lines += [f"  not measured: {TARGETS[k]}" for k in unmeasured]
    lines += [f"  met:    {TARGETS[k]}" for k in met]
    return "\n".join(lines)


def document(r: dict, cfg: dict, verdict: dict, started: float, problems: list[str], error: str | None) -> dict:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine(),
        "config": cfg,
        "results": r,
        "targets": {k: {"description": TARGETS[k], "met": v} for k, v in verdict.items()},
        "problems": problems,
        "error": error,
    }
