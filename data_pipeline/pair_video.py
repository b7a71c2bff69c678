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
