"""The `generate` source of the pairs stage: new (source, instruction, edited video) pairs from models.

    liveditor-curate ... pairs=generate pairs.generate.vlm.base_url=http://127.0.0.1:8000/v1 \
        pairs.generate.anchor.path=/models/FLUX.1-Kontext-dev pairs.generate.video.path=/models/Wan2.2-TI2V-5B-Diffusers \
        pairs.generate.detect.path=/models/grounding-dino-base

Candidates: per kept clip, `instructions.categories_per_clip` categories drawn from the configured
mix (`instructions.sample_categories`); one row per (clip, category), pair key
`<clip_id>-gen<category>`. Per chunk of the pairs stage (`pairs.chunk_size`, in
`configs/curate/pairs/generate.yaml` equal to `generate.batch_size`):

1. the clip is decoded at `pairs.target_fps` (16) by `pairs.sample_clip`, cut to 4k+1 frames
   (`frame_count_4k1`) and fitted to the nearest of `generate.buckets` (the editor's own rule,
   `liveditor.pipeline.preprocess.choose_bucket` + `resize_and_crop`; null keeps the pairs stage's
   size rule: short side about `pairs.short_side`, sides multiples of 16);
2. the VLM writes the instruction (`instructions.InstructionWriter`; failures are reject rows);
3. the image editor edits the first frame (`anchor.AnchorEditor`), batched by frame size;
4. the video model animates it into the synthetic video (`synth.TargetSynthesizer`), batched by size
   and frame count, with the source clip for structure conditioning where the pipeline supports it;
5. the real clip and the synthetic video are written to `media/` (x264, `pairs.crf`,
   `pairs.x264_preset`), and the row goes through the pairs stage's CLIP, temporal and structure
   scores and floors (`pairs.score_made_pairs`), then `check_pairs`: the detector's presence of the
   edited object (`object_presence`, reason `object_presence_wrong`) and the VLM's
   instruction-following score (`vlm_instruction_following`, reasons `vlm_instruction_following_low`,
   `vlm_check_malformed`, `vlm_check_endpoint_error`; `..._endpoint_unavailable` rows are not finished:
   `pairs.RETRY_REASONS`). Rows already rejected are not sent to the VLM.

Direction: `real_to_synthetic` ships (real clip -> synthetic video, the instruction);
`synthetic_to_real` ships (synthetic video -> real clip, the VLM's `reverse_instruction`, captions
swapped), the paper's placing of synthetic videos as context and real videos as the generated side.
Both come from one VLM answer, and the quality checks always judge the forward generation.

Determinism: seeds are `stable_hash(pair key / generate.seed / purpose)`, VLM answers are cached on
disk, a chunk is always the same candidates in the same batches; so a chunk recomputed after
`kill -9` gives the same bytes. Models load once per process, on first need, on `generate.device`.
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import torch

from liveditor.dtypes import DTYPES
from liveditor.video import VideoError, write_video

from ..manifest import CLIP_STAGE_COLUMNS
from ..pair_video import sample_clip
from ..stage import reject, stable_hash
from .instructions import (Instruction, InstructionFailure, InstructionWriter, category_weights, check_vlm_config, make_backend,
                           sample_categories)
from .loading import ModelConfigError, check_model_dir

log = logging.getLogger("liveditor.curate")

DIRECTIONS = ("real_to_synthetic", "synthetic_to_real")


# ---- config ---------------------------------------------------------------------------------

def resolve_device(name: str) -> str:
    """`auto`: `cuda:<LOCAL_RANK or 0>` when CUDA is available (one GPU per array task: SLURM sets
    CUDA_VISIBLE_DEVICES, so that is the task's GPU), else `cpu`; anything else as given."""
    if str(name) != "auto":
        return str(name)
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`auto`: bfloat16 on CUDA, float32 on CPU; or float32 | bfloat16 | float16."""
    if str(name) == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if str(name) not in DTYPES:
        raise ModelConfigError(f"pairs.generate.dtype={name!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[str(name)]


def check_generate_config(pcfg) -> None:
    """Everything about `pairs.generate` that can be checked without loading a model, raised as
    `ModelConfigError` naming the key: run before any stage's work (`cli.run_curation`)."""
    g = pcfg.generate
    if g.direction not in DIRECTIONS:
        raise ModelConfigError(f"pairs.generate.direction={g.direction!r}: choose {' or '.join(DIRECTIONS)}")
    if int(g.batch_size) < 1:
        raise ModelConfigError(f"pairs.generate.batch_size={g.batch_size}: must be at least 1")
    weights = category_weights(g.instructions)
    per_clip = int(g.instructions.categories_per_clip)
    if not 1 <= per_clip <= len(weights):
        raise ModelConfigError(f"pairs.generate.instructions.categories_per_clip={per_clip}: must be between 1 and the "
                               f"{len(weights)} categories with a positive weight")
    buckets = g.get("buckets")
    if buckets is not None and not all(len(b) == 2 and int(b[0]) > 0 and int(b[1]) > 0 and int(b[0]) % 16 == int(b[1]) % 16 == 0
                                       for b in buckets):
        raise ModelConfigError(f"pairs.generate.buckets={list(buckets)}: give [[width, height], ...] with sides positive "
                               "multiples of 16, or null for the pairs stage's size rule")
    resolve_dtype(g.dtype, "cpu")
    check_vlm_config(g.vlm)
    from .anchor import ANCHOR_PIPELINES
    from .detect import DETECTORS
    from .synth import VIDEO_PIPELINES

    roles = {"pairs.generate.anchor": (ANCHOR_PIPELINES, "diffusers image-editing pipeline folder (FLUX.1 Kontext, "
                                       "Qwen-Image-Edit, InstructPix2Pix)"),
             "pairs.generate.video": (VIDEO_PIPELINES, "diffusers video pipeline folder (Wan2.2 TI2V-5B, Wan VACE)")}
    for key, (supported, what) in roles.items():
        check_pipeline_kind(g.anchor if key.endswith("anchor") else g.video, key, supported, what)
    if g.detect.enabled:
        folder = check_model_dir(g.detect.path, "pairs.generate.detect.path", "transformers zero-shot object detection "
                                 "model folder (Grounding DINO or OWLv2)", marker="config.json")
        model_type = _read_json(folder / "config.json", "pairs.generate.detect.path").get("model_type")
        if model_type not in DETECTORS:
            raise ModelConfigError(f"pairs.generate.detect.path={str(g.detect.path)!r} holds a {model_type!r} model (its "
                                   f"config.json), not a zero-shot detector: point it at a {' or '.join(DETECTORS.values())} "
                                   "folder, or set pairs.generate.detect.enabled=false")
    if g.vlm.backend == "transformers":
        check_model_dir(g.vlm.path, "pairs.generate.vlm.path", "transformers image-text-to-text model folder "
                        "(e.g. Qwen2.5-VL-7B-Instruct)", marker="config.json")


def _read_json(path, key: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelConfigError(f"{key}: could not read {path} ({exc})") from None
    return value if isinstance(value, dict) else {}


def check_pipeline_kind(node, key: str, supported, what: str) -> None:
    """`<key>.path` is a diffusers folder whose pipeline (`model_index.json`'s `_class_name`, or
    `<key>.pipeline_class` when named) is one this role calls: a video pipeline given as the image
    editor, or the other way round, is an error naming the key and the folder, before any work."""
    from .anchor import ANCHOR_PIPELINES
    from .synth import VIDEO_PIPELINES

    folder = check_model_dir(node.path, f"{key}.path", what)
    found = _read_json(folder / "model_index.json", f"{key}.path").get("_class_name")
    requested = str(node.get("pipeline_class") or "auto")
    names = ", ".join(sorted(supported))
    if requested != "auto" and requested not in supported:
        raise ModelConfigError(f"{key}.pipeline_class={requested!r} is not a supported pipeline class: choose auto or one of {names}")
    known_elsewhere = (set(ANCHOR_PIPELINES) | set(VIDEO_PIPELINES)) - set(supported)
    if (requested == "auto" and found not in supported) or found in known_elsewhere:
        raise ModelConfigError(f"{key}.path={str(node.path)!r} holds a {found or 'pipeline without a _class_name'} (its "
                               f"model_index.json), not a {what}: point {key}.path at a folder of one of {names}")


def _model_node(node):
    """A wrapper's config node without the keys this module reads (`enabled`, thresholds, frames)."""
    from omegaconf import OmegaConf

    own = {"enabled", "frames", "min_presence", "max_presence_absent"}
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in own}


# One loaded model per (kind, settings, device, dtype) per process: every partition and chunk run
# by this process reuses it.
_LOADED: dict = {}


def _loaded(kind: str, settings: dict, device: str, dtype: torch.dtype, build):
    key = (kind, json.dumps(settings, sort_keys=True, default=str), device, str(dtype))
    if key not in _LOADED:
        log.info("pairs.generate: loading the %s model from %s on %s", kind, settings.get("path"), device)
        _LOADED[key] = build()
    return _LOADED[key]


# ---- candidates -----------------------------------------------------------------------------

def pair_key(clip_id: str, category: str) -> str:
    return f"{clip_id}-gen{re.sub(r'[^A-Za-z0-9]', '', category)}"


def generated_candidates(clips: list[dict], gcfg) -> list[dict]:
    """One candidate per (kept clip, sampled category), clips in manifest order."""
    weights = category_weights(gcfg.instructions)
    count = int(gcfg.instructions.categories_per_clip)
    return [{"kind": "generated", "clip": clip, "category": cat, "pair_key": pair_key(clip["clip_id"], cat)}
            for clip in clips for cat in sample_categories(clip["clip_id"], weights, count)]


def seed_for(key: str, stage_seed: int, purpose: str) -> int:
    """The seed of one model call for one pair: a pure function of (pair key, stage seed, purpose)."""
    return stable_hash(f"{key}/{int(stage_seed)}/{purpose}") % (1 << 31)


def _batches(indices: list[int], key, size: int) -> list[list[int]]:
    """`indices` grouped by `key(i)` (groups in first-seen order), each group cut into batches of `size`."""
    groups: dict = {}
    for i in indices:
        groups.setdefault(key(i), []).append(i)
    return [g[j : j + size] for g in groups.values() for j in range(0, len(g), size)]


def _even(frames: np.ndarray, count: int) -> list[np.ndarray]:
    idx = np.linspace(0, len(frames) - 1, num=max(1, min(int(count), len(frames)))).round().astype(int)
    return [frames[i] for i in idx]


# ---- the generator --------------------------------------------------------------------------

class PairGenerator:
    """Makes and checks the generated pairs of a chunk (`pairs.score_pairs` calls it)."""

    def __init__(self, pcfg):
        check_generate_config(pcfg)
        self.pcfg, self.g = pcfg, pcfg.generate
        self.device = resolve_device(self.g.device)
        self.dtype = resolve_dtype(self.g.dtype, self.device)
        self.batch_size = int(self.g.batch_size)
        self.buckets = [(int(w), int(h)) for w, h in self.g.buckets] if self.g.get("buckets") else None

    # Models, each loaded on first use.
    @property
    def vlm(self):
        vcfg = self.g.vlm
        from omegaconf import OmegaConf

        return _loaded("vlm", OmegaConf.to_container(vcfg, resolve=True), self.device, self.dtype,
                       lambda: make_backend(vcfg, self.device, self.dtype))

    @property
    def writer(self) -> InstructionWriter:
        return InstructionWriter(self.vlm, self.g.instructions)

    @property
    def anchor(self):
        from .anchor import AnchorEditor

        node = _model_node(self.g.anchor)
        return _loaded("anchor", node, self.device, self.dtype, lambda: AnchorEditor.from_config(node, self.device, self.dtype))

    @property
    def video(self):
        from .synth import TargetSynthesizer

        node = _model_node(self.g.video)
        return _loaded("video", node, self.device, self.dtype, lambda: TargetSynthesizer.from_config(node, self.device, self.dtype))

    @property
    def detector(self):
        from .detect import ObjectDetector

        node = _model_node(self.g.detect)
        return _loaded("detect", node, self.device, self.dtype, lambda: ObjectDetector.from_config(node, self.device, self.dtype))

    # Source frames.
    def source_frames(self, clip: dict) -> np.ndarray:
        """The clip at `target_fps`, 4k+1 frames, fitted to its bucket: uint8 `[T, H, W, 3]`.
        Raises VideoError; returns None when `below_short_side: reject` rejects it."""
        from liveditor.pipeline.preprocess import choose_bucket, frame_count_4k1, resize_and_crop, to_uint8_frames

        frames = sample_clip(clip["path"], clip["start_frame"], clip["end_frame"], clip["width"], clip["height"], self.pcfg)
        if frames is None:
            return None
        frames = frames[: frame_count_4k1(len(frames))]
        if self.buckets:
            size = choose_bucket(frames.shape[2], frames.shape[1], self.buckets)
            if (frames.shape[2], frames.shape[1]) != size:
                frames = to_uint8_frames(resize_and_crop(frames, size))
        return frames

    def make_pairs(self, cands: list[dict], media_dir: str) -> list[tuple]:
        """`(row, source frames, target frames)` per candidate, in order; a rejected row has no frames.

        Rows carry private keys (`_real`, `_synthetic`, `_instruction`, `_provenance`) for
        `check_pairs`; the manifest keeps only the schema's columns.
        """
        g, pcfg = self.g, self.pcfg
        rows, real = [], []
        decoded: dict = {}
        for cand in cands:
            clip = cand["clip"]
            rows.append({"pair_key": cand["pair_key"], "origin": "generated", "clip_id": clip["clip_id"], "category": cand["category"],
                         "edit": None, **{c: clip.get(c) for c in CLIP_STAGE_COLUMNS}, "src_content_hash": clip.get("content_hash"),
                         "_provenance": {"generator": "liveditor.data_pipeline.generate", "direction": str(g.direction),
                                         "category": cand["category"], "source_video": clip["path"], "start_frame": clip["start_frame"],
                                         "end_frame": clip["end_frame"], "source_fps": clip["fps"], "models": {}, "seeds": {},
                                         "vlm_requests": {}}})
            if clip["clip_id"] not in decoded:
                try:
                    decoded[clip["clip_id"]] = self.source_frames(clip)
                except VideoError as exc:
                    decoded[clip["clip_id"]] = exc
            src = decoded[clip["clip_id"]]
            if isinstance(src, VideoError):
                rows[-1]["error"] = str(src)
                reject(rows[-1], "pairs", "decode_error")
                src = None
            elif src is None:
                rows[-1].update(width=clip["width"], height=clip["height"])
                reject(rows[-1], "pairs", "resolution_below_target")
            real.append(src)

        # 2. instructions (requests in flight in parallel on an endpoint)
        todo = [i for i, f in enumerate(real) if f is not None]
        if todo:
            writer = self.writer
            results = writer.write_many([(real[i], cands[i]["category"]) for i in todo])
            vlm_prov = self.vlm.provenance()
            for i, res in zip(todo, results):
                prov = rows[i]["_provenance"]
                prov["models"]["vlm"] = vlm_prov
                prov["vlm_requests"]["instruction"] = res.attempts
                if isinstance(res, InstructionFailure):
                    reject(rows[i], "pairs", res.reason)
                    rows[i]["error"] = str(res)
                    real[i] = None
                else:
                    rows[i]["_instruction"] = res
        todo = [i for i, f in enumerate(real) if f is not None]

        # 3. anchor frames, batched by frame size
        anchors: dict[int, np.ndarray] = {}
        if todo:
            editor = self.anchor
            prov = editor.provenance()
            for batch in _batches(todo, lambda i: real[i].shape[1:3], self.batch_size):
                seeds = [seed_for(rows[i]["pair_key"], g.seed, "anchor") for i in batch]
                edited = editor.edit([real[i][0] for i in batch], [rows[i]["_instruction"].instruction for i in batch], seeds)
                for i, seed, frame in zip(batch, seeds, edited):
                    anchors[i] = frame
                    rows[i]["_provenance"]["models"]["anchor"] = prov
                    rows[i]["_provenance"]["seeds"]["anchor"] = seed

        # 4. synthetic videos, batched by size and frame count
        synthetic: dict[int, np.ndarray] = {}
        if todo:
            synth = self.video
            prov = synth.provenance()
            for batch in _batches(todo, lambda i: real[i].shape[:3], self.batch_size):
                seeds = [seed_for(rows[i]["pair_key"], g.seed, "video") for i in batch]
                prompts = [rows[i]["_instruction"].target_caption for i in batch]
                videos = synth.generate([anchors[i] for i in batch], prompts, [real[i] for i in batch], seeds, num_frames=len(real[batch[0]]))
                for i, seed, prompt, video in zip(batch, seeds, prompts, videos):
                    synthetic[i] = np.asarray(video)
                    p = rows[i]["_provenance"]
                    p["models"]["video"] = prov
                    p["seeds"]["video"] = seed
                    p["video_prompt"] = prompt

        # 5. media and the row in the shipped direction
        out = []
        fps = float(pcfg.target_fps)
        for i, row in enumerate(rows):
            if i not in synthetic:
                out.append((row, None, None))
                continue
            instr: Instruction = row["_instruction"]
            clip_id = row["clip_id"]
            real_path = os.path.join(media_dir, f"{clip_id}.real.mp4")
            synth_path = os.path.join(media_dir, f"{row['pair_key']}.synthetic.mp4")
            if not os.path.exists(real_path):  # shared by every category of the clip; written atomically
                write_video(real_path, real[i], fps=fps, crf=pcfg.crf, preset=pcfg.x264_preset)
            write_video(synth_path, synthetic[i], fps=fps, crf=pcfg.crf, preset=pcfg.x264_preset)
            forward = g.direction == "real_to_synthetic"
            src, tgt = (real[i], synthetic[i]) if forward else (synthetic[i], real[i])
            row.update(src_path=real_path if forward else synth_path, tgt_path=synth_path if forward else real_path,
                       instruction=instr.instruction if forward else instr.reverse_instruction,
                       source_caption=instr.source_caption if forward else instr.target_caption,
                       target_caption=instr.target_caption if forward else instr.source_caption,
                       fps=fps, frames=len(src), width=src.shape[2], height=src.shape[1],
                       _real=real[i], _synthetic=synthetic[i])
            row["source_text"], row["target_text"] = row["source_caption"], row["target_caption"]
            row["_provenance"].update(forward_instruction=instr.instruction, reverse_instruction=instr.reverse_instruction,
                                      edited_object=instr.edited_object, object_after_edit=instr.object_after_edit,
                                      real_side="src" if forward else "tgt")
            out.append((row, src, tgt))
        for row in rows:  # rows without frames are final here; the others get theirs in check_pairs
            if row.get("_real") is None:
                self._finish(row)
        return out

    def check_pairs(self, made: list[tuple]) -> None:
        """Object presence and VLM instruction following for made pairs (after the CLIP scores and
        floors), then each row's provenance JSON."""
        g = self.g
        live = [row for row, src, _ in made if src is not None]
        if g.detect.enabled:
            with_object = [r for r in live if r["_instruction"].object_after_edit]
            if with_object:
                detector = self.detector
                prov = detector.provenance()
                for row in with_object:
                    instr: Instruction = row["_instruction"]
                    presence = float(detector.presence(_even(row["_synthetic"], g.detect.frames), instr.edited_object))
                    row["object_presence"] = presence
                    row["_provenance"]["models"]["detect"] = prov
                    wrong = (presence < float(g.detect.min_presence) if instr.object_after_edit == "present"
                             else presence > float(g.detect.max_presence_absent))
                    if wrong:
                        reject(row, "pairs", "object_presence_wrong")
        if g.vlm_check.enabled:
            from .vlm_check import InstructionFollowingCheck

            kept = [r for r in live if not r.get("reject_reason")]
            if kept:
                checker = InstructionFollowingCheck(self.vlm, g.vlm_check)
                results = checker.check_many([(r["_instruction"].instruction, r["_real"], r["_synthetic"]) for r in kept])
                for row, res in zip(kept, results):
                    row["vlm_instruction_following"] = res.score
                    row["_provenance"]["vlm_requests"]["vlm_check"] = res.attempts
                    if res.reason:
                        reject(row, "pairs", res.reason)
                        if res.error:
                            row["error"] = res.error
        for row in live:
            self._finish(row)

    @staticmethod
    def _finish(row: dict) -> None:
        row["provenance"] = json.dumps(row["_provenance"], sort_keys=True, ensure_ascii=False)

