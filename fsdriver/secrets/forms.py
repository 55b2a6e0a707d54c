"""The forms of a secret value that `mask.Masker` replaces, and which values are masked at all.

`patterns_for(value)` lists the byte strings that count as an occurrence of ``value`` (the list,
with the reason for each form, is in docs/secrets.md). The masker matches them ignoring ASCII case,
so each form here stands for all its case variants: hex in both cases, ``%xx`` and ``%XX``,
``\\u00e9`` and ``\\u00E9``, and the value upper-cased.

Values shorter than `MIN_MASKED` bytes are not masked (`maskable`): masking ``"1"`` or ``"yes"``
would hide every such run of common characters in a command's output.
"""

from __future__ import annotations

import base64
import json
import urllib.parse

__all__ = ["MIN_MASKED", "MIN_FRAGMENT", "maskable", "patterns_for"]

#: Values shorter than this (in UTF-8 bytes) are passed to commands but not masked.
MIN_MASKED = 6

#: Base64 fragments (of a value embedded in longer encoded data) shorter than this are not used.
MIN_FRAGMENT = 6

# Characters URL encoders leave as they are beyond Python's default: "/" (quote's default), and
# JavaScript's encodeURIComponent set.
_URL_SAFE_SETS = ("", "/", "!'()*")

# The line widths of wrapped base64: MIME and the base64(1) tool (76), PEM and openssl (64).
_WRAP_WIDTHS = (76, 64)

# Go's encoding/json escapes these (HTML-safe output); PHP's json_encode escapes "/".
_JSON_HTML = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


def maskable(value: str | bytes, min_length: int = MIN_MASKED) -> bool:
    """True when ``value`` is long enough to be masked."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    return len(raw) >= max(1, min_length)


def _b64_fragments(raw: bytes) -> list[bytes]:
    """The base64 characters that depend on ``raw`` alone, for each alignment 0, 1, 2 (mod 3)."""
    out = []
    n = len(raw)
    for k in (0, 1, 2):
        padded = b"\0" * k + raw + b"\0\0"
        start = -(-8 * k // 6)       # first character whose 6 bits all come from the value
        end = 8 * (k + n) // 6       # one past the last such character
        if end - start < MIN_FRAGMENT:
            continue
        out.append(base64.b64encode(padded)[start:end])
        out.append(base64.urlsafe_b64encode(padded)[start:end])
    return out


def _base64_forms(raw: bytes) -> set[bytes]:
    out = set()
    for enc in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        out.add(enc)
        out.add(enc.rstrip(b"="))
        for width in _WRAP_WIDTHS:  # each line of the wrapped encoding: all but the last are full
            if len(enc) > width:
                out.update(line for line in (enc[i:i + width] for i in range(0, len(enc), width))
                           if len(line.rstrip(b"=")) >= MIN_FRAGMENT)
    out.update(_b64_fragments(raw))
    return out


def _url_forms(text: str) -> set[bytes]:
    out = set()
    for safe in _URL_SAFE_SETS:
        for quote in (urllib.parse.quote, urllib.parse.quote_plus):
            out.add(quote(text, safe=safe, encoding="utf-8", errors="surrogateescape").encode("ascii"))
    return out


def _escaped_forms(text: str) -> set[str]:
    """JSON string bodies (both ensure_ascii modes, "/" escaped or not, Go's HTML-safe escapes)
    and the body of Python's repr (what printing a dict or list shows)."""
    out = set()
    for ascii_only in (True, False):
        body = json.dumps(text, ensure_ascii=ascii_only)[1:-1]
        out.add(body)
        out.add(body.replace("/", "\\/"))
        html = body
        for ch, esc in _JSON_HTML.items():
            html = html.replace(ch, esc)
        out.add(html)
    out.add(repr(text)[1:-1])
    return out


def _line_forms(text: str) -> set[bytes]:
    """Each line of a multi-line value, without its surrounding blanks (output re-indents or
    turns "\\n" into "\\r\\n"); lines shorter than `MIN_MASKED` are left out whatever the
    masker's minimum: a line is only part of the secret."""
    if "\n" not in text:
        return set()
    lines = (line.strip(" \t\r").encode("utf-8", "surrogateescape") for line in text.split("\n"))
    return {line for line in lines if len(line) >= MIN_MASKED}


def patterns_for(value: str | bytes, min_length: int = 1) -> set[bytes]:
    """Every byte string the masker replaces for ``value`` (empty for a value under ``min_length``
    bytes, and for an empty value)."""
    if isinstance(value, str):
        text = value
        raw = value.encode("utf-8", "surrogateescape")
    else:
        raw = bytes(value)
        text = raw.decode("utf-8", "surrogateescape")
    if not raw or not maskable(raw, min_length):
        return set()
    pats = {raw, raw.hex().encode("ascii")}
    # Unicode case mapping can change lengths ("ß" -> "SS"); ASCII case is handled by the masker.
    for variant in (text.upper(), text.lower()):
        pats.add(variant.encode("utf-8", "surrogateescape"))
    pats.update(_base64_forms(raw))
    pats.update(_url_forms(text))
    pats.update(s.encode("utf-8", "surrogateescape") for s in _escaped_forms(text))
    pats.update(_line_forms(text))
    pats.discard(b"")
    return pats
