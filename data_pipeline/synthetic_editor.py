"""A built-in editor of verifiable global edits, so the pipeline makes pairs without external generators.

Every edit is a deterministic function of the source frames (and a seed): colour changes, style
filters, weather-like overlays, a mirror and the identity (`copy`, for copy tasks that test
in-context conditioning; made only when listed in `pairs.synthetic.edits`). Each carries
instruction templates (one is picked per pair by a stable hash), a target-caption phrase, and the
short source/target texts used by CLIP's directional similarity, cos(img_t - img_s, txt_t - txt_s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Edit:
    name: str
    category: str  # colour | style | weather | geometry | identity
    instructions: tuple[str, ...]
    target_phrase: str  # appended to the source caption: "<caption>, <target_phrase>" ("": the caption as it is)
    target_text: str  # CLIP text of the edited frames (source text: "a photo")
    apply: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    in_default_mix: bool = True  # False: made only when named in pairs.synthetic.edits (null = every edit with True)
    # Where the edit moves source pixels (mirror: a flip); the structure score compares the target with the
    # source moved so, since it measures kept layout. None: pixels stay where they are.
    layout: Optional[Callable[[np.ndarray], np.ndarray]] = None


def _f(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32)


def _u8(x: np.ndarray) -> np.ndarray:
    """Round float frames to `uint8`, clipping to 0..255, in place on `x` (always a temporary here):
    the same values as `np.clip(x + 0.5, 0, 255).astype(np.uint8)` at half the time and no extra copies."""
    x = np.asarray(x)
    if not x.flags.writeable:
        x = x.copy()
    np.add(x, 0.5, out=x)
    np.maximum(x, 0, out=x)
    np.minimum(x, 255, out=x)
    return x.astype(np.uint8)


def _luma(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.299, 0.587, 0.114], np.float32)


def sepia(frames, rng):
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
    return _u8(_f(frames) @ m.T)


def grayscale(frames, rng):
    return _u8(np.repeat(_luma(_f(frames))[..., None], 3, axis=-1))


def warm(frames, rng):
    return _u8(_f(frames) * np.array([1.15, 1.0, 0.8], np.float32) + np.array([12, 4, -8], np.float32))


def cool(frames, rng):
    return _u8(_f(frames) * np.array([0.8, 0.95, 1.18], np.float32) + np.array([-8, 0, 14], np.float32))


def vivid(frames, rng):
    x = _f(frames)
    y = _luma(x)[..., None]
    return _u8(y + 1.8 * (x - y))


def night(frames, rng):
    x = _f(frames) * 0.35
    return _u8(x * np.array([0.75, 0.85, 1.25], np.float32))


def invert(frames, rng):
    return 255 - frames


def posterize(frames, rng):
    levels = 4
    return _u8(np.floor(_f(frames) / 256.0 * levels) * (255.0 / (levels - 1)))


def pixelate(frames, rng):
    t, h, w, _ = frames.shape
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    block = max(4, min(h, w) // 24)
    small = F.interpolate(x, size=(max(1, h // block), max(1, w // block)), mode="area")
    return _u8(F.interpolate(small, size=(h, w), mode="nearest").permute(0, 2, 3, 1).numpy())


def sketch(frames, rng):
    y = torch.from_numpy(_luma(_f(frames))).unsqueeze(1)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx, gy = F.conv2d(y, kx, padding=1), F.conv2d(y, kx.transpose(2, 3), padding=1)
    edges = (gx**2 + gy**2).sqrt().squeeze(1).numpy()
    paper = 255.0 - np.clip(edges * 1.5, 0, 255)
    return _u8(np.repeat(paper[..., None], 3, axis=-1))


def _gaussian_blur(frames: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian blur (taps -radius..radius, replicate padding) of `[T, H, W, 3]`, float32 out."""
    x = torch.from_numpy(_f(frames)).permute(0, 3, 1, 2)
    k = 2 * radius + 1
    g = torch.exp(-((torch.arange(k) - radius) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), g.view(1, 1, 1, k).repeat(3, 1, 1, 1), groups=3)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), g.view(1, 1, k, 1).repeat(3, 1, 1, 1), groups=3)
    return x.permute(0, 2, 3, 1).numpy()


def soft_focus(frames, rng):
    return _u8(0.7 * _gaussian_blur(frames, 2.5, 4) + 0.3 * 255 * 0.9)


def blur(frames, rng):
    sigma = max(1.0, 0.015 * min(frames.shape[1:3]))  # 7.2 px at 480p
    return _u8(_gaussian_blur(frames, sigma, math.ceil(3 * sigma)))


def brighten(frames, rng):
    return _u8(_f(frames) * 1.35 + 25)


def _flip_left_right(frames: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frames[:, :, ::-1])


def mirror(frames, rng):
    return _flip_left_right(frames)


def copy(frames, rng):
    return frames.copy()


def vintage(frames, rng):
    t, h, w, _ = frames.shape
    x = sepia(frames, rng).astype(np.float32) * 0.9 + 20
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2)
    vignette = np.clip(1.15 - 0.45 * r**2, 0.3, 1.0)[None, :, :, None]
    grain = rng.normal(0, 8, size=(t, h, w, 1)).astype(np.float32)
    return _u8(x * vignette + grain)


