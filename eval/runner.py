"""The two jobs of `liveditor-eval`: `generate` (run the editor on every item) and `score`.

Results layout (EditVerseBench's own): `<run_dir>/<benchmark>/<item_id>/generate.mp4`, with the
source as the editor saw it (resampled, resized, cropped) beside it as `video1.mp4`. Both appear
atomically, `video1.mp4` first, so an item with a `generate.mp4` is finished and a rerun skips it.
Items are split across array tasks by `shard_items` (item `i` goes to task `i % count`).

Scores go to a `ScoreStore` (`<run_dir>/scores/<benchmark>/`), one part file per item, so a rerun,
or a job killed at any point, computes only the (item, metric) rows still missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from liveditor.files import atomic_write_text

from .benchmarks import Item
from .frames import load_frames
from .judge import JudgeError, JudgeRefused
from .models import ModelLoadError, NotApplicable, NotComputed
from .store import DONE_STATUSES, MetricRow, ScoreStore

log = logging.getLogger("liveditor.eval")

# Failures that stop a scoring run (a configuration mistake), rather than becoming one item's error row.
FATAL = (JudgeRefused, ModelLoadError)


def item_dir(run_dir, benchmark: str, item: Item) -> Path:
    return Path(run_dir) / benchmark / item.id


def shard_items(items: Sequence[Item], index: Optional[int], count: int) -> list[Item]:
    """The items of array task `index` of `count` (every `count`-th, from `index`); all when index is None."""
    if count < 1 or (index is not None and not 0 <= int(index) < count):
        raise ValueError(f"shard.index={index} must be in [0, shard.count={count})")
    return list(items) if index is None else [it for n, it in enumerate(items) if n % count == int(index)]


def write_json_atomic(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False))


def _progress(iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="item")


@dataclass
class GenerateReport:
    generated: list = field(default_factory=list)
    skipped_done: list = field(default_factory=list)
    not_runnable: dict = field(default_factory=dict)  # item id -> what it needs
    failed: dict = field(default_factory=dict)  # item id -> error


def _source_video(item: Item, v, frame_folder_fps: float):
    """`(video [3, T, H, W] in [-1, 1], size)` as the editor's `edit_file` prepares it: resampled to
    `video.fps`, at most `video.num_frames` frames rounded down to 4k+1, fitted to the nearest bucket.
    A frame folder is read at `frame_folder_fps`, decoding only the frames kept."""
    from PIL import Image

    from liveditor.pipeline.preprocess import (DEFAULT_BUCKETS, choose_bucket, frame_count_4k1, load_source_video,
                                               resample_indices, resize_and_crop)
    from liveditor.video import VideoError

    from .benchmarks import frame_files

    buckets = [tuple(b) for b in v.buckets] if v.get("buckets") else DEFAULT_BUCKETS
    start_s = float(v.get("start_s", 0.0))
    if not Path(item.source).is_dir():
        video, _, size = load_source_video(item.source, int(v.num_frames), float(v.fps), start_s, buckets, v.get("resolution"))
        return video, size
    files = frame_files(Path(item.source))
    indices = resample_indices(len(files), frame_folder_fps, float(v.fps), int(v.num_frames), start_s)
    if not indices:
        raise VideoError(f"frame folder '{item.source}' has no frames after {start_s} s ({len(files)} frames at {frame_folder_fps} fps)")
    frames = np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in indices[:frame_count_4k1(len(indices))]])
    size = tuple(int(x) for x in v.resolution) if v.get("resolution") else choose_bucket(frames.shape[2], frames.shape[1], buckets)
    return resize_and_crop(frames, size), size


def generate(edit_cfg, items: Sequence[Item], benchmark: str, run_dir, frame_folder_fps: float = 24.0,
             progress: bool = True, pipeline=None) -> GenerateReport:
    """Edit every runnable item without a `generate.mp4`; list the others. `pipeline`: an
    `EditPipeline` to use (else built from `edit_cfg` on the first item that needs it)."""
    from liveditor.pipeline.preprocess import to_uint8_frames
    from liveditor.video import VideoError, write_video

    report = GenerateReport()
    for item in _progress(items, progress, f"generate {benchmark}", len(items)):
        out_dir = item_dir(run_dir, benchmark, item)
        if (out_dir / "generate.mp4").is_file():
            report.skipped_done.append(item.id)
            continue
        if not item.runnable:
            report.not_runnable[item.id] = sorted(item.extra_inputs)
            continue
        try:
            video, size = _source_video(item, edit_cfg.video, frame_folder_fps)
        except VideoError as exc:
            log.error("%s item %s: %s", benchmark, item.id, exc)
            report.failed[item.id] = str(exc)
            continue
        if pipeline is None:
            from omegaconf import OmegaConf

            from liveditor.pipeline.editor import EditPipeline, check_edit_config

            checked = edit_cfg.copy()
            OmegaConf.set_struct(checked, False)
            checked.prompt = item.editor_instruction
            check_edit_config(checked, need_io=False)  # model paths, sampling and video settings
            pipeline = EditPipeline.from_config(edit_cfg)
        result = pipeline.edit(video, item.editor_instruction, seed=int(edit_cfg.get("seed", 0)))
        write_video(out_dir / "video1.mp4", to_uint8_frames(video), fps=result.fps)
        write_video(out_dir / "generate.mp4", result.frames, fps=result.fps)
        report.generated.append(item.id)
    return report


@dataclass
class ScoreReport:
    scored: int = 0  # rows written
    items_without_result: list = field(default_factory=list)
    skipped_done: int = 0  # items with every metric done
    errors: dict = field(default_factory=dict)  # item id -> metrics whose row is an error (retried by a rerun)


def _read_pair(out_dir: Path, item: Item):
    edited = load_frames(out_dir / "generate.mp4")
    src = out_dir / "video1.mp4"
    if not src.is_file() and not item.source:
        raise FileNotFoundError(f"item {item.id} has neither '{src}' nor its source video in the benchmark folder")
    source = load_frames(src if src.is_file() else item.source)
    return edited, source


def missing_sources(items: Sequence[Item], results_dir) -> list[str]:
    """Ids of the items with a result in `results_dir` but neither its `video1.mp4` nor their source."""
    return [it.id for it in items if not it.source and (Path(results_dir) / it.id / "generate.mp4").is_file()
            and not (Path(results_dir) / it.id / "video1.mp4").is_file()]


def pending_metrics(items: Sequence[Item], benchmark: str, names: Sequence[str], store: ScoreStore, run: str,
                    results_dir=None) -> set:
    """The metrics of `names` that some item still needs (its row missing or not done); with
    `results_dir`, only items that have a result there count."""
    done = store.done_keys()
    out = set()
    for item in items:
        if results_dir is not None and not (Path(results_dir) / item.id / "generate.mp4").is_file():
            continue
        out.update(n for n in names if (run, benchmark, item.id, n) not in done)
    return out


def score(items: Sequence[Item], benchmark: str, results_dir, metrics: Mapping, store: ScoreStore, run: str,
          progress: bool = True) -> ScoreReport:
    """Compute every (item, metric) row not yet done for items with a result, one part file per item.

    `results_dir` holds `<item_id>/generate.mp4` (and `video1.mp4`): `<run_dir>/<benchmark>` for
    our runs, or a folder in EditVerse's layout such as `EditVerse_Comparison_Results/TokenFlow`."""
    report = ScoreReport()
    store.remove_partials()
    latest = {r.key: r for r in store.latest()}
    # NotComputed comes from the configuration (no model path, no judge, no plug-in), the same for
    # every item: learnt once, then written without decoding, and not rewritten when already stored.
    unavailable: dict = {}
    for item in _progress(items, progress, f"score {benchmark}", len(items)):
        keys = {m: (run, benchmark, item.id, m) for m in metrics}
        pending = [m for m in metrics if keys[m] not in latest or latest[keys[m]].status not in DONE_STATUSES]
        if not pending:
            report.skipped_done += 1
            continue
        out_dir = Path(results_dir) / item.id
        if not (out_dir / "generate.mp4").is_file():
            report.items_without_result.append(item.id)
            continue
        frames = None
        rows = []
        for name in pending:
            value, status, detail = None, "ok", ""
            applies = getattr(metrics[name], "applies", None)
            try:
                if applies is not None:
                    applies(item)  # decided by the item alone: before the shortcut below
                if name in unavailable:
                    status, detail = "not_computed", unavailable[name]
                else:
                    if frames is None:
                        frames = _read_pair(out_dir, item)
                    value = float(metrics[name](frames[0], frames[1], item))
                    if not np.isfinite(value):
                        value, status, detail = None, "error", "the metric gave a non-finite value"
            except NotComputed as exc:
                status, detail = "not_computed", exc.reason
                unavailable[name] = exc.reason
            except NotApplicable as exc:
                status, detail = "not_applicable", exc.reason
            except FATAL:  # a configuration no other item will fare better with: stop the run
                raise
            except Exception as exc:  # any failure of one metric on one item (a plug-in's included) is that row's
                value, status, detail = None, "error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
                expected = isinstance(exc, (JudgeError, ValueError, RuntimeError, OSError))
                log.error("%s item %s metric %s: %s", benchmark, item.id, name, detail, exc_info=not expected)
            if status == "error":
                report.errors.setdefault(item.id, []).append(name)
            previous = latest.get(keys[name])
            if status == "not_computed" and previous is not None and (previous.status, previous.detail) == (status, detail):
                continue  # already stored as such
            rows.append(MetricRow(run, benchmark, item.id, name, item.category, value, status, detail))
        store.append(rows)
        report.scored += len(rows)
    return report


