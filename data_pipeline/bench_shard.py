"""Benchmark the shard stage: wall time with 1 and with `--workers` threads, and check the shards match.

    python -m liveditor.data_pipeline.bench_shard --pairs 2000 --kb 300 --workers 2 --json shard_bench.json

Makes `--pairs` kept pairs whose src/tgt "videos" are `--kb` KB files of random bytes (the stage
copies bytes; it never decodes an mp4), a dedup manifest for them, and runs `shard.run` into fresh
folders with `shard.workers=1` and `shard.workers=N` (shards of `--shard-mb` MB). Prints seconds
(wall and CPU) and MB/s, and fails if the two shard sets or indexes differ by a byte.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module

from liveditor.files import atomic_write_json

from . import shard
from .dedup import SCHEMA as DEDUP_SCHEMA
from .manifest import write_manifest
from .stage import StageContext


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_pairs(root: Path, n: int, kb: int) -> None:
    media = root / "partitions" / "part-00000-of-00001" / "media"
    media.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        key = f"bench{i:07d}-sepia"
        for side in ("src", "tgt"):
            (media / f"{key}.{side}.mp4").write_bytes(rng.integers(0, 256, kb * 1024 + i % 997, dtype=np.uint8).tobytes())
        rows.append({"pair_key": key, "origin": "synthetic", "clip_id": f"bench{i:07d}", "instruction": "Make it sepia.",
                     "category": "colour", "edit": "sepia", "fps": 16.0, "frames": 81, "width": 848, "height": 480,
                     "src_path": str(media / f"{key}.src.mp4"), "tgt_path": str(media / f"{key}.tgt.mp4"),
                     "provenance": "{}", "partition": "part-00000-of-00001"})
    write_manifest(rows, root / "dedup.parquet", DEDUP_SCHEMA)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--kb", type=int, default=300, help="size of each src/tgt file")
    ap.add_argument("--shard-mb", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench_shard_", dir=args.dir))
    try:
        make_pairs(scratch / "pairs", args.pairs, args.kb)
        results, outputs = [], []
        for workers in (1, args.workers):
            out = scratch / f"workers{workers}"
            shutil.copytree(scratch / "pairs", out, symlinks=True)
            with initialize_config_module(config_module="liveditor.configs.curate", version_base="1.3"):
                cfg = compose(config_name="curate", overrides=[f"shard.workers={workers}", "shard.keep_media=true",
                                                                f"shard.max_shard_bytes={args.shard_mb * 1_000_000}", "progress=false"])
            os.sync()
            cpu0, wall0 = _cpu_seconds(), time.perf_counter()
            shard.run(StageContext(out, cfg, None, False))
            wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
            index = json.loads((out / "shards" / "index.json").read_text())
            mb = index["total_bytes"] / 1e6
            results.append({"workers": workers, "shards": index["num_shards"], "mb": round(mb, 1), "wall_s": round(wall, 2),
                            "cpu_s": round(cpu, 2), "mb_per_s": round(mb / wall, 1)})
            print(f"workers={workers}: {index['num_shards']} shards, {mb:.0f} MB in {wall:.2f} s wall ({cpu:.2f} CPU-s), {mb / wall:.0f} MB/s")
            outputs.append(out / "shards")
        names = sorted(p.name for p in outputs[0].iterdir())
        if names != sorted(p.name for p in outputs[1].iterdir()) or any(
                (outputs[0] / n).read_bytes() != (outputs[1] / n).read_bytes() for n in names):
            raise SystemExit("shards written with 1 and with several workers differ")
        print("shards and index byte-identical across worker counts")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        atomic_write_json(args.json, {"cpu": platform.processor() or platform.machine(), "args": vars(args), "results": results})
    return results


if __name__ == "__main__":
    main()
