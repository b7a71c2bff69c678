"""Stage 3, clip filters: duration, resolution, frame rate, motion and sharpness.

Metadata checks come first and cost nothing; the rest decode `sample_frames` frames of the clip
(and, for motion, the frame `motion_gap_seconds` after each). `decoder: pyav` seeks to the clip and
scales the frames to `analysis_short_side` in the decoder's scaler (`pair_video.decode_frames`);
`decoder: decord` reads full-size frames with decord and scales them here. The default was chosen by
measurement (`bench_filters`, docs/benchmarks.md, "Data curation at scale").

- motion: mean absolute luma change between frames `motion_gap_seconds` apart, 0..255, on
  frames scaled to `analysis_short_side` (a cheap stand-in for the optical-flow score Open-Sora
  filters on); too low is a static clip, too high a shaky or flashing one.
- sharpness: variance of the Laplacian of luma at `analysis_short_side` (Pech-Pacheco et al.,
  2000); low means blurred or out of focus.
All rows pass through: a rejected clip keeps its scores and gets a `reject_reason`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from liveditor.video import VideoError, read_video

from .manifest import read_rows
from .pair_video import decode_frames, read_frame_times
from .shots import _stage_schema as _shots_schema
from .stage import StageContext, reject, run_rowwise

SCHEMA = pa.schema(list(_shots_schema()) [:-2] + [
    pa.field("motion_score", pa.float64()), pa.field("sharpness", pa.float64()),
    pa.field("reject_reason", pa.string()), pa.field("reject_stage", pa.string()),
])


def luma_at(frames: np.ndarray, short_side: int) -> torch.Tensor:
    """`uint8` `[T, H, W, 3]` RGB to float luma `[T, 1, h, w]` (0..255) with the short side at `short_side`."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    y = (x @ torch.tensor([0.299, 0.587, 0.114])).unsqueeze(1)
    h, w = y.shape[-2:]
    scale = short_side / min(h, w)
    if scale < 1:
        y = F.interpolate(y, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    return y


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def sharpness(luma: torch.Tensor) -> float:
    """Mean over frames of the variance of the Laplacian of `[T, 1, h, w]` luma."""
    return float(F.conv2d(luma, _LAPLACIAN).flatten(1).var(dim=1).mean())


def clip_sample_indices(start: int, end: int, count: int, gap: int) -> tuple[list[int], list[int]]:
    """`count` evenly spaced frames of `[start, end)` and the frame `gap` after each (inside the clip)."""
    last = max(start, end - 1 - gap)
    first = np.linspace(start, last, num=max(1, count)).round().astype(int)
    first = np.unique(first)
    return first.tolist(), np.minimum(first + gap, end - 1).tolist()


def analysis_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """`(w, h)` with the short side at `short_side` (never up)."""
    scale = min(1.0, short_side / min(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def read_clip_frames(row: dict, indices: list[int], decoder: str, short_side: int) -> np.ndarray:
    """Frames `indices` of the clip row's video, `uint8` `[T, H, W, 3]`; with `pyav` already at `short_side`."""
    if decoder == "pyav":
        times = read_frame_times(row["path"])
        # Bilinear swscale: sharpness within about -10..+25% of the decord path's on the packaged clips
        # (swscale's AREA scored 40% higher), motion within 7%; far from the thresholds either way.
        return decode_frames(row["path"], times, indices, analysis_size(row["width"], row["height"], short_side))
    if decoder == "decord":
        return read_video(row["path"], indices=indices, decoder="decord").frames
    raise ValueError(f"filters.decoder={decoder!r}: choose pyav or decord")


def filter_clip(row: dict, fcfg) -> dict:
    """Scores and the first failed check of one clip row (`fcfg` is the `filters` config group)."""
    row = dict(row)
    if row.get("reject_reason"):
        return row
    if not fcfg.min_seconds <= row["duration_s"] <= fcfg.max_seconds:
        return reject(row, "filters", "duration_short" if row["duration_s"] < fcfg.min_seconds else "duration_long")
    if min(row["width"], row["height"]) < fcfg.min_short_side:
        return reject(row, "filters", "resolution_low")
    if not fcfg.min_fps <= row["fps"] <= fcfg.max_fps:
        return reject(row, "filters", "fps_out_of_range")
    gap = max(1, round(row["fps"] * fcfg.motion_gap_seconds))
    first, second = clip_sample_indices(row["start_frame"], row["end_frame"], fcfg.sample_frames, gap)
    try:
        frames = read_clip_frames(row, first + second, fcfg.decoder, fcfg.analysis_short_side)
    except VideoError as exc:
        row["error"] = str(exc)
        return reject(row, "filters", "decode_error")
    luma = luma_at(frames, fcfg.analysis_short_side)
    a, b = luma[: len(first)], luma[len(first) :]
    row["motion_score"] = float((a - b).abs().mean())
    row["sharpness"] = sharpness(a)
    if row["motion_score"] < fcfg.min_motion:
        return reject(row, "filters", "motion_static")
    if row["motion_score"] > fcfg.max_motion:
        return reject(row, "filters", "motion_too_fast")
    if row["sharpness"] < fcfg.min_sharpness:
        return reject(row, "filters", "blurry")
    return row


def run(ctx: StageContext) -> None:
    clips = read_rows(ctx.manifest("shots"))
    run_rowwise(ctx, "filters", clips, lambda r: [filter_clip(r, ctx.cfg.filters)], SCHEMA, ctx.cfg.filters.chunk_size,
                desc=f"filters {ctx.partition.name}")
