"""Edit inference: source video + instruction -> edited video, from a resolved `edit` config.

    cfg = compose("edit/edit", overrides=[...])          # configs/edit/edit.yaml
    check_edit_config(cfg)                               # fails fast, naming the key or the file
    pipe = EditPipeline.from_config(cfg)                 # DiT(s), VAE and umT5 from the configured paths
    result = pipe.edit_file(cfg.input, cfg.prompt)       # EditResult(frames [T, H, W, 3] uint8, fps, ...)
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from liveditor.models import DiTConfig, build_editor
from liveditor.models.loading import CheckpointError, resolve_checkpoint_files
from liveditor.pipeline.components import ComponentError, TextEncoder, WanVAE, check_wan_dir
from liveditor.pipeline.preprocess import DEFAULT_BUCKETS, load_source_video, resample_indices, to_uint8_frames
from liveditor.pipeline.sampling import SAMPLERS, Expert, sample_edit
from liveditor.video import VideoError, probe_video

log = logging.getLogger(__name__)


class EditError(ValueError):
    """Bad edit input or configuration; the message names the input or config key and the fix."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EditError(f"runtime.device={name!r} but no CUDA device is available: use runtime.device=cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise EditError(f"dtype {name!r} is not one of {sorted(dtypes)}")
    # Half-precision matmuls on CPU are slow and not what anyone checks against: CPU runs float32.
    return dtypes[name] if device.type == "cuda" else torch.float32


def _check_weights(path, key: str) -> None:
    if path is None or str(path).strip() == "":
        raise EditError(f"{key} is not set: point it at a LIVEditor checkpoint (or an original / diffusers Wan transformer checkpoint)")
    if not Path(str(path)).expanduser().exists():
        raise EditError(f"{key}='{path}' does not exist: point it at a LIVEditor checkpoint file, index .json or folder")
    try:
        resolve_checkpoint_files(Path(str(path)).expanduser())
    except CheckpointError as exc:
        raise EditError(f"{key}: {exc}") from exc


def check_edit_config(cfg, need_io: bool = True) -> None:
    """Validate everything that can be checked before loading a model: the input video decodes and
    has frames, the prompt is not empty, and every configured path holds what it should."""
    if need_io:
        if not cfg.get("input"):
            raise EditError("no input video: pass --input in.mp4")
        info = probe_video(cfg.input)  # VideoError names the file: missing, undecodable, 0 frames
        start_s = float(cfg.video.get("start_s", 0.0))
        if not resample_indices(info.num_frames, info.fps, float(cfg.video.fps), 1, start_s):
            raise VideoError(f"video '{cfg.input}' has no frames after video.start_s={start_s} s ({info.num_frames} frames, {info.duration_s:.2f} s)")
        if not cfg.get("output"):
            raise EditError("no output path: pass --output out.mp4")
        if not str(cfg.output).lower().endswith(".mp4"):
            raise EditError(f"output '{cfg.output}' must end in .mp4")
        if Path(str(cfg.output)).resolve() == Path(str(cfg.input)).resolve():
            raise EditError(f"output '{cfg.output}' is the input video: choose another path")
        existing = Path(str(cfg.output)).expanduser().resolve().parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise EditError(f"output '{cfg.output}' cannot be written: '{existing}' is not a writable folder")
    prompt = cfg.get("prompt")
    if prompt is None or not str(prompt).strip():
        raise EditError("the prompt is empty: pass --prompt \"<edit instruction>\"")
    m = cfg.model
    _check_weights(m.get("weights_path"), "model.weights_path")
    if m.get("low_noise_weights_path"):
        _check_weights(m.low_noise_weights_path, "model.low_noise_weights_path")
    try:
        check_wan_dir(m.get("vae_path"), "model.vae_path", ["vae"])
        check_wan_dir(m.get("text_encoder_path"), "model.text_encoder_path", ["text_encoder", "tokenizer"])
    except ComponentError as exc:
        raise EditError(str(exc)) from exc
    s = cfg.sampling
    if s.sampler not in SAMPLERS:
        raise EditError(f"sampling.sampler must be one of {SAMPLERS}, got {s.sampler!r}")
    if int(s.steps) < 1:
        raise EditError(f"sampling.steps must be >= 1, got {s.steps}")
    if int(s.isa_plan_reuse_steps) < 1:
        raise EditError(f"sampling.isa_plan_reuse_steps must be >= 1, got {s.isa_plan_reuse_steps}")
    v = cfg.video
    if int(v.num_frames) < 1:
        raise EditError(f"video.num_frames must be >= 1, got {v.num_frames}")
    sizes = [v.resolution] if v.get("resolution") else list(v.buckets)
    for size in sizes:
        if len(size) != 2 or any(int(n) % 16 for n in size):
            raise EditError(f"resolution {list(size)} must be [width, height] with both multiples of 16 (VAE stride 8 x patch 2)")


@dataclass
class EditResult:
    """An edited clip.

    Attributes:
        frames: `uint8` `[T, H, W, 3]`.
        fps: frames per second to write at.
        size: `(width, height)`.
        source_frames: frames taken from the input.
        seconds: wall time per stage ("encode", "denoise", "decode").
    """

    frames: np.ndarray
    fps: float
    size: tuple[int, int]
    source_frames: int
    seconds: dict = field(default_factory=dict)


