"""What every stage shares: partitions, folders, and the resumable row-by-row runner.

Layout of a curation run (`out_dir`):

    out_dir/
      resolved_config.yaml                  the last run's resolved config (also one per partition)
      partitions/part-00000-of-00004/       per-partition stages
        probe.parquet shots.parquet filters.parquet clip_scores.parquet pairs.parquet
        media/<pair_key>.src.mp4 .tgt.mp4   clips cut or edited by the pairs stage
        .<stage>.chunks/                    finished chunks of a stage in progress (resume points)
      dedup.parquet                         all partitions' pairs, duplicates marked
      shards/edit-000000.tar ... index.json shard.parquet
      report/index.html funnel.json *.png

A stage whose manifest exists is finished and is skipped on a rerun. A row-by-row stage writes
its finished chunks atomically, so a killed job loses at most the chunk it was working on, and
the final manifest is the same rows in the same order as an uninterrupted run's. Rows a stage could
not finish for a reason a rerun may get past (the pairs stage's VLM endpoint unreachable, timing
out, rate-limiting or answering 5xx) stay in their chunk marked as such: the stage writes no
manifest and raises `UnfinishedRows`, and a rerun computes exactly those rows again. The manifest
and the chunk folder's stamp record the stage's settings (`settings.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .manifest import rows_to_table, write_manifest
from .settings import (  # noqa: F401 (the stage names are re-exported)
    ALL_STAGES,
    GLOBAL_STAGES,
    PER_PARTITION_STAGES,
    SettingsChanged,
    changed_keys,
    describe_change,
    settings_metadata,
    stage_settings,
)

log = logging.getLogger("liveditor.curate")



def stable_hash(text: str) -> int:
    """A hash that is the same in every process and on every machine (unlike `hash()`)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def short_id(text: str, n: int = 16) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


@dataclass(frozen=True)
class Partition:
    """Input partition `index` of `count`: the inputs whose stable hash is `index` modulo `count`."""

    index: int
    count: int

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}-of-{self.count:05d}"

    def owns(self, key: str) -> bool:
        return stable_hash(key) % self.count == self.index


@dataclass
class StageContext:
    """Where a stage reads and writes, and with which config."""

    out_dir: Path
    cfg: object  # the whole resolved DictConfig
    partition: Optional[Partition] = None
    progress: bool = True

    @property
    def part_dir(self) -> Path:
        assert self.partition is not None, "per-partition stage run without a partition"
        return self.out_dir / "partitions" / self.partition.name

    def manifest(self, stage: str) -> Path:
        base = self.part_dir if stage in PER_PARTITION_STAGES else self.out_dir
        return base / f"{stage}.parquet"

    def partition_dirs(self) -> list[Path]:
        root = self.out_dir / "partitions"
        return sorted(p for p in root.glob("part-*-of-*") if p.is_dir()) if root.exists() else []


class UnfinishedRows(RuntimeError):
    """A stage ended with rows still to do (for the pairs stage: no answer from the VLM endpoint);
    their chunks are kept and a rerun computes exactly those rows again."""

    def __init__(self, stage: str, where: str, count: int, total: int, reasons: dict, example: Optional[str]):
        self.stage, self.where, self.count, self.total, self.reasons, self.example = stage, where, count, total, reasons, example
        why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        super().__init__(f"{where} {stage}: {count} of {total} rows are unfinished ({why})"
                         + (f"; last error: {example}" if example else ""))


