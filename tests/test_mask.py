"""Streaming secret masking: fsdriver.secrets.mask.Masker (the forms are listed in docs/secrets.md)."""

import base64
import random
import urllib.parse

import pytest

from fsdriver.secrets.mask import MIN_MASKED, Masker, patterns_for, unmasked

from . import secret_forms

R = b"****"


def mask_all(values, chunks, replacement=R, min_length=MIN_MASKED):
    m = Masker(values, replacement, min_length=min_length)
    return b"".join(m.feed(c) for c in chunks) + m.flush()


def bytewise(data):
    return [data[i:i + 1] for i in range(len(data))]


def random_chunks(data, rng, max_chunk=7):
    out, i = [], 0
    while i < len(data):
        n = rng.randint(0, max_chunk)  # empty chunks too
        out.append(data[i:i + n])
        i += n
    return out


def reference(patterns, data, replacement=R):
    """Non-streaming leftmost-longest replacement ignoring ASCII case, written as plainly as possible."""
    pats = sorted({p.lower() for p in patterns if p}, key=len, reverse=True)
    low = data.lower()
    out, i = [], 0
    while i < len(data):
        for p in pats:
            if low.startswith(p, i):
                out.append(replacement)
                i += len(p)
                break
        else:
            out.append(data[i:i + 1])
            i += 1
    return b"".join(out)


def all_patterns(values, min_length=1):
    return set().union(*(patterns_for(v, min_length) for v in values))


# -- the value itself


def test_plain_value_masked():
    assert mask_all(["hunter22"], [b"password: hunter22\n"]) == b"password: ****\n"


def test_no_values_passes_through():
    m = Masker([])
    assert m.feed(b"abc") == b"abc"
    assert m.flush() == b""
    assert mask_all(["", ""], [b"abc", b""]) == b"abc"


def test_every_split_position():
    secret = "s3cr3t-Value"
    data = b"before s3cr3t-Value between s3cr3t-Value after\n"
    expected = b"before **** between **** after\n"
    for i in range(len(data) + 1):
        assert mask_all([secret], [data[:i], data[i:]]) == expected, i
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert mask_all([secret], [data[:i], data[i:j], data[j:]]) == expected, (i, j)


def test_byte_by_byte_and_random_chunks():
    secret = "correct horse battery"
    data = (b"x" * 5 + b"correct horse battery" + b"correct horse" + b"\r50%\r" +
            b"correct horse battery" * 2 + b"tail")
    expected = reference(patterns_for(secret), data)
    assert b"correct horse battery" not in expected
    assert mask_all([secret], bytewise(data)) == expected
    rng = random.Random(1234)
    for _ in range(300):
        assert mask_all([secret], random_chunks(data, rng)) == expected


def test_short_values_are_not_masked():
    # Masking "1" or "yes" would hide every such run of characters in the output.
    assert MIN_MASKED == 6
    assert mask_all(["ab", "yes", "12345"], [b"xaby ab yes 12345"]) == b"xaby ab yes 12345"
    assert mask_all(["123456"], [b"0123456789"]) == b"0****789"
    assert unmasked(["ab", "", "123456", "12345"]) == ["ab", "12345"]
    assert unmasked(["\u20ac\u20ac"]) == []  # 6 bytes of UTF-8: long enough
    # Below the minimum only on request (the tests below use it to reach every code path).
    assert mask_all(["ab"], bytewise(b"xaby ab"), min_length=1) == b"x****y ****"
    assert mask_all(["1"], [b"a1b11"], min_length=1) == b"a****b********"


def test_utf8_value():
    secret = "pässwörd-€"
    data = "login pässwörd-€ ok".encode()
    assert mask_all([secret], bytewise(data)) == b"login **** ok"


def test_custom_replacement():
    assert mask_all(["secret"], [b"a secret b"], b"[MASKED]") == b"a [MASKED] b"


# -- latency: hold back only what might still become a secret


