"""The daemon's status within the kernel's xattr size limit, however many uploads are pending.

An xattr value is at most 64 KiB (XATTR_SIZE_MAX; more is E2BIG), and ~300 pending uploads with
their keys and errors pass that.  So the status xattr carries a *summary*:

- ``pending``: ``count``, ``bytes``, ``shown`` (how many entries follow) and ``oldest_error``
  (the error of the longest pending upload);
- ``pending_uploads``: the first `SHOWN` entries (oldest first), errors cut to `ERROR_CHARS`;

and the whole list is read page by page from ``user.stashfs.pending.<n>``: page 0 takes a snapshot
of the list, pages 1, 2... come from that snapshot (so a list that changes meanwhile is not read
half old, half new).  Each page is ``{"page", "pages", "count", "entries"}`` and fits the limit.
"""

import json

from . import control

XATTR_LIMIT = 65536
PAGE_BYTES = 60000  # a page's JSON stays below this (the limit, with room for the envelope)
SHOWN = 20
ERROR_CHARS = 300
PAGE_PREFIX = control.PENDING_PAGE_PREFIX


def _trimmed(entry: dict) -> dict:
    error = entry.get("error")
    if isinstance(error, str) and len(error) > ERROR_CHARS:
        entry = dict(entry, error=error[:ERROR_CHARS] + "...")
    return entry


def summarize(status: dict) -> bytes:
    """The status xattr's value: ``status`` with its pending list summarised, below the limit."""
    pending = status.get("pending_uploads") or []
    summary = {
        "count": len(pending),
        "bytes": sum(e.get("bytes") or 0 for e in pending),
        "oldest_error": _trimmed(pending[0]).get("error") if pending else None,
    }
    shown = [_trimmed(e) for e in pending[:SHOWN]]
    while True:
        summary["shown"] = len(shown)
        value = json.dumps(status | {"pending": summary, "pending_uploads": shown}).encode()
        if len(value) <= PAGE_BYTES or not shown:
            return value
        shown = shown[: len(shown) // 2]  # very long keys: show fewer


def paginate(entries: list[dict]) -> list[list[dict]]:
    """``entries`` (trimmed) cut into pages whose JSON stays below `PAGE_BYTES`."""
    pages, page, size = [], [], 0
    for entry in entries:
        entry = _trimmed(entry)
        n = len(json.dumps(entry).encode()) + 2
        if page and size + n > PAGE_BYTES - 200:
            pages.append(page)
            page, size = [], 0
        page.append(entry)
        size += n
    if page or not pages:
        pages.append(page)
    return pages


def page_value(pages: list[list[dict]], n: int) -> bytes:
    count = sum(len(p) for p in pages)
    return json.dumps({"page": n, "pages": len(pages), "count": count, "entries": pages[n]}).encode()


def page_number(name: str) -> int | None:
    """The page asked for by xattr ``name`` (``user.stashfs.pending.<n>``), else None."""
    if not name.startswith(PAGE_PREFIX):
        return None
    rest = name[len(PAGE_PREFIX):]
    return int(rest) if rest.isdigit() and len(rest) < 9 else None
