"""Pair-stage decoding: a clip's frames at exactly `target_fps`, by timestamps, scaled in the decoder.

The editor (`liveditor.pipeline.preprocess.resample_indices`) samples a video at `target_fps` by
taking, for output frame `k`, the source frame shown at time `start + k / target_fps` (the last
frame whose presentation time is at or before it). Curation does the same, with the stream's real
presentation timestamps instead of `index / average_fps`, so variable-frame-rate sources come out
at the target rate too. For a constant-rate source both rules pick the same frames.

Frames are scaled by the decoder's scaler (swscale, during the YUV -> RGB conversion that happens
anyway) instead of decoding at full size and resizing in torch afterwards; a frame picked twice
(source slower than the target) is converted once.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from omegaconf import ListConfig

from liveditor.video import VideoError


@dataclass(frozen=True)
class FrameTimes:
    """Presentation timestamps of every frame of a video stream, in presentation order.

    `pts`: integer timestamps in units of `time_base` seconds; `seconds`: the same as float64 seconds;
    `end_s`: when the last frame stops showing (its timestamp plus the median frame interval).
    Frame `i` here is frame `i` of `read_video` and of the shot detector (decode order = presentation order).
    """

    pts: np.ndarray
    seconds: np.ndarray
    time_base: float
    end_s: float

    def __len__(self) -> int:
        return len(self.pts)


def read_frame_times(path: str) -> FrameTimes:
    """Timestamps of every frame of `path`'s first video stream, from the container (no decoding).

    Cached per process for the last few files (keyed by path, size and mtime): a long video cut into
    hundreds of clips is demuxed once, not once per clip.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise VideoError(f"video '{path}' could not be read: {exc}") from exc
    return _read_frame_times(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_frame_times(path: str, size: int, mtime_ns: int) -> FrameTimes:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"video '{path}' has no video stream")
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0 and not p.is_discard]
            time_base = float(stream.time_base)
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"video '{path}' could not be read: {exc}") from exc
    if not pts:
        raise VideoError(f"video '{path}' has 0 frames with timestamps")
    pts_arr = np.array(sorted(pts), dtype=np.int64)
    seconds = pts_arr * time_base
    step = float(np.median(np.diff(seconds))) if len(seconds) > 1 else 0.0
    return FrameTimes(pts_arr, seconds, time_base, float(seconds[-1] + step))


def resample_by_time(times: FrameTimes, start: int, end: int, target_fps: float, max_frames: int) -> list[int]:
    """Frame indices in `[start, end)` that show the clip at exactly `target_fps`.

    Output frame `k` is at time `t_k = t[start] + k / target_fps`; it is the last frame `i` with
    `t[i] <= t_k` (1 microsecond of slack for rounded timestamps). Frames are produced while `t_k` is
    before the clip's end (the timestamp of frame `end`, or the end of the stream), at most `max_frames`.
    """
    if target_fps <= 0:
        raise ValueError(f"pairs.target_fps must be positive, got {target_fps}")
    if not 0 <= start < end <= len(times):  # the container lists fewer frames than the decoder counted
        raise VideoError(f"clip frames [{start}, {end}) are not inside the {len(times)} frames the container lists")
    t = times.seconds
    t0 = t[start]
    t_end = t[end] if end < len(t) else times.end_s
    count = min(int(max_frames), max(1, math.floor((t_end - t0) * target_fps - 1e-6) + 1))
    wanted = t0 + np.arange(count) / target_fps
    idx = np.searchsorted(t[start:end], wanted + 1e-6, side="right") - 1 + start
    return np.clip(idx, start, end - 1).astype(int).tolist()


def output_size(width: int, height: int, short_side: Optional[int], multiple: int = 16) -> tuple[int, int]:
    """`(w, h)` for a `width` x `height` source scaled so the short side is about `short_side`, never up.

    Both sides are multiples of `multiple` (the editor's Wan VAE stride 8 x patch 2) and no larger
    than the source's: a source below `short_side` keeps its native size (rounded down to the multiple).
    """
    scale = min(1.0, short_side / min(width, height)) if short_side else 1.0

    def side(n: int) -> int:
        s = int(round(n * scale / multiple)) * multiple
        if s > n:
            s -= multiple
        return max(multiple, s)

    return side(width), side(height)


