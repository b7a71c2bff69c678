"""Stage 6b, shard: kept pairs into WebDataset tars, `edit-000000.tar ...`, and an index.

Per sample (key = pair key): `<key>.src.mp4`, `<key>.tgt.mp4`, `<key>.json` (instruction,
category, captions, fps, frames, size, scores, provenance). Shards are filled in pair-key order up
to `max_shard_bytes` (about 1 GB by default). Output is byte-for-byte deterministic: the shard plan
is computed from file sizes before anything is written, tar members carry fixed mtime, uid, gid,
owner names and mode, and JSON has sorted keys; each tar is written to a temporary name and
renamed. Shards are written by `shard.workers` threads in parallel (each shard is independent
given the plan, so the bytes do not depend on the worker count). A rerun skips the shards that
exist, then writes `index.json` (counts, bytes and sha256 of every shard) last, so a shard set with
an index is complete. With `shard.keep_media=false` the pairs stage's `media/` copies are deleted
after the index is written (the shards hold the same bytes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from liveditor.files import sha256_file, write_tar
from liveditor.video import read_video, write_video

from .dedup import SCHEMA as DEDUP_SCHEMA
from .manifest import accepted, atomic_write_json, read_rows, rows_to_table, write_manifest
from .pairs import CLIP_STAGE_COLUMNS, GENERATED_SCORE_COLUMNS, SCORE_COLUMNS
from .stage import StageContext

log = logging.getLogger("liveditor.curate")

BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads archives to whole records

SCHEMA = pa.schema(list(DEDUP_SCHEMA) + [pa.field("shard", pa.string())])

NO_SAMPLES_BANNER = ("\n" + "!" * 78 + "\n!! NO SAMPLES: this curation run wrote 0 pairs to its shards.\n"
                     "!! Every clip or pair was rejected somewhere: see the funnel in %s\n"
                     "!! (rejected_here per stage) and loosen the thresholds that reject everything.\n" + "!" * 78)


def _member_bytes(size: int) -> int:
    return BLOCK + (size + BLOCK - 1) // BLOCK * BLOCK


def tar_bytes(sizes: list[int]) -> int:
    """Size of a tar holding members of `sizes` bytes (short names, so one header block each)."""
    raw = sum(_member_bytes(s) for s in sizes) + 2 * BLOCK
    return (raw + RECORD - 1) // RECORD * RECORD


def sample_json(row: dict) -> bytes:
    # Pair scores and the source clip's scores (null where a stage did not compute one, e.g. the
    # aesthetic score without clip_scores.aesthetic_head, or motion for an external pair).
    # Generated pairs add their own checks (object presence, VLM instruction following).
    columns = SCORE_COLUMNS + CLIP_STAGE_COLUMNS + (GENERATED_SCORE_COLUMNS if row.get("origin") == "generated" else ())
    scores = {c: row.get(c) for c in columns}
    meta = {
        "key": row["pair_key"], "instruction": row["instruction"], "category": row["category"], "edit": row.get("edit"),
        "source_caption": row.get("source_caption"), "target_caption": row.get("target_caption"),
        "fps": row.get("fps"), "frames": row.get("frames"), "size": [row.get("width"), row.get("height")],
        "scores": scores, "provenance": dict(json.loads(row["provenance"] or "{}"), origin=row["origin"]),
    }
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def media_bytes(path: str, fps_hint: float) -> bytes:
    """The mp4 bytes of a pair's video: the file itself when it is an mp4, else a PyAV transcode."""
    if path.lower().endswith(".mp4"):
        return Path(path).read_bytes()
    import tempfile

    clip = read_video(path)
    with tempfile.TemporaryDirectory() as tmp:
        out = write_video(Path(tmp) / "v.mp4", clip.frames, fps=clip.fps or fps_hint)
        return out.read_bytes()


def write_shard(path: Path, samples: list[tuple[str, bytes, bytes, bytes]]) -> None:
    """Write `(key, src_mp4, tgt_mp4, json)` samples to a tar at `path`, atomically."""
    write_tar(path, [(key, {"src.mp4": src, "tgt.mp4": tgt, "json": meta}) for key, src, tgt, meta in samples])


def _write_and_hash(job) -> tuple[int, str]:
    """Write one planned shard unless it exists (a resumed run), then return its size and sha256."""
    path, samples = job
    if not path.exists():
        write_shard(path, [(key, src if isinstance(src, bytes) else media_bytes(src, fps),
                            tgt if isinstance(tgt, bytes) else media_bytes(tgt, fps), meta)
                           for key, src, tgt, fps, meta in samples])
    return path.stat().st_size, sha256_file(path)


