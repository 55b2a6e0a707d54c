"""The A/B tools (`bench.ab_read`, `bench.ab_write`, `bench.ab_ls`): one small round each against HEAD, through
real mounts and a moto server of their own: every variant measured and printed, and the
revision's temporary worktree removed afterwards (each test checks its own: they may run at the
same time in other workers)."""

import contextlib
import os
import subprocess

import pytest

from bench import ab_ls, ab_read, ab_write
from bench.abrun import paired
from bench.harness import REPO


def _git_checkout() -> bool:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode == 0


pytestmark = [pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
              pytest.mark.skipif(not _git_checkout(), reason="needs a git checkout (REV is checked out)")]


def _ab_worktrees() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "stashfs-ab-" in line]


@pytest.fixture
def trees(monkeypatch):
    """``trees(module)`` records the revision trees ``module`` checks out; the list of them."""
    made = []

    def record(module):
        checkout = module.revision_tree

        @contextlib.contextmanager
        def recorded(rev):
            with checkout(rev) as path:
                made.append(path)
                yield path

        monkeypatch.setattr(module, "revision_tree", recorded)
        return made

    return record


def _removed(made: list) -> bool:
    """Whether the trees in ``made`` (at least one) are gone, from git's list and from the disk."""
    listed = _ab_worktrees()
    return bool(made) and not any(p.exists() or any(str(p) in line for line in listed) for p in made)


def _figure(out: str, name: str, word: str) -> float:
    line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
    return float(line.split(word, 1)[1].split()[0])


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_ab_read_measures_both_versions_and_the_floor(capsys, trees, tls):
    made = trees(ab_read)
    assert ab_read.main(["HEAD", "--object-mib", "4", "--rounds", "1", "--latency-ms", "0"]
                        + (["--tls"] if tls else [])) == 0
    out = capsys.readouterr().out
    assert ("over https" if tls else "over http ") in out
    for name in ("HEAD", "this checkout", "bench.s3floor"):
        assert _figure(out, name, "ratio") > 0, out
    assert "this checkout - HEAD, paired by round: ratio" in out and "bench.s3floor - HEAD, paired" in out
    assert _removed(made)


def test_paired_differences_are_taken_round_by_round():
    # a is 0.1 ahead in every round however much the rounds differ: no spread at all
    assert paired([0.9, 0.5, 0.7], [0.8, 0.4, 0.6]) == pytest.approx((0.1, 0.0, 3))
    mean, se, ahead = paired([1.0, 0.0], [0.0, 0.5])
    assert (mean, ahead) == (pytest.approx(0.25), 1) and se == pytest.approx(0.75)
    assert paired([0.8], [0.7]) == pytest.approx((0.1, 0.0, 1))


def test_ab_ls_measures_both_versions_and_the_raw_listing(capsys, trees):
    made = trees(ab_ls)
    assert ab_ls.main(["HEAD", "--files", "30", "--rounds", "1", "--latency-ms", "0"]) == 0
    out = capsys.readouterr().out
    for name in ("HEAD", "this checkout", "raw ListObjectsV2"):
        assert _figure(out, name, "median") > 0, out
    assert _removed(made)


def test_ab_write_measures_both_versions_and_the_floor_against_upload_file(capsys, trees):
    made = trees(ab_write)
    assert ab_write.main(["HEAD", "--write-mib", "12", "--rounds", "1", "--latency-ms", "0", "--floor"]) == 0
    out = capsys.readouterr().out
    for name in ("HEAD", "this checkout", "bench.s3writefloor"):
        assert _figure(out, name, "ratio") > 0, out
    assert "upload_file" in out
    assert _removed(made)


def test_ab_write_rounds_put_every_variant_in_every_place_alike():
    two, three = ("rev", "this"), ("rev", "this", "floor")
    assert [ab_write.round_order(two, i) for i in range(4)] == [two, two[::-1], two, two[::-1]]
    orders = [ab_write.round_order(three, i) for i in range(6)]
    assert sorted(orders) == sorted(set(orders)) and len(orders) == 6  # every order once in 6 rounds
    for name in three:
        assert sorted(o.index(name) for o in orders) == [0, 0, 1, 1, 2, 2]
