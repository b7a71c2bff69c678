"""Source video preparation: frame sampling at the model's rate, 4k+1 frame counts, resolution buckets.

Frames are `uint8` `[T, H, W, 3]`; the model side gets `[1, 3, T, H, W]` float in `[-1, 1]`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from liveditor.video import VideoClip, VideoError, probe_video, read_video

log = logging.getLogger(__name__)

# (width, height) buckets of the LIVEditor release: 960x544 landscape, 544x960 portrait, 720x720
# square, and 2:1 / 1:2.
DEFAULT_BUCKETS: tuple[tuple[int, int], ...] = ((960, 544), (544, 960), (720, 720), (960, 480), (480, 960))


@contextmanager
def quiet_decoder_output():
    """Hold back what FFmpeg and decord print from C to file descriptor 2 while a video is probed or
    decoded: written back when the block succeeds, dropped when it raises (the `VideoError` then says
    in one line which file could not be read)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 to redirect
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                text = held.read()
                if text:
                    os.write(2, text)


def frame_count_4k1(n: int) -> int:
    """Largest count of the form `4k + 1` not above `n` (the Wan VAE's causal temporal stride is 4)."""
    if n < 1:
        raise ValueError(f"need at least 1 frame, got {n}")
    return (n - 1) // 4 * 4 + 1


def warn_4k1(n: int, what: str) -> int:
    """`frame_count_4k1(n)`, logging a warning that names `what` when frames are dropped."""
    kept = frame_count_4k1(n)
    if kept != n:
        log.warning(
            "%s: %d frames taken, %d kept: the Wan VAE needs 4k+1 frames, so the last %d %s dropped "
            "(set video.num_frames / num_frames to 4k+1 to choose which)",
            what, n, kept, n - kept, "is" if n - kept == 1 else "are",
        )
    return kept


def choose_bucket(width: int, height: int, buckets: Sequence[Sequence[int]] = DEFAULT_BUCKETS) -> tuple[int, int]:
    """The bucket `(width, height)` whose aspect ratio is nearest (in log ratio) to `width / height`.

    Ties go to the earlier bucket.
    """
    if not buckets:
        raise ValueError("video.buckets is empty")
    target = math.log(width / height)
    best = min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][0] / buckets[i][1]) - target), i))
    return int(buckets[best][0]), int(buckets[best][1])


def resize_and_crop(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Resize `uint8` `[T, H, W, 3]` to cover `size = (width, height)` keeping the aspect ratio, then
    centre-crop to it. Returns `[3, T, height, width]` float32 in `[-1, 1]`."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    return fit_video(video, size)


def cover_crop(width: int, height: int, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """`((w, h), (left, top))`: the size a `width` x `height` frame is resized to so that it covers
    `size = (out_w, out_h)` keeping its aspect ratio (down or up), and the corner of its centred crop."""
    out_w, out_h = size
    scale = max(out_w / width, out_h / height)
    new_w, new_h = max(out_w, round(width * scale)), max(out_h, round(height * scale))
    return (new_w, new_h), ((new_w - out_w) // 2, (new_h - out_h) // 2)


def fit_video(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`[T, 3, H, W]` float in `[0, 255]` -> `[3, T, height, width]` float32 in `[-1, 1]`, resized to
    cover `size = (width, height)` keeping the aspect ratio, then centre-cropped (a video already at
    `size` is only rescaled, never resampled)."""
    out_w, out_h = size
    video = video.float()
    _, _, h, w = video.shape
    (new_w, new_h), (left, top) = cover_crop(w, h, size)
    if (new_h, new_w) != (h, w):
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    video = video[:, :, top : top + out_h, left : left + out_w]
    return (video / 127.5 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """`[3, T, H, W]` in `[-1, 1]` -> `uint8` `[T, H, W, 3]`."""
    x = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def resample_indices(num_source_frames: int, source_fps: float, target_fps: float, max_frames: int, start_s: float = 0.0) -> list[int]:
    """Source frame indices that sample the video at `target_fps` from `start_s` seconds (nearest frame)."""
    if source_fps <= 0:  # no rate in the container: take frames as they come
        source_fps = target_fps
    start = int(round(start_s * source_fps))
    step = source_fps / target_fps
    indices = []
    k = 0
    while len(indices) < max_frames:
        i = start + int(math.floor(k * step + 1e-6))
        if i >= num_source_frames:
            break
        indices.append(i)
        k += 1
    return indices


def load_source_video(
    path: str,
    num_frames: int = 81,
    fps: float = 16.0,
    start_s: float = 0.0,
    buckets: Sequence[Sequence[int]] = DEFAULT_BUCKETS,
    resolution: Optional[Sequence[int]] = None,
) -> tuple[torch.Tensor, VideoClip, tuple[int, int]]:
    """Read `path` at `fps`, keep at most `num_frames` frames rounded down to 4k+1, and fit them to the
    nearest bucket (or to `resolution`).

    Returns `(video [3, T, H, W] in [-1, 1], the decoded clip, (width, height))`.
    Raises `VideoError` naming the file when it cannot be read or has no frames.
    """
    info = probe_video(path)
    indices = resample_indices(info.num_frames, info.fps, fps, num_frames, start_s)
    if not indices:
        raise VideoError(f"video '{path}' has no frames after {start_s} s (it has {info.num_frames} frames at {info.fps:g} fps)")
    indices = indices[: warn_4k1(len(indices), f"video '{path}'")]
    clip = read_video(path, indices=indices)
    size = tuple(int(v) for v in resolution) if resolution else choose_bucket(clip.size[0], clip.size[1], buckets)
    clip = VideoClip(clip.frames, fps, clip.source)
    return resize_and_crop(clip.frames, size), clip, size