class EditPipeline:
    """VAE, text encoder and DiT expert(s) with the sampling settings of an `edit` config."""

    def __init__(self, experts: Sequence[Expert], vae: WanVAE, text_encoder: TextEncoder, cfg, device: torch.device):
        self.experts, self.vae, self.text_encoder, self.cfg, self.device = list(experts), vae, text_encoder, cfg, device

    @classmethod
    def from_config(cls, cfg) -> "EditPipeline":
        """Load every component from the paths in `cfg.model` (after `check_edit_config`)."""
        device = resolve_device(cfg.runtime.device)
        dtype = resolve_dtype(cfg.runtime.dtype, device)
        vae_dtype = resolve_dtype(cfg.runtime.vae_dtype, device)
        from omegaconf import OmegaConf

        dit_cfg = DiTConfig.from_dict(OmegaConf.to_container(cfg.model.dit, resolve=True))
        m = cfg.model
        experts = []
        for key, min_t in (("weights_path", 0.0), ("low_noise_weights_path", None)):
            path = m.get(key)
            if not path:
                continue
            log.info("loading DiT %s from %s", key, path)
            try:
                model, report = build_editor(dit_cfg, Path(str(path)).expanduser(), device=device, dtype=dtype)
            except CheckpointError as exc:
                raise EditError(f"model.{key}: {exc}") from exc
            log.info("DiT %s: %s layout%s", key, report.layout, " (editor parameters initialised from the base model)" if report.initialised else "")
            experts.append(Expert(model, min_t if min_t is not None else 0.0))
        if len(experts) == 2:  # Wan2.2-A14B: high-noise expert above the boundary, low-noise below
            experts[0].min_timestep = float(m.boundary) * 1000.0
        vae = WanVAE.load(m.vae_path, device=device, dtype=vae_dtype)
        text_encoder = TextEncoder.load(m.text_encoder_path, text_len=dit_cfg.text_len, device=device, dtype=dtype)
        if text_encoder.dim != dit_cfg.text_dim:
            raise EditError(f"the text encoder in model.text_encoder_path outputs {text_encoder.dim} channels, model.dit.text_dim is {dit_cfg.text_dim}")
        if vae.z_dim != dit_cfg.in_dim:
            raise EditError(f"the VAE in model.vae_path has {vae.z_dim} latent channels, model.dit.in_dim is {dit_cfg.in_dim}")
        return cls(experts, vae, text_encoder, cfg, device)

    def encode_prompts(self, prompt: str, negative_prompt: Optional[str]):
        guidance = float(self.cfg.sampling.guidance_scale)
        prompts = [prompt] + ([negative_prompt or ""] if guidance != 1.0 else [])
        states = self.text_encoder.encode(prompts)
        return states[:1], (states[1:2] if guidance != 1.0 else None)

    def edit_file(self, path: str, prompt: str, negative_prompt: Optional[str] = None, seed: Optional[int] = None) -> EditResult:
        """Edit the video at `path` following `prompt`."""
        v = self.cfg.video
        buckets = [tuple(b) for b in v.buckets] if v.get("buckets") else DEFAULT_BUCKETS
        video, clip, size = load_source_video(path, int(v.num_frames), float(v.fps), float(v.get("start_s", 0.0)), buckets, v.get("resolution"))
        return self.edit(video, prompt, negative_prompt, seed, source_frames=clip.num_frames)

    @torch.no_grad()
    def edit(self, video: torch.Tensor, prompt: str, negative_prompt: Optional[str] = None, seed: Optional[int] = None, source_frames: Optional[int] = None) -> EditResult:
        """Edit `video` `[3, T, H, W]` in `[-1, 1]` (T of the form 4k+1, H and W multiples of 16)."""
        if not prompt or not prompt.strip():
            raise EditError("the prompt is empty: give an edit instruction")
        cfg, s = self.cfg, self.cfg.sampling
        if negative_prompt is None:
            negative_prompt = cfg.get("negative_prompt") or ""
        seed = int(cfg.get("seed", 0) if seed is None else seed)
        _, T, H, W = video.shape
        seconds = {}

        t0 = time.perf_counter()
        text, negative = self.encode_prompts(prompt, negative_prompt)
        source_latents = self.vae.encode(video.unsqueeze(0))
        seconds["encode"] = time.perf_counter() - t0

        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(source_latents.shape, generator=generator, dtype=torch.float32).to(self.device)
        t0 = time.perf_counter()
        latents = sample_edit(
            self.experts, noise, source_latents.to(self.device), text, negative,
            steps=int(s.steps), sampler=str(s.sampler), shift=float(s.shift), guidance_scale=float(s.guidance_scale),
            isa_plan_reuse_steps=int(s.isa_plan_reuse_steps), progress=bool(cfg.runtime.get("progress", True)),
        )
        seconds["denoise"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        out = self.vae.decode(latents)[0]
        seconds["decode"] = time.perf_counter() - t0
        frames = to_uint8_frames(out[:, :T])
        return EditResult(frames, float(cfg.video.fps), (W, H), int(source_frames or T), seconds)
