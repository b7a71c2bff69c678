"""The scoring models, loaded lazily from local paths in the `models` config group.

    models = EvalModels({"clip_l14": "/w/clip-vit-large-patch14", "dinov2": "/w/dinov2-base", ...}, device="cuda")
    feats = models.clip_image_features("clip_l14", pixels)          # [N, 768] projected
    pooled = models.clip_pooled("clip_l14", pixels)                 # [N, 1024] CLS after post-layernorm

Every model runs in float32. A key that is unset raises `NotComputed` naming the key and what it
must point at, so the metrics that need it are reported "not computed", never a number; a path that
is set but does not exist raises `FileNotFoundError` naming the key (a typo should stop the run).
Weights are never downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

# What each key must point at (error messages and docs).
MODEL_KEYS = {
    "clip_l14": "a transformers CLIP folder of openai/clip-vit-large-patch14 (frame-text, CLIP temporal consistency)",
    "dinov2": "a transformers DINOv2 folder of facebook/dinov2-base (DINO temporal consistency)",
    "pickscore": "a transformers CLIP folder of yuvalkirstain/PickScore_v1 (PickScore)",
    "pickscore_processor": "the folder of laion/CLIP-ViT-H-14-laion2B-s32B-b79K, whose tokenizer PickScore uses "
                           "(null: the tokenizer files in models.pickscore)",
    "viclip": "ViClip-InternVid-10M-FLT.pth (ViCLIP video-text)",
    "dino_vits16": "a transformers ViT folder of facebook/dino-vits16 (IVE-Bench subject consistency)",
    "clip_b32": "a transformers CLIP folder of openai/clip-vit-base-patch32 (IVE-Bench background consistency)",
    "grounding_dino": "a transformers Grounding DINO folder, e.g. IDEA-Research/grounding-dino-base (IVE-Bench quantity accuracy)",
}


class NotComputed(Exception):
    """A metric cannot be computed here; `reason` says what it needs ("needs models.viclip: ...")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NotApplicable(Exception):
    """A metric does not apply to this item (a one-frame video has no temporal score)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class EvalModels:
    """Holds the configured paths; loads each model on first use and keeps it."""

    def __init__(self, paths: Optional[Mapping] = None, device: str = "auto", batch_frames: int = 16):
        self.paths = {k: (str(v) if v else None) for k, v in dict(paths or {}).items()}
        self.device = pick_device(device)
        self.batch_frames = max(1, int(batch_frames))
        self._loaded: dict = {}
        self._pooled_memo: dict = {}  # key -> (frames array, pooled features): the last video's only

    def path(self, key: str) -> Path:
        value = self.paths.get(key)
        if not value:
            raise NotComputed(f"needs models.{key}: {MODEL_KEYS.get(key, 'a local model path')}")
        path = Path(value).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"models.{key}='{value}' does not exist: point it at {MODEL_KEYS.get(key, 'a local model path')}")
        return path

    def get(self, key: str):
        if key not in self._loaded:
            self._loaded[key] = self._load(key, self.path(key))
        return self._loaded[key]

    def _load(self, key: str, path: Path):
        import transformers as tf

        if key == "viclip":
            from .viclip import load_viclip

            return load_viclip(path, self.device)
        if key in ("clip_l14", "pickscore", "clip_b32"):
            model = tf.CLIPModel.from_pretrained(str(path), dtype=torch.float32)
            # PickScore_v1 ships no tokenizer: EditVerse takes the LAION ViT-H processor's.
            tok_path = self.path("pickscore_processor") if key == "pickscore" and self.paths.get("pickscore_processor") else path
            tokenizer = tf.AutoTokenizer.from_pretrained(str(tok_path))
            return model.to(self.device).eval(), tokenizer
        if key == "dinov2":
            return tf.Dinov2Model.from_pretrained(str(path), dtype=torch.float32).to(self.device).eval()
        if key == "dino_vits16":
            return tf.ViTModel.from_pretrained(str(path), add_pooling_layer=False, dtype=torch.float32).to(self.device).eval()
        if key == "grounding_dino":
            from .detection import load_zero_shot_detector

            return load_zero_shot_detector(path, self.device, torch.float32)
        raise KeyError(f"unknown model key {key!r}: choose from {sorted(MODEL_KEYS)}")

    def _batches(self, pixels: np.ndarray):
        for i in range(0, len(pixels), self.batch_frames):
            yield torch.from_numpy(np.ascontiguousarray(pixels[i:i + self.batch_frames])).to(self.device, torch.float32)

    @torch.no_grad()
    def clip_pooled(self, key: str, pixels: np.ndarray) -> torch.Tensor:
        """CLS feature after the vision tower's final layer norm (`pooler_output`, not projected): `[N, width]`."""
        model, _ = self.get(key)
        return torch.cat([model.vision_model(pixel_values=b).pooler_output.float() for b in self._batches(pixels)])

    @torch.no_grad()
    def clip_pooled_for_video(self, key: str, frames: np.ndarray, preprocess) -> torch.Tensor:
        """`clip_pooled` of `preprocess` applied to every frame, kept for the last `frames` array seen
        (CLIP temporal consistency and frame-text alignment share one pass of the vision tower).
        The memo holds the array itself, so a new video can never be mistaken for it."""
        memo = self._pooled_memo.get(key)
        if memo is not None and memo[0] is frames:
            return memo[1]
        from .metrics import _stack

        pooled = self.clip_pooled(key, _stack(preprocess, frames))
        self._pooled_memo[key] = (frames, pooled)
        return pooled

    @torch.no_grad()
    def clip_project(self, key: str, pooled: torch.Tensor) -> torch.Tensor:
        """The vision projection of pooled features: projected image embeddings `[N, embed_dim]`."""
        model, _ = self.get(key)
        return model.visual_projection(pooled).float()

    @torch.no_grad()
    def clip_image_features(self, key: str, pixels: np.ndarray) -> torch.Tensor:
        """Projected image embeddings `[N, embed_dim]` (not normalised)."""
        model, _ = self.get(key)
        return torch.cat([model.visual_projection(model.vision_model(pixel_values=b).pooler_output).float() for b in self._batches(pixels)])

    @torch.no_grad()
    def clip_text_features(self, key: str, text: str) -> torch.Tensor:
        """Projected text embedding `[1, embed_dim]`, the text truncated to 77 tokens."""
        model, tokenizer = self.get(key)
        enc = tokenizer([text], padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        pooled = model.text_model(input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask")).pooler_output
        return model.text_projection(pooled).float()

    @torch.no_grad()
    def clip_logit_scale(self, key: str) -> float:
        model, _ = self.get(key)
        return float(model.logit_scale.exp())

    @torch.no_grad()
    def dinov2_pooled(self, pixels: np.ndarray) -> torch.Tensor:
        """DINOv2 `pooler_output` (CLS after the final layer norm) `[N, 768]`."""
        model = self.get("dinov2")
        return torch.cat([model(pixel_values=b).pooler_output.float() for b in self._batches(pixels)])

    @torch.no_grad()
    def dino_cls(self, pixels: np.ndarray) -> torch.Tensor:
        """DINO (v1) ViT CLS token after the final norm, position embeddings interpolated to the frame's size."""
        model = self.get("dino_vits16")
        return torch.cat([model(pixel_values=b, interpolate_pos_encoding=True).last_hidden_state[:, 0].float() for b in self._batches(pixels)])
