"""Per-item metric rows, stored as Parquet part files, keyed by (run, benchmark, item, metric).

    store = ScoreStore("/runs/liveditor/scores")
    done = store.done_keys()                       # {(run, benchmark, item, metric), ...}
    store.append(rows)                             # one part file, written then renamed
    table = store.latest()                         # one row per key: the newest

Each `append` writes one file `part-<time ns>-<pid>-<n>.parquet` under a temporary name and renames
it into place, so a job killed at any instant (kill -9 included) leaves whole part files only; the
next run reads them, skips every key already done and computes the rest. Rows are never rewritten:
a key written twice (a "not computed" row, later computed) is read as its newest row.

Row columns: `run`, `benchmark`, `item`, `metric`, `category`, `value` (float, null unless
`status == "ok"`), `status` ("ok", "not_computed", "not_applicable", "error"), `detail` (why,
for every status but ok), `written_at` (Unix seconds).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

STATUSES = ("ok", "not_computed", "not_applicable", "error")
# Keys with these statuses are finished; others are tried again by the next run.
DONE_STATUSES = ("ok", "not_applicable")

SCHEMA = pa.schema([
    ("run", pa.string()), ("benchmark", pa.string()), ("item", pa.string()), ("metric", pa.string()),
    ("category", pa.string()), ("value", pa.float64()), ("status", pa.string()), ("detail", pa.string()),
    ("written_at", pa.float64()),
])

_counter = itertools.count()


@dataclass
class MetricRow:
    run: str
    benchmark: str
    item: str
    metric: str
    category: str
    value: Optional[float]
    status: str
    detail: str = ""
    written_at: float = 0.0

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")
        if (self.status == "ok") != (self.value is not None):
            raise ValueError(f"a row has a value exactly when its status is ok: {self}")

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.run, self.benchmark, self.item, self.metric


class ScoreStore:
    """A folder of Parquet part files."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def append(self, rows: Iterable[MetricRow]) -> Optional[Path]:
        """Write `rows` as one new part file (atomically); returns its path, or None for no rows."""
        rows = list(rows)
        if not rows:
            return None
        now = time.time()
        for r in rows:
            r.written_at = r.written_at or now
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{next(_counter):06d}.parquet"
        final, tmp = self.folder / name, self.folder / f".{name}.partial"
        table = pa.Table.from_pylist([asdict(r) for r in rows], schema=SCHEMA)
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def read_all(self) -> pa.Table:
        parts = self.parts()
        if not parts:
            return SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])

    def latest(self) -> list[MetricRow]:
        """One row per key: the newest written (part files sort by time)."""
        rows: dict[tuple, MetricRow] = {}
        for d in self.read_all().to_pylist():
            row = MetricRow(**d)
            rows[row.key] = row
        return list(rows.values())

    def done_keys(self) -> set[tuple[str, str, str, str]]:
        return {r.key for r in self.latest() if r.status in DONE_STATUSES}

    def remove_partials(self, older_than_s: float = 3600.0) -> None:
        """Delete temporaries a killed writer left (`.part-*.partial`), those older than `older_than_s`
        (a writer of another array task may be between its write and its rename right now)."""
        if self.folder.is_dir():
            now = time.time()
            for p in self.folder.glob(".part-*.partial"):
                try:
                    if now - p.stat().st_mtime > older_than_s:
                        p.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
