"""The metrics: named functions of (edited frames, source frames, item) -> float.

Frames are `uint8` `[T, H, W, 3]` RGB, every frame of the video as decoded. Each function states its
model, frames and formula. A metric that cannot be computed raises `NotComputed` (its model path or
the judge endpoint is not configured, or it needs a model whose code is not packaged and no plug-in
is set); one that does not apply to the item raises `NotApplicable`. Neither is ever a number.

    metrics = build_metrics("editverse", EvalModels(paths), judge=JudgeClient(cfg))
    value = metrics["frame_text_alignment"](edited, source, item)

EditVerseBench metrics follow EditVerse's own scorer (`automatic_evaluation/` of its release),
IVE-Bench's quality metrics follow VBench's definitions (which IVE-Bench uses), and the judge
metrics go through `JudgeClient`.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from typing import Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .detection import count_above, detection_threshold, phrase_scores
from .frames import clip_pixels, dinov2_pixels, map_frames, pickscore_shrink, torchvision_clip_pixels, vbench_dino_pixels
from .judge import JudgeClient, JudgeError, judge_frame_indices
from .models import EvalModels, NotApplicable, NotComputed

log = logging.getLogger(__name__)

MetricFn = Callable[[np.ndarray, np.ndarray, object], float]


def _consecutive_max0_cos(features: torch.Tensor) -> float:
    """Mean over t >= 1 of `max(0, cos(f_t, f_{t-1}))`, features `[T, D]`."""
    if features.shape[0] < 2:
        raise NotApplicable("a one-frame video has no temporal score")
    f = F.normalize(features.double(), dim=-1)
    sims = (f[1:] * f[:-1]).sum(-1).clamp(min=0.0)
    return float(sims.mean())


# ---------------------------------------------------------------- EditVerseBench


def clip_temporal_consistency(edited, source, item, *, models: EvalModels) -> float:
    """CLIP temporal consistency (EditVerseBench "CLIP"), 0-100.

    Model: CLIP ViT-L/14 (`models.clip_l14`), vision tower only. Frames: every frame of the edited
    video, each preprocessed alone (transformers 4.x CLIP processor on PIL: bicubic short side 224,
    centre crop 224). Feature: `pooler_output` (CLS after the final layer norm, not projected).
    Formula: `100 * mean_{t=1..T-1} max(0, cos(f_t, f_{t-1}))`. One frame: not applicable.
    """
    if len(edited) < 2:
        raise NotApplicable("a one-frame video has no temporal score")
    return 100.0 * _consecutive_max0_cos(models.clip_pooled_for_video("clip_l14", edited, clip_pixels))


def dino_temporal_consistency(edited, source, item, *, models: EvalModels) -> float:
    """DINOv2 temporal consistency (EditVerseBench "DINO"), 0-100.

    Model: DINOv2-base (`models.dinov2`). Frames: every frame of the edited video (DINOv2's
    processor on PIL: bicubic short side 256, centre crop 224, ImageNet mean/std). Feature:
    `pooler_output` (CLS after the final layer norm). Formula: `100 * mean_t max(0, cos(f_t, f_{t-1}))`.
    """
    if len(edited) < 2:
        raise NotApplicable("a one-frame video has no temporal score")
    return 100.0 * _consecutive_max0_cos(models.dinov2_pooled(map_frames(dinov2_pixels, edited)))


def frame_text_alignment(edited, source, item, *, models: EvalModels) -> float:
    """CLIP frame-text alignment (EditVerseBench "Frame").

    Model: CLIP ViT-L/14 (`models.clip_l14`). Frames: every frame of the edited video (CLIP
    preprocessing as above). Text: the item's target prompt, truncated to 77 tokens. Formula:
    `mean_t exp(logit_scale) * cos(image_t, text)` of the projected embeddings (100 * cos for
    the released model; not clamped).
    """
    text = F.normalize(models.clip_text_features("clip_l14", item.target_prompt).double(), dim=-1)
    pooled = models.clip_pooled_for_video("clip_l14", edited, clip_pixels)  # shared with CLIP temporal consistency
    image = F.normalize(models.clip_project("clip_l14", pooled).double(), dim=-1)
    return float((models.clip_logit_scale("clip_l14") * (image @ text.T)).mean())


def pick_score_video_quality(edited, source, item, *, models: EvalModels) -> float:
    """PickScore (EditVerseBench "Pick").

    Model: PickScore_v1 (`models.pickscore`, a CLIP ViT-H/14) with the LAION ViT-H processor's
    settings (CLIP preprocessing, short side 224, crop 224, OpenAI mean/std; tokenizer truncating
    to 77). Frames: every frame of the edited video; a frame longer than 672 px is first shrunk to
    `(int(s W), int(s H))`, `s = 672 / max(H, W)`, PIL bicubic. Formula:
    `mean_t exp(logit_scale) * cos(image_t, target prompt)`, not clamped.
    """
    text = F.normalize(models.clip_text_features("pickscore", item.target_prompt).double(), dim=-1)
    pixels = map_frames(lambda f: clip_pixels(pickscore_shrink(f)), edited)
    image = F.normalize(models.clip_image_features("pickscore", pixels).double(), dim=-1)
    return float((models.clip_logit_scale("pickscore") * (image @ text.T)).mean())


def viclip_frame_indices(num_frames: int, count: int = 8) -> list[int]:
    """EditVerse's ViCLIP frames: `int(i * T / 8)` for i in 0..7 (repeats when T < 8)."""
    step = num_frames / count
    return [int(i * step) for i in range(count)]


