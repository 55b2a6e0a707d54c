"""Record validation (fsdriver.strictjson): strict JSON, bounded depth, a memory cost that holds."""

import json
import time
import tracemalloc

import pytest

from fsdriver import strictjson
from fsdriver.strictjson import MAX_DEPTH, MAX_RECORD_BYTES, InvalidJSON, RecordTooLarge, check, parse_cost


@pytest.mark.parametrize("text", [
    '""', "0", "-1.5e10", "true", "null", '{"a": [1, 2, {"b": null}]}', ' [ ] ', '"\\u00e9 \\ud83d\\ude00"',
    '"[[[[{{{{"', '{"k": "]]]]}}}}"}', "[" * MAX_DEPTH + "]" * MAX_DEPTH, '"' + "x" * 1000 + '"',
    json.dumps({"ünïcode ✓": ["😀"] * 3}, ensure_ascii=False),
    "1" * 4300, "-" + "9" * 4300, "1e308", "-1.7e308", "1e-400", '"\\\\ud800"', '"\\ud83d\\ude00\\u00e9"',
])
def test_valid_records(text):
    check(text.encode())


@pytest.mark.parametrize("text,reason", [
    ("NaN", "NaN is not a JSON value"),
    ("Infinity", "Infinity is not a JSON value"),
    ('{"a": -Infinity}', "-Infinity is not a JSON value"),
    ("[1, NaN]", "NaN is not a JSON value"),
    ("{not json", "Expecting property name"),
    ("", "Expecting value"),
    ("[1,]", "Expecting value"),
    ("'single'", "Expecting value"),
    ('"tab\there"', "Invalid control character"),
    ("1 2", "Extra data"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nested more than {MAX_DEPTH} deep"),
    ("[" * 100_000 + "]" * 100_000, f"nested more than {MAX_DEPTH} deep"),
    ("[" * 100_000, f"nested more than {MAX_DEPTH} deep"),
    ('{"a":' * 600 + "1" + "}" * 600, f"nested more than {MAX_DEPTH} deep"),
    # what a reader could not give back as written (trial finding: DataStore could not list the store)
    ("1" * 4301, "an integer of 4301 digits"),
    ('{"n": -' + "1" * 5000 + "}", "an integer of 5000 digits"),
    ("1e400", "beyond a double's range"),
    ("[-1e400]", "beyond a double's range"),
    ('"\\ud800"', "lone surrogate"),
    ('"\\udc00"', "lone surrogate"),
    ('{"k\\ud83d": 1}', "lone surrogate"),
    ('"\\\\\\ud800"', "lone surrogate"),
])
def test_invalid_records_say_why(text, reason):
    with pytest.raises(InvalidJSON, match=reason):
        check(text.encode())


def test_not_utf8_and_too_large():
    with pytest.raises(InvalidJSON, match="not UTF-8"):
        check(b'"\xff"')
    with pytest.raises(RecordTooLarge, match="at most"):
        check(b" " * (MAX_RECORD_BYTES + 1))


def test_brackets_in_strings_do_not_count_as_depth():
    deep_looking = json.dumps(["[" * 1000, "{" * 1000, '\\"[' * 600]).encode()
    assert not strictjson.too_deep(deep_looking)
    check(deep_looking)


def test_deep_documents_are_refused_without_recursion():
    # deep in the middle of a wide document, after many shallow siblings
    text = "[" + "[1]," * 10_000 + "[" * 600 + "]" * 600 + "]"
    with pytest.raises(InvalidJSON, match="nested more than"):
        check(text.encode())


SHAPES = {
    "empty objects": lambda n: "[" + ",".join(["{}"] * (n // 3)) + "]",
    "empty arrays": lambda n: "[" + ",".join(["[]"] * (n // 3)) + "]",
    "nested arrays": lambda n: "[" + ",".join(["[[1]]"] * (n // 6)) + "]",
    "short strings": lambda n: "[" + ",".join(['"ab"'] * (n // 5)) + "]",
    "distinct keys": lambda n: "{" + ",".join(f'"{i:x}":0' for i in range(n // 10)) + "}",
    "big numbers": lambda n: "[" + ",".join(["123456789012345678901234567890"] * (n // 31)) + "]",
    "floats": lambda n: "[" + ",".join(["1.5e300"] * (n // 8)) + "]",
    "astral strings": lambda n: "[" + ",".join(['"😀"'] * (n // 7)) + "]",
    "deep and wide": lambda n: "[" + ",".join(["[" * 200 + "0" + "]" * 200] * (n // 402)) + "]",
    "nested objects": lambda n: "[" + ",".join(['{"a":{"b":{}}}'] * (n // 15)) + "]",
    "deep objects": lambda n: "[" + ",".join(['{"a":' * 200 + "0" + "}" * 200] * (n // 1202)) + "]",
}


@pytest.mark.parametrize("shape", SHAPES)
def test_parse_cost_bounds_what_checking_allocates(shape):
    """The budget a commit reserves (parse_cost) covers what check() really allocates, for the
    shapes that make a parser allocate the most per byte of input."""
    data = SHAPES[shape](1 << 20).encode()
    tracemalloc.start()
    try:
        check(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= parse_cost(data), f"{shape}: check allocated {peak}, the estimate is {parse_cost(data)}"
    assert parse_cost(data) <= 56 * len(data)  # at most ~4 MiB x 56: the worst case of a record


@pytest.mark.parametrize("shape", ["objects", "backslashes"])
def test_checking_the_largest_record_is_quick(shape):
    """Review finding (backslashes): the lone-surrogate scan was quadratic in a run of escaped
    backslashes (a 4 MiB record: hours, holding the daemon's interpreter)."""
    if shape == "objects":
        data = ("[" + ",".join(["{}"] * (MAX_RECORD_BYTES // 3 - 1)) + "]").encode()
    else:
        data = b'"' + b"\\\\" * (MAX_RECORD_BYTES // 2 - 8) + b'\\u00e9"'
    started = time.process_time()
    check(data)
    assert time.process_time() - started < 10  # CPU seconds, generous for a loaded machine


def test_loads_is_strict_and_returns_the_value():
    assert strictjson.loads('{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    with pytest.raises(InvalidJSON):
        strictjson.loads("NaN")


def test_depth_check_is_linear_on_unterminated_escaped_strings():
    """Review finding: stripping strings with a pattern that needs the closing quote is retried
    from every quote of an unterminated string (quadratic: hours for a 4 MiB record, in a thread
    that cannot be cancelled).  With 1 MB of escaped quotes it must finish at once; the bound
    below is 1000x what it takes, so only a quadratic check can miss it."""
    import threading

    data = b"[" * 600 + b'"' + b'\\"' * 500_000
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(pytest.raises(strictjson.InvalidJSON, strictjson.check, data)))
    t.start()
    t.join(60)
    assert not t.is_alive() and outcome, "the check did not finish within 60 s"
    assert strictjson.too_deep(b'["\\\\"' + b",[" * 600 + b"]" * 600 + b"]")  # escapes still end strings
    assert not strictjson.too_deep(b'["' + b"[" * 1000 + b'"]')  # brackets inside strings do not count
