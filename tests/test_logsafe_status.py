"""Log lines names cannot forge, and a status that fits an xattr with any number of pending uploads."""

import json
import logging

from fsdriver.logsafe import SafeFormatter, escape
from fsdriver.statuspages import XATTR_LIMIT, page_number, page_value, paginate, summarize

FORGED = "2099-01-01 00:00:00,000 ERROR stashfs.fs: FORGED LINE"


def _format(msg, *args, exc=None):
    record = logging.LogRecord("stashfs.fs", logging.INFO, __file__, 1, msg, args, exc)
    return SafeFormatter().format(record)


def test_control_characters_never_start_a_line():
    line = _format("create %s: %s", "/pipeline/p/x\n" + FORGED, "reason\r\x1b[2K")
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "x\\n2099-01-01" in line and "\\r\\x1b[2K" in line
    assert escape("tab\tdel\x7f\u2028") == "tab\\tdel\\x7f\\u2028"


def test_tracebacks_stay_indented():
    try:
        raise ValueError("bad name x\n" + FORGED)
    except ValueError as e:
        text = _format("op %s failed", "/p", exc=(type(e), e, e.__traceback__))
    lines = text.splitlines()
    assert lines[0].startswith("20") and len(lines) > 2
    assert all(line.startswith("    ") for line in lines[1:])
    assert not any(line.startswith("2099") for line in lines)


def _entries(n):
    return [{"path": f"/pipeline/p/{'long-name-' * 10}{i}", "key": f"pipeline/p/{'long-name-' * 10}{i}",
             "bytes": 10, "error": "cannot reach S3 (Connection was closed before we received a valid response "
             "from endpoint URL: \"http://127.0.0.1:1/bucket/pipeline/p/...\") " * 3} for i in range(n)]


def test_summary_fits_an_xattr_with_thousands_pending():
    entries = _entries(3000)
    value = summarize({"pid": 1, "pending_uploads": entries})
    assert len(value) < XATTR_LIMIT
    st = json.loads(value)
    assert st["pending"]["count"] == 3000 and st["pending"]["bytes"] == 30000
    assert st["pending"]["shown"] == len(st["pending_uploads"]) > 0
    assert st["pending_uploads"][0]["key"] == entries[0]["key"]
    assert st["pending"]["oldest_error"].startswith("cannot reach S3")


def test_pages_hold_every_entry_below_the_limit():
    entries = _entries(3000)
    pages = paginate(entries)
    values = [page_value(pages, n) for n in range(len(pages))]
    assert len(pages) > 1 and all(len(v) < XATTR_LIMIT for v in values)
    got = [e["key"] for v in values for e in json.loads(v)["entries"]]
    assert got == [e["key"] for e in entries]
    assert json.loads(page_value(paginate([]), 0)) == {"page": 0, "pages": 1, "count": 0, "entries": []}
    assert page_number("user.stashfs.pending.3") == 3
    assert page_number("user.stashfs.pending.x") is None and page_number("user.stashfs.status") is None
