"""Strict JSON (RFC 8259) validation of key/value records, with a known memory cost.

One rule for every way a record is written — the mount, `fsdriver.kv.DataStore` and
``mountctl kv``: a record is UTF-8 JSON text of at most `MAX_RECORD_BYTES`, nested at most
`MAX_DEPTH` deep, with no ``NaN``/``Infinity`` (Python's json accepts them; JSON does not).

Checking never recurses deeper than `MAX_DEPTH` (the depth is measured iteratively first, so a
100,000-deep ``[[[…`` is a plain refusal, not a RecursionError) and never builds the value: objects,
numbers and strings are dropped as soon as they are parsed.  What it still allocates (the text as
a str, lists of placeholders, an object's key/value pairs until the object ends) is bounded by
`parse_cost`, which the mount reserves from its memory budget before checking.
"""

import json
import math
import re
import sys
from itertools import accumulate

MAX_RECORD_BYTES = 4 << 20  # documented in docs/kv.md
MAX_DEPTH = 512  # arrays and objects inside each other; well below Python's recursion limit


class InvalidJSON(ValueError):
    """Not a valid record: the message says why (it never contains the record's content)."""


class RecordTooLarge(ValueError):
    """Over `MAX_RECORD_BYTES`."""


def too_large(size: int) -> str:
    return f"{size} bytes; a record is at most {MAX_RECORD_BYTES} bytes ({MAX_RECORD_BYTES >> 20} MiB)"


# -- the memory a check needs ----------------------------------------------------------------

# Bytes of parser state per token, measured with tracemalloc on worst-case shapes (arrays of
# empty arrays, of short strings, objects with many distinct keys; see tests/test_strictjson.py),
# rounded up.  A string costs its object and, as a key, an entry in the parser's key memo.
_ASTRAL = re.compile(rb"[\xf0-\xff]")  # the lead byte of a character beyond U+FFFF
_COST = {ord("["): 100, ord("{"): 48, ord('"'): 80, ord(","): 12, ord(":"): 16}


class ParseCost:
    """The memory `check` needs for a text, computed from chunks of it (C-speed counts)."""

    def __init__(self):
        self.size = 0
        self.tokens = 0
        self.width = 1  # bytes per character of the decoded str: 1 (ASCII), 2 or 4

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.tokens += sum(cost * chunk.count(c) for c, cost in _COST.items())
        if self.width < 4 and not chunk.isascii():
            self.width = 4 if _ASTRAL.search(chunk) else max(self.width, 2)

    @property
    def total(self) -> int:
        # the str, plus the larger of the depth check's copies (2x the text) and the parser's state
        return self.size * self.width + max(2 * self.size, self.tokens) + (64 << 10)


def parse_cost(data: bytes) -> int:
    cost = ParseCost()
    cost.feed(data)
    return cost.total


# -- depth -----------------------------------------------------------------------------------

# A string, or an unterminated one up to the end: every match attempt that starts at a quote
# succeeds and nothing is matched twice (possessive, no backtracking), so stripping is linear.
# (A pattern that needs the closing quote is retried from every quote inside an unterminated
# string: quadratic, hours for 4 MiB of escaped quotes.)
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.S)
_OPEN, _CLOSE = ord("["), ord("]")
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[_OPEN], _STEP[_CLOSE] = 1, -1
_CHUNK = 256  # less than MAX_DEPTH: a chunk cannot pass the limit unless it starts deep


def too_deep(data: bytes) -> bool:
    """Whether arrays/objects nest deeper than `MAX_DEPTH` (brackets inside strings not counted)."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return False
    brackets = _STRING.sub(b"", data).translate(_BRACKETS, _NOT_BRACKETS)
    depth = 0
    for i in range(0, len(brackets), _CHUNK):
        chunk = brackets[i : i + _CHUNK]
        if depth + len(chunk) > MAX_DEPTH:  # only then can this chunk pass the limit: look closely
            if max(accumulate(map(_STEP.__getitem__, chunk), initial=depth)) > MAX_DEPTH:
                return True
        depth += 2 * chunk.count(b"[") - len(chunk)
    return False


# -- the check -------------------------------------------------------------------------------


class _Constant(Exception):
    pass


def _drop(_):
    return None


def _refuse(name: str):
    raise _Constant(name)


class _Unreadable(Exception):
    """A value JSON allows that the readers of records (Python's json: DataStore, mountctl kv)
    could not give back as it was written."""


def _int(text: str):
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    digits = len(text) - text.startswith("-")
    if limit and digits > limit:
        raise _Unreadable(f"an integer of {digits} digits (readers load at most {limit})")


def _float(text: str):
    if math.isinf(float(text)):
        raise _Unreadable(f"a number beyond a double's range ({text[:20]}{'...' if len(text) > 20 else ''}: "
                          "it would read as Infinity)")


# An escape of U+D800..U+DFFF: matched only where a run of backslashes starts, its pairs
# (escaped backslashes) taken whole and never given back, so a long run costs one pass (a match
# tried at each backslash of a run would cost its square: minutes for a 4 MiB record).
_SURROGATE = re.compile(r"(?<!\\)((?:\\\\)*+)\\u([dD][89a-fA-F][0-9a-fA-F]{2})")
_LOW = re.compile(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _lone_surrogate(text: str) -> bool:
    """Whether a string escapes half of a UTF-16 surrogate pair (``"\\ud800"``): Python reads it
    as a str that UTF-8 cannot encode, so no reader could write it out again."""
    if "\\u" not in text:
        return False
    paired = -1  # where the low half of the last high half starts
    for m in _SURROGATE.finditer(text):
        if m.end(1) == paired:
            continue  # the low half of a pair
        if int(m.group(2), 16) >= 0xDC00 or not _LOW.match(text, m.end()):
            return True  # a low half with no high half before it, or a high half alone
        paired = m.end()
    return False


def check(data: bytes) -> None:
    """Raise `RecordTooLarge` or `InvalidJSON` unless ``data`` is a valid record."""
    if len(data) > MAX_RECORD_BYTES:
        raise RecordTooLarge(too_large(len(data)))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidJSON(f"not UTF-8 (byte {e.start})") from None
    if too_deep(data):
        raise InvalidJSON(f"arrays and objects nested more than {MAX_DEPTH} deep")
    try:
        json.loads(text, object_pairs_hook=_drop, parse_int=_int, parse_float=_float, parse_constant=_refuse)
    except _Constant as e:
        raise InvalidJSON(f"{e} is not a JSON value (RFC 8259 has no NaN or Infinity)") from None
    except _Unreadable as e:
        raise InvalidJSON(f"{e}: records must read back as written") from None
    except json.JSONDecodeError as e:
        raise InvalidJSON(str(e)) from None
    except RecursionError:  # cannot happen below MAX_DEPTH; refused like too deep if it does
        raise InvalidJSON(f"arrays and objects nested more than {MAX_DEPTH} deep") from None
    if _lone_surrogate(text):
        raise InvalidJSON("a string escapes a lone surrogate (such as \"\\ud800\", half of a UTF-16 pair), "
                          "which no reader can write back as UTF-8")


def loads(text: str):
    """``json.loads`` for values to be stored: strict (InvalidJSON, RecordTooLarge otherwise)."""
    check(text.encode("utf-8", "surrogatepass"))
    return json.loads(text)