def video_text_alignment(edited, source, item, *, models: EvalModels) -> float:
    """ViCLIP video-text alignment (EditVerseBench "Video").

    Model: ViCLIP ViT-L/14, InternVid-10M-FLT weights (`models.viclip`). Frames: 8 at indices
    `int(i * T / 8)`, each torchvision `Resize(224, bicubic)` + `CenterCrop(224)` on PIL, CLIP mean/std.
    Text: the target prompt, CLIP BPE, 32 tokens. Formula: `100 * cos(video, text)`.
    """
    model = models.get("viclip")
    idx = viclip_frame_indices(len(edited), model.cfg.num_frames)
    video = torch.from_numpy(np.stack([torchvision_clip_pixels(edited[i], model.cfg.image_size) for i in idx]))[None]
    return model.score(video, item.target_prompt)


EDITVERSE_JUDGE_PROMPT = (
    "You are a meticulous video editing quality evaluator. Your task is to provide a detailed assessment of a video edit "
    "by comparing the original image with the edited image based on a given text prompt.\n"
    "Editing Prompt:\n{instruction}\n"
    "Instructions:\n"
    "Analyze the provided image (the edited video frame) and evaluate how well the \"Editing Prompt\" has been executed. "
    "You will evaluate the edit across three distinct criteria. For each criterion, provide a score from 0 (worst) to 3 "
    "(best) and a brief justification. Finally, provide the total score.\n"
    "Your evaluation should focus on three key aspects:\n"
    "1. Prompt Following (Score: 0-3) \n"
    "Question: Does the edit accurately and completely fulfill the instructions in the \"Editing Prompt\"? \n"
    "Scoring Guide:\n"
    "- 3: The prompt is perfectly and completely followed.\n"
    "- 2: The prompt is mostly followed but with minor inaccuracies or omissions.\n"
    "- 1: The prompt is poorly followed or only partially executed.\n"
    "- 0: The prompt is completely ignored or the opposite was done. \n"
    "2. Edit Quality (Score: 0-3) \n"
    "Question: How is the visual quality of the edited area itself? Is it realistic, seamless, and free of artifacts "
    "(e.g., blurriness, distortion, unnatural textures)?\n"
    "Scoring Guide:\n"
    "- 3: The edit is of high visual quality, seamless, and artifact-free.\n"
    "- 2: The edit is good but has minor, noticeable artifacts.\n"
    "- 1: The edit is of low quality with significant, distracting artifacts.\n"
    "- 0: The edited area is extremely poor, garbled, or has completely failed.\n"
    "3. Background Consistency (Score: 0-3) \n"
    "Question: Have the areas that should not have been edited remained unchanged between the \"Before\" and \"After\" "
    "images? \n"
    "Scoring Guide:\n"
    "- 3: The areas that should not have been edited are perfectly preserved and stable. \n"
    "- 2: There are minor, subtle, but noticeable changes or flickers in the areas that should not have been edited.\n"
    "- 1: There are significant and distracting changes in the areas that should not have been edited. \n"
    "- 0: The areas that should not have been edited is completely or catastrophically altered. \n"
    "Please provide your evaluation in the following format: \n"
    "Prompt Following: [Your score, 0-3] - [Brief justification for the score.]\n"
    "Edit Quality: [Your score, 0-3] - [Brief justification for the score.]\n"
    "Background Consistency: [Your score, 0-3] - [Brief justification for the score.]\n"
    "Total Score: [Sum of the three scores]\n"
)
# EditVerse's second request: extract the number from the first answer.
EXTRACT_PROMPT = "Please output the overall score mentioned in this sentence. Only output the overall score number. Sentence: {answer}"


