"""Streaming masking of secret values in a command's output.

`Masker` filters a byte stream (fed in arbitrary chunks) and replaces every occurrence of a secret
value, in any of the forms `fsdriver.secrets.forms.patterns_for` lists, by a replacement
(``b"****"`` by default), even when an occurrence is split across any number of `Masker.feed`
calls. Values shorter than ``min_length`` bytes (`forms.MIN_MASKED`, 6) are not masked.

Matching ignores ASCII case: the stream and the patterns are compared lower-cased, and the
replacement is made in the original bytes (lower-casing ASCII keeps every offset).

Overlapping or nested occurrences: scanning from the start, the match that begins earliest wins,
and of several matches beginning there, the longest; scanning then resumes after it (masked text
is not scanned again). The result does not depend on how the stream is split into chunks.

Cost: one Aho-Corasick automaton (``ahocorasick_rs``, leftmost-longest) over all patterns, so a
chunk is searched in time linear in its length whatever the number of patterns, plus the held
tail (less than the longest pattern), which is searched again with the next chunk.

Latency: `feed` returns everything that cannot be the beginning of an occurrence, and holds back
only the shortest tail that might still become one (the longest suffix of the pending bytes that
is a proper prefix of some pattern), so line-by-line output and ``\\r`` progress lines stay
interactive. `flush` returns the held tail at end of stream (unmasked if it did not turn out to
be a secret).
"""

from __future__ import annotations

import bisect
from typing import Iterable

import ahocorasick_rs

from .forms import MIN_MASKED, maskable, patterns_for

__all__ = ["Masker", "patterns_for", "unmasked", "MIN_MASKED"]

# A DFA searches about twice as fast as the NFAs but its size grows with the patterns' total length
# times the alphabet: used up to this many pattern bytes (50 ordinary secrets take ~20 KB).
_DFA_MAX_BYTES = 256 * 1024

# Held tails at least this long are found through an occurrence of a pattern's first _HEAD bytes
# (one automaton search) instead of by trying every position of the tail.
_HEAD = 8


def unmasked(values: Iterable[str], min_length: int = MIN_MASKED) -> list[str]:
    """The non-empty values too short to be masked."""
    return [v for v in values if v and not maskable(v, min_length)]


class Masker:
    """Replaces secret values (and their encoded forms) in a chunked byte stream.

    ``feed(data)`` returns the bytes that can be emitted now; ``flush()`` returns the rest at end
    of stream. One instance per stream; not thread-safe.
    """

    def __init__(self, values: Iterable[str], replacement: bytes = b"****", min_length: int = MIN_MASKED):
        pats: set[bytes] = set()
        for v in values:
            pats.update(p.lower() for p in patterns_for(v, min_length))
        self._sorted = sorted(pats)
        self._maxlen = max(map(len, pats), default=0)
        self._search = None
        self._heads = None
        if pats:
            kind = ahocorasick_rs.MatchKind.LeftmostLongest
            impl = ahocorasick_rs.Implementation
            dfa = sum(map(len, pats)) <= _DFA_MAX_BYTES
            self._search = ahocorasick_rs.BytesAhoCorasick(
                self._sorted, matchkind=kind, implementation=impl.DFA if dfa else impl.ContiguousNFA)
            heads = sorted({p[:_HEAD] for p in pats if len(p) > _HEAD})
            if heads:
                self._heads = ahocorasick_rs.BytesAhoCorasick(heads)
        self._replacement = bytes(replacement)
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """Masks ``data`` (following what was fed before); returns what can be emitted now."""
        if self._search is None:
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

    def _is_partial(self, tail: bytes) -> bool:
        """True when ``tail`` is a proper prefix of some pattern."""
        pats = self._sorted
        i = bisect.bisect_left(pats, tail)
        if i < len(pats) and pats[i] == tail:
            i += 1  # a complete pattern: a longer one starting with it sorts right after
        return i < len(pats) and pats[i].startswith(tail)

    def _first_partial(self, low: bytes, start: int) -> int:
        """The first ``i >= start`` where ``low[i:]`` is a proper prefix of some pattern, else len(low)."""
        n = len(low)
        lo = max(start, n - self._maxlen + 1)
        short_from = max(lo, n - _HEAD + 1)
        if self._heads is not None and short_from > lo:
            # A tail of _HEAD bytes or more begins with some pattern's first _HEAD bytes.
            for _, s, _ in self._heads.find_matches_as_indexes(low[lo:short_from + _HEAD - 1], overlapping=True):
                if self._is_partial(low[lo + s:]):
                    return lo + s
        for i in range(short_from, n):
            if self._is_partial(low[i:]):
                return i
        return n

    def _scan(self, buf: bytes, final: bool) -> bytes:
        low = buf.lower()
        n = len(buf)
        hold = n if final else self._first_partial(low, 0)
        pos = 0
        out = []
        for _, start, end in self._search.find_matches_as_indexes(low):
            if hold < pos:  # the tail that was held began inside the last masked occurrence
                hold = self._first_partial(low, pos)
            if start >= hold:
                # It might yet be part of a longer occurrence, or another one might begin earlier.
                break
            out.append(buf[pos:start])
            out.append(self._replacement)
            pos = end
        if hold < pos:
            hold = self._first_partial(low, pos)
        out.append(buf[pos:hold])
        self._held = buf[hold:]
        return b"".join(out)