def run_rowwise(
    ctx: StageContext,
    stage: str,
    inputs: list[dict],
    process: Callable[[dict], list[dict]],
    schema: pa.Schema,
    chunk_size: int,
    desc: Optional[str] = None,
    batched: bool = False,
    retry: Optional[Callable[[dict], bool]] = None,
    settings: Optional[dict] = None,
) -> Path:
    """Map `process` over `inputs` in chunks, each chunk's rows saved atomically, then the manifest.

    `process(row)` returns the output rows of one input row (zero, one or many); with `batched`,
    `process(rows)` gets a whole chunk (for batched model inference). Finished chunks
    from an earlier, killed run are reused, so a rerun continues where the job died.

    `retry(row)` (batched stages with one output row per input only) marks rows that are not
    finished: they are saved in their chunk like the others, but a rerun computes exactly those
    inputs again (in a batch of their own) and puts the new rows in their places. While any is left
    after the last chunk, no manifest is written and `UnfinishedRows` is raised. `settings` (the
    stage's `settings.stage_settings`, by default from `ctx.cfg`) is recorded in the chunk stamp and
    the manifest's metadata.
    """
    settings = stage_settings(ctx.cfg, stage) if settings is None else settings
    out = ctx.manifest(stage)
    chunks_dir = out.parent / f".{stage}.chunks"
    stamp = chunks_dir / "layout.json"
    layout = {"chunk_size": chunk_size, "inputs": len(inputs)}
    if chunks_dir.exists():
        try:
            recorded = json.loads(stamp.read_text())
            same = {k: recorded.get(k) for k in layout} == layout
        except (OSError, ValueError):
            same = False
        if not same:  # chunks of another layout cannot be reused row for row
            shutil.rmtree(chunks_dir)
    chunks_dir.mkdir(parents=True, exist_ok=True)
    _claim(stamp, dict(layout, settings=settings))

    def check_stamp() -> None:  # jobs with other settings (a parallel -m sweep) never write into one stage folder
        try:
            have = json.loads(stamp.read_text()).get("settings")
        except (OSError, ValueError):
            return
        if have is not None and changed_keys(have, settings):
            raise SettingsChanged(f"{chunks_dir} is being written by a job with other settings ({describe_change(have, settings)}): "
                                  "give each setting its own out_dir")
    if retry is not None and not batched:
        raise ValueError("run_rowwise: retry needs batched=True (one output row per input row)")
    n_chunks = (len(inputs) + chunk_size - 1) // chunk_size
    paths = [chunks_dir / f"{i:06d}.parquet" for i in range(n_chunks)]
    bar = tqdm(total=len(inputs), desc=desc or stage, unit="row", disable=not ctx.progress, leave=False)
    unfinished, reasons, example = 0, {}, None
    for i, path in enumerate(paths):
        chunk = inputs[i * chunk_size : (i + 1) * chunk_size]
        rows = None
        if not path.exists():
            rows = process(chunk) if batched else [r for row in chunk for r in process(row)]
            _check_one_per_input(stage, rows, chunk, retry)
            check_stamp()
            write_manifest(rows_to_table(rows, schema), path)
        elif retry is not None:
            rows = pq.read_table(path).to_pylist()
            again = [j for j, r in enumerate(rows) if retry(r)]
            if again:
                redone = process([chunk[j] for j in again])
                _check_one_per_input(stage, redone, again, retry)
                for j, row in zip(again, redone):
                    rows[j] = row
                check_stamp()
                write_manifest(rows_to_table(rows, schema), path)
        if retry is not None:
            for r in rows:
                if retry(r):
                    unfinished += 1
                    reasons[r.get("reject_reason")] = reasons.get(r.get("reject_reason"), 0) + 1
                    example = r.get("error") or example
        bar.update(len(chunk))
    bar.close()
    if unfinished:
        where = ctx.partition.name if ctx.partition is not None else "out_dir"
        raise UnfinishedRows(stage, where, unfinished, len(inputs), reasons, example)
    check_stamp()
    tables = [pq.read_table(p) for p in paths]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    write_manifest(table.cast(schema).replace_schema_metadata(settings_metadata(settings)), out)
    shutil.rmtree(chunks_dir, ignore_errors=True)
    return out


def _claim(stamp: Path, layout: dict) -> None:
    """Write the chunk folder's stamp unless one exists, atomically and exclusively (a hard link of a
    complete temporary file: of two jobs starting at once, exactly one stamp wins)."""
    if stamp.exists():
        return
    tmp = stamp.parent / f".{stamp.name}.{secrets.token_hex(4)}.partial"
    tmp.write_text(json.dumps(layout, indent=2, sort_keys=True) + "\n")
    try:
        os.link(tmp, stamp)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _check_one_per_input(stage: str, rows: list, inputs: list, retry) -> None:
    if retry is not None and len(rows) != len(inputs):
        raise RuntimeError(f"{stage}: {len(rows)} rows for {len(inputs)} inputs; retrying rows needs one row per input")


def reject(row: dict, stage: str, reason: str) -> dict:
    """Mark `row` rejected by `stage` unless an earlier stage already did (the first reason stays)."""
    if not row.get("reject_reason"):
        row["reject_reason"] = reason
        row["reject_stage"] = stage
    return row
