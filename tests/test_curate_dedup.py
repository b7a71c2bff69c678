"""Dedup: the near-linear `mark_duplicates` gives exactly the quadratic rule's result (which rows are
duplicates, and of which row), on clustered random inputs and on a skewed one."""

import copy
import random

import pytest

from liveditor.data_pipeline.bench_dedup import make_rows
from liveditor.data_pipeline.dedup import mark_duplicates, mark_duplicates_reference


def _flips(rng, k):
    mask = 0
    for bit in rng.sample(range(64), k):
        mask |= 1 << bit
    return mask


def clustered_rows(n, seed):
    """Rows around a few base hashes, 0-6 bits apart: many near-duplicates, near misses and ties;
    synthetic (edit) and external (instruction only) rows mixed; some without colour, score or hash."""
    rng = random.Random(seed)
    base = [rng.getrandbits(64) for _ in range(max(1, n // 6))]
    rows = []
    for k in range(n):
        s = rng.choice(base) ^ _flips(rng, rng.choice([0, 0, 1, 3, 5]))
        t = s ^ _flips(rng, rng.choice([0, 2, 4, 6]))
        rows.append({"pair_key": f"k{k:05d}", "src_phash": f"{s:016x}", "tgt_phash": f"{t:016x}" if k % 41 else None,
                     "edit": rng.choice(["sepia", "snow", None]),
                     "instruction": rng.choice(["Make it sepia.", "make it sepia", "Add snow!"]),
                     "tgt_colour": rng.choice([None, bytes([rng.choice([10, 20, 40])] * 12).hex()]),
                     "clip_text_target": rng.choice([None, 0.1, 0.2, rng.random()]),
                     "reject_reason": rng.choice([None] * 9 + ["blurry"])})
    return rows


def _both(rows, max_hamming=4, colour=16.0):
    fast = mark_duplicates(copy.deepcopy(rows), max_hamming, "clip_text_target", colour)
    slow = mark_duplicates_reference(copy.deepcopy(rows), max_hamming, "clip_text_target", colour)
    return fast, slow


@pytest.mark.parametrize("seed", range(12))
def test_same_result_as_the_quadratic_rule(seed):
    rows = clustered_rows(150, seed)
    fast, slow = _both(rows, max_hamming=[4, 0, 2, 7][seed % 4])
    assert fast == slow
    assert 0 < sum(1 for r in fast if r.get("reject_reason") == "duplicate") < len(rows)


def test_same_result_on_skewed_and_byte_identical_inputs():
    rows = make_rows(3000, "skewed", seed=1)
    rows += [dict(rows[7], pair_key=f"z{i:04d}", clip_text_target=0.5) for i in range(300)]  # 300 identical copies
    fast, slow = _both(rows)
    assert fast == slow
    copies = [r for r in fast if r["pair_key"].startswith("z")]
    assert sum(1 for r in copies if r.get("duplicate_of")) >= 299
    assert len({r["duplicate_of"] for r in copies if r.get("duplicate_of")}) == 1


def test_duplicate_of_names_the_best_kept_match():
    a = {"pair_key": "a", "src_phash": "0" * 16, "tgt_phash": "0" * 16, "edit": "sepia", "clip_text_target": 0.9}
    b = {"pair_key": "b", "src_phash": "0" * 15 + "3", "tgt_phash": "0" * 16, "edit": "sepia", "clip_text_target": 0.8}
    c = {"pair_key": "c", "src_phash": "0" * 15 + "1", "tgt_phash": "0" * 16, "edit": "sepia", "clip_text_target": 0.7}
    d = {"pair_key": "d", "src_phash": "0" * 16, "tgt_phash": "0" * 16, "edit": "snow", "clip_text_target": 0.95}
    mark_duplicates([a, b, c, d], 1, "clip_text_target")  # c matches both a and b (1 bit each); a ranks first
    assert (a.get("duplicate_of"), b.get("duplicate_of"), c["duplicate_of"], d.get("duplicate_of")) == (None, None, "a", None)
    assert c["reject_reason"] == "duplicate" and c["reject_stage"] == "dedup"
