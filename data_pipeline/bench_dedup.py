"""Benchmark the dedup stage's `mark_duplicates` at scale, uniform and skewed hashes.

    python -m liveditor.data_pipeline.bench_dedup --rows 2000000 --json dedup_bench.json
    python -m liveditor.data_pipeline.bench_dedup --rows 20000 --reference   # also time the quadratic rule
    python -m liveditor.data_pipeline.bench_dedup --rows 2000000 --stage     # the whole stage, Parquet in and out
    git show <commit>:data_pipeline/dedup.py > /tmp/dedup_old.py
    python -m liveditor.data_pipeline.bench_dedup --rows 100000 --dedup-module /tmp/dedup_old.py   # an older version

Rows are pair-manifest rows with only the columns dedup reads: random 64-bit source and target
pHashes, one of 15 edits, an instruction, a colour signature and a `keep_by` score. Cases:
- `uniform`: every hash random; 5% of rows are near-copies (1-3 bits flipped) of another row
  with the same edit, so there are duplicates to find;
- `skewed`: as uniform, and 20% of rows share one source hash (one clip under many edits and target
  hashes: the case that made banding on the source hash alone quadratic).
Prints rows, duplicates found, seconds and rows per second; `--json` writes the same.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np

from liveditor.files import atomic_write_json

from .dedup import mark_duplicates, mark_duplicates_reference

EDITS = ["sepia", "grayscale", "warm", "cool", "vivid", "night", "invert", "posterize", "pixelate", "sketch",
         "soft_focus", "vintage_film", "snow", "rain", "fog"]


def make_rows(n: int, case: str, seed: int = 0) -> list[dict]:
    """`n` synthetic pair rows for `case` (`uniform` or `skewed`), deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, size=n).astype(np.uint64)
    tgt = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    edit = rng.integers(0, len(EDITS), size=n)
    colour = rng.integers(0, 256, size=(n, 12), dtype=np.uint8)
    if case == "skewed":
        shared = rng.random(n) < 0.2
        src[shared] = src[0]
    elif case != "uniform":
        raise ValueError(f"case={case!r}: choose uniform or skewed")
    copies = np.flatnonzero(rng.random(n) < 0.05)
    originals = rng.integers(0, n, size=len(copies))
    flip = lambda k: np.uint64(1) << rng.integers(0, 64, size=k).astype(np.uint64)  # noqa: E731
    src[copies], tgt[copies] = src[originals] ^ flip(len(copies)), tgt[originals] ^ flip(len(copies))
    edit[copies], colour[copies] = edit[originals], colour[originals]
    score = rng.random(n)
    return [{"pair_key": f"p{i:08d}", "src_phash": f"{int(src[i]):016x}", "tgt_phash": f"{int(tgt[i]):016x}",
             "edit": EDITS[edit[i]], "instruction": EDITS[edit[i]], "tgt_colour": colour[i].tobytes().hex(),
             "clip_text_target": float(score[i]), "reject_reason": None} for i in range(n)]


def _load_mark_duplicates(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("liveditor.data_pipeline._dedup_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.mark_duplicates


def time_stage(args) -> list[dict]:
    """Seconds of `dedup.run` on `args.rows` pairs written as one partition's pairs.parquet."""
    import tempfile
    from pathlib import Path

    from hydra import compose, initialize_config_module

    from . import dedup
    from .manifest import write_manifest
    from .pairs import SCHEMA as PAIRS_SCHEMA
    from .stage import StageContext

    with initialize_config_module(config_module="liveditor.configs.curate", version_base="1.3"):
        cfg = compose(config_name="curate", overrides=["progress=false"])
    results = []
    print(f"{'case':<8} {'rows':>9} {'impl':<10} {'duplicates':>10} {'seconds':>9} {'rows/s':>10}")
    for case in args.cases:
        with tempfile.TemporaryDirectory() as tmp:
            part = Path(tmp) / "partitions" / "part-00000-of-00001"
            write_manifest(make_rows(args.rows, case), part / "pairs.parquet", PAIRS_SCHEMA)
            t0 = time.perf_counter()
            dedup.run(StageContext(Path(tmp), cfg, None, False))
            seconds = time.perf_counter() - t0
            import pyarrow.parquet as pq

            dups = sum(1 for v in pq.read_table(Path(tmp) / "dedup.parquet", columns=["duplicate_of"]).column(0).to_pylist() if v)
        results.append({"case": case, "rows": args.rows, "impl": "stage", "duplicates": dups, "seconds": round(seconds, 3),
                        "rows_per_s": round(args.rows / seconds)})
        print(f"{case:<8} {args.rows:>9} {'stage':<10} {dups:>10} {seconds:>9.2f} {args.rows / seconds:>10.0f}")
    if args.json:
        atomic_write_json(args.json, {"cpu": platform.processor() or platform.machine(), "results": results})
    return results


def time_one(fn, rows, max_hamming=4, max_colour_difference=16.0) -> tuple[float, int, list]:
    rows = copy.deepcopy(rows)
    t0 = time.perf_counter()
    fn(rows, max_hamming, "clip_text_target", max_colour_difference)
    seconds = time.perf_counter() - t0
    return seconds, sum(1 for r in rows if r.get("duplicate_of")), [r.get("duplicate_of") for r in rows]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--cases", nargs="+", default=["uniform", "skewed"])
    ap.add_argument("--reference", action="store_true", help="also time the quadratic rule and check equal results")
    ap.add_argument("--dedup-module", default=None, help="path of another dedup.py whose mark_duplicates to time instead")
    ap.add_argument("--stage", action="store_true",
                    help="time the whole stage (dedup.run: read pairs.parquet, mark, write dedup.parquet) instead of mark_duplicates")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.stage:
        return time_stage(args)
    fast = _load_mark_duplicates(args.dedup_module) if args.dedup_module else mark_duplicates
    results = []
    print(f"{'case':<8} {'rows':>9} {'impl':<10} {'duplicates':>10} {'seconds':>9} {'rows/s':>10}")
    for case in args.cases:
        rows = make_rows(args.rows, case)
        impls = [("mih" if not args.dedup_module else "module", fast)] + ([("reference", mark_duplicates_reference)] if args.reference else [])
        outcome = {}
        for name, fn in impls:
            seconds, dups, marks = time_one(fn, rows)
            outcome[name] = marks
            results.append({"case": case, "rows": args.rows, "impl": name, "duplicates": dups, "seconds": round(seconds, 3),
                            "rows_per_s": round(args.rows / seconds)})
            print(f"{case:<8} {args.rows:>9} {name:<10} {dups:>10} {seconds:>9.2f} {args.rows / seconds:>10.0f}")
        if args.reference and outcome[impls[0][0]] != outcome["reference"]:
            raise SystemExit(f"{case}: mark_duplicates and the reference disagree")
        del rows
    if args.json:
        atomic_write_json(args.json, {"cpu": platform.processor() or platform.machine(), "results": results})
    return results


if __name__ == "__main__":
    main()
