"""Turn the measurements into the printed table, the target checks and the JSON document."""

import os
import platform
import subprocess
import time
from pathlib import Path


# Judged on the S3 pass at --latency-ms (S3_TARGETS) and on the local rows (LOCAL_TARGETS).
S3_TARGETS = {
    "sequential": "S3 sequential read >= 0.8x one raw GET of the whole object",
    "creates": "S3 creates of 4 KiB files >= 0.8x a raw put_object loop",
    "create_requests": "S3 creates: <= 1.1 requests per created file (during the creates and at unmount)",
    "big_write": "S3 big write + fsync + close >= 1.0x boto3 upload_file of the same file",
    "ls_time": "ls -l of the large directory <= 1.3x the raw ListObjectsV2 pagination",
    "ls_relist": "ls -l: no LIST of the directory beyond the ceil(n/1000) pages it needs",
    "ls_heads": "ls -l of the large directory: no request per entry (HEAD 0 while listing; at most 1 "
                "in all, the directory's own marker when resolving it)",
    "no_404": "no wasted 404: no key GET again within the metadata TTL of a 404 of it, on one mount",
    "amplification": "random 4 KiB reads: bytes downloaded per byte read <= 2",
    "memory_rss": "daemon peak RSS (VmHWM) during the sequential read <= --memory-limit",
    "memory_budget": "memory budget peak <= --memory-limit",
    "memory_readers": "concurrent readers: daemon peak RSS <= --memory-limit + RSS after mount + 32 MiB",
    "ls_attrs": "ls -l of files chmod-ed through the mount, fresh mount: HEAD = 0, modes/mtimes as set",
    "tar_ls_heads": "ls -l after tar x: no request per entry (HEAD = 0), attributes as a local tar x shows",
    "tar_d": "tar x keeps modes/mtimes/symlinks (tar d differences = 0)",
}
LOCAL_TARGETS = {
    "disk_seq": "disk sequential read >= 0.8x the backing file",
    "disk_creates": "disk creates >= 0.8x write + fsync + close of files on the backing filesystem",
    "masking": "mountctl exec output masking (100 MB, 50 secrets) >= 50 MB/s",
}
TARGETS = {**S3_TARGETS, **LOCAL_TARGETS}
JUDGED = {True: "met", False: "MISSED", None: ""}
SHOWN = {True: "(met)", False: "(missed)", None: ""}  # a pass whose targets are not judged


def pass_key(latency_ms: float) -> str:
    """The name of an S3 pass in the results: "10ms", "0ms"."""
    return f"{latency_ms:g}ms"


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


def _ratio(a: float, b: float) -> float:
    """a / b; NaN (a missed target, printed "nanx") when the reference measured nothing."""
    return a / b if b else float("nan")


def gets_404(mount: dict) -> int:
    """GETs (whole or ranged) of one mount's life answered 404."""
    return sum(v for k, v in mount["not_found"].items() if k.startswith("GET "))


def worst_404(mounts: dict) -> tuple[int, str]:
    """The most 404 answers one key got to GETs on one mount, and " (key, mount)" when above 0."""
    best, where = 0, ""
    for name, m in mounts.items():
        for k, v in m["not_found"].items():
            if k.startswith("GET ") and v > best:
                best, where = v, f" ({k.split(' ', 1)[1]}, mount {name})"
    return best, where