def snow(frames, rng):
    t, h, w, _ = frames.shape
    x = _f(frames) * 0.85 + 25
    n = max(20, h * w // 400)
    ys, xs = rng.uniform(0, h, n), rng.uniform(0, w, n)
    speed, drift = rng.uniform(1.0, 3.0, n) * h / 144, rng.uniform(-0.5, 0.5, n)
    size = np.maximum(1, (rng.uniform(0.6, 1.6, n) * h / 144)).astype(int)
    for i in range(t):
        py = ((ys + speed * i) % h).astype(int)
        px = ((xs + drift * i) % w).astype(int)
        for s in np.unique(size):
            sel = size == s
            for dy in range(s):
                for dx in range(s):
                    x[i, np.minimum(py[sel] + dy, h - 1), np.minimum(px[sel] + dx, w - 1)] = 250.0
    return _u8(x)


def rain(frames, rng):
    t, h, w, _ = frames.shape
    x = _f(frames) * np.array([0.7, 0.75, 0.85], np.float32)
    n = max(20, h * w // 600)
    ys, xs = rng.uniform(0, h, n), rng.uniform(0, w, n)
    length = max(3, h // 20)
    for i in range(t):
        py = ((ys + 0.25 * h * i) % h).astype(int)
        px = ((xs + 0.03 * w * i) % w).astype(int)
        for k in range(length):
            yy = np.minimum(py + k, h - 1)
            x[i, yy, px] = 0.5 * x[i, yy, px] + 0.5 * 210.0
    return _u8(x)


def fog(frames, rng):
    t, h, w, _ = frames.shape
    x = _f(frames)
    yy = np.linspace(0.45, 0.75, h, dtype=np.float32)[None, :, None, None]  # denser towards the horizon line
    return _u8(x * (1 - yy) + 215.0 * yy)


EDITS: dict[str, Edit] = {e.name: e for e in [
    Edit("sepia", "colour", ("Make the video sepia-toned.", "Give the footage an old sepia look.", "Apply a sepia filter."),
         "in sepia tones", "a sepia-toned photo", sepia),
    Edit("grayscale", "colour", ("Turn the video black and white.", "Remove all colour from the video.", "Make it grayscale."),
         "in black and white", "a black and white photo", grayscale),
    Edit("warm", "colour", ("Give the video a warm, golden tint.", "Make the colours warmer.", "Add a warm orange grade."),
         "with a warm golden tint", "a warm orange-tinted photo", warm),
    Edit("cool", "colour", ("Give the video a cold blue tint.", "Make the colours cooler.", "Apply a blue colour grade."),
         "with a cold blue tint", "a cold blue-tinted photo", cool),
    Edit("vivid", "colour", ("Make the colours more vivid.", "Boost the saturation.", "Make the video more colourful."),
         "with vivid saturated colours", "a vividly saturated photo", vivid),
    Edit("night", "colour", ("Make it look like night.", "Turn the scene into a dark night shot.", "Darken the video as if at night."),
         "at night", "a dark photo at night", night),
    Edit("invert", "colour", ("Invert the colours.", "Make the video a colour negative.", "Turn the footage into a photo negative."),
         "as a colour negative", "an inverted colour negative", invert),
    Edit("posterize", "style", ("Make it look like a poster.", "Posterize the video.", "Reduce the video to flat poster colours."),
         "as a flat-colour poster", "a posterized pop-art poster", posterize),
    Edit("pixelate", "style", ("Turn the video into pixel art.", "Pixelate the footage.", "Make it look like an 8-bit game."),
         "as pixel art", "blocky pixel art", pixelate),
    Edit("sketch", "style", ("Turn the video into a pencil sketch.", "Make it look hand-drawn in pencil.", "Convert the footage to a line drawing."),
         "as a pencil sketch", "a black and white pencil sketch", sketch),
    Edit("soft_focus", "style", ("Give the video a dreamy soft focus.", "Make it look hazy and dreamlike.", "Add a soft glow."),
         "with a dreamy soft focus", "a dreamy soft-focus photo", soft_focus),
    Edit("vintage", "style", ("Make it look like old film footage.", "Give the video a vintage film look.", "Add film grain and a vignette."),
         "as grainy vintage film", "an old grainy vintage film still", vintage),
    Edit("snow", "weather", ("Make it snow.", "Add falling snow to the scene.", "Turn the scene snowy."),
         "in falling snow", "a photo with falling snow", snow),
    Edit("rain", "weather", ("Make it rain.", "Add heavy rain to the scene.", "Turn the weather rainy."),
         "in heavy rain", "a photo in heavy rain", rain),
    Edit("fog", "weather", ("Add thick fog.", "Make the scene foggy.", "Cover the scene in mist."),
         "in thick fog", "a photo in thick fog", fog),
    Edit("blur", "style", ("Blur the video.", "Make the footage blurry.", "Apply a strong blur to the video."),
         "blurred", "a blurry out-of-focus photo", blur),
    Edit("brighten", "colour", ("Make the video brighter.", "Brighten the footage.", "Increase the video's brightness."),
         "brightened", "a bright overexposed photo", brighten),
    Edit("mirror", "geometry", ("Mirror the video horizontally.", "Flip the video left to right.", "Show the scene mirrored left to right."),
         "mirrored left to right", "a horizontally mirrored photo", mirror, layout=_flip_left_right),
    Edit("copy", "identity", ("Keep the video unchanged.", "Return the video as it is.", "Do not change anything."),
         "", "a photo", copy, in_default_mix=False),
]}
SOURCE_TEXT = "a photo"