def parse_total_score(answer: str, lo: int, hi: int, label: str = "Total Score") -> Optional[int]:
    """The integer after `label:` in `answer` if within [lo, hi]; a bare integer answer counts too."""
    text = answer.strip()
    if re.fullmatch(r"\d+", text):
        value = int(text)
        return value if lo <= value <= hi else None
    m = re.search(re.escape(label) + r"\**\s*:\s*\**\s*\[?\s*(\d+)", text, flags=re.IGNORECASE)
    if m and lo <= int(m.group(1)) <= hi:
        return int(m.group(1))
    return None


def _ask_score(judge: Optional[JudgeClient], prompt: str, frames, lo: int, hi: int, label: str) -> int:
    """One judgement: ask; when the answer has no score, ask the endpoint to extract it (EditVerse's
    two-step protocol); a second miss is a malformed answer (an error, not a number). Only answers
    that lead to a score are cached, so a rerun asks the malformed ones again."""
    if judge is None or not judge.available:
        raise NotComputed("needs a judge endpoint (judge.base_url)")
    scores: list = []

    def keep_scored(answer: str) -> bool:  # the first answer is usable when it, or its extraction, holds a score
        score = parse_total_score(answer, lo, hi, label)
        if score is None:
            extracted = judge.ask(EXTRACT_PROMPT.format(answer=answer), keep=lambda a: parse_total_score(a, lo, hi, label) is not None)
            score = parse_total_score(extracted, lo, hi, label)
        scores.append(score)
        return score is not None

    answer = judge.ask(prompt, frames, keep=keep_scored)
    if not scores or scores[-1] is None:
        raise JudgeError(f"malformed judge answer (no {label} in {lo}..{hi}): {answer[:200]!r}")
    return scores[-1]


def _judge_pairs(edited, source):
    """(source frame, edited frame) pairs at EditVerse's indices `range(0, T, T // 3)`, T the shorter length."""
    T = min(len(edited), len(source))
    return [(source[i], edited[i]) for i in judge_frame_indices(T)]


def editing_vlm_evaluation(edited, source, item, *, judge: Optional[JudgeClient]) -> float:
    """VLM editing quality (EditVerseBench "EQ"), 0-9.

    Model: any VLM behind an OpenAI-compatible endpoint (`judge`; EditVerse used gpt-4o-2024-11-20),
    temperature 0. Frames: source and edited frame at each index of `range(0, T, T // 3)` (3 frames,
    or 4 when T is not divisible by 3), one request per index (`judge.parallel_requests` in flight) with EditVerse's prompt (prompt
    following + edit quality + background consistency, each 0-3) and the two frames. Formula: the
    mean over indices of the total score (0-9). No endpoint: not computed.
    """
    if judge is None or not judge.available:
        raise NotComputed("needs a judge endpoint (judge.base_url)")
    prompt = EDITVERSE_JUDGE_PROMPT.format(instruction=item.instruction)
    scores = judge.map(lambda pair: _ask_score(judge, prompt, list(pair), 0, 9, "Total Score"), _judge_pairs(edited, source))
    return float(sum(scores) / len(scores))


