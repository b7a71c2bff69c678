"""Stage 7, report: one HTML page that says what the run kept, what it rejected, and why.

Reads every manifest there is (per-partition stages merged over partitions) and the shards, and
writes under `report/`:
- `index.html`: a red banner when no samples were written; the funnel (rows in, kept, rejected
  per reason, per stage); the shards; thumbnails of shipped pairs (middle source frame beside the
  middle target frame, decoded from the shards themselves, so they show what training will read);
  score histograms with kept rows and the rejected rows of each reject reason apart (stacked, one
  colour per reason) and the config's thresholds drawn as lines;
  a per-source table (clips, pairs, shipped, reject reasons of each input video);
- `funnel.json` (the funnel, the histograms' counts per reject reason and the shard index), one PNG
  per histogram, `thumbs/*.jpg`.
Thresholds drawn are those of the config this report ran with (`resolved_config.yaml`).
"""

from __future__ import annotations

import html
import io
import json
import logging
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .manifest import atomic_write_bytes, atomic_write_json, atomic_write_text
from .pairs import pair_thresholds
from .shard import NO_SAMPLES_BANNER
from .stage import PER_PARTITION_STAGES, StageContext, stable_hash

log = logging.getLogger("liveditor.curate")

HISTOGRAMS = {
    "filters": ("motion_score", "sharpness"),
    "clip_scores": ("clip_caption_similarity", "aesthetic_score"),
    "pairs": ("clip_text_target", "clip_directional", "temporal_consistency", "structure_consistency",
              "object_presence", "vlm_instruction_following"),  # the last two: generated pairs only
}
UNITS = {"probe": "videos", "shots": "clips", "filters": "clips", "clip_scores": "clips", "pairs": "pairs", "dedup": "pairs", "shard": "pairs"}
KEPT_COLOUR, REJECTED_COLOUR, THRESHOLD_COLOUR = "#3b6ea8", "#d98c3a", "#b00020"
# One colour per reject reason in a histogram (most frequent reason first); more reasons reuse them.
REASON_COLOURS = (REJECTED_COLOUR, "#8e5ea2", "#3cba9f", "#c45850", "#e8c3b9", "#7f7f7f", "#bcbd22", "#17becf")


def load_stage(ctx: StageContext, stage: str, columns: list[str] | None = None) -> pa.Table | None:
    """A stage's manifest (all partitions), only `columns` of it that exist; None when the stage has not run."""
    if stage in PER_PARTITION_STAGES:
        paths = [p / f"{stage}.parquet" for p in ctx.partition_dirs() if (p / f"{stage}.parquet").exists()]
    else:
        paths = [ctx.out_dir / f"{stage}.parquet"] if (ctx.out_dir / f"{stage}.parquet").exists() else []
    if not paths:
        return None
    tables = []
    for p in paths:
        names = pq.read_schema(p).names
        tables.append(pq.read_table(p, columns=[c for c in columns if c in names] if columns else None))
    return pa.concat_tables(tables, promote_options="default")


def funnel(ctx: StageContext) -> list[dict]:
    """One entry per stage that has run: rows in, rows kept, and reject counts by reason (this stage's only)."""
    out = []
    for stage in ("probe", "shots", "filters", "clip_scores", "pairs", "dedup", "shard"):
        table = load_stage(ctx, stage, ["reject_reason", "reject_stage"])
        if table is None:
            continue
        rows = table.to_pylist()
        reasons = Counter(r["reject_reason"] for r in rows if r.get("reject_reason") and r.get("reject_stage") == stage)
        kept = sum(1 for r in rows if not r.get("reject_reason"))
        out.append({"stage": stage, "unit": UNITS[stage], "rows": len(rows), "kept": kept,
                    "rejected_here": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))})
    return out


