"""The scoring models, loaded lazily from local paths in the `models` config group.

    models = EvalModels({"clip_l14": "/w/clip-vit-large-patch14", "dinov2": "/w/dinov2-base", ...}, device="cuda")
    feats = models.clip_image_features("clip_l14", pixels)          # [N, 768] projected
    pooled = models.clip_pooled("clip_l14", pixels)                 # [N, 1024] CLS after post-layernorm

Every model runs in float32. A key that is unset raises `NotComputed` naming the key and what it
must point at, so the metrics that need it are reported "not computed", never a number; a path that
is set but does not exist raises `FileNotFoundError` naming the key (a typo should stop the run).
Loading is strict: the folder's `config.json` must name the expected architecture and every weight
the model expects must be in the checkpoint with its shape, else `ModelLoadError` names the key and
the folder (a DINOv2 key pointed at a CLIP folder must not score from randomly initialised weights).
`check_paths` and `preload` run these checks before any scoring. Weights are never downloaded.
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


# The architecture (`config.json` "model_type") each transformers key must hold.
MODEL_TYPES = {"clip_l14": ("clip",), "pickscore": ("clip",), "clip_b32": ("clip",), "dinov2": ("dinov2",),
               "dino_vits16": ("vit",), "grounding_dino": ("grounding-dino",)}
# The model keys each metric loads (metrics not listed need none, or only the judge).
METRIC_MODELS = {
    "clip_temporal_consistency": ("clip_l14",), "frame_text_alignment": ("clip_l14",), "dino_temporal_consistency": ("dinov2",),
    "pick_score_video_quality": ("pickscore",), "video_text_alignment": ("viclip",), "subject_consistency_score": ("dino_vits16",),
    "background_consistency_score": ("clip_b32",), "quantity_accuracy_score": ("grounding_dino",),
}


class ModelLoadError(ValueError):
    """A configured model folder or file does not hold the model its key needs (wrong architecture,
    missing or mis-shaped weights, unreadable); the message names the key and the path."""


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


def pick_device(name: str = "auto", key: str = "metrics.device") -> torch.device:
    """`auto` (CUDA when visible, else CPU) or a torch device name; a CUDA device that this machine
    does not have raises ValueError naming `key`."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{key}={name!r} is not a device name: use auto, cpu, cuda or cuda:<index> ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key}={name} but no CUDA GPU is visible here (torch.cuda.is_available() is False): "
                             f"use {key}=cpu or {key}=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{key}={name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