# ---------------------------------------------------------------- IVE-Bench (VBench definitions)


def _first_and_previous(features: torch.Tensor) -> float:
    """VBench's consistency: mean over t >= 1 of `(max(0, cos(f_t, f_{t-1})) + max(0, cos(f_t, f_0))) / 2`."""
    if features.shape[0] < 2:
        raise NotApplicable("a one-frame video has no temporal score")
    f = F.normalize(features.double(), dim=-1)
    prev = (f[1:] * f[:-1]).sum(-1).clamp(min=0)
    first = (f[1:] * f[:1]).sum(-1).clamp(min=0)
    return float(((prev + first) / 2).mean())


def subject_consistency_score(edited, source, item, *, models: EvalModels) -> float:
    """IVE-Bench subject consistency (SC), 0-1.

    Model: DINO ViT-S/16 (`models.dino_vits16`), CLS token. Frames: every frame of the edited video,
    VBench's `dino_transform_Image(224)` (short side 224, bilinear, no crop, ImageNet mean/std).
    Formula: `mean_{t>=1} (max(0, cos(f_t, f_{t-1})) + max(0, cos(f_t, f_0))) / 2`.
    """
    return _first_and_previous(models.dino_cls(map_frames(vbench_dino_pixels, edited)))


def background_consistency_score(edited, source, item, *, models: EvalModels) -> float:
    """IVE-Bench background consistency (BC), 0-1.

    Model: CLIP ViT-B/32 (`models.clip_b32`), projected image embedding. Frames: every frame of the
    edited video, OpenAI CLIP's preprocess (`Resize(224, bicubic)`, `CenterCrop(224)`). Formula:
    as subject consistency, `mean_{t>=1} (max(0, cos(f_t, f_{t-1})) + max(0, cos(f_t, f_0))) / 2`.
    """
    return _first_and_previous(models.clip_image_features("clip_b32", map_frames(torchvision_clip_pixels, edited)))


def temporal_flickering_score(edited, source, item) -> float:
    """IVE-Bench temporal flickering (TF), 0-1; no model.

    Frames: every frame of the edited video, uint8 RGB. Formula (VBench):
    `(255 - mean_{t>=1} mean|x_t - x_{t-1}|) / 255`, the inner mean over pixels and channels.
    Identical frames give 1; alternating black and white frames give 0.
    """
    if len(edited) < 2:
        raise NotApplicable("a one-frame video has no temporal score")
    x = edited.astype(np.float32)
    mae = [float(np.mean(np.abs(x[t] - x[t - 1]))) for t in range(1, len(x))]
    return (255.0 - float(np.mean(mae))) / 255.0


IVE_INSTRUCTION_PROMPT = (
    "You are an expert judge of instruction-guided video editing. You are shown frames of a source video and the "
    "corresponding frames of the edited video, in pairs (source first, then edited).\n"
    "Editing instruction:\n{instruction}\n"
    "Rate how well the edited video satisfies the instruction, on an integer scale from 1 (not at all) to 5 "
    "(completely, with nothing missing or wrong).\n"
    "Answer in the format:\nScore: [1-5] - [one sentence of justification]\n"
)
IVE_FIDELITY_PROMPT = (
    "You are an expert judge of instruction-guided video editing. You are shown frames of a source video and the "
    "corresponding frames of the edited video, in pairs (source first, then edited).\n"
    "Editing instruction:\n{instruction}\n"
    "Rate how faithfully the edited video preserves the content of the source that the instruction does not ask to "
    "change (identity, layout, background, objects), on an integer scale from 1 (lost) to 5 (perfectly preserved).\n"
    "Answer in the format:\nScore: [1-5] - [one sentence of justification]\n"
)