def thresholds(cfg) -> dict[str, dict[str, float]]:
    """`{score column: {"min": v, "max": v}}` the stages apply under `cfg` (disabled floors left out)."""
    f, c = cfg.filters, cfg.clip_scores
    out = {"motion_score": {"min": f.min_motion, "max": f.max_motion}, "sharpness": {"min": f.min_sharpness},
           "clip_caption_similarity": {"min": c.min_caption_similarity}, "aesthetic_score": {"min": c.min_aesthetic}}
    out.update({col: {"min": v} for col, v in pair_thresholds(cfg.pairs, c).items()})
    g = cfg.pairs.get("generate")
    if g is not None and g.enabled and g.vlm_check.enabled:
        out["vlm_instruction_following"] = {"min": g.vlm_check.min_score}
    # object_presence has no single line: additions and swaps need at least detect.min_presence,
    # removals at most detect.max_presence_absent
    return {col: {k: float(v) for k, v in lim.items() if v is not None} for col, lim in out.items()}


def histogram_png(kept: list[float], rejected: dict[str, list[float]], title: str, limits: dict[str, float], bins: int = 30) -> bytes:
    """A histogram of `kept` values and of the `rejected` values of each reject reason (`{reason: values}`),
    stacked in one colour each, with threshold lines, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reasons = sorted(rejected, key=lambda r: (-len(rejected[r]), r))
    values = kept + [v for r in reasons for v in rejected[r]]
    lo, hi = min(values + list(limits.values())), max(values + list(limits.values()))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(4.8, 3.0), dpi=100)
    ax.hist([kept] + [rejected[r] for r in reasons], bins=edges, stacked=True,
            color=[KEPT_COLOUR] + [REASON_COLOURS[i % len(REASON_COLOURS)] for i in range(len(reasons))],
            label=[f"kept ({len(kept)})"] + [f"rejected: {r} ({len(rejected[r])})" for r in reasons])
    for kind, v in sorted(limits.items()):
        ax.axvline(v, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.5, label=f"{kind} {v:g}")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(title, fontsize=9)
    ax.set_ylabel("count", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _middle_frame(mp4: bytes, height: int) -> np.ndarray:
    """The middle frame of an mp4 (bytes) as `uint8` `[height, w, 3]` RGB."""
    import av

    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for _ in container.demux(stream) if _.size)
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i >= frames // 2:
                w = max(2, round(frame.width * height / frame.height))
                return frame.reformat(width=w, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()
    raise ValueError("no frames")


def pair_thumbnails(ctx: StageContext, out: Path, count: int, height: int) -> list[dict]:
    """Side-by-side source|target JPEGs of up to `count` shipped pairs (a stable-hash sample), read from the shards."""
    from PIL import Image

    index_path = ctx.out_dir / "shards" / "index.json"
    if count <= 0 or not index_path.exists():
        return []
    shard = load_stage(ctx, "shard", ["pair_key", "shard", "instruction", "category", "width", "height", "frames", "fps"])
    if shard is None or shard.num_rows == 0:
        return []
    rows = sorted(shard.to_pylist(), key=lambda r: (stable_hash(r["pair_key"]), r["pair_key"]))[:count]
    by_shard = defaultdict(list)
    for r in rows:
        by_shard[r["shard"]].append(r)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    done = []
    for name, members in sorted(by_shard.items()):
        with tarfile.open(ctx.out_dir / "shards" / name) as tar:
            for r in members:
                src = _middle_frame(tar.extractfile(f"{r['pair_key']}.src.mp4").read(), height)
                tgt = _middle_frame(tar.extractfile(f"{r['pair_key']}.tgt.mp4").read(), height)
                gap = np.full((height, 4, 3), 255, np.uint8)
                buf = io.BytesIO()
                Image.fromarray(np.concatenate([src, gap, tgt], axis=1)).save(buf, format="JPEG", quality=85)
                atomic_write_bytes(out / "thumbs" / f"{r['pair_key']}.jpg", buf.getvalue())
                done.append(dict(r, thumb=f"thumbs/{r['pair_key']}.jpg"))
    return sorted(done, key=lambda r: (stable_hash(r["pair_key"]), r["pair_key"]))


def per_source(ctx: StageContext) -> list[dict]:
    """One row per input video: probe outcome, clips, clips kept, pairs, pairs shipped, reject reasons."""
    probe = load_stage(ctx, "probe", ["path", "reject_reason"])
    sources: dict[str, dict] = {}

    def entry(path):
        return sources.setdefault(path, {"source": path, "probe": "ok", "clips": 0, "clips_kept": 0, "pairs": 0,
                                         "shipped": 0, "reasons": Counter()})

    for r in probe.to_pylist() if probe is not None else []:
        e = entry(r["path"])
        if r["reject_reason"]:
            e["probe"] = r["reject_reason"]
    clip_path: dict[str, str] = {}
    for stage in ("clip_scores", "filters", "shots"):  # the latest clip manifest there is
        clips = load_stage(ctx, stage, ["clip_id", "path", "reject_reason"])
        if clips is not None:
            for r in clips.to_pylist():
                clip_path[r["clip_id"]] = r["path"]
                e = entry(r["path"])
                e["clips"] += 1
                if r["reject_reason"]:
                    e["reasons"][r["reject_reason"]] += 1
                else:
                    e["clips_kept"] += 1
            break
    for stage in ("dedup", "pairs"):  # dedup has every partition's pairs with duplicates marked
        pairs = load_stage(ctx, stage, ["pair_key", "clip_id", "src_path", "reject_reason"])
        if pairs is not None:
            for r in pairs.to_pylist():
                e = entry(clip_path.get(r["clip_id"]) or r["src_path"])
                e["pairs"] += 1
                if r["reject_reason"]:
                    e["reasons"][r["reject_reason"]] += 1
            break
    shard = load_stage(ctx, "shard", ["clip_id", "src_path"])
    for r in shard.to_pylist() if shard is not None else []:
        entry(clip_path.get(r["clip_id"]) or r["src_path"])["shipped"] += 1
    return [dict(e, reasons=dict(sorted(e["reasons"].items(), key=lambda kv: (-kv[1], kv[0])))) for _, e in sorted(sources.items())]


def run(ctx: StageContext) -> None:
    rcfg = ctx.cfg.report
    out = ctx.out_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    stages = funnel(ctx)
    limits = thresholds(ctx.cfg)
    images = []
    for stage, columns in HISTOGRAMS.items():
        table = load_stage(ctx, stage, list(columns) + ["reject_reason"])
        if table is None:
            continue
        reasons = table.column("reject_reason").to_pylist()
        for col in columns:
            if col not in table.column_names:
                continue
            values = table.column(col).to_pylist()
            kept = [v for v, why in zip(values, reasons) if v is not None and not why]
            rejected: dict[str, list[float]] = defaultdict(list)
            for v, why in zip(values, reasons):
                if v is not None and why:
                    rejected[why].append(v)
            if not kept and not rejected:
                continue
            name = f"{stage}-{col}.png"
            atomic_write_bytes(out / name, histogram_png(kept, dict(rejected), col, limits.get(col, {}), int(rcfg.histogram_bins)))
            by_reason = dict(sorted(((r, len(v)) for r, v in rejected.items()), key=lambda kv: (-kv[1], kv[0])))
            images.append({"file": name, "stage": stage, "column": col, "kept": len(kept), "rejected": sum(by_reason.values()),
                           "rejected_by_reason": by_reason, "limits": limits.get(col, {})})
    index_path = ctx.out_dir / "shards" / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    thumbs = pair_thumbnails(ctx, out, int(rcfg.thumbnails), int(rcfg.thumbnail_height))
    sources = per_source(ctx)
    atomic_write_json(out / "funnel.json", {"funnel": stages, "shards": index, "thresholds": limits, "histograms": images})
    atomic_write_text(out / "index.html", _html(ctx, stages, images, index, thumbs, sources, int(rcfg.max_sources)))
    if index is not None and index["num_samples"] == 0:
        log.warning(NO_SAMPLES_BANNER, out / "index.html")
    log.info("report: %s", out / "index.html")


def _html(ctx, stages, images, index, thumbs, sources, max_sources) -> str:
    e = html.escape
    banner = ("<div id='no-samples' class='banner'><b>No samples were written.</b> Every clip or pair was rejected: "
              "the funnel below shows at which stage and why; loosen those thresholds.</div>"
              if index is not None and index["num_samples"] == 0 else "")
    funnel_rows = "".join(
        f"<tr><td>{e(s['stage'])}</td><td>{s['rows']} {e(s['unit'])}</td><td class='kept'>{s['kept']}</td>"
        f"<td class='rej'>{s['rows'] - s['kept']}</td>"
        f"<td>{', '.join(f'{e(k)}: {v}' for k, v in s['rejected_here'].items()) or '-'}</td></tr>" for s in stages)
    shard = ("<p>No shards yet.</p>" if index is None else
             f"<p>{index['num_samples']} samples in {index['num_shards']} shards, {index['total_bytes'] / 1e6:.1f} MB; "
             f"categories: {e(json.dumps(index['categories']))}</p>")
    thumb_html = "".join(
        f"<figure class='thumb'><img src='{e(t['thumb'])}' alt='{e(t['pair_key'])}'><figcaption><b>{e(t['instruction'])}</b><br>"
        f"{e(t['category'])} &middot; {t['width']}x{t['height']}, {t['frames']} frames at {t['fps']:g} fps<br>"
        f"<code>{e(t['pair_key'])}</code></figcaption></figure>" for t in thumbs)
    def limit_text(lim):
        return ", ".join(f"{k} {v:g}" for k, v in sorted(lim.items())) or "none"

    imgs = "".join(
        f"<figure><img src='{e(i['file'])}' alt='{e(i['column'])}'><figcaption>{e(i['stage'])}: {e(i['column'])} &mdash; "
        f"kept {i['kept']}, rejected {i['rejected']}"
        f"{' (' + ', '.join(f'{e(r)}: {n}' for r, n in i['rejected_by_reason'].items()) + ')' if i['rejected'] else ''}"
        f"; thresholds: {e(limit_text(i['limits']))}</figcaption></figure>"
        for i in images)
    random_note = (" The CLIP model is random-initialised (clip_scores.checkpoint=random): its scores are noise and "
                   "no CLIP threshold was applied." if str(ctx.cfg.clip_scores.checkpoint) == "random" else "")
    shown = sources[:max_sources]
    source_rows = "".join(
        f"<tr><td><code>{e(s['source'])}</code></td><td>{e(s['probe'])}</td><td>{s['clips']}</td><td class='kept'>{s['clips_kept']}</td>"
        f"<td>{s['pairs']}</td><td class='kept'>{s['shipped']}</td>"
        f"<td>{', '.join(f'{e(k)}: {v}' for k, v in s['reasons'].items()) or '-'}</td></tr>" for s in shown)
    more = f"<p>First {len(shown)} of {len(sources)} sources (report.max_sources).</p>" if len(sources) > len(shown) else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>LIVEditor curation report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
figure{{display:inline-block;margin:8px;vertical-align:top}}.thumb figcaption{{max-width:420px;font-size:0.85em}}
.banner{{background:{THRESHOLD_COLOUR};color:#fff;padding:1em;font-size:1.3em;margin:1em 0}}
td.kept{{color:{KEPT_COLOUR};font-weight:bold}}td.rej{{color:{REJECTED_COLOUR};font-weight:bold}}</style></head><body>
<h1>Curation report</h1>{banner}<p>Run folder: <code>{e(str(ctx.out_dir))}</code></p>
<h2>Funnel</h2><table><tr><th>stage</th><th>rows in manifest</th><th>kept</th><th>rejected</th><th>rejected here (reason: count)</th></tr>{funnel_rows}</table>
<h2>Shards</h2>{shard}
<h2>Kept pairs (source | target, middle frames, from the shards)</h2>{thumb_html or '<p>No shipped pairs.</p>'}
<h2>Score histograms</h2><p>Kept rows in <span style="color:{KEPT_COLOUR}">blue</span>, rejected rows stacked on them in
one colour per reject reason (the legend names each), thresholds as dashed red lines.{random_note}</p>{imgs or '<p>No scores yet.</p>'}
<h2>Per source</h2><table><tr><th>source</th><th>probe</th><th>clips</th><th>clips kept</th><th>pairs</th><th>shipped</th>
<th>reject reasons (clips and pairs)</th></tr>{source_rows}</table>{more}
</body></html>
"""
