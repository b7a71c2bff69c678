"""Stage 7, report: the funnel of counts per stage and reject reason, score histograms, one HTML page.

Reads every manifest there is (per-partition stages merged over partitions) and writes
`report/index.html`, `report/funnel.json` and one PNG histogram per score column.
"""

from __future__ import annotations

import html
import json
import logging
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .manifest import atomic_write_bytes, atomic_write_json, atomic_write_text
from .shard import NO_SAMPLES_BANNER
from .stage import PER_PARTITION_STAGES, StageContext

log = logging.getLogger("liveditor.curate")

HISTOGRAMS = {
    "filters": ("motion_score", "sharpness"),
    "clip_scores": ("clip_caption_similarity", "aesthetic_score"),
    "pairs": ("clip_text_target", "clip_directional", "temporal_consistency", "structure_consistency"),
}
UNITS = {"probe": "videos", "shots": "clips", "filters": "clips", "clip_scores": "clips", "pairs": "pairs", "dedup": "pairs", "shard": "pairs"}


def load_stage(ctx: StageContext, stage: str) -> pa.Table | None:
    if stage in PER_PARTITION_STAGES:
        tables = [pq.read_table(p / f"{stage}.parquet") for p in ctx.partition_dirs() if (p / f"{stage}.parquet").exists()]
        return pa.concat_tables(tables) if tables else None
    path = ctx.out_dir / f"{stage}.parquet"
    return pq.read_table(path) if path.exists() else None


def funnel(ctx: StageContext) -> list[dict]:
    """One entry per stage that has run: rows in, rows kept, and reject counts by reason (this stage's only)."""
    out = []
    for stage in ("probe", "shots", "filters", "clip_scores", "pairs", "dedup", "shard"):
        table = load_stage(ctx, stage)
        if table is None:
            continue
        rows = table.select([c for c in ("reject_reason", "reject_stage") if c in table.column_names]).to_pylist()
        reasons = Counter(r["reject_reason"] for r in rows if r.get("reject_reason") and r.get("reject_stage") == stage)
        kept = sum(1 for r in rows if not r.get("reject_reason"))
        out.append({"stage": stage, "unit": UNITS[stage], "rows": len(rows), "kept": kept,
                    "rejected_here": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))})
    return out


def histogram_png(values: list[float], title: str, bins: int = 30) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.0), dpi=100)
    ax.hist(values, bins=bins, color="#3b6ea8")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(title, fontsize=9)
    ax.set_ylabel("count", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def run(ctx: StageContext) -> None:
    out = ctx.out_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    stages = funnel(ctx)
    images = []
    for stage, columns in HISTOGRAMS.items():
        table = load_stage(ctx, stage)
        if table is None:
            continue
        for col in columns:
            if col not in table.column_names:
                continue
            values = [v for v in table.column(col).to_pylist() if v is not None]
            if not values:
                continue
            name = f"{stage}-{col}.png"
            atomic_write_bytes(out / name, histogram_png(values, col, int(ctx.cfg.report.histogram_bins)))
            images.append((name, col, len(values)))
    index_path = ctx.out_dir / "shards" / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    atomic_write_json(out / "funnel.json", {"funnel": stages, "shards": index})
    atomic_write_text(out / "index.html", _html(ctx, stages, images, index))
    if index is not None and index["num_samples"] == 0:
        log.warning(NO_SAMPLES_BANNER, out / "index.html")
    log.info("report: %s", out / "index.html")


def _html(ctx, stages, images, index) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(s['stage'])}</td><td>{s['rows']} {e(s['unit'])}</td><td>{s['kept']}</td>"
        f"<td>{', '.join(f'{e(k)}: {v}' for k, v in s['rejected_here'].items()) or '-'}</td></tr>" for s in stages)
    imgs = "".join(f"<figure><img src='{e(n)}' alt='{e(c)}'><figcaption>{e(c)} ({k} values)</figcaption></figure>" for n, c, k in images)
    shard = ("<p>No shards yet.</p>" if index is None else
             f"<p>{index['num_samples']} samples in {index['num_shards']} shards, {index['total_bytes'] / 1e6:.1f} MB; "
             f"categories: {e(json.dumps(index['categories']))}</p>")
    banner = ("<div id='no-samples' class='banner'><b>No samples were written.</b> Every clip or pair was rejected: "
              "the funnel below shows where; loosen those thresholds.</div>" if index is not None and index["num_samples"] == 0 else "")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>LIVEditor curation report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
figure{{display:inline-block;margin:8px}}.banner{{background:#b00020;color:#fff;padding:1em;font-size:1.3em}}</style></head><body>
<h1>Curation report</h1>{banner}<p>Run folder: <code>{e(str(ctx.out_dir))}</code></p>
<h2>Funnel</h2><table><tr><th>stage</th><th>rows in manifest</th><th>kept</th><th>rejected here (reason: count)</th></tr>{rows}</table>
<h2>Shards</h2>{shard}
<h2>Score histograms</h2>{imgs or '<p>No scores yet.</p>'}
</body></html>
"""
