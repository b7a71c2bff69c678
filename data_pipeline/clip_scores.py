"""Stage 4, CLIP scores: caption-frame similarity and aesthetic score per clip.

`frames_per_clip` evenly spaced frames of each kept clip are embedded with open_clip (on the GPU
when there is one); a clip's image embedding is their normalised mean. Caption similarity is the
cosine between that and the caption's text embedding (null without a caption); the aesthetic score
is the LAION head's mean over frames (null without `aesthetic_head`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch.nn.functional as F

from liveditor.video import VideoError, read_video

from .clip_model import load_clip_scorer
from .filters import SCHEMA as FILTERS_SCHEMA
from .manifest import read_rows
from .stage import StageContext, reject, run_rowwise

SCHEMA = pa.schema(list(FILTERS_SCHEMA)[:-2] + [
    pa.field("clip_caption_similarity", pa.float64()), pa.field("aesthetic_score", pa.float64()),
    pa.field("reject_reason", pa.string()), pa.field("reject_stage", pa.string()),
])


def score_clips(rows: list[dict], scorer, ccfg) -> list[dict]:
    """Score the kept rows of a chunk in batches; rejected rows pass through unchanged."""
    rows = [dict(r) for r in rows]
    todo, frames = [], []
    for r in rows:
        if r.get("reject_reason"):
            continue
        idx = np.linspace(r["start_frame"], r["end_frame"] - 1, num=ccfg.frames_per_clip).round().astype(int).tolist()
        try:
            frames.append(read_video(r["path"], indices=idx).frames)
            todo.append(r)
        except VideoError as exc:
            r["error"] = str(exc)
            reject(r, "clip_scores", "decode_error")
    if not todo:
        return rows
    emb = scorer.embed_frame_groups(frames)  # each clip's frames in forwards of their own
    captions = [r.get("caption") for r in todo]
    with_caption = [i for i, c in enumerate(captions) if c]
    text = scorer.embed_texts([captions[i] for i in with_caption]) if with_caption else None
    for i, r in enumerate(todo):
        clip_emb = F.normalize(emb[i].mean(0), dim=-1)
        if text is not None and i in with_caption:
            r["clip_caption_similarity"] = float(clip_emb @ text[with_caption.index(i)])
        aes = scorer.aesthetic_scores(emb[i])
        if aes is not None:
            r["aesthetic_score"] = float(aes.mean())
        if ccfg.min_caption_similarity is not None and r.get("clip_caption_similarity") is not None \
                and r["clip_caption_similarity"] < ccfg.min_caption_similarity:
            reject(r, "clip_scores", "caption_mismatch")
        elif ccfg.min_aesthetic is not None and r.get("aesthetic_score") is not None and r["aesthetic_score"] < ccfg.min_aesthetic:
            reject(r, "clip_scores", "aesthetic_low")
    return rows


def run(ctx: StageContext) -> None:
    ccfg = ctx.cfg.clip_scores
    rows = read_rows(ctx.manifest("filters"))
    scorer = load_clip_scorer(ccfg) if any(not r.get("reject_reason") for r in rows) else None
    run_rowwise(ctx, "clip_scores", rows, lambda chunk: score_clips(chunk, scorer, ccfg), SCHEMA, ccfg.chunk_size,
                desc=f"clip_scores {ctx.partition.name}", batched=True)