class EvalModels:
    """Holds the configured paths; loads each model on first use and keeps it."""

    def __init__(self, paths: Optional[Mapping] = None, device: str = "auto", batch_frames: int = 16):
        self.paths = {k: (str(v) if v else None) for k, v in dict(paths or {}).items()}
        self.device = pick_device(device)
        self.batch_frames = max(1, int(batch_frames))
        self._loaded: dict = {}
        self._on_cpu: set = set()  # keys preloaded on the CPU, not yet moved to `device`
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
        if key in self._loaded and key in self._on_cpu:  # preloaded on the CPU: moved at first use
            obj = self._loaded[key]
            self._loaded[key] = (obj[0].to(self.device), *obj[1:]) if isinstance(obj, tuple) else obj.to(self.device)
            self._on_cpu.discard(key)
        if key not in self._loaded:
            path = self.path(key)
            try:
                self._loaded[key] = self._load(key, path, self.device)
            except (ModelLoadError, KeyError):
                raise
            except Exception as exc:  # transformers' and torch's own errors for a folder they cannot read
                what = MODEL_KEYS.get(key, "a local model path")
                raise ModelLoadError(f"models.{key}='{path}' could not be loaded ({type(exc).__name__}: "
                                     f"{' '.join(str(exc).split())[:300]}): point it at {what}") from exc
        return self._loaded[key]

    def check_paths(self) -> None:
        """Every path that is set exists (FileNotFoundError naming the key), whether or not a metric
        of this run uses it: a typo stops the run before any scoring."""
        for key, value in self.paths.items():
            if value:
                self.path(key)

    def preload(self, metric_names) -> list:
        """Load (strictly) every set model that `metric_names` use, before scoring, on the CPU (each
        moves to the device at its first use, so a `generate` that runs first has the GPU to itself);
        returns the keys loaded. Unset keys are left: their metrics are "not computed"."""
        keys = []
        for name in metric_names:
            for key in METRIC_MODELS.get(name, ()):
                if self.paths.get(key) and key not in keys:
                    if key not in self._loaded:
                        path = self.path(key)
                        try:
                            self._loaded[key] = self._load(key, path, torch.device("cpu"))
                        except (ModelLoadError, KeyError):
                            raise
                        except Exception as exc:
                            raise ModelLoadError(f"models.{key}='{path}' could not be loaded ({type(exc).__name__}: "
                                                 f"{' '.join(str(exc).split())[:300]}): point it at {MODEL_KEYS.get(key)}") from exc
                        self._on_cpu.add(key)
                    keys.append(key)
        return keys

    def _strict(self, key: str, path: Path, cls, **kwargs):
        """`cls.from_pretrained(path)` that refuses a folder of another architecture, or one missing a
        weight the model expects or holding one of another shape."""
        import json

        what = MODEL_KEYS.get(key, "a local model path")
        config = path / "config.json"
        if not config.is_file():
            raise ModelLoadError(f"models.{key}='{path}' has no config.json (not a transformers model folder): point it at {what}")
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (ValueError, AttributeError) as exc:
            raise ModelLoadError(f"models.{key}='{path}': config.json is not readable JSON ({exc}): point it at {what}") from None
        wanted = MODEL_TYPES[key]
        if model_type not in wanted:
            raise ModelLoadError(f"models.{key}='{path}' holds a {model_type!r} model, not {' or '.join(map(repr, wanted))}: "
                                 f"point it at {what}")
        model, info = cls.from_pretrained(str(path), dtype=torch.float32, local_files_only=True, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys") or [])
        mismatched = list(info.get("mismatched_keys") or [])
        if missing or mismatched:
            detail = []
            if missing:
                detail.append(f"{len(missing)} expected weights missing (e.g. {', '.join(missing[:3])})")
            if mismatched:
                detail.append(f"{len(mismatched)} weights of another shape (e.g. {mismatched[0]})")
            raise ModelLoadError(f"models.{key}='{path}': {'; '.join(detail)}; the model would score with random weights: "
                                 f"point it at {what}")
        return model

    def _load(self, key: str, path: Path, device: torch.device):
        import transformers as tf

        if key == "viclip":
            from .viclip import load_viclip

            return load_viclip(path, device)
        if key in ("clip_l14", "pickscore", "clip_b32"):
            model = self._strict(key, path, tf.CLIPModel)
            # PickScore_v1 ships no tokenizer: EditVerse takes the LAION ViT-H processor's.
            tok_path = self.path("pickscore_processor") if key == "pickscore" and self.paths.get("pickscore_processor") else path
            tokenizer = tf.AutoTokenizer.from_pretrained(str(tok_path), local_files_only=True)
            return model.to(device).eval(), tokenizer
        if key == "dinov2":
            return self._strict(key, path, tf.Dinov2Model).to(device).eval()
        if key == "dino_vits16":
            return self._strict(key, path, tf.ViTModel, add_pooling_layer=False).to(device).eval()
        if key == "grounding_dino":
            model = self._strict(key, path, tf.AutoModelForZeroShotObjectDetection)
            processor = tf.AutoProcessor.from_pretrained(str(path), local_files_only=True)
            return model.to(device).eval(), processor
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
        from .frames import map_frames

        pooled = self.clip_pooled(key, map_frames(preprocess, frames))
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
