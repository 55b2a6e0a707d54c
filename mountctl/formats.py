"""How mountctl shows numbers and times to people: one byte format, one UTC time format, one
duration format, for every subcommand (machine output, ``--json``, keeps raw numbers)."""

from datetime import datetime, timezone


def human_bytes(n: float) -> str:
    """``512 B``, ``1.5 KiB`` ... ``2.0 PiB`` (binary units, as ``ls -h`` and ``df -h`` count)."""
    if n < 1024:
        return f"{n:.0f} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"


def utc(t: float) -> str:
    """A Unix time as ISO 8601 in UTC, to the second: ``2026-11-22T07:00:00Z``."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(s: float) -> str:
    """Seconds as ``3h07m05s``."""
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
