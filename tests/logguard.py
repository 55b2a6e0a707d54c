"""Fail a test whose code or daemons logged a traceback or a warning it did not expect (as s3ql's
test suite does).

In-process records of the ``stashfs`` loggers are collected by a handler; the log files of the
daemons that `tests.mounting.make_mount` set up during the test are read at its end.  A test
declares what it provokes with ``@pytest.mark.expected_log("regex", ...)``: a WARNING/ERROR record
(or a traceback) whose text matches one of the patterns is allowed.
"""

import logging
import re

LOGGER = "stashfs"


class Collector(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.texts.append(text)


def daemon_records(log_text: str) -> list[str]:
    """The WARNING/ERROR/CRITICAL records of a daemon log (`fsdriver.logsafe` format: a record
    starts a line; its traceback follows on indented lines), and any traceback."""
    out, current = [], None
    for line in log_text.splitlines():
        if line[:1].isspace() and current is not None:
            current.append(line)
            continue
        current = [line]
        fields = line.split(" ", 3)
        level = fields[2] if len(fields) > 2 else ""
        out.append((level, current))
    return ["\n".join(lines) for level, lines in out
            if level in ("WARNING", "ERROR", "CRITICAL") or any("Traceback" in l for l in lines[1:])
            or "Traceback" in lines[0]]


def unexpected(texts, patterns) -> list[str]:
    return [t for t in texts if not any(p.search(t) for p in patterns)]


def patterns_of(node) -> list:
    return [re.compile(p) for m in node.iter_markers("expected_log") for p in m.args]
