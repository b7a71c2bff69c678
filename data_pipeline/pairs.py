"""Stage 5, pairs: candidate (source, instruction, target) triples and their scores.

Candidates come from
(a) manifests of existing pair datasets (`pairs.external`): JSON, JSONL, CSV or Parquet rows with a
    source video path, an instruction and an edited video path, as Señorita-2M, InsViE-1M and
    Ditto-1M publish them (column names are configurable, `auto` tries the usual ones); and
(b) the built-in synthetic editor (`synthetic_editor.py`), `edits_per_clip` edits of every kept clip;
(c) generative models (`pairs.generate`, `pairs=generate`, `data_pipeline/generate/`): VLM
    instructions, an edited anchor frame and an image-to-video target per (clip, category), made in
    GPU batches by `generate.source.PairGenerator` and scored here like every pair, then checked for
    object presence and VLM instruction following (`GENERATED_SCORE_COLUMNS`).

Scores per pair, on `score_frames` aligned frames of source and target:
- `clip_text_target`: cos(img_t, txt_t), CLIP image-text alignment of target frames and target text;
- `clip_directional`: cos(img_t - img_s, txt_t - txt_s) (InstructPix2Pix's directional similarity);
- `temporal_consistency`: mean cos(img_t[i], img_t[i+1]) of consecutive sampled target frames;
- `structure_consistency`: correlation of source and target luma-gradient magnitudes (1 = same layout).
A perceptual hash of the middle source and target frames is kept for the dedup stage, with the
source video's `content_hash` (`src_content_hash`, from the probe stage; null for external pairs), and
every synthetic pair carries its source clip's filter and CLIP-stage scores (`CLIP_STAGE_COLUMNS`).

Synthetic pair videos are at exactly `target_fps` (resampled by frame timestamps, `pair_video.py`),
scaled down in the decoder, never up: a source below `short_side` keeps its native size or is
rejected (`resolution_below_target`), per `below_short_side`. With `crop_size: [w, h]` they are
instead scaled (down or up) to cover `w x h` and centre-cropped to exactly it, as the editor fits
its buckets. A clip's frames are decoded once for all of its edits in a chunk. With a
random-initialised CLIP (`clip_scores.checkpoint=random`) the CLIP-based pair thresholds are
skipped: its scores are noise.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from liveditor.video import VideoError, probe_video, read_video, write_video

from .clip_model import load_clip_scorer
from .manifest import CLIP_STAGE_COLUMNS, REJECT_FIELDS, accepted, read_rows
from .pair_video import check_sampling, sample_clip
from .probe import read_table_file
from .stage import StageContext, reject, run_rowwise, short_id, stable_hash
from .synthetic_editor import EDITS, SOURCE_TEXT

SCORE_COLUMNS = ("clip_text_target", "clip_directional", "temporal_consistency", "structure_consistency")
# The pair scores computed with CLIP: a random-initialised CLIP (clip_scores.checkpoint=random) makes them noise.
CLIP_SCORE_COLUMNS = ("clip_text_target", "clip_directional", "temporal_consistency")
# The quality checks of generated pairs (`pairs.generate`, data_pipeline/generate/): the fraction of
# sampled generated frames in which the detector finds the edited object, and the VLM's 0-10
# instruction-following score (null for other pairs and where a check did not run).
GENERATED_SCORE_COLUMNS = ("object_presence", "vlm_instruction_following")
# Reasons that do not finish a row: the VLM endpoint gave no answer after its retries (connection
# errors, timeouts, HTTP 429 or 5xx). The row stays in its chunk, the stage writes no manifest and the
# run ends non-zero saying how many; a rerun (once the endpoint answers) makes exactly those rows again.
RETRY_REASONS = frozenset({"instruction_endpoint_unavailable", "vlm_check_endpoint_unavailable"})

SCHEMA = pa.schema([
    pa.field("pair_key", pa.string()), pa.field("origin", pa.string()), pa.field("clip_id", pa.string()),
    pa.field("src_path", pa.string()), pa.field("tgt_path", pa.string()), pa.field("instruction", pa.string()),
    pa.field("category", pa.string()), pa.field("edit", pa.string()), pa.field("source_caption", pa.string()),
    pa.field("target_caption", pa.string()), pa.field("source_text", pa.string()), pa.field("target_text", pa.string()),
    pa.field("fps", pa.float64()), pa.field("frames", pa.int64()), pa.field("width", pa.int64()), pa.field("height", pa.int64()),
    *[pa.field(c, pa.float64()) for c in SCORE_COLUMNS], *[pa.field(c, pa.float64()) for c in CLIP_STAGE_COLUMNS],
    *[pa.field(c, pa.float64()) for c in GENERATED_SCORE_COLUMNS],
    pa.field("src_phash", pa.string()), pa.field("tgt_phash", pa.string()), pa.field("tgt_colour", pa.string()),
    pa.field("src_content_hash", pa.string()), pa.field("provenance", pa.string()),
    pa.field("error", pa.string()), *REJECT_FIELDS,
])

_AUTO_KEYS = {
    "source": ("source_video", "source", "src", "source_path", "src_video", "input_video", "original_video", "video"),
    "instruction": ("instruction", "edit_instruction", "prompt", "edit_prompt", "text"),
    "target": ("target_video", "edited_video", "target", "edited", "tgt", "target_path", "output_video", "edit_video"),
}


def check_pairs_config(pcfg) -> Optional[tuple[int, int]]:
    """Named errors for the pairs stage's size and edit options, before any work; returns `crop_size(pcfg)`."""
    crop = check_sampling(pcfg)
    if pcfg.synthetic.enabled:
        synthetic_edit_names(pcfg)
    return crop