def _judge_all_pairs(judge, prompt, edited, source, lo, hi) -> float:
    frames = [f for pair in _judge_pairs(edited, source) for f in pair]
    return float(_ask_score(judge, prompt, frames, lo, hi, "Score"))


def instruction_satisfaction_score(edited, source, item, *, judge: Optional[JudgeClient]) -> float:
    """IVE-Bench instruction satisfaction (IS), 1-5.

    Model: the VLM behind the judge endpoint (IVE-Bench used Qwen2.5-VL-72B-Instruct), temperature 0.
    Frames: (source, edited) pairs at `range(0, T, T // 3)`, all in one request. Formula: the
    1-5 score the judge gives (rescaled to [0, 1] only when the dimension is combined).
    """
    return _judge_all_pairs(judge, IVE_INSTRUCTION_PROMPT.format(instruction=item.instruction), edited, source, 1, 5)


def content_fidelity_score(edited, source, item, *, judge: Optional[JudgeClient]) -> float:
    """IVE-Bench content fidelity (CF), 1-5: as instruction satisfaction, asking how well the content
    the instruction leaves alone is preserved."""
    return _judge_all_pairs(judge, IVE_FIDELITY_PROMPT.format(instruction=item.instruction), edited, source, 1, 5)


_NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())}


def expected_quantity(item, field: str = "target_quantity") -> tuple[str, int]:
    """(object phrase, expected count) of a quantity edit.

    From `item.fields[field]` when present (`{"phrase": "apple", "count": 3}` or `"3 apples"`), else
    from the item's `target_phrase` when its subcategory names a quantity ("3 apples", "three cats").
    Other items: not applicable.
    """
    raw = item.fields.get(field)
    if isinstance(raw, dict) and "count" in raw:
        return str(raw.get("phrase") or item.fields.get("target_phrase") or ""), int(raw["count"])
    text = raw if isinstance(raw, str) else None
    if text is None and re.search(r"quantit|count|number", f"{item.category} {item.subcategory}", re.IGNORECASE):
        text = item.fields.get("target_phrase") or item.fields.get("target phrase")
    if text:
        m = re.match(r"\s*(\d+|" + "|".join(_NUMBER_WORDS) + r")\b\s*(.*)", str(text), re.IGNORECASE)
        if m:
            n = m.group(1).lower()
            return m.group(2).strip() or str(text), int(n) if n.isdigit() else _NUMBER_WORDS[n]
    raise NotApplicable("not a quantity edit (no expected count)")


def grounding_dino_counter(models: EvalModels, box_threshold: float = 0.35, text_threshold: float = 0.25):
    """`count(frame, phrase) -> int`: Grounding DINO detections of `phrase` (transformers zero-shot
    detection through `detection.phrase_scores`; the box and text thresholds of Grounding DINO's demo)."""
    threshold = detection_threshold(box_threshold, text_threshold)

    def count(frame: np.ndarray, phrase: str) -> int:
        model, processor = models.get("grounding_dino")
        return count_above(phrase_scores(model, processor, [frame], phrase)[0], threshold)

    return count


def quantity_accuracy_score(edited, source, item, *, count_objects, quantity_field: str = "target_quantity", frames: int = 8) -> float:
    """IVE-Bench quantity accuracy (QA), 0-1.

    Model: Grounding DINO through transformers' zero-shot detection (`models.grounding_dino`; box
    threshold 0.35, text threshold 0.25). Frames: 8 at `int(i * T / 8)`. Formula: the fraction of
    those frames in which the number of detected boxes of the object phrase equals the expected
    count (`expected_quantity`). Items that are not quantity edits: not applicable.
    """
    phrase, count = expected_quantity(item, quantity_field)
    idx = sorted(set(viclip_frame_indices(len(edited), frames)))
    return float(np.mean([count_objects(edited[i], phrase) == count for i in idx]))


