"""Shared builders of the training tests: curated edit-pair shards (the layout liveditor-curate
writes), a tiny diffusers-format Wan directory, and latent shards made from them by the real
`liveditor-precompute` code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from liveditor.train.shards import sha256_file, write_tar
from liveditor.video import write_video

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def make_pair_frames(rng: np.random.Generator, frames: int, height: int = 64, width: int = 96):
    """A moving smooth pattern and its colour-inverted edit: a learnable, verifiable edit."""
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi, 3)
    src = np.stack([np.stack([127 + 100 * np.sin(x / 9.0 + t * 0.4 + phase[c]) * np.cos(y / 11.0) for c in range(3)], -1)
                    for t in range(frames)]).astype(np.uint8)
    return src, (255 - src).astype(np.uint8)


def write_curated_shards(folder: Path, shards: int = 4, per_shard: int = 3, frames: int = 9, seed: int = 0, extra=None) -> Path:
    """`edit-00000N.tar` + index.json in liveditor-curate's sample layout (src.mp4, tgt.mp4, json).
    `extra(shard_index) -> [(key, members)]` appends hand-made (e.g. broken) samples."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    tmp = folder / ".media"
    tmp.mkdir(exist_ok=True)
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            key = f"pair{s:02d}{i:02d}"
            src, tgt = make_pair_frames(rng, frames)
            write_video(tmp / "src.mp4", src, fps=16)
            write_video(tmp / "tgt.mp4", tgt, fps=16)
            meta = {"key": key, "instruction": "invert the colours", "category": "style", "fps": 16, "frames": frames}
            samples.append((key, {"src.mp4": (tmp / "src.mp4").read_bytes(), "tgt.mp4": (tmp / "tgt.mp4").read_bytes(),
                                  "json": json.dumps(meta, sort_keys=True).encode()}))
        if extra is not None:
            samples.extend(extra(s))
        name = f"edit-{s:06d}.tar"
        write_tar(folder / name, samples)
        entries.append({"name": name, "samples": len(samples), "bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)})
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    (folder / "index.json").write_text(json.dumps({"format": "webdataset", "shards": entries, "num_shards": len(entries),
                                                   "num_samples": sum(e["samples"] for e in entries)}, indent=2))
    return folder


def make_wan_dir(folder: Path, seed: int = 0) -> Path:
    from liveditor.pipeline.tiny import make_tiny_wan_dir

    return make_tiny_wan_dir(folder, text_dim=32, seed=seed)


def run_cli(name: str, args: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run console script `name` (from this environment) with `args`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([str(BIN / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def precompute_args(curated: Path, out: Path, wan: Path, *more: str) -> list[str]:
    return [f"input_dir={curated}", f"out_dir={out}", f"encoders.path={wan}", "encoders.text_len=32", "progress=false", *more]


def tree_digest(folder: Path) -> dict[str, str]:
    """`{relative path: sha256}` of every file under `folder` (configs excepted: they name the folder)."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith("precompute.config")}
