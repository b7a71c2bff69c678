"""Manifests (one Parquet table per stage) and atomic file writes.

Every file a stage produces appears only when complete (`liveditor.files.atomic_target`): a job
killed at any instant leaves either the old state or the new one, never a partial file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq

from liveditor.files import atomic_target, atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: F401  (the stages import them from here)

PathLike = Union[str, os.PathLike]

# Columns every manifest row carries: why a row was rejected and by which stage (null when kept).
REJECT_FIELDS = [pa.field("reject_reason", pa.string()), pa.field("reject_stage", pa.string())]
# The source clip's scores from the filters and clip_scores stages, carried into every pair of the clip
# (null for external pairs, whose clips those stages never saw).
CLIP_STAGE_COLUMNS = ("motion_score", "sharpness", "clip_caption_similarity", "aesthetic_score")


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) to a table with exactly `schema`'s columns; a missing key is null."""
    names = schema.names
    return pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows], schema=schema)


def write_manifest(rows_or_table: Union[list[dict], pa.Table], path: PathLike, schema: Optional[pa.Schema] = None) -> Path:
    """Write a manifest atomically; rows need `schema`, a table brings its own."""
    table = rows_or_table if isinstance(rows_or_table, pa.Table) else rows_to_table(rows_or_table, schema)
    with atomic_target(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_manifest(path: PathLike) -> pa.Table:
    """Read a stage's manifest; a missing one is an error naming the stage to run first."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest '{path}' does not exist: run the stage '{path.stem}' first (add it to stages=[...])")
    return pq.read_table(path)


def read_rows(path: PathLike) -> list[dict]:
    return read_manifest(path).to_pylist()


def concat_tables(tables: Iterable[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t.select(schema.names).cast(schema) for t in tables]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def accepted(rows: list[dict]) -> list[dict]:
    """Rows no stage has rejected."""
    return [r for r in rows if not r.get("reject_reason")]