def test_non_prefix_tail_emitted_immediately():
    m = Masker(["secret"])
    assert m.feed(b"hello sex") == b"hello sex"
    assert m.feed(b"50%\r") == b"50%\r"
    assert m.feed(b"line\n") == b"line\n"
    assert m.flush() == b""


def test_holds_only_the_longest_possible_prefix():
    m = Masker(["secret"], min_length=1)
    assert m.feed(b"abc se") == b"abc "
    assert m.feed(b"c") == b""
    assert m.feed(b"x") == b"secx"       # "secx" is no prefix: all of it goes out at once
    assert m.feed(b"sesec") == b"se"     # "sesec": only "sec" can still start a match
    assert m.feed(b"ret!") == b"****!"
    assert m.flush() == b""


def test_flush_emits_held_bytes_unmasked():
    m = Masker(["secret"])
    assert m.feed(b"hello secre") == b"hello "
    assert m.flush() == b"secre"
    assert m.flush() == b""


def test_flush_masks_a_complete_match_that_was_held():
    # "abc" is complete but "abcdef" might still follow, so "abc" is held until EOF.
    m = Masker(["abc", "abcdef"], min_length=1)
    assert m.feed(b"x abcde") == b"x "
    assert m.flush() == b"****de"


# -- several values, overlaps


def test_overlap_earliest_wins():
    assert mask_all(["abcdef", "cdefgh"], [b"abcdefgh"]) == b"****gh"
    assert mask_all(["abcdef", "cdefgh"], [b"xcdefghij"]) == b"x****ij"
    assert mask_all(["abcdef", "cdefgh"], [b"xCDEFghij"]) == b"x****ij"


def test_nested_longest_wins():
    assert mask_all(["abc", "abcdef"], [b"abcdef abc abcde"], min_length=1) == b"**** **** ****de"
    assert mask_all(["bcd", "abcde"], [b"abcde abcd"], min_length=1) == b"**** a****"


def test_multiple_values_random_streams_match_reference():
    values = ["abab", "babba", "abba", "bbb", "aab"]
    pats = all_patterns(values)
    rng = random.Random(42)
    for _ in range(300):
        data = bytes(rng.choice(b"abAB") for _ in range(rng.randint(0, 40)))
        expected = reference(pats, data)
        assert mask_all(values, bytewise(data), min_length=1) == expected, data
        assert mask_all(values, random_chunks(data, rng), min_length=1) == expected, data


def test_random_values_random_streams_match_reference():
    rng = random.Random(99)
    for _ in range(150):
        values = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 6)))
                  for _ in range(rng.randint(1, 4))]
        pats = all_patterns(values)
        data = bytes(rng.choice(b"abc") for _ in range(rng.randint(0, 30)))
        expected = reference(pats, data)
        assert mask_all(values, random_chunks(data, rng, 5), min_length=1) == expected, (values, data)


def test_long_patterns_random_streams_match_reference():
    # Values longer than the 8-byte heads the held tail is found through, in a 3-letter stream
    # full of near misses.
    rng = random.Random(5)
    for _ in range(100):
        values = ["".join(rng.choice("ab") for _ in range(rng.randint(6, 14))) for _ in range(rng.randint(1, 3))]
        pats = all_patterns(values)
        base = b"".join(rng.choice([v.encode()[:rng.randint(1, len(v))] for v in values] + [b"c", b"a", b"B"])
                        for _ in range(rng.randint(0, 40)))
        expected = reference(pats, base)
        for chunks in (bytewise(base), random_chunks(base, rng, 9), [base]):
            assert mask_all(values, chunks) == expected, (values, base)


# -- encoded forms


SPECIAL = "p>?ss~w?rd ü/&+="  # base64 has '+' and '/', URL-encoding changes several characters


def test_base64_forms():
    raw = SPECIAL.encode()
    std = base64.b64encode(raw)
    url = base64.urlsafe_b64encode(raw)
    assert std != url and std.endswith(b"=")
    for form in (std, std.rstrip(b"="), url, url.rstrip(b"=")):
        data = b"token=" + form + b";\n"
        for chunks in ([data], bytewise(data)):
            assert mask_all([SPECIAL], chunks) == b"token=****;\n", form


