"""Open-vocabulary detection of a text phrase in frames: the one detection path of eval and curation.

Grounding DINO (`GroundingDinoForObjectDetection`) and OWLv2 (`Owlv2ForObjectDetection`) through
transformers' zero-shot object detection (`AutoModelForZeroShotObjectDetection` + `AutoProcessor`).
IVE-Bench's quantity accuracy counts detections per frame (`metrics.grounding_dino_counter`); the
pairs stage's generate source measures in how many frames the edited object is present
(`data_pipeline.generate.detect`).

    model, processor = load_zero_shot_detector(path, "cuda")
    scores = phrase_scores(model, processor, frames, "a red car")   # per frame: one score per query
    count_above(scores[0], threshold=0.35)                          # detections in frame 0
"""

from __future__ import annotations

import numpy as np
import torch


def load_zero_shot_detector(path, device: str, dtype: torch.dtype = torch.float32):
    """(model, processor) from a local transformers folder of a zero-shot detector (Grounding DINO,
    OWLv2), offline, in eval mode on `device`."""
    import transformers as tf

    model = tf.AutoModelForZeroShotObjectDetection.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    processor = tf.AutoProcessor.from_pretrained(str(path), local_files_only=True)
    return model.to(device).eval(), processor


def is_grounding_dino(model) -> bool:
    return model.config.model_type == "grounding-dino"


@torch.no_grad()
def phrase_scores(model, processor, frames, phrase: str, batch_size: int = 8) -> list[np.ndarray]:
    """Per frame (uint8 `[H, W, 3]`), the confidence of every query box that it shows `phrase`
    (float `[num_queries]`, 0..1, transformers' post-processing with no threshold).

    Grounding DINO: the phrase is lower-cased and ends with "." (its demo's prompt format); a query's
    score is the highest sigmoid over the phrase's tokens. OWLv2: the phrase is the one text query; a
    query's score is its sigmoid logit for it. Frames go through the model `batch_size` at a time."""
    from PIL import Image

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gdino = is_grounding_dino(model)
    text = phrase.lower().strip().rstrip(".") + "." if gdino else phrase.strip()
    scores = []
    for start in range(0, len(frames), batch_size):
        batch = [Image.fromarray(np.ascontiguousarray(f, dtype=np.uint8)) for f in frames[start:start + batch_size]]
        if gdino:
            inputs = processor(images=batch, text=[text] * len(batch), return_tensors="pt").to(device)
        else:
            inputs = processor(images=batch, text=[[text]] * len(batch), return_tensors="pt").to(device)
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        outputs = model(**inputs)
        sizes = [img.size[::-1] for img in batch]
        if gdino:
            results = processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=sizes)
        else:
            results = processor.post_process_grounded_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        scores.extend(r["scores"].float().cpu().numpy() for r in results)
    return scores


def count_above(scores: np.ndarray, threshold: float) -> int:
    """Detections among one frame's query scores: those strictly above `threshold` (transformers'
    post-processing rule)."""
    return int(np.count_nonzero(np.asarray(scores) > threshold))


def detection_threshold(box_threshold: float, text_threshold: float) -> float:
    """Grounding DINO keeps a box above `box_threshold` and names it by the phrase tokens above
    `text_threshold`; a box's score is its best token's, so for one phrase a box is a named detection
    exactly when its score exceeds both."""
    return max(box_threshold, text_threshold)


def fraction_detected(frame_scores, threshold: float) -> float:
    """Fraction (0..1) of frames with at least one query score above `threshold`."""
    if len(frame_scores) == 0:
        raise ValueError("fraction_detected: no frames")
    return float(np.mean([count_above(s, threshold) > 0 for s in frame_scores]))

