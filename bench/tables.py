"""The printed tables: one per S3 pass (at --latency-ms, where targets are judged, and at 0 ms,
where they are only shown in brackets), and one for the rows without S3 (disk backend, masking).

Each row: measurement, stashfs's figure, the reference's, the ratio, the target with met/missed.
Notes under a table give requests by kind (and responses of 400 or more, such as ``GET 404``),
CPU, memory and FUSE request details.
"""

from .harness import MiB
from .report import JUDGED, SHOWN, gets_404, worst_404


def kinds(proxy: dict) -> str:
    """"GET 3, LIST 2; answered GET 404 x1": requests by kind, then error responses."""
    text = ", ".join(f"{k} {v}" for k, v in proxy["requests"].items()) or "none"
    errors = proxy.get("errors") or {}
    if errors:
        text += "; answered " + ", ".join(f"{k} x{v}" for k, v in errors.items())
    waited = proxy.get("expect_100") or {}
    if waited:  # a round trip more each (bench/proxy.py)
        text += "; waited for 100 Continue " + ", ".join(f"{k} x{v}" for k, v in waited.items())
    return text


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _render(rows: list[tuple], notes: list[str]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [""] + [f"* {n}" for n in notes if n]
    return "\n".join(lines)


def s3_table(p: dict, cfg: dict, verdict: dict, judged: bool) -> str:
    """The rows of one S3 pass ``p`` (``verdict``: `report.evaluate_s3` of it)."""
    mark = JUDGED if judged else SHOWN

    def t(name: str, text: str) -> str:
        return f"{text} {mark[verdict[name]['met']]}".rstrip()

    lat = f"{p['latency_ms']:g} ms"
    rows = [(f"S3, {lat} per request" + ("" if judged else " (targets not judged)"),
             "stashfs", "reference", "ratio", "target")]
    notes: list[str] = []
    _sequential(p, cfg, t, rows, notes)
    _writes(p, t, rows, notes)
    _listing(p, t, rows, notes)
    _others(p, t, rows, notes)
    if p.get("mounts"):
        m = p["mounts"]
        worst, where = worst_404(m)
        wasted = sum(sum(v["repeated_404"].values()) for v in m.values())
        rows.append((f"GETs answered 404, {len(m)} fresh mounts", f"{sum(gets_404(v) for v in m.values())}, "
                     f"{wasted} within TTL", f"{sum(v['requests'] for v in m.values())} requests in all",
                     f"max {worst} per key", t("no_404", "0 within TTL")))
        notes.append("404 answers over each mount's life, by request (a HEAD of a missing name is a lookup's "
                     "answer, not waste): " + ("; ".join(
                         f"{name}: {', '.join(f'{k} x{v}' for k, v in x['not_found'].items())}"
                         for name, x in m.items() if x["not_found"]) or "none")
                     + (f"; the most often: {where.strip(' ()')}" if worst > 1 else "")
                     + "; within TTL = sooner than the daemon's --metadata-ttl after the previous 404 of the key")
    return _render(rows, notes)


def _sequential(p: dict, cfg: dict, t, rows: list, notes: list) -> None:
    if "seq_mount" not in p:
        return
    m, single, par = p["seq_mount"], p.get("seq_raw_single"), p.get("seq_raw_parallel")
    size_mib = cfg["object_mib"]
    rows.append((f"S3 sequential read {size_mib} MiB", f"{m['mb_s']:.1f} MB/s",
                 f"one GET {single['mb_s']:.1f} MB/s" if single else "",
                 f"{m['mb_s'] / single['mb_s']:.3f}x" if single else "", t("sequential", ">= 0.80x")))
    if par:
        rows.append(("  beside: parallel ranged GETs (*)", "", f"8 MiB x 8 threads {par['mb_s']:.1f} MB/s",
                     f"{m['mb_s'] / par['mb_s']:.2f}x", "(no target)"))
    fl = p.get("seq_floor")
    if fl and single:
        rows.append(("  bench.s3floor (pyfuse3 floor)", f"{fl['mb_s']:.1f} MB/s", f"one GET {single['mb_s']:.1f} MB/s",
                     f"{fl['mb_s'] / single['mb_s']:.3f}x", "(reported)"))
    rows.append(("  requests per MiB / bytes per byte read", f"{m['requests_per_mib']:.3f} / {m['bytes_per_byte']:.2f}",
                 f"one GET {single['requests_per_mib']:.3f} / {single['bytes_per_byte']:.2f}" if single else "", "", ""))
    if single:
        rows.append(("  CPU s per GiB read", f"daemon {m['cpu_s_per_gib']:.2f}",
                     f"raw boto3 {single['cpu_s_per_gib']:.2f}", f"{_div(m['cpu_s_per_gib'], single['cpu_s_per_gib'])}",
                     "(reported)"))
    mem = m["memory"]
    lim = mem["limit"] / MiB
    rows.append(("  daemon peak RSS (VmHWM)", f"{mem['vm_hwm'] / MiB:.0f} MiB", f"--memory-limit {lim:.0f} MiB",
                 f"{mem['vm_hwm'] / mem['limit']:.2f}x", t("memory_rss", "<= limit")))
    rows.append(("  memory budget peak (status xattr)", f"{mem['budget_peak'] / MiB:.0f} MiB",
                 f"--memory-limit {lim:.0f} MiB", f"{mem['budget_peak'] / mem['limit']:.2f}x",
                 t("memory_budget", "<= limit")))
    tr = m["trace"]
    sizes = ", ".join(f"{x:g}" for x in tr["sizes_mib"][:6])
    rr = p.get("random_raw")
    notes.append("(*) moto copies the whole object for every ranged GET, however small the range"
                 + (f" (a raw 4 KiB ranged GET of this {size_mib} MiB object: {rr['median_ms']:.0f} ms median in "
                    f"this pass, the added latency included)" if rr else "")
                 + "; this penalizes ranged reads, the mount's and this reference's, where S3 would not. "
                   "The target is judged against the one plain GET.")
    notes.append(f"S3 sequential read through the mount: {kinds(m['proxy'])}; GET sizes (MiB) {sizes}, ... "
                 f"at most {tr['max_in_flight']} in flight; {m['fuse_reads']} FUSE reads of "
                 f"{m['fuse_read_kib']:.0f} KiB; daemon CPU {m['daemon_cpu_s']:.2f} s"
                 + (f"; one GET: {kinds(single['proxy'])}, CPU {single['cpu_s']:.2f} s (own process), "
                    f"parallel: {kinds(par['proxy'])}, CPU {par['cpu_s']:.2f} s" if single and par else "")
                 + (f"; bench.s3floor: {kinds(fl['proxy'])}, CPU {fl['cpu_s']:.2f} s" if fl else ""))
    phases = [(name, r) for name, r in (("one GET", single), ("bench.s3floor", fl), ("the mount", m))
              if r and "first_byte_ms" in r]
    if phases:
        notes.append("the GET's answer, then its body (medians of the runs; from the request's arrival at the "
                     "proxy, its latency included): "
                     + ", ".join(f"{name} {r['first_byte_ms']:.0f} + {r['body_ms']:.0f} ms" for name, r in phases)
                     + ". moto answers a GET of a large object only once it has copied it: that wait is the "
                       "same for every reader and a large share of the one GET's time, which pulls every "
                       "ratio of this row toward 1.0x; the body's time is what the reader sets")
    if "runs_mb_s" in m and len(m["runs_mb_s"]) > 1:
        notes.append("sequential MB/s per run (median reported): mount " + ", ".join(map(str, m["runs_mb_s"]))
                     + (f"; one GET {', '.join(map(str, single['runs_mb_s']))}" if single else "")
                     + (f"; parallel {', '.join(map(str, par['runs_mb_s']))}" if par else "")
                     + (f"; floor {', '.join(map(str, fl['runs_mb_s']))}" if fl else ""))
    notes.append(f"daemon RSS right after mounting {mem['rss_after_mount'] / MiB:.0f} MiB, "
                 f"at the end of the read {mem['rss_end'] / MiB:.0f} MiB")


def _div(a: float, b: float, digits: int = 2) -> str:
    """The ratio a / b ("1.23x"); 3 digits where a target is judged on it, so rounding hides nothing."""
    return f"{a / b:.{digits}f}x" if b else "-"


def _write_kinds(proxy: dict) -> str:
    req = proxy["requests"]
    parts, posts = req.get("PUT part", 0), req.get("POST", 0)
    return f"{parts} / {posts} / {proxy['total'] - parts - posts}"


def _writes(p: dict, t, rows: list, notes: list) -> None:
    if "write_mount" in p:
        w, raw = p["write_mount"], p.get("write_raw")
        rows.append((f"S3 write + fsync + close {w['bytes'] // MiB} MiB", f"{w['mb_s']:.1f} MB/s",
                     f"upload_file {raw['mb_s']:.1f} MB/s" if raw else "",
                     _div(w["mb_s"], raw["mb_s"], 3) if raw else "", t("big_write", ">= 1.00x")))
        fl = p.get("write_floor")
        if fl and raw:
            rows.append(("  bench.s3writefloor (pyfuse3 floor)", f"{fl['mb_s']:.1f} MB/s", f"upload_file {raw['mb_s']:.1f} MB/s",
                         _div(fl["mb_s"], raw["mb_s"], 3), "(reported)"))
        rows.append(("  requests: PUT part / POST / other", _write_kinds(w["proxy"]),
                     f"upload_file {_write_kinds(raw['proxy'])}" if raw else "", "", "(until close returned)"))
        rows.append(("  daemon peak RSS (VmHWM)", f"{w['daemon']['vm_hwm'] / MiB:.0f} MiB",
                     f"--memory-limit {w['memory_limit'] / MiB:.0f} MiB",
                     f"{w['daemon']['vm_hwm'] / w['memory_limit']:.2f}x", "(reported)"))
        if "runs_mb_s" in w and len(w["runs_mb_s"]) > 1:
            notes.append("big write MB/s per run (median reported): mount " + ", ".join(map(str, w["runs_mb_s"]))
                         + (f"; upload_file {', '.join(map(str, raw['runs_mb_s']))}" if raw else "")
                         + (f"; floor {', '.join(map(str, fl['runs_mb_s']))}" if fl else ""))
        notes.append(f"big write, as the proxy saw it: parts from the first sent to the last answered {w['parts_s']:.2f} s, "
                     f"then CompleteMultipartUpload {w['completion_s']:.2f} s (mount)"
                     + (f"; {raw['parts_s']:.2f} s, then {raw['completion_s']:.2f} s (upload_file)" if raw else "")
                     + ". moto assembles the object while it answers the completion: the same time added to both "
                       "sides, which pulls this row toward 1.0x")
        notes.append(f"big write through the mount: {kinds(w['proxy'])} until close returned; fsync {w['fsync_s']:.2f} s, close {w['close_s']:.2f} s of "
                     f"{w['seconds']:.2f} s; content checked on moto (size and SHA-256): "
                     f"{'equal' if w['content_verified'] else 'DIFFERENT'}; at unmount {kinds(w['unmount_proxy'])}; "
                     f"daemon CPU {w['daemon']['cpu_s']:.2f} s (RSS at rest {w['rss_after_mount'] / MiB:.0f} MiB)"
                     + (f"; upload_file CPU {raw['cpu_s']:.2f} s (own process)" if raw else "")
                     + (f"; bench.s3writefloor CPU {fl['cpu_s']:.2f} s, parts {fl['parts_s']:.2f} s, completion "
                        f"{fl['completion_s']:.2f} s" if fl else ""))
    if "create_s3" in p:
        c, raw = p["create_s3"], p.get("create_raw")
        rows.append((f"S3 creates of {c['size'] // 1024} KiB files ({c['count']})", f"{c['files_s']:.1f} files/s",
                     f"put_object loop {raw['files_s']:.1f} files/s" if raw else "",
                     _div(c["files_s"], raw["files_s"], 3) if raw else "", t("creates", ">= 0.80x")))
        rows.append(("  requests per created file", f"{c['requests_per_file']:.3f}",
                     f"put_object loop {raw['requests_per_file']:.2f}" if raw else "", "",
                     t("create_requests", "<= 1.1")))
        notes.append(f"S3 creates: during the creates {kinds(c['proxy'])}; at unmount {kinds(c['unmount_proxy'])}; "
                     f"daemon peak RSS {c['daemon']['vm_hwm'] / MiB:.0f} MiB, CPU {c['daemon']['cpu_s']:.2f} s")


def _listing(p: dict, t, rows: list, notes: list) -> None:
    if "ls_mount" not in p:
        return
    m, raw = p["ls_mount"], p.get("ls_raw")
    rows.append((f"ls -l {m['listed']} objects, fresh mount", f"{m['seconds']:.2f} s",
                 f"ListObjectsV2 pages {raw['seconds']:.2f} s" if raw else "",
                 _div(m["seconds"], raw["seconds"], 3) if raw else "", t("ls_time", "<= 1.30x")))
    rows.append((f"  LISTs of the dir ({m['pages_needed']} pages needed)", str(m["dir_lists"]),
                 f"raw LIST {raw['proxy']['requests'].get('LIST', 0)}" if raw else "",
                 f"{m['lists_beyond_pages']:+d} beyond", t("ls_relist", "0 beyond")))
    rows.append(("  HEAD requests / requests per file listed", f"{m['heads']} / {m['requests_per_file']:.4f}",
                 f"raw {raw['requests_per_file']:.4f}" if raw else "", "", t("ls_heads", "0 per entry")))
    notes.append(f"ls -l (fresh mount, path resolution included): {kinds(m['proxy'])}; max-keys of the "
                 f"directory's LISTs: {', '.join(x or '-' for x in m['dir_list_max_keys'])}; daemon CPU "
                 f"{m['daemon']['cpu_s']:.2f} s, peak RSS {m['daemon']['vm_hwm'] / MiB:.0f} MiB"
                 + (f"; raw listing: {kinds(raw['proxy'])}, runs {', '.join(f'{x:.2f}' for x in raw['runs'])} s"
                    if raw else ""))
    if m["warm"] is None:
        notes.append("ls -l was too slow: the second ls -l and the split run were skipped")
    else:
        notes.append(f"ls -l again on the same mount: {m['warm']['seconds']:.2f} s, {kinds(m['warm']['proxy'])}")
    sp = m["split"]
    if sp is not None:
        notes.append(f"ls -l split on another fresh mount: resolving the directory {sp['resolve']['seconds']:.2f} s "
                     f"({kinds(sp['resolve']['proxy'])}), then ls -l {sp['ls']['seconds']:.2f} s "
                     f"({kinds(sp['ls']['proxy'])})")
    notes.append("ls -l FUSE requests: " + ", ".join(f"{k} {v}" for k, v in sorted(m["fuse_requests"].items())))


def _others(p: dict, t, rows: list, notes: list) -> None:
    """Memory with concurrent readers, random reads, ls -l of files with attributes, tar x."""
    if "readers" in p:
        c = p["readers"]
        rows.append((f"peak RSS, {c['readers']} readers x {c['object_bytes'] // MiB} MiB", f"{c['vm_hwm'] / MiB:.0f} MiB",
                     f"limit {c['limit'] / MiB:.0f} + at rest {c['rss_after_mount'] / MiB:.0f} + "
                     f"{c['overhead'] / MiB:.0f} MiB", f"{c['vm_hwm'] / c['target']:.2f}x",
                     t("memory_readers", "<= 1.00x")))
        notes.append(f"{c['readers']} concurrent sequential readers of different objects: {c['mb_s']:.1f} MB/s in "
                     f"all; budget peak {c['budget_peak'] / MiB:.0f} MiB; RSS at the end {c['rss_end'] / MiB:.0f} MiB "
                     f"(moto distorts this row: its slow ranged GETs keep parts in flight longer than S3 would)")
    if "random_mount" in p:
        m, raw = p["random_mount"], p.get("random_raw")
        rows.append((f"S3 random {m['block'] // 1024} KiB preads ({m['count']}), median", f"{m['median_ms']:.1f} ms",
                     f"raw ranged GET {raw['median_ms']:.1f} ms" if raw else "",
                     _div(m["median_ms"], raw["median_ms"]) if raw else "", ""))
        rows.append(("  bytes downloaded / byte read", f"{m['amplification']:.2f}",
                     f"raw {raw['amplification']:.2f}" if raw else "", "", t("amplification", "<= 2")))
        notes.append(f"random reads through the mount (4096-aligned): {kinds(m['proxy'])}, {m['proxy']['bytes']} "
                     f"bytes for {m['bytes_read']} read; p90 {m['p90_ms']:.1f} ms"
                     + (f" (raw p90 {raw['p90_ms']:.1f} ms)" if raw else ""))
    if "random_mount_unaligned" in p:
        u = p["random_mount_unaligned"]
        rows.append((f"  unaligned preads ({u['count']}), median", f"{u['median_ms']:.1f} ms", "", "",
                     f"amplification {u['amplification']:.2f}"))
    if "ls_attrs" in p:
        a = p["ls_attrs"]
        rows.append((f"ls -l {a['count']} files chmod-ed via mount", f"{a['seconds']:.2f} s", "fresh mount", "", ""))
        rows.append(("  HEAD requests / entries shown wrong", f"{a['heads']} / {a['differences']}",
                     f"{a['listed']} entries listed", "", t("ls_attrs", "0 / 0")))
        notes.append(f"ls -l of files chmod-ed through the mount: {kinds(a['proxy'])}; writing them (write, chmod, "
                     f"utime each; {a['write_files_s']:.0f} files/s): {kinds(a['write_proxy'])}, "
                     f"{a['write_proxy']['total'] / a['count']:.1f} requests per file")
        if a["difference_lines"]:
            notes.append("ls -l shown wrong (first lines): " + "; ".join(a["difference_lines"]))
    if "tar_x" in p:
        _tar_x(p["tar_x"], t, rows, notes)


def _tar_x(x: dict, t, rows: list, notes: list) -> None:
    m, loc, ls, d = x["mount"], x["local"], x["ls"], x["tar_d"]
    n = x["entries"]
    rows += [(f"tar xzf {n} entries, S3 (exit {m['exit']})", f"{m['files_s']:.0f} entries/s",
              f"local dir {loc['files_s']:.0f} entries/s", f"{m['files_s'] / loc['files_s']:.3f}x", ""),
             ("  requests per entry (tar + unmount)", f"{m['requests_per_entry']:.2f}",
              f"{m['requests_total']} req / {n} entries", "", ""),
             ("  ls -lR, fresh mount: HEAD/GET/range", f"{ls['heads']} / {ls['gets']} / {ls['get_ranges']}",
              f"{x['dirs']} dirs, {x['symlinks']} symlinks", "", t("tar_ls_heads", "HEAD 0")),
             ("  ls -lR entries shown unlike local", str(ls["differences"]), f"{ls['listed']} entries listed", "",
              "0 (same target)"),
             ("  tar dzf differences, fresh mount", str(d["differences"]), f"local dir {loc['tar_d']['differences']}",
              "", t("tar_d", "0"))]
    notes.append(f"tar xzf: {x['files']} files, {x['symlinks']} symlinks, {x['dirs']} directories; "
                 f"{m['seconds']:.1f} s through the mount; requests during tar: {kinds(m['proxy'])}; "
                 f"at unmount ({m['unmount']['seconds']:.1f} s): {kinds(m['unmount']['proxy'])}")
    if m["exit"] != 0 or m["stderr_lines"]:
        notes.append("tar xzf stderr (first lines): " + "; ".join(m["stderr_lines"]))
    notes.append(f"ls -lR after tar x: {ls['seconds']:.2f} s, {kinds(ls['proxy'])}; tar dzf: {d['seconds']:.1f} s, "
                 f"{kinds(d['proxy'])}")
    if ls["difference_lines"]:
        notes.append("ls -lR shown unlike local (first lines): " + "; ".join(ls["difference_lines"]))
    if d["lines"]:
        notes.append(f"tar dzf (exit {d['exit']}, first lines): " + "; ".join(d["lines"]))


def local_table(r: dict, cfg: dict, verdict: dict) -> str:
    """The rows without S3: the disk backend against its backing files, exec's output masking."""
    def t(name: str, text: str) -> str:
        return f"{text} {JUDGED[verdict[name]['met']]}".rstrip()

    rows = [("without S3", "stashfs", "reference", "ratio", "target")]
    notes: list[str] = []
    if "disk_seq" in r:
        d = r["disk_seq"]
        rows.append((f"disk sequential read {cfg['object_mib']} MiB", f"{d['mount_mb_s']:.0f} MB/s",
                     f"backing file {d['direct_mb_s']:.0f} MB/s", f"{d['ratio']:.3f}x", t("disk_seq", ">= 0.80x")))
        rows.append(("  bench.floorfs (pyfuse3 floor)", f"{d['floor_mb_s']:.0f} MB/s",
                     f"backing file {d['floor_direct_mb_s']:.0f} MB/s", f"{d['floor_ratio']:.3f}x", "(reported)"))
        if "cached" in d:
            c = d["cached"]
            rows.append(("  backing file cached (FUSE alone)", f"{c['mount']:.0f} MB/s",
                         f"floor {c['floor']:.0f}, vs cold {d['direct_mb_s']:.0f} MB/s", f"{d['cached_ratio']:.3f}x",
                         "(reported)"))
            notes.append(f"disk reads through FUSE with the backing file in the page cache (only the mounts' own "
                         f"pages dropped, so no read waits for the disk): mount {c['mount']:.0f}, floor "
                         f"{c['floor']:.0f} MB/s, the backing file itself {c['direct']:.0f} MB/s; ratios against the "
                         f"judged round's cold backing read ({d['direct_mb_s']:.0f} MB/s): mount "
                         f"{d['cached_ratio']:.3f}x, floor {d['cached_floor_ratio']:.3f}x")
        gib = cfg["object_mib"] / 1024
        notes.append(("disk reads: page cache dropped before each read (cold)" if d["caches_dropped"] else
                      "disk reads: page cache could NOT be dropped; every read is warm (file read once before)")
                     + "; MB/s per round (backing file / floor / mount): "
                     + ", ".join(f"{x['direct']:.0f} / {x['floor']:.0f} / {x['mount']:.0f}" for x in d["rounds"])
                     + f"; each row shows its middle round by ratio; mount: {d['fuse_reads']} FUSE reads "
                       f"of {d['fuse_read_kib']:.0f} KiB per round, daemon CPU {d['daemon_cpu_s']:.2f} s per round "
                       f"({d['daemon_cpu_s'] / gib:.2f} s per GiB)")
    if "create_disk" in r:
        c = r["create_disk"]
        m, ref, fl = c["mount"], c["reference"], c["floor"]
        rows.append((f"disk creates of {m['size'] // 1024} KiB files ({m['count']})", f"{m['files_s']:.0f} files/s",
                     f"write+fsync+close {ref['files_s']:.0f} files/s", f"{c['ratio']:.3f}x",
                     t("disk_creates", ">= 0.80x")))
        rows.append(("  bench.floorfs (pyfuse3 floor)", f"{fl['files_s']:.0f} files/s",
                     f"write+fsync+close {c['floor_reference_files_s']:.0f} files/s", f"{c['floor_ratio']:.3f}x",
                     "(reported)"))
        notes.append("disk creates, files/s per round (backing fs / floor / mount): "
                     + ", ".join(f"{x['reference']} / {x['floor']} / {x['mount']}" for x in c["rounds_files_s"])
                     + "; each row shows its middle round by ratio; the floor is bench.floorfs, a pyfuse3 passthrough "
                       "that does nothing but one system call per request and an fsync at close")
    if "masking" in r:
        k = r["masking"]
        rows.append((f"exec masking {k['bytes'] // 10**6} MB, {k['secrets']} secrets", f"{k['masked_mb_s']:.0f} MB/s",
                     f"plain copy {k['plain_mb_s']:.0f} MB/s", _div(k["masked_mb_s"], k["plain_mb_s"]),
                     t("masking", ">= 50 MB/s")))
        notes.append(f"masking: {k['patterns']} patterns; Masker.feed alone {k['feed_mb_s']:.0f} MB/s in 64 KiB "
                     f"chunks; {k['masked']} of {k['inserted']} inserted occurrences masked (the last may be cut off)")
    return _render(rows, notes)