# ---------------------------------------------------------------- VIE-Bench

VIE_INSTRUCTION_PROMPT = (
    "You are an expert judge of instruction-based video editing. You are shown frames of a source video and the "
    "corresponding frames of the edited video, in pairs (source first, then edited).\n"
    "Editing instruction:\n{instruction}\n"
    "Rate how well the edit follows the instruction, on an integer scale from 0 (ignored) to 10 (followed exactly, "
    "with nothing else changed).\nAnswer in the format:\nScore: [0-10] - [one sentence of justification]\n"
)
VIE_QUALITY_PROMPT = (
    "You are an expert judge of video quality. You are shown frames of a source video and the corresponding frames of "
    "an edited video, in pairs (source first, then edited).\n"
    "Editing instruction:\n{instruction}\n"
    "Rate the visual quality of the edited video (realism, sharpness, absence of artifacts, consistency across frames), "
    "on an integer scale from 0 (unusable) to 10 (flawless).\nAnswer in the format:\nScore: [0-10] - [one sentence of justification]\n"
)


def vie_instruction_following(edited, source, item, *, judge: Optional[JudgeClient]) -> float:
    """VIE-Bench instruction following, 0-10: the judge (temperature 0) sees (source, edited) pairs at
    `range(0, T, T // 3)` in one request and gives an integer score."""
    return _judge_all_pairs(judge, VIE_INSTRUCTION_PROMPT.format(instruction=item.instruction), edited, source, 0, 10)


def vie_quality(edited, source, item, *, judge: Optional[JudgeClient]) -> float:
    """VIE-Bench quality, 0-10: as instruction following, asking for the edited video's visual quality."""
    return _judge_all_pairs(judge, VIE_QUALITY_PROMPT.format(instruction=item.instruction), edited, source, 0, 10)


# ---------------------------------------------------------------- plug-in points

# IVE-Bench metrics whose models need code no package ships: name -> what to plug in.
PLUGIN_METRICS = {
    "motion_smoothness_score": "AMT-G (frame interpolation; VBench motion smoothness)",
    "vtss_score": "the Koala-36M VTSS model (video training suitability score)",
    "overall_semantic_consistency_score": "VideoCLIP-XL-v2 (video-text similarity with the target prompt)",
    "phrase_semantic_consistency_score": "VideoCLIP-XL-v2 (video-text similarity with the target phrase)",
    "semantic_fidelity_score": "VideoCLIP-XL-v2 (source-edited video similarity)",
    "motion_fidelity_score": "CoTracker3 (point tracks of source and edited video)",
}


class PluginError(ValueError):
    """A plug-in metric that cannot be used: its spec is malformed, its module does not import, or it
    has no such function. Raised by `build_metrics`, before any scoring; names the config key."""


def load_plugin(spec: str, key: str = "metrics.plugins") -> MetricFn:
    """`"package.module:function"` -> the function, called as `function(edited, source, item) -> float`.
    Any failure to import the module (of any exception type) is a `PluginError` naming `key`."""
    module, _, name = str(spec).partition(":")
    if not module or not name:
        raise PluginError(f"{key}={spec!r} must be 'package.module:function'")
    try:
        mod = importlib.import_module(module)
    except BaseException as exc:  # a plug-in module may raise anything (SystemExit included) while importing
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise PluginError(f"{key}={spec!r}: module {module!r} does not import ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}): install it or fix the name") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise PluginError(f"{key}={spec!r}: module {module!r} has no function {name!r}")
    return fn


def _not_computed(edited, source, item, *, reason: str) -> float:
    raise NotComputed(reason)


# Metric names per benchmark, in leaderboard column order.
EDITVERSE_METRICS = ("editing_vlm_evaluation", "pick_score_video_quality", "frame_text_alignment",
                     "video_text_alignment", "clip_temporal_consistency", "dino_temporal_consistency")