def test_url_encoded_forms():
    q = urllib.parse.quote(SPECIAL, safe="").encode()
    qp = urllib.parse.quote_plus(SPECIAL).encode()
    assert q != qp
    for form in (q, qp):
        data = b"https://h/?pw=" + form + b"&x=1"
        for chunks in ([data], bytewise(data)):
            assert mask_all([SPECIAL], chunks) == b"https://h/?pw=****&x=1", form


def test_base64_of_value_inside_longer_data():
    # Bonus: the value embedded in longer base64-encoded data, at each alignment.
    secret = "a-rather-long-secret-value"
    for prefix in (b"", b"u", b"us", b"user:"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(prefix + secret.encode() + b"\n")
            out = mask_all([secret], bytewise(encoded))
            assert R in out
            # at most two characters of the encoded value survive at each end
            assert len(out) - len(R) <= len(encode(prefix)) + 2 + 2 + len(encode(b"\n")) + 2


def test_encoded_forms_split_everywhere():
    raw = SPECIAL.encode()
    data = (b"a " + base64.b64encode(raw) + b" b " + urllib.parse.quote_plus(SPECIAL).encode() +
            b" c " + raw + b" d")
    expected = b"a **** b **** c **** d"
    for i in range(len(data) + 1):
        assert mask_all([SPECIAL], [data[:i], data[i:]]) == expected, i
    rng = random.Random(7)
    for _ in range(200):
        assert mask_all([SPECIAL], random_chunks(data, rng, 11)) == expected


@pytest.mark.parametrize("value", ["x", "ab", "abc", "abcd", "secret", SPECIAL, "k" * 200])
def test_patterns_never_leak_in_any_chunking(value):
    pats = patterns_for(value)
    data = b"|".join(sorted(pats)) + b"|" + value.encode()
    rng = random.Random(len(value))
    for chunks in [bytewise(data)] + [random_chunks(data, rng, 13) for _ in range(30)]:
        out = mask_all([value], chunks, min_length=1)
        assert out == reference(pats, data)
        for p in pats:
            assert p not in out


def test_long_input_is_linear_enough():
    m = Masker(["secret-one", "secret-two", SPECIAL])
    chunk = (b"line of ordinary output with s e c r e t bits sec\n" * 2000)
    out = b"".join(m.feed(chunk) for _ in range(20)) + m.flush()
    assert out == chunk * 20


# -- every form of several generated values (tests/secret_forms.py), in random chunks


@pytest.mark.parametrize("seed", range(4))
def test_every_form_of_every_value_in_random_chunks(seed):
    values = secret_forms.generated_secrets(seed)
    rows = secret_forms.table(values)
    data = secret_forms.stream(rows)
    rng = random.Random(seed)
    for chunks in ([data], random_chunks(data, rng, 5), random_chunks(data, rng, 200), random_chunks(data, rng, 5000)):
        out = mask_all(values.values(), chunks)
        assert secret_forms.check(rows, out) == []
        for v in values.values():
            assert v.encode() not in out


def test_forms_of_a_value_are_masked_only_for_that_value():
    # The table's forms of one value, with only another value as a secret, pass unchanged: the
    # masker does not hide what merely looks encoded.
    values = secret_forms.generated_secrets(10)
    rows = [r for r in secret_forms.table(values) if r[0] == "SPECIAL"]
    data = secret_forms.stream(rows)
    assert mask_all([values["UNICODE"]], random_chunks(data, random.Random(3), 50)) == data


def test_reversed_value_is_not_masked_by_design():
    # docs/secrets.md: reversing is a deliberate transformation, not an accident of output.
    value = secret_forms.generated_secrets(11)["PREFIX"]
    assert mask_all([value], [value[::-1].encode()]) == value[::-1].encode()