# EditVerse's scorer writes its metric columns in this order (`EvaluatorWrapper.all_metrics`).
EDITVERSE_CSV_ORDER = ("clip_temporal_consistency", "dino_temporal_consistency", "frame_text_alignment",
                       "video_text_alignment", "pick_score_video_quality", "editing_vlm_evaluation")


def write_item_csv(path, benchmark: str, items: Sequence[Item], rows) -> Optional[Path]:
    """Per-item scores in the layout of EditVerse's scorer, to diff against its output: columns `id`,
    the metrics (EditVerse's order for EditVerseBench, the benchmark's otherwise; those with a row),
    `type` (the category); one row per item with a row, in benchmark order, a value only where the
    row is ok (empty otherwise); a last row `Average` with each column's mean over its values.
    Returns the path (None, nothing written, when there are no rows)."""
    import csv
    import io

    from .metrics import metric_names

    rows = list(rows)
    if not rows:
        return None
    order = EDITVERSE_CSV_ORDER if benchmark == "editverse" else metric_names(benchmark)
    present = {r.metric for r in rows}
    columns = [m for m in order if m in present]
    value = {(r.item, r.metric): r.value for r in rows if r.status == "ok"}
    scored = {r.item for r in rows}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", *columns, "type"])
    sums = {m: [] for m in columns}
    for item in items:
        if item.id not in scored:
            continue
        cells = []
        for m in columns:
            v = value.get((item.id, m))
            if v is not None:
                sums[m].append(v)
            cells.append("" if v is None else repr(float(v)))
        writer.writerow([item.id, *cells, item.category])
    writer.writerow(["Average", *("" if not sums[m] else repr(float(np.mean(sums[m]))) for m in columns), ""])
    path = Path(path)
    atomic_write_text(path, buf.getvalue())
    return path