IVEBENCH_METRICS = ("subject_consistency_score", "background_consistency_score", "temporal_flickering_score",
                    "motion_smoothness_score", "vtss_score", "overall_semantic_consistency_score",
                    "phrase_semantic_consistency_score", "instruction_satisfaction_score", "quantity_accuracy_score",
                    "semantic_fidelity_score", "motion_fidelity_score", "content_fidelity_score")
VIEBENCH_METRICS = ("vie_instruction_following", "vie_quality")


# Metrics that ask the judge endpoint.
JUDGE_METRICS = ("editing_vlm_evaluation", "instruction_satisfaction_score", "content_fidelity_score",
                 "vie_instruction_following", "vie_quality")


def metric_names(benchmark: str) -> tuple[str, ...]:
    if benchmark == "editverse":
        return EDITVERSE_METRICS
    if benchmark.startswith("ivebench"):
        return IVEBENCH_METRICS
    if benchmark == "viebench":
        return VIEBENCH_METRICS
    raise ValueError(f"unknown benchmark {benchmark!r}")


def build_metrics(benchmark: str, models: EvalModels, judge: Optional[JudgeClient] = None,
                  plugins: Optional[Mapping[str, str]] = None, select=None, count_objects=None,
                  quantity_field: str = "target_quantity", box_threshold: float = 0.35,
                  text_threshold: float = 0.25) -> dict[str, MetricFn]:
    """name -> `fn(edited, source, item) -> float` for `benchmark`'s metrics (all, or those in `select`).

    `plugins` maps a plug-in metric's name to `"module:function"`; `count_objects(frame, phrase)`
    replaces Grounding DINO in quantity accuracy (tests); `box_threshold` and `text_threshold` are
    Grounding DINO's.
    """
    p = functools.partial
    plugins = dict(plugins or {})
    table: dict[str, MetricFn] = {
        "clip_temporal_consistency": p(clip_temporal_consistency, models=models),
        "dino_temporal_consistency": p(dino_temporal_consistency, models=models),
        "frame_text_alignment": p(frame_text_alignment, models=models),
        "pick_score_video_quality": p(pick_score_video_quality, models=models),
        "video_text_alignment": p(video_text_alignment, models=models),
        "editing_vlm_evaluation": p(editing_vlm_evaluation, judge=judge),
        "subject_consistency_score": p(subject_consistency_score, models=models),
        "background_consistency_score": p(background_consistency_score, models=models),
        "temporal_flickering_score": temporal_flickering_score,
        "instruction_satisfaction_score": p(instruction_satisfaction_score, judge=judge),
        "content_fidelity_score": p(content_fidelity_score, judge=judge),
        "quantity_accuracy_score": p(quantity_accuracy_score, count_objects=count_objects or grounding_dino_counter(models, box_threshold, text_threshold),
                                     quantity_field=quantity_field),
        "vie_instruction_following": p(vie_instruction_following, judge=judge),
        "vie_quality": p(vie_quality, judge=judge),
    }
    unknown = sorted(k for k, v in plugins.items() if v and k not in PLUGIN_METRICS)
    if unknown:
        raise PluginError(f"metrics.plugins.{unknown[0]} is not a plug-in metric: plug-in points are {', '.join(PLUGIN_METRICS)}")
    for name, needs in PLUGIN_METRICS.items():
        spec = plugins.get(name)
        table[name] = load_plugin(spec, f"metrics.plugins.{name}") if spec else p(
            _not_computed, reason=f"needs {needs}: plug it in with metrics.plugins.{name}=package.module:function")
    # Applicability that the item alone decides: checked before the metric runs, so a metric found
    # not computable on one item is still "not applicable" on the items it does not apply to.
    table["quantity_accuracy_score"].applies = p(expected_quantity, field=quantity_field)
    names = metric_names(benchmark)
    if select:
        unknown = [s for s in select if s not in names]
        if unknown:
            raise ValueError(f"metrics {unknown} are not {benchmark} metrics: choose from {list(names)}")
        names = tuple(n for n in names if n in select)
    return {n: table[n] for n in names}