def decode_frames(path: str, times: FrameTimes, indices: Sequence[int], size: tuple[int, int], threads: int = 0,
                  interpolation: str = "BILINEAR") -> np.ndarray:
    """Frames `indices` of `path` (indices into `times`) as `uint8` `[len(indices), h, w, 3]` RGB at `size` `(w, h)`.

    Seeks to the keyframe before the first wanted frame, decodes up to the last one, and converts
    only the wanted frames, each once, scaled by swscale (`interpolation`: BILINEAR filters over the
    whole footprint when shrinking; AREA averages like torch's `mode="area"`). `threads`: decoder
    threads (0: FFmpeg's choice).
    """
    import av

    if not len(indices):
        raise ValueError(f"no frames requested from '{path}'")
    if min(indices) < 0 or max(indices) >= len(times):
        raise VideoError(f"video '{path}' lists {len(times)} frames; requested indices out of range: "
                         f"{[i for i in indices if not 0 <= i < len(times)][:5]}")
    wanted_pts = {int(times.pts[i]) for i in indices}
    first, last = int(times.pts[min(indices)]), int(times.pts[max(indices)])
    w, h = size
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = int(threads)
            container.seek(first, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                if frame.pts in wanted_pts and frame.pts not in got:
                    got[frame.pts] = frame.reformat(width=w, height=h, format="rgb24", interpolation=interpolation).to_ndarray()
                if frame.pts >= last:
                    break
    except Exception as exc:
        raise VideoError(f"video '{path}' could not be decoded: {exc}") from exc
    missing = sorted(wanted_pts - set(got))
    if missing:
        raise VideoError(f"video '{path}': frames at {[round(m * times.time_base, 3) for m in missing[:5]]} s did not decode")
    return np.stack([got[int(times.pts[i])] for i in indices])


def crop_size(pcfg) -> Optional[tuple[int, int]]:
    """`pairs.crop_size` as `(width, height)`, or None (size by `short_side`); a bad value is a ValueError."""
    size = pcfg.get("crop_size")
    if size is None:
        return None
    values = list(size) if isinstance(size, (list, tuple, ListConfig)) else None
    if values is None or len(values) != 2 or not all(type(v) is int and v > 0 and v % 16 == 0 for v in values):
        shown = list(values) if values is not None else size
        raise ValueError(f"pairs.crop_size={shown!r}: give [width, height], both positive multiples of 16 "
                         "(the editor's VAE stride x patch), e.g. [480, 272], or null to scale by pairs.short_side")
    return values[0], values[1]


def check_sampling(pcfg) -> Optional[tuple[int, int]]:
    """Named errors for the pairs stage's size options (`below_short_side`, `crop_size`); returns `crop_size(pcfg)`."""
    if pcfg.below_short_side not in ("keep_native", "reject"):
        raise ValueError(f"pairs.below_short_side={pcfg.below_short_side!r}: choose keep_native or reject")
    return crop_size(pcfg)


def sample_clip(path: str, start: int, end: int, width: int, height: int, pcfg) -> Optional[np.ndarray]:
    """Frames of `[start, end)` at exactly `pcfg.target_fps` (by timestamps), at most `pcfg.max_frames`,
    scaled in the decoder to a short side of about `pcfg.short_side` (sides multiples of 16, never up),
    or with `pcfg.crop_size` `[w, h]` to cover `w x h` (down or up) and centre-cropped to exactly it.

    A `width` x `height` source below `short_side` keeps its native size (with `crop_size`: one
    narrower or lower than the crop is upscaled), or gives None when `pcfg.below_short_side` is
    `reject`. Returns `uint8` `[T, H, W, 3]` or None.
    """
    crop = check_sampling(pcfg)
    too_small = (width < crop[0] or height < crop[1]) if crop else min(width, height) < pcfg.short_side
    if pcfg.below_short_side == "reject" and too_small:
        return None
    times = read_frame_times(path)
    idx = resample_by_time(times, start, min(end, len(times)), pcfg.target_fps, pcfg.max_frames)
    if crop is None:
        return decode_frames(path, times, idx, output_size(width, height, pcfg.short_side), pcfg.decode_threads)
    from liveditor.pipeline.preprocess import cover_crop  # the editor's bucket fit: cover, then centre crop

    cover, (left, top) = cover_crop(width, height, crop)
    frames = decode_frames(path, times, idx, cover, pcfg.decode_threads)
    return np.ascontiguousarray(frames[:, top : top + crop[1], left : left + crop[0]])
