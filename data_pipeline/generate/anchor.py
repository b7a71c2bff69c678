"""The edited anchor frame: a diffusers image-editing pipeline applies the instruction to one source frame.

    editor = AnchorEditor.from_config(cfg.pairs.generate.anchor, device="cuda", dtype=torch.bfloat16)
    edited = editor.edit(frames, instructions, seeds)      # uint8 [H, W, 3] each, same size as the input

The pipeline comes from a local diffusers folder (`path`); its class is read from `model_index.json`
(`pipeline_class: auto`) or named. Each class takes its guidance differently; `ANCHOR_PIPELINES` is
the one table of those differences. A batch is one pipeline call with one seeded generator per
sample, so a sample's edit does not depend on the other samples in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from liveditor.dtypes import dtype_name

from .loading import (check_batch, check_model_dir, config_from, generators, load_pipeline,
                      resolve_pipeline_class, weights_fingerprint)

KEY = "pairs.generate.anchor"


@dataclass
class AnchorConfig:
    """Node `pairs.generate.anchor`."""

    path: str = ""                      # local diffusers image-editing pipeline folder (model_index.json + components)
    pipeline_class: str = "auto"        # auto: model_index.json's _class_name; else one of ANCHOR_PIPELINES
    steps: int = 28                     # denoising steps
    guidance_scale: float = 2.5         # text guidance (Kontext: distilled guidance; InstructPix2Pix: CFG on the text)
    image_guidance_scale: float = 1.5   # InstructPix2Pix only: guidance towards the source image
    true_cfg_scale: float = 4.0         # Qwen-Image-Edit only: classifier-free guidance with `negative_prompt`
    negative_prompt: str = " "          # Qwen-Image-Edit only (its pipeline skips true CFG without one)
    cpu_offload: bool = False           # diffusers' model CPU offload: big pipelines on a smaller GPU, slower


@dataclass(frozen=True)
class _CallStyle:
    """How one pipeline class is called: the config fields it uses (recorded in provenance) and its
    class-specific arguments for a batch of `n` frames of `height` x `width`."""

    settings: tuple
    arguments: Callable[[AnchorConfig, int, int, int], dict]


def _qwen_arguments(c: AnchorConfig, n: int, height: int, width: int) -> dict:
    return dict(true_cfg_scale=c.true_cfg_scale, negative_prompt=[c.negative_prompt] * n, height=height, width=width)


# Pipeline class -> call style. Sizes: InstructPix2Pix edits at the input's size; Kontext rescales to
# `max_area` (so that is the input's area, and its preferred-resolution auto-resize is off) and
# Qwen-Image-Edit to its own area unless given a size. Any size change left (rounding to the latent
# grid) is undone after the call.
ANCHOR_PIPELINES: dict[str, _CallStyle] = {
    "StableDiffusionInstructPix2PixPipeline": _CallStyle(
        ("guidance_scale", "image_guidance_scale"),
        lambda c, n, h, w: dict(guidance_scale=c.guidance_scale, image_guidance_scale=c.image_guidance_scale)),
    "FluxKontextPipeline": _CallStyle(
        ("guidance_scale",),
        lambda c, n, h, w: dict(guidance_scale=c.guidance_scale, height=h, width=w, max_area=h * w, _auto_resize=False)),
    "QwenImageEditPipeline": _CallStyle(("true_cfg_scale", "negative_prompt"), _qwen_arguments),
    "QwenImageEditPlusPipeline": _CallStyle(("true_cfg_scale", "negative_prompt"), _qwen_arguments),
}


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] (float, `output_type="np"`) -> uint8, rounded."""
    return (np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 `[h, w, 3]` -> `[height, width, 3]` (PIL bicubic); returned as is when already that size."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


class AnchorEditor:
    """A loaded image-editing pipeline and its call settings."""

    def __init__(self, pipe, cfg: AnchorConfig, class_name: str, dtype: torch.dtype):
        self.pipe, self.cfg, self.class_name, self.dtype = pipe, cfg, class_name, dtype
        self.style = ANCHOR_PIPELINES[class_name]
        self._fingerprint = None

    @classmethod
    def from_config(cls, cfg, device: str, dtype: torch.dtype) -> "AnchorEditor":
        cfg = config_from(AnchorConfig, cfg, KEY)
        folder = check_model_dir(cfg.path, f"{KEY}.path",
                                 "diffusers image-editing pipeline folder (model_index.json and one folder per component, "
                                 "e.g. FLUX.1-Kontext-dev, Qwen-Image-Edit or instruct-pix2pix)")
        class_name = resolve_pipeline_class(folder, cfg.pipeline_class, ANCHOR_PIPELINES, f"{KEY}.pipeline_class")
        import diffusers

        pipe = load_pipeline(getattr(diffusers, class_name), folder, f"{KEY}.path", device, dtype, cfg.cpu_offload)
        return cls(pipe, cfg, class_name, dtype)

    @torch.no_grad()
    def edit(self, frames: list[np.ndarray], instructions: list[str], seeds: list[int]) -> list[np.ndarray]:
        """Edit each frame (uint8 `[H, W, 3]` RGB, one size per batch) by its instruction, with noise from
        its seed; returns uint8 `[H, W, 3]` frames at the input size. One pipeline call per batch."""
        n = check_batch("AnchorEditor.edit", frames=frames, instructions=instructions, seeds=seeds)
        sizes = {tuple(f.shape) for f in frames}
        if len(sizes) != 1 or len(next(iter(sizes))) != 3 or next(iter(sizes))[2] != 3:
            raise ValueError(f"AnchorEditor.edit: a batch needs frames of one size [H, W, 3], got shapes {sorted(sizes)}")
        height, width = frames[0].shape[:2]
        out = self.pipe(image=[Image.fromarray(np.ascontiguousarray(f, dtype=np.uint8)) for f in frames],
                        prompt=list(instructions), num_inference_steps=self.cfg.steps, generator=generators(seeds),
                        output_type="np", **self.style.arguments(self.cfg, n, height, width)).images
        return [resize_rgb(image, height, width) for image in to_uint8(out)]

    def provenance(self) -> dict:
        """What made the anchor: pipeline class, folder, weights fingerprint, call settings, dtype."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.cfg.path)
        settings = {name: getattr(self.cfg, name) for name in self.style.settings}
        return {"pipeline_class": self.class_name, "path": str(self.cfg.path), "weights_sha256": self._fingerprint,
                "dtype": dtype_name(self.dtype), "steps": self.cfg.steps, **settings}
