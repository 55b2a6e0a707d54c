"""Streaming masking of secret values in a command's output.

`Masker` filters a byte stream (fed in arbitrary chunks) and replaces every occurrence of a secret
value, and of the encodings listed below, by a replacement (``b"****"`` by default), even when an
occurrence is split across any number of `Masker.feed` calls.

What is covered, for each non-empty value ``v`` (matched on ``v.encode("utf-8")``, byte-exact):

- the value itself;
- its standalone base64 encodings: ``base64.b64encode`` and ``base64.urlsafe_b64encode`` of the
  value, each with and without the ``=`` padding;
- the base64 *fragments* of the value when it is embedded in a longer base64-encoded text, for
  each of the three alignments (value starting at byte offset 0, 1 or 2 modulo 3 of the encoded
  data, standard and URL-safe alphabets): only the characters that depend on the value's bytes
  alone, so the one or two characters at each end that also carry bits of the neighbouring bytes
  are left as they are (they reveal at most 4 bits of the value at each end). Fragments shorter
  than 6 characters are not used, as they would match unrelated text too easily: values of up to
  4 bytes get no fragments, values of 5 bytes or more get all six;
- its URL-encoded forms: ``urllib.parse.quote(v, safe="")`` and ``urllib.parse.quote_plus(v)``
  (upper-case hex digits, as Python writes them).

Not covered: any other transformation -- lower-case percent-encoding, base32/hex, JSON or shell
escaping, case changes, double encodings, a value split by inserted characters (line-wrapped
base64, an ANSI colour code in the middle), other Unicode normalisations of the value, or a value
the command has modified in any way.

Empty values are ignored. Values shorter than 4 bytes are still masked, with all their forms, so
a short value (say ``"1"`` or ``"yes"``) is masked wherever those bytes appear in the output, even
when they are not the secret; that is the safe default, and a reason to avoid short secrets.

Overlapping or nested occurrences: scanning from the start, the match that begins earliest wins,
and of several matches beginning there, the longest; scanning then resumes after it (masked text
is not scanned again). The result does not depend on how the stream is split into chunks.

Latency: `feed` returns everything that cannot be the beginning of an occurrence, and holds back
only the shortest tail that might still become one (the longest suffix of the pending bytes that
is a proper prefix of some pattern), so line-by-line output and ``\\r`` progress lines stay
interactive. `flush` returns the held tail at end of stream (unmasked if it did not turn out to
be a secret).
"""

from __future__ import annotations

import base64
import urllib.parse
from typing import Iterable

__all__ = ["Masker", "patterns_for"]

#: Base64 fragments (of a value embedded in longer encoded data) shorter than this are not used.
MIN_FRAGMENT = 6


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


def patterns_for(value: str | bytes) -> set[bytes]:
    """Every byte string `Masker` replaces for ``value`` (empty set for an empty value)."""
    if isinstance(value, str):
        raw = value.encode("utf-8")
        text = value
    else:
        raw = bytes(value)
        text = raw.decode("utf-8", "surrogateescape")
    if not raw:
        return set()
    pats = {raw}
    for enc in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        pats.add(enc)
        pats.add(enc.rstrip(b"="))
    pats.update(_b64_fragments(raw))
    for quoted in (urllib.parse.quote(text, safe=""), urllib.parse.quote_plus(text)):
        pats.add(quoted.encode("ascii"))
    pats.discard(b"")
    return pats


class Masker:
    """Replaces secret values (and their base64 / URL-encoded forms) in a chunked byte stream.

    ``feed(data)`` returns the bytes that can be emitted now; ``flush()`` returns the rest at end
    of stream. One instance per stream; not thread-safe.
    """

    def __init__(self, values: Iterable[str], replacement: bytes = b"****"):
        pats: set[bytes] = set()
        for v in values:
            pats |= patterns_for(v)
        # Longest first: at a given start position the first complete pattern found is the longest.
        self._patterns: list[bytes] = sorted(pats, key=len, reverse=True)
        self._maxlen = len(self._patterns[0]) if self._patterns else 0
        self._first = frozenset(p[0] for p in self._patterns)
        self._replacement = bytes(replacement)
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """Masks ``data`` (following what was fed before); returns what can be emitted now."""
        if not self._patterns:
            return bytes(data)
        buf = self._held + data if self._held else bytes(data)
        return self._scan(buf, final=False)

    def flush(self) -> bytes:
        """End of stream: returns the held bytes, masked where they complete an occurrence."""
        buf, self._held = self._held, b""
        if not buf:
            return b""
        return self._scan(buf, final=True)

    # --

    def _first_partial(self, buf: bytes, start: int) -> int:
        """The first ``i >= start`` where ``buf[i:]`` is a proper prefix of some pattern, else len(buf)."""
        n = len(buf)
        view = memoryview(buf)
        first = self._first
        for i in range(max(start, n - self._maxlen + 1), n):
            if buf[i] not in first:
                continue
            tail = view[i:]
            rest = n - i
            for p in self._patterns:  # longest first
                if len(p) <= rest:
                    break
                if p.startswith(tail):
                    return i
        return n

    def _scan(self, buf: bytes, final: bool) -> bytes:
        n = len(buf)
        pats = self._patterns
        # Next occurrence of each pattern at or after the scan position (-1: none left in buf).
        # Each pattern's search only moves forward, so the whole scan is O(len(buf) * patterns).
        nxt = [buf.find(p) for p in pats]
        # First position >= pos where a pattern may begin that the data seen so far cannot
        # complete: everything from there on is held back. Also only moves forward.
        hold = n if final else self._first_partial(buf, 0)
        pos = 0
        out = []
        while True:
            m, mlen = -1, 0
            for j, p in enumerate(pats):
                k = nxt[j]
                if k == -1:
                    continue
                if k < pos:
                    k = nxt[j] = buf.find(p, pos)
                    if k == -1:
                        continue
                if m == -1 or k < m:  # ties keep the earlier (longer) pattern
                    m, mlen = k, len(p)
            if hold < pos:
                hold = self._first_partial(buf, pos)
            if m != -1 and m < hold:
                # Nothing can start before m any more, and no longer pattern can start at m.
                out.append(buf[pos:m])
                out.append(self._replacement)
                pos = m + mlen
            else:
                out.append(buf[pos:hold])
                self._held = buf[hold:]
                return b"".join(out)