def evaluate_s3(p: dict) -> dict:
    """The S3 targets on one pass: name -> {"met": True/False/None (not measured), "measured": text}."""
    out = {k: {"met": None, "measured": "not measured"} for k in S3_TARGETS}

    def put(name, met, measured):
        out[name] = {"met": bool(met), "measured": measured}

    if "seq_mount" in p and "seq_raw_single" in p:
        x = _ratio(p["seq_mount"]["mb_s"], p["seq_raw_single"]["mb_s"])
        fl = p.get("seq_floor")
        floor = f"; {_floor(_ratio(fl['mb_s'], p['seq_raw_single']['mb_s']), 0.8, 'bench.s3floor')}" if fl else ""
        put("sequential", x >= 0.8, f"{x:.3f}x ({p['seq_mount']['mb_s']:.1f} vs {p['seq_raw_single']['mb_s']:.1f} MB/s{floor})")
        mem = p["seq_mount"]["memory"]
        put("memory_rss", mem["vm_hwm"] <= mem["limit"], f"{mem['vm_hwm'] / mem['limit']:.2f}x the limit")
        put("memory_budget", mem["budget_peak"] <= mem["limit"], f"{mem['budget_peak'] / mem['limit']:.2f}x the limit")
    if "create_s3" in p and "create_raw" in p:
        c = p["create_s3"]
        x = _ratio(c["files_s"], p["create_raw"]["files_s"])
        put("creates", x >= 0.8, f"{x:.3f}x ({c['files_s']:.1f} vs {p['create_raw']['files_s']:.1f} files/s)")
        put("create_requests", c["requests_per_file"] <= 1.1, f"{c['requests_per_file']:.3f} requests per file")
    if "write_mount" in p and "write_raw" in p:
        x = _ratio(p["write_mount"]["mb_s"], p["write_raw"]["mb_s"])
        fl = p.get("write_floor")
        floor = f"; {_floor(_ratio(fl['mb_s'], p['write_raw']['mb_s']), 1.0, 'bench.s3writefloor')}" if fl else ""
        put("big_write", x >= 1.0, f"{x:.3f}x ({p['write_mount']['mb_s']:.1f} vs {p['write_raw']['mb_s']:.1f} MB/s{floor})")
    if "ls_mount" in p and "ls_raw" in p:
        m = p["ls_mount"]
        x = _ratio(m["seconds"], p["ls_raw"]["seconds"])
        put("ls_time", x <= 1.3, f"{x:.3f}x ({m['seconds']:.2f} vs {p['ls_raw']['seconds']:.2f} s)")
        put("ls_relist", m["lists_beyond_pages"] <= 0,
            f"{m['dir_lists']} LISTs of the directory for {m['pages_needed']} pages")
        # No request per entry: the only HEAD allowed is resolving the directory itself (its
        # marker, for its own attributes), which the split run on another fresh mount shows apart.
        split_ls = (m.get("split") or {}).get("ls")
        ls_heads = split_ls["proxy"]["requests"].get("HEAD", 0) if split_ls else None
        if ls_heads is None:  # no split run (a slow listing): all of them count
            put("ls_heads", m["heads"] <= 1, f"{m['heads']} HEAD in all, path resolution included")
        else:
            put("ls_heads", ls_heads == 0 and m["heads"] <= 1,
                f"{ls_heads} HEAD while listing, {m['heads']} in all (path resolution included)")
    if p.get("mounts"):
        n, where = worst_404(p["mounts"])
        wasted = sum(sum(v["repeated_404"].values()) for v in p["mounts"].values())
        put("no_404", wasted == 0, f"{wasted} GETs answered 404 within the TTL of the previous 404 of the same "
            f"key; {sum(gets_404(v) for v in p['mounts'].values())} GET 404s in {len(p['mounts'])} mounts, "
            f"at most {n} for one key on one mount{where}")
    if "readers" in p:
        r = p["readers"]
        put("memory_readers", r["vm_hwm"] <= r["target"], f"{r['vm_hwm'] / r['target']:.2f}x the bound")
    if "random_mount" in p:
        a = p["random_mount"]["amplification"]
        put("amplification", a <= 2, f"{a:.2f} bytes per byte read")
    if "ls_attrs" in p:
        a = p["ls_attrs"]
        put("ls_attrs", a["heads"] == 0 and a["differences"] == 0, f"{a['heads']} HEAD, {a['differences']} shown wrong")
    if "tar_x" in p:
        ls, d = p["tar_x"]["ls"], p["tar_x"]["tar_d"]
        put("tar_ls_heads", ls["heads"] == 0 and ls["differences"] == 0,
            f"{ls['heads']} HEAD, {ls['differences']} shown unlike local")
        put("tar_d", d["differences"] == 0, f"{d['differences']} differences")
    return out


def evaluate(r: dict, judged: str | None) -> dict:
    """Every target: the S3 ones on pass ``judged`` (the --latency-ms pass), the local ones."""
    out = evaluate_s3(r.get("s3", {}).get(judged, {}) if judged else {})
    out.update({k: {"met": None, "measured": "not measured"} for k in LOCAL_TARGETS})
    if "disk_seq" in r:
        d = r["disk_seq"]
        x = d["ratio"]
        cached = (f"; with the backing file cached, so that no read waits for the disk, the mount reads at "
                  f"{d['cached_ratio']:.3f}x and the floor at {d['cached_floor_ratio']:.3f}x of the cold backing read"
                  if "cached" in d else "")
        out["disk_seq"] = {"met": x >= 0.8, "measured": f"{x:.3f}x ({d['mount_mb_s']:.0f} vs {d['direct_mb_s']:.0f} MB/s; "
                           f"{_floor(d['floor_ratio'], 0.8)}{cached})"}
    if "create_disk" in r:
        c = r["create_disk"]
        m, ref = c["mount"], c["reference"]
        x = c["ratio"]
        out["disk_creates"] = {"met": x >= 0.8, "measured": f"{x:.3f}x ({m['files_s']:.0f} vs {ref['files_s']:.0f} files/s; "
                               f"{_floor(c['floor_ratio'], 0.8)})"}
    if "masking" in r:
        k = r["masking"]["masked_mb_s"]
        out["masking"] = {"met": k >= 50, "measured": f"{k:.0f} MB/s"}
    return out


def _floor(ratio: float, target: float, floor: str = "a do-nothing pyfuse3 passthrough") -> str:
    """What a floor daemon (`bench.floorfs`, `bench.s3floor`, `bench.s3writefloor`) reached in the same rounds."""
    return (f"{floor} reached {ratio:.3f}x in the same rounds"
            + ("" if ratio >= target else ", below the target too"))


def summary(verdict: dict, judged: str | None) -> str:
    """The target lines: met / MISSED / not measured, each with what was measured."""
    def line(k, word):
        where = f" [S3 at {judged}]" if k in S3_TARGETS and judged else ""
        return f"  {word} {TARGETS[k]}{where}: {verdict[k]['measured']}"

    met = [k for k, v in verdict.items() if v["met"] is True]
    missed = [k for k, v in verdict.items() if v["met"] is False]
    unmeasured = [k for k, v in verdict.items() if v["met"] is None]
    lines = [f"targets met: {len(met)} of {len(verdict)}"
             + (f" (S3 targets judged at {judged} per request)" if judged else "")]
    lines += [line(k, "MISSED:") for k in missed]
    lines += [line(k, "not measured:") for k in unmeasured]
    lines += [line(k, "met:   ") for k in met]
    return "\n".join(lines)


def document(r: dict, cfg: dict, verdict: dict, started: float, problems: list[str], error: str | None) -> dict:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine(),
        "config": cfg,
        "results": r,
        "targets": {k: {"description": TARGETS[k], **v} for k, v in verdict.items()},
        "problems": problems,
        "error": error,
    }
