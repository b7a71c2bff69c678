"""What each stage's output was made with, recorded with the output and checked before any work.

A stage's settings are the config keys its rows depend on, flattened to `section.key` names: its
own section and those of every stage before it (a filters row depends on the probe and shot
settings too), without the keys that only change how fast or where the work runs (`OPERATIONAL`:
chunk sizes, worker and decoder thread counts, media clean-up, the VLM endpoint's address and retry
policy). They are recorded

- in every stage manifest's Parquet schema metadata (`SETTINGS_KEY`), so the record travels with the
  rows it describes (copying or deleting a manifest copies or deletes its record); the shard
  stage's record is in `shard.parquet`, written just before `shards/index.json`;
- in `.<stage>.chunks/layout.json` while a row-by-row stage is in progress.

`check_out_dir` compares every record in `out_dir` (every partition, every stage, also stages this
run does not select) with the settings the current config gives, before any stage runs. A stage
made with other settings is an error naming the changed keys, the recorded and the new values and
the fix (another `out_dir`, or deleting that stage's output and everything after it), so a rerun
with other settings, or a `-m` sweep of settings into one `out_dir`, never reuses rows made with
other values, and `resolved_config.yaml` and the report always describe the settings that made
the data. Outputs written before these records existed carry none and are not compared, nor
are keys only one side has (a config key added or removed by another version of the code). Jobs
started at once (a parallel sweep) are kept apart by `stage.run_rowwise`: a stage's chunk stamp is
created exclusively, and a job whose settings differ from it stops before saving a chunk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pyarrow.parquet as pq

# The stages, in pipeline order: per partition, then over the whole run (`stage.py` runs them).
PER_PARTITION_STAGES = ("probe", "shots", "filters", "clip_scores", "pairs")
GLOBAL_STAGES = ("dedup", "shard", "report")
ALL_STAGES = PER_PARTITION_STAGES + GLOBAL_STAGES

SETTINGS_KEY = b"liveditor.curate.settings"

# The config sections each stage reads (a stage's settings also hold every earlier stage's).
SECTIONS = {"probe": ("input", "probe"), "shots": ("shots",), "filters": ("filters",), "clip_scores": ("clip_scores",),
            "pairs": ("pairs",), "dedup": ("dedup",), "shard": ("shard",)}
# Keys that change how the work runs, not the rows it makes.
OPERATIONAL = {
    *(f"{s}.chunk_size" for s in PER_PARTITION_STAGES),
    "pairs.decode_threads", "shots.detector.decode_threads", "shard.workers", "shard.keep_media",
    *(f"pairs.generate.vlm.{k}" for k in ("base_url", "api_key_env", "cache_dir", "max_retries", "backoff_s", "timeout_s",
                                          "parallel_requests")),
}
RECORDED_STAGES = tuple(s for s in ALL_STAGES if s != "report")  # the report is made again by every run


class SettingsChanged(ValueError):
    """`out_dir` holds a stage's output made with other settings; the message names the keys and the fix."""


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        if not value:
            out[prefix] = {}
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}", out)
    else:
        out[prefix] = value


def stage_settings(cfg, stage: str) -> dict[str, Any]:
    """`{dotted key: value}` that `stage`'s rows depend on under `cfg` (its sections and every earlier stage's)."""
    from omegaconf import OmegaConf

    flat: dict[str, Any] = {}
    for name in ALL_STAGES[: ALL_STAGES.index(stage) + 1]:
        for section in SECTIONS.get(name, ()):
            node = cfg.get(section)
            _flatten(OmegaConf.to_container(node, resolve=True) if node is not None else None, section, flat)
    return json.loads(json.dumps({k: v for k, v in sorted(flat.items()) if k not in OPERATIONAL}))  # tuples -> lists


def settings_metadata(settings: Optional[dict]) -> Optional[dict]:
    """Parquet schema metadata recording `settings` (None: nothing to record)."""
    return None if settings is None else {SETTINGS_KEY: json.dumps(settings, sort_keys=True).encode()}


def recorded_settings(manifest: Path) -> Optional[dict]:
    """The settings recorded in a manifest's schema metadata; None when it has none (an older run)."""
    meta = pq.read_schema(manifest).metadata or {}
    raw = meta.get(SETTINGS_KEY)
    return json.loads(raw) if raw else None


def _records(out_dir: Path, count: int, stage: str):
    """`(record path, settings)` of every record of `stage` in `out_dir` (manifests and in-progress chunk folders)."""
    if stage in PER_PARTITION_STAGES:
        parts = sorted((out_dir / "partitions").glob(f"part-*-of-{count:05d}"))
        manifests = [p / f"{stage}.parquet" for p in parts]
        stamps = [p / f".{stage}.chunks" / "layout.json" for p in parts]
    else:
        manifests, stamps = [out_dir / f"{stage}.parquet"], []
    for path in manifests:
        if path.is_file():
            yield path, recorded_settings(path)
    for path in stamps:
        if path.is_file():
            try:
                yield path, json.loads(path.read_text()).get("settings")
            except (OSError, ValueError):  # a stamp cut short by a kill: the chunks are discarded anyway
                continue


def _show(value) -> str:
    return "<unset>" if value is _UNSET else json.dumps(value)


_UNSET = object()


def changed_keys(have: dict, want: dict) -> list[str]:
    """The keys both settings have, with different values. A key only one of them has (a config key
    added or removed by another version of the code) is not a change of the data's settings."""
    return sorted(k for k in set(have) & set(want) if have[k] != want[k])


def describe_change(have: dict, want: dict, limit: int = 6) -> str:
    """`key: <recorded> there, <current> now; ...` for the `changed_keys`."""
    keys = changed_keys(have, want)
    changed = "; ".join(f"{k}: {_show(have.get(k, _UNSET))} there, {_show(want.get(k, _UNSET))} now" for k in keys[:limit])
    return changed + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _redo(stage: str) -> str:
    """What to delete to make `stage` and every later stage again."""
    later = ALL_STAGES[ALL_STAGES.index(stage):]
    part = [s for s in later if s in PER_PARTITION_STAGES]
    names = part[0] if len(part) == 1 else "{" + ",".join(part) + "}"
    items = [f"partitions/*/{names}.parquet", f"partitions/*/.{names}.chunks"] if part else []
    if "pairs" in part:
        items.append("partitions/*/media")
    items += [f for s, f in (("dedup", "dedup.parquet"), ("shard", "shard.parquet"), ("shard", "shards/")) if s in later]
    return ", ".join(items)


def check_out_dir(out_dir: Path, cfg, count: int) -> None:
    """Raise `SettingsChanged` when any stage output in `out_dir` was made with settings other than `cfg`'s."""
    for stage in RECORDED_STAGES:
        want = stage_settings(cfg, stage)
        for path, have in _records(out_dir, count, stage):
            if have is None or not changed_keys(have, want):
                continue
            raise SettingsChanged(
                f"out_dir '{out_dir}' holds {stage} output made with other settings ({describe_change(have, want)}; recorded in "
                f"{path.relative_to(out_dir)}): give a new out_dir for these settings, or delete {_redo(stage)} "
                f"in it to redo {stage} and every later stage with them")
