"""bench.warmup: the free memory touched once before measuring, and the header line saying so."""

import pytest

from bench import warmup


def test_touches_what_it_may_and_reports_the_cost_per_page():
    if warmup._mem_free() < warmup.RESERVE + 4 * warmup.CHUNK:
        pytest.skip("less than 2 GiB of free memory")
    got = warmup.touch_free_memory(limit=2 * warmup.CHUNK)
    assert got["touched_bytes"] == 2 * warmup.CHUNK
    assert got["seconds"] > 0
    for name in ("first_chunk_us_per_page", "us_per_page", "after_us_per_page"):
        assert got[name] > 0
    line = warmup.describe(got, 2.25)
    assert line.startswith("memory: 0.5 GiB of free memory touched once before measuring")
    assert f"{got['us_per_page']:.1f} us per 4 KiB page" in line
    assert line.endswith("; a new page at the end of the run: 2.2 us")


def test_page_cost_is_per_page_of_a_new_map():
    assert warmup.page_cost() > 0


def test_leaves_the_reserve_alone():
    got = warmup.touch_free_memory(limit=warmup.CHUNK, reserve=1 << 50)  # more than any machine has free
    assert got["touched_bytes"] == 0 and got["us_per_page"] is None and got["first_chunk_us_per_page"] is None
    assert warmup.describe(got) == "memory: nothing touched before measuring (no free memory to touch beyond the reserve)"


def test_says_when_it_was_skipped():
    assert "--no-warmup" in warmup.describe(None)
    assert warmup.describe(None, 3.0).endswith("a new page at the end of the run: 3.0 us")


def test_no_memory_for_a_map_is_no_figure_and_no_failure(monkeypatch):
    def refuse():
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(warmup, "_new_map", refuse)
    assert warmup.page_cost() is None
    got = warmup.touch_free_memory(limit=2 * warmup.CHUNK, reserve=0)
    assert got["touched_bytes"] == 0 and got["after_us_per_page"] is None
    assert warmup.describe(got, None) == "memory: nothing touched before measuring (no free memory to touch beyond the reserve)"
