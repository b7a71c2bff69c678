"""The target video: a diffusers video pipeline animates the edited anchor frame.

    synth = TargetSynthesizer.from_config(cfg.pairs.generate.video, device="cuda", dtype=torch.bfloat16)
    videos = synth.generate(anchors, target_captions, source_videos, seeds, num_frames=81)   # uint8 [81, H, W, 3]

Pipelines (`VIDEO_PIPELINES`):
- `WanImageToVideoPipeline` (Wan2.2 TI2V-5B, Wan2.2 I2V-A14B, Wan2.1 I2V): the anchor is the first
  frame, the target caption the prompt; the source video is not used (`structure: none`). A batch is
  one call. diffusers 0.42.1 prepares an image batch's conditions wrongly (it encodes the whole batch
  once per generator, giving B x B conditions: a shape error), so `_BatchedWanImageToVideo` prepares
  them sample by sample; Wan2.1 I2V's CLIP image embeddings are repeated the same way inside
  `__call__`, so a pipeline with an image encoder is called once per sample (upstream: the Wan review
  huggingface/diffusers#13578 and its open fixes #13693, #14170).
- `WanVACEPipeline` (Wan2.1 VACE 1.3B/14B, Wan2.2 VACE-Fun): the control video holds the anchor as
  frame 0, kept (mask black), and for the later frames, generated (mask white), either grey (VACE's
  first-frame extension, `structure: none`) or a structure map of the source at the same time
  (`edges`: luma-gradient magnitude, like VACE's scribble control; `gray`: luma, like its
  colourisation task), so the target keeps the source's layout and motion. diffusers' VACE pipeline
  generates one video per call, so a batch is one call per sample.
Every sample's noise comes from its own seeded generator: its video does not depend on its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from liveditor.dtypes import dtype_name

from .anchor import to_uint8
from .loading import (check_batch, check_model_dir, config_from, generators, load_pipeline,
                      resolve_pipeline_class, weights_fingerprint)

KEY = "pairs.generate.video"
STRUCTURES = ("none", "edges", "gray")


@dataclass
class SynthConfig:
    """Node `pairs.generate.video`."""

    path: str = ""                   # local diffusers video pipeline folder (model_index.json + components)
    pipeline_class: str = "auto"     # auto: model_index.json's _class_name; else one of VIDEO_PIPELINES
    steps: int = 40                  # denoising steps
    guidance_scale: float = 5.0      # classifier-free guidance on the prompt (Wan's default 5.0)
    negative_prompt: str = ""        # Wan's negative prompt ("" = none)
    structure: str = "none"          # source structure for VACE-like pipelines: none | edges | gray
    conditioning_scale: float = 1.0  # VACE only: strength of the control video
    max_sequence_length: int = 512   # umT5 prompt tokens (Wan's 512)
    cpu_offload: bool = False        # diffusers' model CPU offload: big pipelines on a smaller GPU, slower


def luma(frames: np.ndarray) -> np.ndarray:
    """uint8 `[..., 3]` RGB -> float32 `[...]` BT.601 luma in 0..255."""
    return frames[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def edge_map(frame: np.ndarray) -> np.ndarray:
    """uint8 `[H, W, 3]` -> uint8 `[H, W, 3]`: luma-gradient magnitude (central differences), scaled so
    the frame's 99th percentile is white; grey-level, same in all three channels."""
    y = luma(frame)
    gy, gx = np.gradient(y)
    magnitude = np.hypot(gx, gy)
    top = float(np.percentile(magnitude, 99)) or 1.0
    edges = np.clip(magnitude / top * 255.0, 0, 255).astype(np.uint8)
    return np.repeat(edges[..., None], 3, axis=2)


