"""Shot-boundary detection (hard cuts and fades) and splitting of shots into clips.

Our detector works on every frame at thumbnail size (`liveditor.video.read_video_thumbnails`, about
48 px wide) and is vectorised over the whole video in numpy:

- **cuts**: the per-frame content score of PySceneDetect's ContentDetector (mean absolute change of
  hue, saturation and value, OpenCV's 8-bit HSV scale), so one threshold means the same in both
  backends; a cut at frame `t` (first frame of the new shot) when `score[t] >= cut_threshold`,
  and, to reject camera flashes and fast pans, `score[t]` also stands out from its neighbours by
  `adaptive_ratio` (PySceneDetect's AdaptiveDetector idea). Cuts closer than `min_shot_frames`
  to the previous one are dropped (ContentDetector's `min_scene_len`).
- **fades**: runs of near-black frames (mean luma below `fade_black_level`, as PySceneDetect's
  ThresholdDetector) strictly inside the video; the boundary is the middle of the run and the
  transition (the dark run plus the brightness ramps either side) is excluded from clips.

`detect_shots_pyscenedetect` runs PySceneDetect's ContentDetector as the alternative backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class ShotDetectorConfig:
    """Thresholds of our detector (scores on OpenCV's 8-bit HSV scale; lengths in frames)."""

    thumbnail_width: int = 48  # 96 and 64 gave the same boundaries on the benchmark clips, slower
    cut_threshold: float = 27.0  # ContentDetector's default
    adaptive_ratio: float = 2.0  # score must be >= ratio x the mean score of the neighbour window
    adaptive_window: int = 2  # frames each side
    min_shot_frames: int = 15  # ContentDetector's default min_scene_len
    fade_black_level: float = 12.0  # mean luma 0..255; ThresholdDetector's default threshold
    max_fade_ramp_frames: int = 60  # how far a fade's brightness ramp is followed either side
    # Decoder threads per process; None: the CPUs this process may use (under SLURM the task's own).
    # Several partitions in parallel on one machine: set it to CPUs / processes.
    decode_threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.decode_threads is not None and (not isinstance(self.decode_threads, int) or self.decode_threads < 1):
            raise ValueError(f"shots.detector.decode_threads must be a positive integer or null (all usable CPUs), "
                             f"got {self.decode_threads!r}")


@dataclass
class Shots:
    """Shot boundaries of one video.

    Attributes:
        num_frames: frames in the video.
        fps: frames per second.
        cuts: first frame index of each new shot after a hard cut.
        fades: `(start, end)` frame ranges (end exclusive) of fade transitions, dark run plus ramps.
        shot_boundaries: sorted boundary frames of both kinds (for a fade, the middle of its dark run).
        ranges: `(start, end)` frame ranges (end exclusive) of shot content, fade frames excluded.
    """

    num_frames: int
    fps: float
    cuts: list[int] = field(default_factory=list)
    fades: list[tuple[int, int]] = field(default_factory=list)
    shot_boundaries: list[int] = field(default_factory=list)
    ranges: list[tuple[int, int]] = field(default_factory=list)


def rgb_to_hsv_u8(frames: np.ndarray) -> np.ndarray:
    """`uint8` `[..., H, W, 3]` RGB to `uint8` HSV on OpenCV's scale (H in [0, 180), S and V in [0, 255]).

    OpenCV's SIMD conversion over all frames in one call when cv2 imports (PySceneDetect brings
    it), else the same formula in numpy.
    """
    shape = frames.shape
    try:
        import cv2

        return cv2.cvtColor(np.ascontiguousarray(frames).reshape(-1, shape[-2], 3), cv2.COLOR_RGB2HSV).reshape(shape)
    except ImportError:
        pass
    x = frames.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    delta = v - x.min(axis=-1)
    s = np.where(v > 0, 255.0 * delta / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(delta, 1e-6)
    h = np.where(v == r, 60.0 * (g - b) / safe, np.where(v == g, 120.0 + 60.0 * (b - r) / safe, 240.0 + 60.0 * (r - g) / safe))
    h = np.where(delta > 0, np.mod(h, 360.0), 0.0) / 2.0
    return np.stack([np.round(h) % 180, np.round(s), v], axis=-1).astype(np.uint8)


def content_scores(frames: np.ndarray) -> np.ndarray:
    """ContentDetector's frame score for `uint8` `[T, H, W, 3]` RGB: `[T]`, `score[0] = 0`.

    score[t] = mean over H, S, V of the mean absolute change from frame t-1 to t.
    """
    hsv = rgb_to_hsv_u8(frames).astype(np.int16)
    scores = np.zeros(len(frames), dtype=np.float32)
    if len(frames) > 1:
        scores[1:] = np.abs(np.diff(hsv, axis=0)).reshape(len(frames) - 1, -1).mean(axis=1)
    return scores


def mean_luma(frames: np.ndarray) -> np.ndarray:
    """Mean BT.601 luma per frame of `uint8` `[T, H, W, 3]` RGB: `[T]`, 0..255.

    One matrix-vector product over the flattened frames (numpy's mean over axes (1, 2) of a
    `[T, H, W, 3]` array is ~15x slower).
    """
    flat = frames.reshape(len(frames), -1)
    pixels = max(1, flat.shape[1] // 3)
    weights = np.tile(np.array([0.299, 0.587, 0.114], dtype=np.float32) / np.float32(pixels), pixels)
    return flat.astype(np.float32) @ weights


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """`(start, end)` of the runs of True in a 1-D bool array (end exclusive)."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def detect_fades(luma: np.ndarray, cfg: ShotDetectorConfig) -> tuple[list[int], list[tuple[int, int]]]:
    """Fade boundaries and transition ranges from per-frame mean luma `[T]`.

    A fade is a run of frames darker than `fade_black_level` with brighter frames on both sides.
    Runs touching the first or last frame are fade-ins/outs of the video, not boundaries, but they
    are still returned as transitions so no clip contains them.
    """
    n = len(luma)
    boundaries, transitions = [], []
    for start, end in _runs(luma < cfg.fade_black_level):
        lo, hi = start, end
        # Follow the brightness ramp outwards while it keeps rising away from the dark run.
        while lo > 0 and start - lo < cfg.max_fade_ramp_frames and luma[lo - 1] > luma[lo] + 0.5:
            lo -= 1
        while hi < n and hi - end < cfg.max_fade_ramp_frames and luma[hi] > luma[hi - 1] + 0.5:
            hi += 1
        transitions.append((lo, hi))
        if start > 0 and end < n:
            boundaries.append((start + end) // 2)
    return boundaries, transitions


def detect_cuts(scores: np.ndarray, cfg: ShotDetectorConfig, exclude: Optional[list[tuple[int, int]]] = None) -> list[int]:
    """Hard cuts from content scores `[T]`: frames that cross the threshold and stand out locally."""
    n = len(scores)
    w = cfg.adaptive_window
    padded = np.pad(scores.astype(np.float64), w, mode="edge")
    window = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1)
    neighbours = (window.sum(axis=1) - scores) / (2 * w)
    candidates = np.flatnonzero((scores >= cfg.cut_threshold) & (scores >= cfg.adaptive_ratio * neighbours))
    blocked = np.zeros(n, dtype=bool)
    for lo, hi in exclude or ():
        blocked[lo : hi + 1] = True  # +1: the first frame after a fade differs from the dark frames
    cuts: list[int] = []
    for t in candidates.tolist():
        if t == 0 or blocked[t]:
            continue
        if cuts and t - cuts[-1] < cfg.min_shot_frames:
            if scores[t] > scores[cuts[-1]]:  # keep the stronger of two close cuts
                cuts[-1] = t
            continue
        cuts.append(t)
    return cuts


def shots_from_frames(frames: np.ndarray, fps: float, cfg: Optional[ShotDetectorConfig] = None) -> Shots:
    """Shots of `uint8` `[T, H, W, 3]` RGB frames (any size; thumbnails are enough)."""
    cfg = cfg or ShotDetectorConfig()
    luma = mean_luma(frames)
    fade_boundaries, transitions = detect_fades(luma, cfg)
    cuts = detect_cuts(content_scores(frames), cfg, exclude=transitions)
    return _assemble(len(frames), fps, cuts, fade_boundaries, transitions)


def _assemble(n: int, fps: float, cuts: list[int], fade_boundaries: list[int], transitions: list[tuple[int, int]]) -> Shots:
    boundaries = sorted(set(cuts) | set(fade_boundaries))
    excluded = np.zeros(n, dtype=bool)
    for lo, hi in transitions:
        excluded[lo:hi] = True
    ranges = []
    for start, end in zip([0] + boundaries, boundaries + [n]):
        keep = np.flatnonzero(~excluded[start:end])
        if len(keep):
            ranges.append((start + int(keep[0]), start + int(keep[-1]) + 1))
    return Shots(n, fps, cuts, transitions, boundaries, ranges)


def detect_shots(path: str, cfg: Optional[ShotDetectorConfig] = None) -> Shots:
    """Our detector on a video file: decode thumbnails of every frame, then `shots_from_frames`."""
    from liveditor.video import read_video_thumbnails

    cfg = cfg or ShotDetectorConfig()
    clip = read_video_thumbnails(path, max_width=cfg.thumbnail_width, threads=cfg.decode_threads)
    return shots_from_frames(clip.frames, clip.fps, cfg)


def detect_shots_pyscenedetect(path: str, threshold: float = 27.0, min_shot_frames: int = 15) -> Shots:
    """PySceneDetect's ContentDetector (its own OpenCV decoding) as the alternative backend.

    ContentDetector finds hard cuts only; fades come back as no boundary or as a cut.
    """
    try:
        from scenedetect import ContentDetector, SceneManager, open_video
    except ImportError as exc:
        raise ImportError("shots.backend=pyscenedetect needs PySceneDetect: pip install 'scenedetect>=0.6'") from exc
    video = open_video(path)
    manager = SceneManager()
    manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=min_shot_frames))
    manager.detect_scenes(video)
    n = int(video.frame_number)
    cuts = [int(start.frame_num) for start, _ in manager.get_scene_list()[1:]]
    return _assemble(n, float(video.frame_rate), cuts, [], [])


def split_into_clips(
    ranges: list[tuple[int, int]], fps: float, min_seconds: float, max_seconds: float,
    split_seconds: Optional[float] = None, trim_frames: int = 0,
) -> list[tuple[int, int, str]]:
    """Cut shot ranges into clips; returns `(start, end, reject_reason or '')`, end exclusive.

    Each shot loses `trim_frames` at both ends (frames next to a boundary are often blended). A
    shot longer than `max_seconds` is force-split into equal pieces of at most `split_seconds`
    (default `max_seconds`). Shots or pieces shorter than `min_seconds` come back with the reason
    `shot_too_short`, so nothing disappears from the manifest.
    """
    if fps <= 0:
        return []
    min_frames = max(1, int(np.ceil(min_seconds * fps)))
    max_frames = max(min_frames, int(np.floor(max_seconds * fps)))
    piece_frames = max(min_frames, int(np.floor((split_seconds or max_seconds) * fps)))
    clips = []
    for start, end in ranges:
        start, end = start + trim_frames, end - trim_frames
        length = end - start
        if length <= 0:
            continue
        if length < min_frames:
            clips.append((start, end, "shot_too_short"))
            continue
        parts = 1 if length <= max_frames else int(np.ceil(length / piece_frames))
        bounds = np.linspace(start, end, parts + 1).round().astype(int)
        for a, b in zip(bounds[:-1], bounds[1:]):
            clips.append((int(a), int(b), "" if b - a >= min_frames else "shot_too_short"))
    return clips


# ---- the curation stage ---------------------------------------------------------------------

def _stage_schema():
    import pyarrow as pa

    from .manifest import REJECT_FIELDS

    return pa.schema([
        pa.field("clip_id", pa.string()), pa.field("video_id", pa.string()), pa.field("path", pa.string()),
        pa.field("caption", pa.string()), pa.field("start_frame", pa.int64()), pa.field("end_frame", pa.int64()),
        pa.field("num_frames", pa.int64()), pa.field("fps", pa.float64()), pa.field("width", pa.int64()),
        pa.field("height", pa.int64()), pa.field("duration_s", pa.float64()), pa.field("shot_index", pa.int64()),
        pa.field("shots_in_video", pa.int64()), pa.field("cuts_in_video", pa.int64()), pa.field("fades_in_video", pa.int64()),
        pa.field("detector", pa.string()), pa.field("content_hash", pa.string()), pa.field("error", pa.string()), *REJECT_FIELDS,
    ])


def shots_of_video(video: dict, scfg) -> list[dict]:
    """Clip rows of one probed video (`scfg` is the `shots` config group)."""
    from liveditor.video import VideoError

    base = {k: video.get(k) for k in ("video_id", "path", "caption", "fps", "width", "height", "content_hash")}
    base["detector"] = scfg.backend
    try:
        if scfg.backend == "own":
            det = ShotDetectorConfig(**{k: scfg.detector[k] for k in scfg.detector})
            shots = detect_shots(video["path"], det)
        elif scfg.backend == "pyscenedetect":
            shots = detect_shots_pyscenedetect(video["path"], scfg.detector.cut_threshold, scfg.detector.min_shot_frames)
        else:
            raise ValueError(f"shots.backend must be 'own' or 'pyscenedetect', got {scfg.backend!r}")
    except VideoError as exc:
        return [dict(base, clip_id=f"{video['video_id']}-error", start_frame=0, end_frame=0, num_frames=0, duration_s=0.0,
                     error=str(exc), reject_reason="decode_error", reject_stage="shots")]
    fps = shots.fps or video["fps"]
    pieces = split_into_clips(shots.ranges, fps, scfg.min_seconds, scfg.max_seconds, scfg.split_seconds, scfg.trim_frames)
    rows = []
    for i, (start, end, reason) in enumerate(pieces):
        rows.append(dict(base, clip_id=f"{video['video_id']}-{start:06d}-{end:06d}", start_frame=start, end_frame=end,
                         num_frames=end - start, fps=fps, duration_s=(end - start) / fps, shot_index=i,
                         shots_in_video=len(shots.ranges), cuts_in_video=len(shots.cuts),
                         fades_in_video=len(shots.shot_boundaries) - len(shots.cuts),
                         reject_reason=reason or None, reject_stage="shots" if reason else None))
    if not rows:
        rows.append(dict(base, clip_id=f"{video['video_id']}-none", start_frame=0, end_frame=0, num_frames=0, duration_s=0.0,
                         reject_reason="no_shot_content", reject_stage="shots"))
    return rows


def run(ctx) -> None:
    from .manifest import accepted, read_rows
    from .stage import run_rowwise

    videos = accepted(read_rows(ctx.manifest("probe")))
    run_rowwise(ctx, "shots", videos, lambda v: shots_of_video(v, ctx.cfg.shots), _stage_schema(), ctx.cfg.shots.chunk_size,
                desc=f"shots {ctx.partition.name}")
