"""`PatchCodec`: an exactly invertible video codec for the learning benchmark.

Space-to-depth of `patch x patch` pixels, temporal stride 1, no weights: a video `[B, 3, T, H, W]` in
`[-1, 1]` becomes latents `[B, 3 * patch**2, T, H / patch, W / patch]` whose channel
`c * patch**2 + dy * patch + dx` holds colour `c` of the pixel at `(dy, dx)` inside each patch; the
latents are then normalised per channel, `(x - latents_mean) / latents_std`. Decoding inverts both
steps exactly (float32 round-off), so decoded edits can be looked at and pixel PSNR means something.
It is no substitute for the Wan VAE at real scale (no compression, 12 channels at patch 2).

On disk it is a diffusers-format Wan directory's `vae/config.json` (no weight file):

    {"_class_name": "PatchCodec", "patch": 2, "z_dim": 12, "latents_mean": [12 floats], "latents_std": [12 floats]}

`WanVAE.load` (liveditor/pipeline/components.py) dispatches on `_class_name`, so every caller of the
Wan VAE takes such a directory; `liveditor.pipeline.tiny.make_codec_wan_dir` writes one, and
`codec_stats` measures the statistics to declare for a set of clips.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from liveditor.files import atomic_write_json

CODEC_CLASS = "PatchCodec"
CONFIG_NAME = "config.json"


class PatchCodec:
    """Space-to-depth codec with per-channel normalisation (see the module docstring).

    `latents_mean` / `latents_std`: `z_dim = 3 * patch**2` floats each, the statistics of the raw
    (un-normalised) latents, i.e. of pixel values in `[-1, 1]` (default 0 and 1: no normalisation).
    """

    temporal_stride = 1

    def __init__(self, patch: int = 2, latents_mean: Optional[Sequence[float]] = None, latents_std: Optional[Sequence[float]] = None):
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
            raise ValueError(f"PatchCodec patch must be an integer >= 1, got {patch!r}")
        self.patch = self.spatial_stride = patch
        self.z_dim = 3 * patch * patch
        mean = [0.0] * self.z_dim if latents_mean is None else [float(v) for v in latents_mean]
        std = [1.0] * self.z_dim if latents_std is None else [float(v) for v in latents_std]
        for name, values in (("latents_mean", mean), ("latents_std", std)):
            if len(values) != self.z_dim or not all(math.isfinite(v) for v in values):
                raise ValueError(f"PatchCodec {name} must be {self.z_dim} finite numbers (z_dim = 3 * patch**2), got {len(values)}")
        if min(std) <= 0:
            raise ValueError(f"PatchCodec latents_std must be > 0, got {min(std)}")
        self.latents_mean, self.latents_std = mean, std
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    # ----------------------------------------------------------------------------- on disk

    def config(self) -> dict:
        return {"_class_name": CODEC_CLASS, "patch": self.patch, "z_dim": self.z_dim,
                "latents_mean": self.latents_mean, "latents_std": self.latents_std}

    def save(self, vae_dir) -> Path:
        """Write `vae_dir/config.json` (atomically); returns `vae_dir`."""
        atomic_write_json(Path(vae_dir) / CONFIG_NAME, self.config())
        return Path(vae_dir)

    @classmethod
    def from_dir(cls, vae_dir) -> "PatchCodec":
        """The codec of `vae_dir/config.json`; a bad file is a ValueError naming it."""
        path = Path(vae_dir) / CONFIG_NAME
        try:
            cfg = json.loads(path.read_text())
            if cfg.get("_class_name") != CODEC_CLASS:
                raise ValueError(f"_class_name is {cfg.get('_class_name')!r}, not {CODEC_CLASS!r}")
            codec = cls(cfg["patch"], cfg.get("latents_mean"), cfg.get("latents_std"))
            if cfg.get("z_dim", codec.z_dim) != codec.z_dim:
                raise ValueError(f"z_dim is {cfg['z_dim']}, but patch {codec.patch} gives 3 * patch**2 = {codec.z_dim}")
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"'{path}' is not a usable PatchCodec config ({type(exc).__name__}: {exc}): "
                             "write it with liveditor.pipeline.tiny.make_codec_wan_dir or PatchCodec(...).save") from exc
        return codec

    # ----------------------------------------------------------------------------- coding

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """`(C, F, h, w)` of the latents of a `[T=num_frames, height, width]` video."""
        return (self.z_dim, num_frames, height // self.patch, width // self.patch)

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        """`[B, 3, T, H, W]` -> raw latents `[B, 3 p^2, T, H/p, W/p]`, channel `c p^2 + dy p + dx` (exact)."""
        B, C, T, H, W = video.shape
        p = self.patch
        if C != 3 or H % p or W % p:
            raise ValueError(f"PatchCodec(patch={p}) encodes [B, 3, T, H, W] with H and W multiples of {p}, got {list(video.shape)}")
        x = video.reshape(B, C, T, H // p, p, W // p, p).permute(0, 1, 4, 6, 2, 3, 5)
        return x.reshape(B, C * p * p, T, H // p, W // p)

    def unpatchify(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents `[B, 3 p^2, F, h, w]` -> `[B, 3, F, h p, w p]`, the exact inverse of `patchify`."""
        B, Z, T, h, w = latents.shape
        p = self.patch
        if Z != self.z_dim:
            raise ValueError(f"PatchCodec(patch={p}) decodes latents with {self.z_dim} channels, got {list(latents.shape)}")
        x = latents.reshape(B, 3, p, p, T, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        return x.reshape(B, 3, T, h * p, w * p)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """`[B, 3, T, H, W]` in `[-1, 1]` -> normalised latents `[B, 3 p^2, T, H/p, W/p]` float32."""
        x = self.patchify(video.float())
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `[B, 3 p^2, F, h, w]` -> video `[B, 3, F, h p, w p]` in `[-1, 1]` float32."""
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        return self.unpatchify(z).clamp(-1, 1)


def codec_stats(frames_list, patch: int = 2) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (population) of the raw PatchCodec latents of some clips.

    `frames_list`: clips, each uint8 `[T, H, W, 3]` (numpy or torch; H and W multiples of `patch`).
    Returns `(mean, std)`, `3 * patch**2` floats each, in the units of pixels mapped to `[-1, 1]`:
    the `latents_mean` / `latents_std` to declare so that these clips' latents are ~N(0, 1).
    """
    codec = PatchCodec(patch)
    count, total, squares = 0, torch.zeros(codec.z_dim, dtype=torch.float64), torch.zeros(codec.z_dim, dtype=torch.float64)
    for frames in frames_list:
        video = torch.as_tensor(frames).permute(3, 0, 1, 2).double().div(127.5).sub(1.0)
        x = codec.patchify(video.unsqueeze(0))[0].flatten(1)
        count, total, squares = count + x.shape[1], total + x.sum(1), squares + (x * x).sum(1)
    if count == 0:
        raise ValueError("codec_stats: frames_list holds no frames")
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=0).sqrt()
    return mean.tolist(), std.tolist()
