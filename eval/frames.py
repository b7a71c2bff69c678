"""Frames in, model inputs out: every metric's image preprocessing, on the PIL path.

Frames are `uint8` `[T, H, W, 3]` RGB (`liveditor.video`'s convention). Each function turns one
frame `[H, W, 3]` into a `float32` `[3, h, w]` array, reproducing one reference pipeline exactly:

- `clip_pixels`: transformers 4.x `CLIPImageProcessor` (the path EditVerse's published numbers
  come from): PIL bicubic resize of the short side to 224 with the long side `int(224 * long /
  short)`, centre crop 224 with offsets `(H - 224) // 2`, `x * (1/255)` in float64 then float32,
  then `(x - mean) / std` with OpenAI CLIP's mean and std.
- `dinov2_pixels`: transformers 4.x `BitImageProcessor` as configured for DINOv2: short side 256
  (PIL bicubic), centre crop 224, ImageNet mean and std.
- `pickscore_shrink`: EditVerse's PickScore pre-step: a frame longer than 672 px is resized to
  `(int(s * W), int(s * H))`, `s = 672 / max(H, W)`, PIL bicubic; `clip_pixels` follows.
- `torchvision_clip_pixels`: torchvision `Resize(224, BICUBIC)` + `CenterCrop(224)` on a PIL image
  (crop offsets `round((H - 224) / 2)`), `ToTensor`, CLIP normalisation: ViCLIP's transform and
  OpenAI `clip.load`'s preprocess (VBench background consistency).
- `vbench_dino_pixels`: VBench's `dino_transform_Image(224)`: torchvision `Resize(224)` on a PIL
  image (bilinear, short side 224, no crop), `ToTensor`, ImageNet normalisation.

transformers 5's default (torchvision-backed) image processors differ from these by up to 1.6e-2
in frame-text scores, so nothing here goes through an image processor class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PICKSCORE_MAX_SIDE = 672


def load_frames(path) -> np.ndarray:
    """All frames of a video file or a folder of frame images: `uint8` `[T, H, W, 3]` RGB."""
    from liveditor.video import VideoError, read_video

    from .benchmarks import frame_files

    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise VideoError(f"frame folder '{path}' has no image files")
        return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return read_video(path).frames


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """`(w, h)` with the short side `size` and the long side `int(size * long / short)` (transformers
    4.x and torchvision agree), unchanged when the short side already is `size`."""
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        return width, height
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def _resize_short(frame: np.ndarray, size: int, resample) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    w, h = short_side_size(img.width, img.height, size)
    return img if (w, h) == img.size else img.resize((w, h), resample=resample)


def _crop(arr: np.ndarray, size: int, rounding: str) -> np.ndarray:
    h, w = arr.shape[:2]
    if rounding == "floor":  # transformers' numpy centre crop
        top, left = (h - size) // 2, (w - size) // 2
    else:  # torchvision's CenterCrop
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return arr[top:top + size, left:left + size]


def _normalise_transformers(arr: np.ndarray, mean, std) -> np.ndarray:
    x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


def _normalise_torchvision(arr: np.ndarray, mean, std) -> np.ndarray:
    x = arr.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


def clip_pixels(frame: np.ndarray, size: int = 224) -> np.ndarray:
    """`[H, W, 3]` uint8 -> `[3, size, size]` float32, transformers 4.x CLIP preprocessing (PIL)."""
    img = _resize_short(frame, size, Image.BICUBIC)
    return _normalise_transformers(_crop(np.asarray(img), size, "floor"), CLIP_MEAN, CLIP_STD)


def dinov2_pixels(frame: np.ndarray, resize: int = 256, crop: int = 224) -> np.ndarray:
    """`[H, W, 3]` uint8 -> `[3, 224, 224]` float32: DINOv2's processor (short side 256, crop 224)."""
    img = _resize_short(frame, resize, Image.BICUBIC)
    return _normalise_transformers(_crop(np.asarray(img), crop, "floor"), IMAGENET_MEAN, IMAGENET_STD)


def pickscore_shrink(frame: np.ndarray, max_side: int = PICKSCORE_MAX_SIDE) -> np.ndarray:
    """Shrink a frame longer than `max_side` px as EditVerse's PickScore does (PIL bicubic, `int()`)."""
    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    scale = max_side / max(h, w)
    img = Image.fromarray(np.ascontiguousarray(frame)).resize((int(scale * w), int(scale * h)), resample=Image.BICUBIC)
    return np.asarray(img)


def torchvision_clip_pixels(frame: np.ndarray, size: int = 224) -> np.ndarray:
    """`[H, W, 3]` uint8 -> `[3, size, size]`: torchvision Resize(bicubic) + CenterCrop on PIL, CLIP mean/std."""
    img = _resize_short(frame, size, Image.BICUBIC)
    return _normalise_torchvision(_crop(np.asarray(img), size, "round"), CLIP_MEAN, CLIP_STD)


def vbench_dino_pixels(frame: np.ndarray, size: int = 224) -> np.ndarray:
    """`[H, W, 3]` uint8 -> `[3, h, w]` with short side `size` (bilinear, no crop), ImageNet mean/std."""
    img = _resize_short(frame, size, Image.BILINEAR)
    return _normalise_torchvision(np.asarray(img), IMAGENET_MEAN, IMAGENET_STD)


_POOL = None


def map_frames(fn, frames: np.ndarray) -> np.ndarray:
    """`fn` on every frame, stacked; frames are preprocessed in a thread pool (PIL releases the GIL)."""
    global _POOL
    if len(frames) < 8:
        return np.stack([fn(f) for f in frames])
    if _POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 4)))
    return np.stack(list(_POOL.map(fn, frames)))
