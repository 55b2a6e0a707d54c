"""Turn the measurements into the printed table, the target checks and the JSON document."""

import os
import platform
import subprocess
import time
from pathlib import Path

from .harness import MiB

TARGETS = {
    "sequential": "S3 sequential read >= 0.8x parallel raw ranged GETs",
    "amplification": "random 4 KiB reads: bytes downloaded per byte read <= 2",
    "ls_heads": "ls -l of a large directory: zero HEAD requests",
    "ls_time": "ls -l of a large directory <= 1.5x raw ListObjectsV2 time",
    "memory_rss": "daemon peak RSS (VmHWM) during the sequential read <= --memory-limit",
    "memory_budget": "memory budget peak <= --memory-limit",
    "memory_readers": "concurrent readers: daemon peak RSS <= --memory-limit + RSS after mount + 32 MiB",
    "masking": "mountctl exec output masking (100 MB, 50 secrets) >= 50 MB/s",
    "ls_attrs": "ls -l of files chmod-ed through the mount, fresh mount: HEAD = 0, modes/mtimes as set",
    "tar_ls_heads": "ls -l after tar x: no request per entry (HEAD = 0), attributes as a local tar x shows",
    "tar_d": "tar x keeps modes/mtimes/symlinks (tar d differences = 0)",
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


def code_version() -> dict:
    """The commit measured, and which files of the package differed from it (an editable install)."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "fsdriver", "mountctl").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_changes": dirty}


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
    if "readers" in r:
        out["memory_readers"] = r["readers"]["vm_hwm"] <= r["readers"]["target"]
    if "masking" in r:
        out["masking"] = r["masking"]["masked_mb_s"] >= 50
    if "random_mount" in r:
        out["amplification"] = r["random_mount"]["amplification"] <= 2
    if "ls_mount" in r and "ls_raw" in r:
        out["ls_heads"] = r["ls_mount"]["heads"] == 0
        out["ls_time"] = r["ls_mount"]["seconds"] <= 1.5 * r["ls_raw"]["seconds"]
    if "ls_attrs" in r:
        out["ls_attrs"] = r["ls_attrs"]["heads"] == 0 and r["ls_attrs"]["differences"] == 0
    if "tar_x" in r:
        out["tar_ls_heads"] = r["tar_x"]["ls"]["heads"] == 0 and r["tar_x"]["ls"]["differences"] == 0
        out["tar_d"] = r["tar_x"]["tar_d"]["differences"] == 0
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
        tr = m["trace"]
        sizes = ", ".join(f"{x:g}" for x in tr["sizes_mib"][:6])
        notes.append(f"S3 sequential read through the mount: {_kinds(m['proxy'])}; GET sizes (MiB) {sizes}, ... "
                     f"at most {tr['max_in_flight']} in flight (raw parallel: {par['threads'] if par else '-'}); "
                     f"{m['fuse_reads']} FUSE reads of {m['fuse_read_kib']:.0f} KiB, daemon CPU {m['daemon_cpu_s']:.1f} s")
        if "runs_mb_s" in m:
            notes.append("sequential MB/s per run (median reported): mount " + ", ".join(map(str, m["runs_mb_s"]))
                         + (f"; raw single GET {', '.join(map(str, single['runs_mb_s']))}" if single else "")
                         + (f"; raw parallel {', '.join(map(str, par['runs_mb_s']))}" if par else ""))
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

    if "readers" in r:
        c = r["readers"]
        rows.append((f"peak RSS, {c['readers']} readers x {c['object_bytes'] // MiB} MiB", f"{c['vm_hwm'] / MiB:.0f} MiB",
                     f"limit {c['limit'] / MiB:.0f} + at rest {c['rss_after_mount'] / MiB:.0f} + "
                     f"{c['overhead'] / MiB:.0f} MiB", f"{c['vm_hwm'] / c['target']:.2f}x",
                     f"<= 1.00x {mark[verdict['memory_readers']]}"))
        notes.append(f"{c['readers']} concurrent sequential readers of different objects (--memory-limit "
                     f"{c['limit'] / MiB:.0f} MiB): {c['mb_s']:.1f} MB/s in all; budget peak "
                     f"{c['budget_peak'] / MiB:.0f} MiB; RSS after mount {c['rss_after_mount'] / MiB:.0f} MiB, "
                     f"peak {c['vm_hwm'] / MiB:.0f} MiB, at the end {c['rss_end'] / MiB:.0f} MiB "
                     f"(moto distorts this row: it copies the whole object for each GET, so parts spend "
                     f"longer in flight, counted by the budget before their bytes exist, than on S3)")

    if "masking" in r:
        k = r["masking"]
        rows.append((f"exec masking {k['bytes'] // 10**6} MB, {k['secrets']} secrets", f"{k['masked_mb_s']:.0f} MB/s",
                     f"plain copy {k['plain_mb_s']:.0f} MB/s", f"{k['masked_mb_s'] / k['plain_mb_s']:.2f}x",
                     f">= 50 MB/s {mark[verdict['masking']]}"))
        notes.append(f"masking: {k['patterns']} patterns (every form of docs/secrets.md); Masker.feed alone "
                     f"{k['feed_mb_s']:.0f} MB/s in 64 KiB chunks, automaton built in {k['build_s'] * 1000:.0f} ms; "
                     f"{k['masked']} of {k['inserted']} inserted occurrences masked (the last may be cut off)")

    if "random_mount" in r:
        m, raw = r["random_mount"], r.get("random_raw")
        what = f"S3 random {m['block'] // 1024} KiB preads ({m['count']})"
        rows.append((what + ", median", f"{m['median_ms']:.1f} ms",
                     f"raw ranged GET {raw['median_ms']:.1f} ms" if raw else "",
                     f"{m['median_ms'] / raw['median_ms']:.2f}x" if raw else "", ""))
        rows.append(("  bytes downloaded / byte read", f"{m['amplification']:.2f}",
                     f"raw {raw['amplification']:.2f}" if raw else "", "",
                     f"<= 2 {mark[verdict['amplification']]}"))
        notes.append(f"random reads through the mount (4096-aligned): {_kinds(m['proxy'])}, {m['proxy']['bytes']} "
                     f"bytes for {m['bytes_read']} read; p90 {m['p90_ms']:.1f} ms"
                     + (f" (raw p90 {raw['p90_ms']:.1f} ms)" if raw else ""))
    if "random_mount_unaligned" in r:
        u = r["random_mount_unaligned"]
        rows.append((f"  unaligned preads ({u['count']}), median", f"{u['median_ms']:.1f} ms", "", "",
                     f"amplification {u['amplification']:.2f}"))
        notes.append(f"unaligned random reads through the mount: {_kinds(u['proxy'])}, {u['proxy']['bytes']} "
                     f"bytes for {u['bytes_read']} read")

    if "ls_mount" in r:
        m, raw = r["ls_mount"], r.get("ls_raw")
        rows.append((f"ls -l {m['listed']} objects (boto3), fresh mount", f"{m['seconds']:.2f} s",
                     f"raw ListObjectsV2 {raw['seconds']:.2f} s" if raw else "",
                     f"{m['seconds'] / raw['seconds']:.2f}x" if raw else "",
                     f"<= 1.50x {mark[verdict['ls_time']]}"))
        sp = m["split"]
        rows.append(("  HEAD requests during ls -l", str(m["heads"]),
                     f"split: resolving {sp['resolve']['proxy']['requests'].get('HEAD', 0)}, "
                     f"listing {sp['ls']['proxy']['requests'].get('HEAD', 0)}" if sp else "", "",
                     f"0 {mark[verdict['ls_heads']]}"))
        notes.append(f"ls -l (cold): {_kinds(m['proxy'])}; raw listing: {_kinds(raw['proxy'])}" if raw else "")
        if m["warm"] is None:
            notes.append("ls -l was too slow: the second ls -l and the split run were skipped")
        else:
            notes.append(f"ls -l again on the same mount: {m['warm']['seconds']:.2f} s, {_kinds(m['warm']['proxy'])}")
        sp = m["split"]
        if sp is not None:
            notes.append(f"ls -l split on another fresh mount: resolving the directory {sp['resolve']['seconds']:.2f} s "
                         f"({_kinds(sp['resolve']['proxy'])}), then ls -l {sp['ls']['seconds']:.2f} s "
                         f"({_kinds(sp['ls']['proxy'])})")
        notes.append("ls -l FUSE requests: " + ", ".join(f"{k} {v}" for k, v in sorted(m["fuse_requests"].items())))
    if "ls_attrs" in r:
        rows += _ls_attrs_rows(r["ls_attrs"], verdict, notes)
    if "tar_x" in r:
        rows += _tar_x_rows(r["tar_x"], verdict, notes)

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
        notes.append(("disk reads: page cache dropped before each read (cold)" if d["caches_dropped"] else
                      "disk reads: page cache could NOT be dropped; both reads are warm (file read once before)")
                     + f"; mount: {d['fuse_reads']} FUSE reads of {d['fuse_read_kib']:.0f} KiB, "
                       f"daemon CPU {d['daemon_cpu_s']:.1f} s for {d['mount_s']:.1f} s of reading")

    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [""] + [f"* {n}" for n in notes if n]
    return "\n".join(lines)


def _ls_attrs_rows(a: dict, verdict: dict, notes: list) -> list[tuple]:
    """Rows of `ls -l` of files written and chmod-ed through the mount, listed from a fresh mount."""
    mark = {True: "met", False: "MISSED", None: ""}
    rows = [(f"ls -l {a['count']} files chmod-ed via mount", f"{a['seconds']:.2f} s", "fresh mount", "", ""),
            ("  HEAD requests / entries shown wrong", f"{a['heads']} / {a['differences']}",
             f"{a['listed']} entries listed", "", f"0 / 0 {mark[verdict['ls_attrs']]}")]
    notes.append(f"ls -l of files chmod-ed through the mount: {_kinds(a['proxy'])} (resolving the directory "
                 f"before: {_kinds(a['resolve']['proxy'])}); writing them (write, chmod, utime each; "
                 f"{a['write_files_s']:.0f} files/s): {_kinds(a['write_proxy'])}, "
                 f"{a['write_proxy']['total'] / a['count']:.1f} requests per file, "
                 f"at unmount {_kinds(a['unmount_proxy'])}")
    if a["difference_lines"]:
        notes.append("ls -l shown wrong (first lines): " + "; ".join(a["difference_lines"]))
    return rows


def _tar_x_rows(t: dict, verdict: dict, notes: list) -> list[tuple]:
    """Rows of `tar xzf` into a fresh S3 mount, then `ls -lR` and `tar dzf` from another."""
    mark = {True: "met", False: "MISSED", None: ""}
    m, loc, ls, d = t["mount"], t["local"], t["ls"], t["tar_d"]
    n = t["entries"]
    rows = [(f"tar xzf {n} entries, S3 (exit {m['exit']})", f"{m['files_s']:.0f} entries/s",
             f"local dir {loc['files_s']:.0f} entries/s", f"{m['files_s'] / loc['files_s']:.3f}x", ""),
            ("  requests per entry (tar + unmount)", f"{m['requests_per_entry']:.2f}",
             f"{m['requests_total']} req / {n} entries", "", ""),
            ("  ls -lR, fresh mount: HEAD/GET/range", f"{ls['heads']} / {ls['gets']} / {ls['get_ranges']}",
             f"{t['dirs']} dirs, {t['symlinks']} symlinks", "", f"HEAD 0 {mark[verdict['tar_ls_heads']]}"),
            ("  ls -lR entries shown unlike local", str(ls["differences"]), f"{ls['listed']} entries listed", "",
             "0 (same target)"),
            ("  tar dzf differences, fresh mount", str(d["differences"]), f"local dir {loc['tar_d']['differences']}",
             "", f"0 {mark[verdict['tar_d']]}")]
    notes.append(f"tar xzf: {t['files']} files, {t['symlinks']} symlinks, {t['dirs']} directories "
                 f"({t['archive_bytes']} bytes of .tar.gz); {m['seconds']:.1f} s through the mount, "
                 f"{loc['seconds']:.2f} s locally; requests during tar: {_kinds(m['proxy'])}; "
                 f"at unmount ({m['unmount']['seconds']:.1f} s): {_kinds(m['unmount']['proxy'])}")
    notes.append("tar xzf FUSE requests: " + ", ".join(f"{k} {v}" for k, v in sorted(m["fuse_requests"].items())))
    if m["exit"] != 0 or m["stderr_lines"]:
        notes.append("tar xzf stderr (first lines): " + "; ".join(m["stderr_lines"]))
    notes.append(f"ls -lR after tar x: {ls['seconds']:.2f} s, {_kinds(ls['proxy'])} (GET: each directory's "
                 f"index; GET range: one readlink per symlink; resolving the tree before, not counted in the "
                 f"row: {_kinds(ls['resolve']['proxy'])}); tar dzf: {d['seconds']:.1f} s, {_kinds(d['proxy'])}")
    if ls["difference_lines"]:
        notes.append("ls -lR shown unlike local (first lines): " + "; ".join(ls["difference_lines"]))
    if d["lines"]:
        notes.append(f"tar dzf (exit {d['exit']}, first lines): " + "; ".join(d["lines"]))
    return rows


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