def phash(frame: np.ndarray) -> str:
    """64-bit perceptual hash (DCT of a 32x32 grey image) as 16 hex digits."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(frame)))


def colour_signature(frame: np.ndarray) -> str:
    """Mean RGB of the 2x2 quadrants of a frame, 12 bytes as hex (pHash sees luma only, so a sepia
    and a grayscale edit of one clip hash alike; this tells them apart)."""
    h, w = frame.shape[:2]
    quads = [frame[: h // 2, : w // 2], frame[: h // 2, w // 2 :], frame[h // 2 :, : w // 2], frame[h // 2 :, w // 2 :]]
    return bytes(int(round(float(c))) for q in quads for c in q.reshape(-1, 3).mean(0)).hex()


def structure_consistency(src: np.ndarray, tgt: np.ndarray, short_side: int = 128) -> float:
    """Mean over frames of the Pearson correlation of luma-gradient magnitudes; `[T, H, W, 3]` each, same T."""
    from .filters import luma_at

    a, b = luma_at(src, short_side), luma_at(tgt, short_side)
    if a.shape != b.shape:
        b = F.interpolate(b, size=a.shape[-2:], mode="area")
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)

    def grad(y):
        return (F.conv2d(y, kx) ** 2 + F.conv2d(y, kx.transpose(2, 3)) ** 2).sqrt().flatten(1)

    ga, gb = grad(a), grad(b)
    ga, gb = ga - ga.mean(1, keepdim=True), gb - gb.mean(1, keepdim=True)
    corr = (ga * gb).sum(1) / (ga.norm(dim=1) * gb.norm(dim=1)).clamp_min(1e-6)
    return float(corr.mean())


def aligned_indices(n_src: int, n_tgt: int, count: int) -> tuple[list[int], list[int]]:
    """`count` evenly spaced indices into source and target at the same relative times."""
    rel = np.linspace(0, 1, num=count)
    return (rel * (n_src - 1)).round().astype(int).tolist(), (rel * (n_tgt - 1)).round().astype(int).tolist()


# ---- candidates -----------------------------------------------------------------------------

def synthetic_edit_names(pcfg) -> list[str]:
    """`pairs.synthetic.edits`, sorted; null (or empty): every edit of the default mix (not `copy`)."""
    if not pcfg.synthetic.edits:  # getattr: bench_pairs --editor-module may load an editor older than the field
        return sorted(n for n, e in EDITS.items() if getattr(e, "in_default_mix", True))
    names = sorted(pcfg.synthetic.edits)
    unknown = [n for n in names if n not in EDITS]
    if unknown:
        raise ValueError(f"pairs.synthetic.edits has unknown edits {unknown}: choose from {sorted(EDITS)}")
    return names


def synthetic_candidates(clips: list[dict], pcfg) -> list[dict]:
    """`edits_per_clip` distinct edits per kept clip, chosen by a stable hash of the clip id."""
    names = synthetic_edit_names(pcfg)
    out = []
    for clip in clips:
        order = sorted(names, key=lambda n: stable_hash(f"{clip['clip_id']}/{n}"))
        for name in order[: pcfg.synthetic.edits_per_clip]:
            out.append({"kind": "synthetic", "clip": clip, "edit": name})
    return out


def _pick_key(row: dict, wanted: str, role: str, manifest: str) -> str:
    if wanted != "auto":
        if wanted not in row:
            raise KeyError(f"pair manifest '{manifest}' has no column '{wanted}' for the {role}: fix pairs.external[].{role}_key")
        return wanted
    for k in _AUTO_KEYS[role]:
        if k in row:
            return k
    raise KeyError(f"pair manifest '{manifest}' has none of the usual {role} columns {_AUTO_KEYS[role]} "
                   f"(it has {sorted(row)}): set pairs.external[].{role}_key")


def external_candidates(pcfg, partition, base_dir: str) -> list[dict]:
    out = []
    for ext in pcfg.external or []:
        manifest = os.path.join(base_dir, str(ext.manifest))
        rows = read_table_file(manifest)
        if not rows:
            continue
        keys = {role: _pick_key(rows[0], ext.get(f"{role}_key", "auto"), role, manifest) for role in _AUTO_KEYS}
        root = os.path.join(base_dir, str(ext.get("video_root") or os.path.dirname(manifest)))
        for row in rows:
            src = os.path.join(root, str(row[keys["source"]]))
            tgt = os.path.join(root, str(row[keys["target"]]))
            instruction = str(row[keys["instruction"]])
            key = f"{ext.name}-{short_id(src + '|' + instruction + '|' + tgt)}"
            if partition.owns(key):
                out.append({"kind": "external", "dataset": ext.name, "src": src, "tgt": tgt, "instruction": instruction,
                            "category": row.get(ext.get("category_key") or "category") or "external", "pair_key": key,
                            "source_caption": row.get(ext.get("source_caption_key") or "source_caption"),
                            "target_caption": row.get(ext.get("target_caption_key") or "target_caption")})
    return sorted(out, key=lambda c: c["pair_key"])


# ---- making and scoring ---------------------------------------------------------------------

def make_pair(cand: dict, pcfg, media_dir: str, sources: dict):
    """Row plus (source frames, target frames) of one candidate; a failure is a rejected row and no frames.

    `sources` maps a clip id to its decoded, resampled frames: the edits of one clip decode it once.
    """
    if cand["kind"] == "synthetic":
        clip, edit = cand["clip"], EDITS[cand["edit"]]
        key = f"{clip['clip_id']}-{edit.name.replace('_', '')}"
        caption = clip.get("caption")
        row = {"pair_key": key, "origin": "synthetic", "clip_id": clip["clip_id"], "edit": edit.name, "category": edit.category,
               "instruction": edit.instructions[stable_hash(key) % len(edit.instructions)], "source_caption": caption,
               "target_caption": ((f"{caption}, {edit.target_phrase}" if caption else f"a video {edit.target_phrase}")
                                  if edit.target_phrase else caption or "a video"),
               "source_text": SOURCE_TEXT, "target_text": edit.target_text,
               **{c: clip.get(c) for c in CLIP_STAGE_COLUMNS}, "src_content_hash": clip.get("content_hash"),
               "provenance": json.dumps({"source_video": clip["path"], "start_frame": clip["start_frame"], "end_frame": clip["end_frame"],
                                         "source_fps": clip["fps"], "editor": "liveditor.synthetic_editor", "edit": edit.name}, sort_keys=True)}
        if clip["clip_id"] not in sources:
            try:
                sources[clip["clip_id"]] = sample_clip(clip["path"], clip["start_frame"], clip["end_frame"],
                                                       clip["width"], clip["height"], pcfg)
            except VideoError as exc:
                sources[clip["clip_id"]] = exc
        src = sources[clip["clip_id"]]
        if isinstance(src, VideoError):
            return reject(dict(row, error=str(src)), "pairs", "decode_error"), None, None
        if src is None:
            return reject(dict(row, width=clip["width"], height=clip["height"]), "pairs", "resolution_below_target"), None, None
        fps = float(pcfg.target_fps)
        tgt = edit.apply(src, np.random.default_rng(stable_hash(key)))
        src_path = os.path.join(media_dir, f"{clip['clip_id']}.src.mp4")
        tgt_path = os.path.join(media_dir, f"{key}.tgt.mp4")
        if not os.path.exists(src_path):  # shared by every edit of the clip; written atomically
            write_video(src_path, src, fps=fps, crf=pcfg.crf, preset=pcfg.x264_preset)
        write_video(tgt_path, tgt, fps=fps, crf=pcfg.crf, preset=pcfg.x264_preset)
        row.update(src_path=src_path, tgt_path=tgt_path, fps=fps, frames=len(src), width=src.shape[2], height=src.shape[1])
        return row, src, tgt
    row = {"pair_key": cand["pair_key"], "origin": f"external:{cand['dataset']}", "src_path": cand["src"], "tgt_path": cand["tgt"],
           "instruction": cand["instruction"], "category": str(cand["category"]), "edit": None,
           "source_caption": cand.get("source_caption"), "target_caption": cand.get("target_caption"),
           "source_text": cand.get("source_caption") or SOURCE_TEXT,
           "target_text": cand.get("target_caption") or cand["instruction"],
           "provenance": json.dumps({"dataset": cand["dataset"], "source_video": cand["src"], "target_video": cand["tgt"]}, sort_keys=True)}
    try:  # only the frames that are scored are decoded: external videos may be long and large
        si, ti = probe_video(cand["src"]), probe_video(cand["tgt"])
        src_idx, tgt_idx = aligned_indices(si.num_frames, ti.num_frames, pcfg.score_frames)
        src = read_video(cand["src"], indices=src_idx).frames
        tgt = read_video(cand["tgt"], indices=tgt_idx).frames
    except VideoError as exc:
        return reject(dict(row, error=str(exc)), "pairs", "decode_error"), None, None
    row.update(fps=si.fps, frames=si.num_frames, width=si.width, height=si.height)
    return row, src, tgt


def pair_thresholds(pcfg, ccfg) -> dict[str, float]:
    """`{score column: floor}` the pairs stage applies. With a random-initialised CLIP
    (`clip_scores.checkpoint=random`, e.g. `clip_scores=tiny_random`) the CLIP-based floors are
    left out: random embeddings score -0.2..0.2 and would reject every pair."""
    floors = {c: pcfg.thresholds.get(f"min_{c}") for c in SCORE_COLUMNS}
    if str(ccfg.checkpoint) == "random":
        floors = {c: v for c, v in floors.items() if c not in CLIP_SCORE_COLUMNS}
    return {c: float(v) for c, v in floors.items() if v is not None}


def score_made_pairs(made: list[tuple], scorer, pcfg, thresholds: dict[str, float]) -> None:
    """Hashes, CLIP scores and floors of made pairs `(row, source frames, target frames)`, in place;
    a pair without frames (`src` None, already rejected) is left as it is."""
    frame_sets = []
    for row, src, tgt in made:
        if src is None:
            continue
        si, ti = aligned_indices(len(src), len(tgt), pcfg.score_frames)
        frame_sets.append((row, src[si], tgt[ti]))
        row["src_phash"], row["tgt_phash"] = phash(src[len(src) // 2]), phash(tgt[len(tgt) // 2])
        row["tgt_colour"] = colour_signature(tgt[len(tgt) // 2])
    if frame_sets:
        texts = sorted({t for r, _, _ in frame_sets for t in (r["source_text"], r["target_text"])})
        text_emb = dict(zip(texts, scorer.embed_texts(texts)))
        groups = scorer.embed_frame_groups([x for _, s, t in frame_sets for x in (s, t)])
        for i, (row, s, t) in enumerate(frame_sets):
            es, et = groups[2 * i], groups[2 * i + 1]
            ts, tt = text_emb[row["source_text"]], text_emb[row["target_text"]]
            row["clip_text_target"] = float((et @ tt).mean())
            if row["source_text"] != row["target_text"]:  # equal texts (copy): no direction to compare with, left null
                row["clip_directional"] = float(F.cosine_similarity(et - es, (tt - ts).unsqueeze(0), dim=-1).mean())
            row["temporal_consistency"] = float((et[1:] * et[:-1]).sum(-1).mean()) if len(et) > 1 else 1.0
            if s.shape[0] == t.shape[0]:
                layout = getattr(EDITS.get(row.get("edit")), "layout", None)  # mirror: the source flipped like the target
                row["structure_consistency"] = structure_consistency(layout(s) if layout else s, t)
            for col, floor in thresholds.items():
                if row.get(col) is not None and row[col] < floor:
                    reject(row, "pairs", f"{col}_low")
                    break


def score_pairs(cands: list[dict], scorer, pcfg, media_dir: str, thresholds: dict[str, float], generator=None) -> list[dict]:
    """Make, score and threshold one chunk of candidates.

    Generated candidates (`kind: generated`) are made by `generator` (a `generate.source.PairGenerator`)
    in GPU batches, go through the same scores and floors as every pair, then through its own checks
    (object presence, VLM instruction following).
    """
    made: list = [None] * len(cands)
    generated = [i for i, c in enumerate(cands) if c["kind"] == "generated"]
    if generated:
        for i, pair in zip(generated, generator.make_pairs([cands[i] for i in generated], media_dir)):
            made[i] = pair
    sources: dict = {}
    for i, cand in enumerate(cands):
        if made[i] is None:
            made[i] = make_pair(cand, pcfg, media_dir, sources)
    score_made_pairs(made, scorer, pcfg, thresholds)
    if generated:
        generator.check_pairs([made[i] for i in generated])
    return [row for row, _, _ in made]


def run(ctx: StageContext) -> None:
    pcfg = ctx.cfg.pairs
    check_pairs_config(pcfg)
    cands, generator = [], None
    clips = None
    if pcfg.synthetic.enabled:
        clips = accepted(read_rows(ctx.manifest("clip_scores")))
        cands += synthetic_candidates(clips, pcfg)
    if pcfg.get("generate") is not None and pcfg.generate.enabled:
        from .generate.source import PairGenerator, generated_candidates

        clips = clips if clips is not None else accepted(read_rows(ctx.manifest("clip_scores")))
        cands += generated_candidates(clips, pcfg.generate)
        generator = PairGenerator(pcfg)
    cands += external_candidates(pcfg, ctx.partition, ctx.cfg.base_dir or os.getcwd())
    media_dir = str(ctx.part_dir / "media")
    scorer = load_clip_scorer(ctx.cfg.clip_scores) if cands else None
    thresholds = pair_thresholds(pcfg, ctx.cfg.clip_scores)
    run_rowwise(ctx, "pairs", cands, lambda chunk: score_pairs(chunk, scorer, pcfg, media_dir, thresholds, generator), SCHEMA,
                pcfg.chunk_size, desc=f"pairs {ctx.partition.name}", batched=True,
                retry=lambda row: row.get("reject_reason") in RETRY_REASONS)
