"""Generated secret values and the output forms that masking must cover (docs/secrets.md), as a
table shared by test_mask (the masker fed in random chunks) and test_runner (a real child writing
to stdout and stderr).

Each row is one form of one value, written to the stream followed by `SEP`; `check` says, row by
row, what survived masking that should not have.
"""

import base64
import json
import random
import re
import string
import urllib.parse

SEP = b"\x1e"  # in no value and no form
R = b"****"


def generated_secrets(seed: int) -> dict:
    """Values made fresh from ``seed``: a value and a longer one it is a prefix of, one with the
    characters every encoding escapes, a non-ASCII one, a multi-line one, one with control
    characters."""
    rng = random.Random(seed)

    def tok(n):
        return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))

    base = tok(12)
    return {
        "PREFIX": "tk-" + base,
        "LONGER": "tk-" + base + "-" + tok(9),
        "SPECIAL": tok(6) + ' "q" \\ /+&<>?=~!' + "'()*" + tok(4),
        "UNICODE": tok(5) + "-p\u00e4ssw\u00f6rd-\u20ac-\U0001F600-" + tok(3),
        "MULTILINE": "-----BEGIN KEY-----\n" + tok(44) + "\n  " + tok(40) + "\n-----END KEY-----",
        "CONTROL": tok(6) + "\t\x01\x7f" + tok(6),
    }


def _json(v, ascii_only=True):
    return json.dumps(v, ensure_ascii=ascii_only)[1:-1]


def _upper_escapes(text):
    return re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(), text)


def _lower_percent(text):
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


# (name, kind, form): "whole" means the whole form becomes one R; "lines" means nothing but R and
# whitespace is left.
FORMS = [
    ("plain", "whole", lambda v: v.encode()),
    ("upper-cased", "whole", lambda v: v.upper().encode()),
    ("lower-cased", "whole", lambda v: v.lower().encode()),
    ("hex", "whole", lambda v: v.encode().hex().encode()),
    ("HEX", "whole", lambda v: v.encode().hex().upper().encode()),
    ("json ensure_ascii", "whole", lambda v: _json(v).encode()),
    ("json ensure_ascii, \\uXXXX upper", "whole", lambda v: _upper_escapes(_json(v)).encode()),
    ("json utf-8", "whole", lambda v: _json(v, False).encode()),
    ("json \\/ (PHP)", "whole", lambda v: _json(v).replace("/", "\\/").encode()),
    ("json html-safe (Go)", "whole",
     lambda v: _json(v, False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()),
    ("python repr", "whole", lambda v: repr(v)[1:-1].encode()),
    ("url %XX", "whole", lambda v: urllib.parse.quote(v, safe="").encode()),
    ("url %xx", "whole", lambda v: _lower_percent(urllib.parse.quote(v, safe="")).encode()),
    ("url, / kept", "whole", lambda v: urllib.parse.quote(v).encode()),
    ("url, + for space", "whole", lambda v: urllib.parse.quote_plus(v).encode()),
    ("url, + for space, %xx", "whole", lambda v: _lower_percent(urllib.parse.quote_plus(v)).encode()),
    ("url encodeURIComponent", "whole", lambda v: urllib.parse.quote(v, safe="!'()*").encode()),
    ("base64", "whole", lambda v: base64.b64encode(v.encode())),
    ("base64 unpadded", "whole", lambda v: base64.b64encode(v.encode()).rstrip(b"=")),
    ("base64 url-safe", "whole", lambda v: base64.urlsafe_b64encode(v.encode())),
    ("base64 url-safe unpadded", "whole", lambda v: base64.urlsafe_b64encode(v.encode()).rstrip(b"=")),
    ("base64 wrapped at 76 (MIME, base64(1))", "lines", lambda v: base64.encodebytes(v.encode())),
    ("each line, CRLF", "lines", lambda v: v.replace("\n", "\r\n").encode()),
    ("each line, re-indented", "lines", lambda v: "\n".join("    " + ln.strip() for ln in v.split("\n")).encode()),
]

# The value inside longer base64 data: what precedes it (each alignment mod 3) and follows it.
EMBEDDED = [(pre, post, enc) for pre in (b"", b"u", b"us", b"user:") for post in (b"", b"\n")
            for enc in (base64.b64encode, base64.urlsafe_b64encode)]


def table(values: dict) -> list:
    """[(secret name, form name, kind, bytes)] for every value and form."""
    rows = []
    for name, v in values.items():
        for form, kind, fn in FORMS:
            rows.append((name, form, kind, fn(v)))
        for pre, post, enc in EMBEDDED:
            rows.append((name, f"base64 inside data ({enc.__name__}, {pre!r} before, {post!r} after)",
                         ("embedded", len(pre), len(v.encode()), len(post)), enc(pre + v.encode() + post)))
    return rows


def stream(rows: list) -> bytes:
    return b"".join(data + SEP for _, _, _, data in rows)


def _embedded_ok(got: bytes, data: bytes, pre: int, n: int, post: int) -> bool:
    """R once, and at most 2 characters left of the value's part of the encoding at each end
    (those also carry bits of the neighbouring bytes)."""
    first = 8 * pre // 6                  # the first character with bits of the value
    last = -(-8 * (pre + n) // 6)         # one past the last
    kept = len(got) - len(R)
    return got.count(R) == 1 and kept <= first + 2 + 2 + (len(data) - last)


def check(rows: list, out: bytes) -> list:
    """The rows whose masked output is wrong, as (secret name, form name) — never the values."""
    parts = out.split(SEP)
    if len(parts) != len(rows) + 1 or parts[-1] != b"":
        return [("*", f"{len(parts) - 1} records in the output, {len(rows)} written")]
    bad = []
    for (name, form, kind, data), got in zip(rows, parts):
        if kind == "whole":
            ok = got == R
        elif kind == "lines":
            ok = R in got and re.fullmatch(rb"(\*\*\*\*|\s)*", got) is not None
        else:
            ok = _embedded_ok(got, data, *kind[1:])
        if not ok:
            bad.append((name, form))
    return bad