def gray_map(frame: np.ndarray) -> np.ndarray:
    y = np.clip(luma(frame) + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(y[..., None], 3, axis=2)


def vace_control(anchor: np.ndarray, source: np.ndarray, num_frames: int, structure: str):
    """VACE's control video and mask (lists of `num_frames` uint8 `[H, W, 3]`): frame 0 the anchor, kept
    (mask 0); frames 1.. generated (mask 255) from grey (`none`) or the source's structure map at the
    same relative time (`edges`, `gray`; the source is resampled to `num_frames` by nearest index and
    resized to the anchor's size)."""
    height, width = anchor.shape[:2]
    if structure == "none":
        rest = [np.full_like(anchor, 127)] * (num_frames - 1)
    else:
        to_map = edge_map if structure == "edges" else gray_map
        index = np.linspace(0, len(source) - 1, num_frames).round().astype(int)
        rest = []
        for i in index[1:]:
            frame = source[i]
            if frame.shape[:2] != (height, width):
                frame = np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
            rest.append(to_map(frame))
    video = [anchor] + rest
    keep, generate = np.zeros_like(anchor), np.full_like(anchor, 255)
    mask = [keep] + [generate] * (num_frames - 1)
    return [Image.fromarray(f) for f in video], [Image.fromarray(m) for m in mask]


def _batched_wan_i2v():
    """`WanImageToVideoPipeline` whose conditions are prepared per image (see the module docstring)."""
    from diffusers import WanImageToVideoPipeline

    class _BatchedWanImageToVideo(WanImageToVideoPipeline):
        def prepare_latents(self, image, batch_size, num_channels_latents=16, height=480, width=832, num_frames=81,
                            dtype=None, device=None, generator=None, latents=None, last_image=None):
            if image.shape[0] == 1 or image.shape[0] != batch_size:
                return super().prepare_latents(image, batch_size, num_channels_latents, height, width, num_frames, dtype,
                                               device, generator, latents, last_image)
            parts = [super(_BatchedWanImageToVideo, self).prepare_latents(
                image[i:i + 1], 1, num_channels_latents, height, width, num_frames, dtype, device,
                [generator[i]] if isinstance(generator, list) else generator,
                None if latents is None else latents[i:i + 1], None if last_image is None else last_image[i:i + 1])
                for i in range(batch_size)]
            joined = [torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])]
            # with expand_timesteps the third output is the first-frame mask, one for the whole batch
            return (*joined, parts[0][2]) if self.config.expand_timesteps else tuple(joined)

    _BatchedWanImageToVideo.__name__ = "WanImageToVideoPipeline"
    return _BatchedWanImageToVideo


def _load_class(class_name: str):
    import diffusers

    return _batched_wan_i2v() if class_name == "WanImageToVideoPipeline" else getattr(diffusers, class_name)


# Pipeline class -> whether it conditions on the source's structure (supports `structure` != none).
VIDEO_PIPELINES = {"WanImageToVideoPipeline": False, "WanVACEPipeline": True}


