"""Log lines that file names cannot forge.

File names come from users and may hold any character but ``/`` and NUL, newlines included: a
name like ``"x\\n2099-01-01 00:00:00,000 ERROR stashfs.fs: FORGED"`` logged as is would start a
line that looks like the daemon's own.  `SafeFormatter` therefore keeps every record on lines it
controls:

- in the message, control characters (``\\n``, ``\\r``, tab, ESC, DEL, C1, line separators)
  are escaped as ``\\n``, ``\\r``, ``\\x1b``... (names are also logged with ``%r`` where they
  matter, which tells a real backslash from an escape);
- a traceback (or stack) stays readable on the following lines, each indented by four spaces and
  escaped the same way, so no continuation line can start like a record.

So every line that starts without indentation is a record the daemon wrote.
"""

import logging
import re

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` on one line: control characters escaped."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                              else f"\\u{ord(m.group()):04x}"), text)


class SafeFormatter(logging.Formatter):
    def __init__(self, fmt: str = FORMAT, datefmt=None):
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        extra = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            extra.append(record.exc_text)
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for block in extra:
            line += "".join("\n    " + escape(part) for part in block.splitlines())
        return line
