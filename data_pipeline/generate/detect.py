"""QA: is the edited object there? Open-vocabulary detection of the instruction's object phrase.

    detector = ObjectDetector.from_config(cfg.pairs.generate.detect, device="cuda", dtype=torch.float32)
    detector.presence(target_frames, "a red umbrella")    # fraction of frames where it is detected, 0..1

An addition or swap should make the phrase present in the target, a removal absent. The detector is
Grounding DINO or OWLv2 from a local transformers folder, through the detection code eval's
quantity metric uses (`liveditor.eval.detection`); a frame counts when a box scores above both
thresholds (`detection_threshold`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from liveditor.dtypes import dtype_name
from liveditor.eval.detection import detection_threshold, fraction_detected, load_zero_shot_detector, phrase_scores

from .loading import ModelConfigError, check_model_dir, config_from, weights_fingerprint

KEY = "pairs.generate.detect"
# transformers model_type -> detector, the zero-shot detectors this check is written for
DETECTORS = {"grounding-dino": "Grounding DINO", "owlv2": "OWLv2"}


@dataclass
class DetectConfig:
    """Node `pairs.generate.detect`."""

    path: str = ""               # local transformers folder: Grounding DINO or OWLv2, with its processor files
    box_threshold: float = 0.35  # a box counts above this score (Grounding DINO's demo: 0.35)
    text_threshold: float = 0.25  # Grounding DINO: phrase tokens above this name the box (demo: 0.25); OWLv2 ignores it
    batch_size: int = 8          # frames per detector forward pass


class ObjectDetector:
    """A loaded zero-shot detector and its thresholds."""

    def __init__(self, model, processor, cfg: DetectConfig, model_type: str, dtype: torch.dtype):
        self.model, self.processor, self.cfg, self.model_type, self.dtype = model, processor, cfg, model_type, dtype
        self._fingerprint = None

    @classmethod
    def from_config(cls, cfg, device: str, dtype: torch.dtype) -> "ObjectDetector":
        cfg = config_from(DetectConfig, cfg, KEY)
        what = ("transformers zero-shot object detection folder (config.json, weights and processor files, e.g. "
                "IDEA-Research/grounding-dino-base or google/owlv2-base-patch16-ensemble)")
        folder = check_model_dir(cfg.path, f"{KEY}.path", what, marker="config.json")
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        if model_type not in DETECTORS:
            raise ModelConfigError(f"{KEY}.path={cfg.path!r} holds a {model_type!r} model, not a zero-shot detector this "
                                   f"check supports ({', '.join(DETECTORS.values())})")
        try:
            model, processor = load_zero_shot_detector(folder, device, dtype)
        except Exception as exc:  # transformers raises several types for missing or mismatched files
            raise ModelConfigError(f"{KEY}.path={cfg.path!r} did not load as a {DETECTORS[model_type]} {what}: {exc}") from exc
        return cls(model, processor, cfg, model_type, dtype)

    def presence(self, frames: list[np.ndarray], phrase: str) -> float:
        """Fraction (0..1) of `frames` (uint8 `[H, W, 3]`) in which `phrase` is detected."""
        if not phrase or not phrase.strip():
            raise ValueError("ObjectDetector.presence: empty object phrase")
        scores = phrase_scores(self.model, self.processor, list(frames), phrase, batch_size=self.cfg.batch_size)
        return fraction_detected(scores, detection_threshold(self.cfg.box_threshold, self.cfg.text_threshold)
                                 if self.model_type == "grounding-dino" else self.cfg.box_threshold)

    def provenance(self) -> dict:
        """What checked presence: detector, folder, weights fingerprint, thresholds, dtype."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.cfg.path)
        out = {"detector": DETECTORS[self.model_type], "path": str(self.cfg.path), "weights_sha256": self._fingerprint,
               "dtype": dtype_name(self.dtype), "box_threshold": self.cfg.box_threshold}
        if self.model_type == "grounding-dino":
            out["text_threshold"] = self.cfg.text_threshold
        return out