class TargetSynthesizer:
    """A loaded video pipeline and its call settings."""

    def __init__(self, pipe, cfg: SynthConfig, class_name: str, dtype: torch.dtype):
        self.pipe, self.cfg, self.class_name, self.dtype = pipe, cfg, class_name, dtype
        self._fingerprint = None

    @classmethod
    def from_config(cls, cfg, device: str, dtype: torch.dtype) -> "TargetSynthesizer":
        cfg = config_from(SynthConfig, cfg, KEY)
        if cfg.structure not in STRUCTURES:
            raise ValueError(f"{KEY}.structure={cfg.structure!r}: choose one of {', '.join(STRUCTURES)}")
        folder = check_model_dir(cfg.path, f"{KEY}.path",
                                 "diffusers video pipeline folder (model_index.json and one folder per component, "
                                 "e.g. Wan2.2-TI2V-5B-Diffusers or Wan2.1-VACE-14B-diffusers)")
        class_name = resolve_pipeline_class(folder, cfg.pipeline_class, VIDEO_PIPELINES, f"{KEY}.pipeline_class")
        if cfg.structure != "none" and not VIDEO_PIPELINES[class_name]:
            structured = ", ".join(k for k, v in VIDEO_PIPELINES.items() if v)
            raise ValueError(f"{KEY}.structure={cfg.structure!r} needs a pipeline that takes a control video ({structured}); "
                             f"{class_name} conditions on the anchor frame only: set {KEY}.structure=none")
        pipe = load_pipeline(_load_class(class_name), folder, f"{KEY}.path", device, dtype, cfg.cpu_offload)
        return cls(pipe, cfg, class_name, dtype)

    @property
    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this: VAE spatial factor x transformer patch."""
        patch = self.pipe.transformer.config.patch_size[1]
        return int(self.pipe.vae_scale_factor_spatial * patch)

    @property
    def temporal_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_temporal)

    def _check_request(self, anchors, num_frames: int) -> tuple[int, int]:
        sizes = {tuple(a.shape) for a in anchors}
        if len(sizes) != 1 or len(next(iter(sizes))) != 3 or next(iter(sizes))[2] != 3:
            raise ValueError(f"TargetSynthesizer.generate: a batch needs anchors of one size [H, W, 3], got {sorted(sizes)}")
        height, width = anchors[0].shape[:2]
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(f"TargetSynthesizer.generate: anchor size {height}x{width} is not a multiple of {m} "
                             f"({self.class_name}: VAE x patch); use a bucket whose height and width are multiples of {m}")
        t = self.temporal_factor
        if num_frames < 1 or (num_frames - 1) % t:
            raise ValueError(f"TargetSynthesizer.generate: num_frames={num_frames} is not {t}k+1 (the VAE's temporal "
                             f"stride is {t}); use e.g. 81")
        return height, width

    @torch.no_grad()
    def generate(self, anchors: list[np.ndarray], prompts: list[str], sources: list[np.ndarray], seeds: list[int],
                 num_frames: int) -> list[np.ndarray]:
        """Animate each anchor (uint8 `[H, W, 3]`, one size per batch) by its prompt; `sources` (uint8
        `[T, H', W', 3]`) feed structure conditioning where the pipeline has it. Returns uint8
        `[num_frames, H, W, 3]` per sample; `num_frames` must be 4k+1."""
        check_batch("TargetSynthesizer.generate", anchors=anchors, prompts=prompts, sources=sources, seeds=seeds)
        height, width = self._check_request(anchors, num_frames)
        common = dict(height=height, width=width, num_frames=num_frames, num_inference_steps=self.cfg.steps,
                      guidance_scale=self.cfg.guidance_scale, max_sequence_length=self.cfg.max_sequence_length,
                      output_type="np")
        if self.class_name == "WanVACEPipeline":
            videos = []
            for anchor, prompt, source, gen in zip(anchors, prompts, sources, generators(seeds)):
                video, mask = vace_control(np.ascontiguousarray(anchor, dtype=np.uint8), source, num_frames, self.cfg.structure)
                out = self.pipe(video=video, mask=mask, prompt=prompt, negative_prompt=self.cfg.negative_prompt,
                                conditioning_scale=self.cfg.conditioning_scale, generator=gen, **common).frames
                videos.append(out[0])
        elif self.pipe.transformer.config.image_dim is not None:
            # Wan2.1 I2V: CLIP image embeddings, one sample a call; a PIL image, because the CLIP image
            # processor would rescale a [0, 1] tensor by 1/255 a second time
            videos = [self.pipe(image=Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)), prompt=[p],
                                negative_prompt=[self.cfg.negative_prompt], generator=[g], **common).frames[0]
                      for a, p, g in zip(anchors, prompts, generators(seeds))]
        else:
            videos = list(self.pipe(image=self._image_tensor(anchors), prompt=list(prompts),
                                    negative_prompt=[self.cfg.negative_prompt] * len(prompts),
                                    generator=generators(seeds), **common).frames)
        out = [to_uint8(v) for v in videos]
        for v in out:
            if v.shape != (num_frames, height, width, 3):
                raise RuntimeError(f"{self.class_name} returned a video of shape {v.shape}, expected "
                                   f"{(num_frames, height, width, 3)}")
        return out

    @staticmethod
    def _image_tensor(anchors) -> torch.Tensor:
        """uint8 `[H, W, 3]` list -> float `[B, 3, H, W]` in 0..1 (the I2V pipeline's tensor input)."""
        return torch.from_numpy(np.stack(anchors)).permute(0, 3, 1, 2).float().div(255.0)

    def provenance(self) -> dict:
        """What made the target: pipeline class, folder, weights fingerprint, call settings, dtype."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.cfg.path)
        settings = dict(steps=self.cfg.steps, guidance_scale=self.cfg.guidance_scale,
                        negative_prompt=self.cfg.negative_prompt, max_sequence_length=self.cfg.max_sequence_length)
        if VIDEO_PIPELINES[self.class_name]:
            settings.update(structure=self.cfg.structure, conditioning_scale=self.cfg.conditioning_scale)
        return {"pipeline_class": self.class_name, "path": str(self.cfg.path), "weights_sha256": self._fingerprint,
                "dtype": dtype_name(self.dtype), **settings}
