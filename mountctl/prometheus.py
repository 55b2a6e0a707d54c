"""The daemons' counters in the Prometheus text exposition format (version 0.0.4), for
``mountctl status --prometheus`` and node_exporter's textfile collector (``--textfile FILE``).

One sample per mount, labelled ``mountpoint`` (and ``backend`` on ``stashfs_up``); counters end in
``_total``.  The names are listed in docs/operations.md: keep both in step.
"""

import errno
import os
import tempfile

from .errors import CLIError

# (metric, type, help, status key or a function of the status)
_SIMPLE = (
    ("stashfs_uptime_seconds", "gauge", "Seconds since the daemon started.", "uptime"),
    ("stashfs_backend_bytes_down_total", "counter", "Bytes read from the backend.", "bytes_down"),
    ("stashfs_backend_bytes_up_total", "counter", "Bytes written to the backend.", "bytes_up"),
    ("stashfs_prefetch_hit_bytes_total", "counter", "Bytes served from data fetched ahead of the reader.",
     "prefetch_hit_bytes"),
    ("stashfs_random_reads_total", "counter", "Reads served by a ranged GET of just the range asked for.",
     "random_reads"),
    ("stashfs_page_cache_kept_total", "counter", "Opens that kept the kernel page cache.", "page_cache_kept"),
    ("stashfs_upload_failures_total", "counter", "Upload attempts that failed (and were kept for a retry).",
     "upload_failures"),
    ("stashfs_open_files", "gauge", "Files open through the mount.", "open_files"),
    ("stashfs_memory_limit_bytes", "gauge", "The memory budget (--memory-limit).", ("memory", "limit")),
    ("stashfs_memory_in_use_bytes", "gauge", "Memory of the budget in use.", ("memory", "in_use")),
    ("stashfs_memory_peak_bytes", "gauge", "Highest memory of the budget in use.", ("memory", "peak")),
    ("stashfs_memory_overdrawn_total", "counter",
     "Requests let through beyond the memory budget: all in use was held by reads waiting for more.",
     ("memory", "overdrawn")),
    ("stashfs_kernel_readahead_bytes", "gauge", "The kernel's read-ahead of the mount.", "kernel_readahead"),
    ("stashfs_pending_uploads", "gauge", "Uploads not yet in the backend (kept in the cache dir).",
     ("pending", "count")),
    ("stashfs_pending_upload_bytes", "gauge", "Bytes of the pending uploads.", ("pending", "bytes")),
)
# (metric, help, status key, label name): one sample per kind
_BY_KIND = (
    ("stashfs_requests_total", "FUSE requests, by operation.", "requests", "op"),
    ("stashfs_backend_requests_total", "Backend calls, by kind.", "backend_requests", "call"),
    ("stashfs_background_failures_total", "Background tasks that failed, by kind.", "background_failures",
     "task"),
)


def _number(value) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))  # bytes stay exact


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _get(status: dict, key):
    if isinstance(key, tuple):
        value = status
        for k in key:
            value = value.get(k) if isinstance(value, dict) else None
        return value
    return status.get(key)


def render(statuses: list[dict]) -> str:
    """The exposition text for ``statuses`` (as `mountctl status --json` prints them); a mount whose
    daemon does not answer is ``stashfs_up 0``."""
    lines = ["# HELP stashfs_up Whether the mount's daemon answers (1) or not (0).", "# TYPE stashfs_up gauge"]
    for st in statuses:
        mp = _label(st["mountpoint"])
        lines.append(f'stashfs_up{{mountpoint="{mp}",backend="{_label(st.get("backend", ""))}"}} '
                     f'{0 if "error" in st else 1}')
    live = [st for st in statuses if "error" not in st]
    for name, kind, text, key in _SIMPLE:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for st in live:
            value = _get(st, key)
            if value is not None:
                lines.append(f'{name}{{mountpoint="{_label(st["mountpoint"])}"}} {_number(value)}')
    for name, text, key, label in _BY_KIND:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
        for st in live:
            for kind, value in sorted((st.get(key) or {}).items()):
                lines.append(f'{name}{{mountpoint="{_label(st["mountpoint"])}",{label}="{_label(kind)}"}} {_number(value)}')
    return "\n".join(lines) + "\n"


def write_textfile(path: str, text: str) -> None:
    """Replace ``path`` atomically: the collector must never read half a file.  A failure is a
    CLIError about ``path`` (``--textfile``), never about the temp file beside it."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".stashfs-", suffix=".prom.tmp")
    except OSError as e:
        reason = (f"no directory {directory}" if e.errno == errno.ENOENT and not os.path.isdir(directory)
                  else "is a directory" if e.errno == errno.EISDIR else e.strerror)
        # The directory, the path given: a bad value (exit status 2).
        raise CLIError(f"--textfile {path!r}: {reason}", 2) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # node_exporter runs as its own user
        os.replace(tmp, path)
    except OSError as e:  # e.g. ENOSPC: the write failed (exit status 1)
        os.unlink(tmp)
        raise CLIError(f"--textfile {path!r}: cannot write it: {e.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise
