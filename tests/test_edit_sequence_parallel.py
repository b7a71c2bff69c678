"""liveditor-edit split over two processes (runtime.sequence_parallel=2, torchrun, gloo on CPU) makes the
same edit as one process, and only rank 0 writes it; without the launcher the setting is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from liveditor.models import DiTConfig
from liveditor.pipeline import compose_edit_config
from liveditor.pipeline.tiny import make_tiny_checkpoint, make_tiny_wan_dir
from liveditor.video import read_video, write_video

BIN = Path(sys.executable).parent


def test_two_process_edit_equals_one_process(tmp_path):
    wan = make_tiny_wan_dir(tmp_path / "wan")
    dit = DiTConfig.from_dict(OmegaConf.to_container(compose_edit_config(["model=tiny"]).model.dit))
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.safetensors", dit)
    rng = np.random.default_rng(0)
    write_video(tmp_path / "in.mp4", rng.integers(0, 255, (9, 48, 80, 3), dtype=np.uint8), fps=16)
    flags = ["--input", str(tmp_path / "in.mp4"), "--prompt", "make it snowy"]
    overrides = ["model=tiny", f"model.weights_path={ckpt}", f"model.vae_path={wan}", "sampling.steps=3", "video.resolution=[80,48]",
                 "runtime.device=cpu", "runtime.progress=false"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    one = subprocess.run([str(BIN / "liveditor-edit"), *flags, "--output", str(tmp_path / "one.mp4"), *overrides], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                          "liveditor.pipeline.cli", *flags, "--output", str(tmp_path / "two.mp4"), *overrides, "runtime.sequence_parallel=2"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 0 of 2 holds" in two.stderr and "rank 1 of 2 holds" in two.stderr
    a, b = read_video(tmp_path / "one.mp4").frames.astype(int), read_video(tmp_path / "two.mp4").frames.astype(int)
    assert a.shape == b.shape == (9, 48, 80, 3)
    # Float sums in another order, then uint8 rounding and x264: on this noise video a one-level rounding
    # difference can change x264's choices for a few blocks (up to 10 levels seen in a fresh clone once the tiny
    # VAE's latents carried their real scale, d4b676c), so the agreement is judged by the mean difference.
    diff = np.abs(a - b)
    assert diff.mean() < 0.25 and diff.max() <= 16, (diff.mean(), diff.max())
    assert "sequence_parallel: 2" in (tmp_path / "two.config.yaml").read_text()

    bad = subprocess.run([str(BIN / "liveditor-edit"), *flags, "--output", str(tmp_path / "bad.mp4"), *overrides, "runtime.sequence_parallel=2"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "torchrun --nproc-per-node 2" in bad.stderr and not (tmp_path / "bad.mp4").exists()