def _measure(r: dict) -> None:
    """Sizes (and, for non-mp4 videos, the transcoded bytes) of one row's members, for the shard plan."""
    r["_json"] = sample_json(r)
    r["_json_size"] = len(r["_json"])
    # Non-mp4 sources are transcoded; their size is only known after, so measure by transcoding once.
    for side in ("src", "tgt"):
        p = r[f"{side}_path"]
        if not os.path.exists(p) and f"{os.sep}media{os.sep}" not in p:
            raise FileNotFoundError(f"pair '{r['pair_key']}': its {side} video '{p}' does not exist (moved or deleted since the pairs stage)")
        if not os.path.exists(p):
            raise FileNotFoundError(
                f"pair '{r['pair_key']}': its {side} video '{p}' is gone. With shard.keep_media=false the pairs stage's "
                "media/ is removed once the shards are written; to shard again, delete the partitions' pairs.parquet "
                "and rerun stages=[pairs,dedup,shard,report] (or set shard.keep_media=true before the first run)")
        if p.lower().endswith(".mp4"):
            r[f"_{side}_size"] = os.path.getsize(p)
        else:
            r[f"_{side}_bytes"] = media_bytes(p, r.get("fps") or 16.0)
            r[f"_{side}_size"] = len(r[f"_{side}_bytes"])


def remove_pair_media(ctx: StageContext) -> int:
    """Delete the partitions' `media/` folders (pair videos the shards now hold); returns files removed.

    Only called once `shards/index.json` exists, so a killed run still has every video it needs.
    """
    removed = 0
    for part in ctx.partition_dirs():
        media = part / "media"
        if media.is_dir():
            removed += sum(1 for p in media.iterdir() if p.is_file())
            shutil.rmtree(media)
    if removed:
        log.info("shard: removed %d pair videos from partitions/*/media (shard.keep_media=false; the shards hold them)", removed)
    return removed


def plan_shards(rows: list[dict], max_shard_bytes: int) -> list[list[dict]]:
    """Group rows (in order) into shards no bigger than `max_shard_bytes` (a lone oversize sample gets its own)."""
    shards: list[list[dict]] = [[]]
    sizes: list[int] = []
    for r in rows:
        member = [r["_src_size"], r["_tgt_size"], r["_json_size"]]
        if shards[-1] and tar_bytes(sizes + member) > max_shard_bytes:
            shards.append([])
            sizes = []
        shards[-1].append(r)
        sizes += member
    return shards if shards[0] else []


def run(ctx: StageContext) -> None:
    scfg = ctx.cfg.shard
    out_dir = ctx.out_dir / "shards"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(accepted(read_rows(ctx.manifest("dedup"))), key=lambda r: r["pair_key"])
    workers = max(1, int(scfg.workers) or len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # non-mp4 external videos are transcoded here
        list(pool.map(_measure, rows))
    plan = plan_shards(rows, int(scfg.max_shard_bytes))
    pattern = scfg.name_pattern
    jobs = [(out_dir / pattern.format(index=i),
             [(r["pair_key"], r.get("_src_bytes") or r["src_path"], r.get("_tgt_bytes") or r["tgt_path"], r.get("fps"), r["_json"])
              for r in group]) for i, group in enumerate(plan)]
    bar = tqdm(total=len(rows), desc="shard", unit="pair", disable=not ctx.progress, leave=False)
    entries = []
    # Shards are independent given the plan, so they are written (and hashed) in parallel threads:
    # tar writing, file reads and sha256 release the GIL. Results are taken in plan order.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (path, samples), group, (size, digest) in zip(jobs, plan, pool.map(_write_and_hash, jobs)):
            bar.update(len(group))
            for r in group:
                r["shard"] = path.name
            entries.append({"name": path.name, "samples": len(group), "bytes": size, "sha256": digest,
                            "first_key": group[0]["pair_key"], "last_key": group[-1]["pair_key"]})
    bar.close()
    stale = sorted(p.name for p in out_dir.glob("*.tar") if p.name not in {e["name"] for e in entries})
    if stale:
        raise RuntimeError(f"{out_dir} holds shards this run did not plan: {stale[:5]}: the shard set was made from other pairs "
                           "or another shard.max_shard_bytes; remove the shards folder and rerun stages=[shard,report]")
    from .settings import settings_metadata, stage_settings

    table = rows_to_table([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], SCHEMA)
    write_manifest(table.replace_schema_metadata(settings_metadata(stage_settings(ctx.cfg, "shard"))), ctx.manifest("shard"))
    categories: dict[str, int] = {}
    for r in rows:
        categories[r["category"]] = categories.get(r["category"], 0) + 1
    index = {"format": "webdataset", "members": ["src.mp4", "tgt.mp4", "json"], "shards": entries, "num_shards": len(entries),
             "num_samples": len(rows), "total_bytes": sum(e["bytes"] for e in entries), "categories": dict(sorted(categories.items())),
             "max_shard_bytes": int(scfg.max_shard_bytes)}
    atomic_write_json(out_dir / "index.json", index)
    if not scfg.keep_media:
        remove_pair_media(ctx)
    if not rows:
        log.warning(NO_SAMPLES_BANNER, ctx.out_dir / "report" / "index.html")
    else:
        log.info("shard: %d samples in %d shards under %s", len(rows), len(entries), out_dir)
