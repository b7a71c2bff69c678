"""`liveditor-curate`: raw videos to WebDataset edit-pair shards (Hydra app).

    liveditor-curate input.paths=[/data/raw] out_dir=/data/curated            # everything, here
    liveditor-curate ... stages=[probe,shots,filters]                         # some stages
    slurm/curate_submit.sh 64 input.paths=[/data/raw] out_dir=/data/curated   # SLURM: array + dependent merge
    liveditor-curate ... partition.count=64 partition.index=3                 # one partition (an array task)
    liveditor-curate ... partition.count=64 stages=[dedup,shard,report]       # the merge, after all partitions

Per-partition stages (probe, shots, filters, clip_scores, pairs) run for `partition.index`, or
for every partition in turn when it is null. Global stages (dedup, shard, report) run only when
`partition.index` is null, so a job array's tasks never race on them. Finished stages are skipped.

Before any stage: the whole config (`liveditor.configcheck`), the stages' own options, every model
path's kind (`clip_scores.checkpoint`, `pairs.generate.*.path`) and the settings recorded with the
outputs already in `out_dir` (`settings.check_out_dir`: a stage made with other settings is refused)
are checked; a mistake is one line on stderr and exit 2. A run that ends with rows still unfinished
(the pairs stage's VLM endpoint gave no answer) says how many and what to rerun, and exits 3.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .manifest import atomic_write_text
from .stage import ALL_STAGES, GLOBAL_STAGES, PER_PARTITION_STAGES, Partition, StageContext, UnfinishedRows

log = logging.getLogger("liveditor.curate")


def _stage_module(name: str):
    from . import clip_scores, dedup, filters, pairs, probe, report, shard, shots

    return {"probe": probe, "shots": shots, "filters": filters, "clip_scores": clip_scores, "pairs": pairs,
            "dedup": dedup, "shard": shard, "report": report}[name]


def _done_marker(ctx: StageContext, stage: str) -> Path:
    if stage == "shard":
        return ctx.out_dir / "shards" / "index.json"
    if stage == "report":
        return ctx.out_dir / "report" / "index.html"
    return ctx.manifest(stage)


def _remove_partials(folder: Path) -> None:
    """Delete temporary files a killed job left behind (atomic writes name them `.<name>...partial...`)."""
    if folder.exists():
        for p in folder.rglob(".*partial*"):
            if p.is_file():
                p.unlink()


def _selected_stages(cfg: DictConfig) -> list[str]:
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in ALL_STAGES]
    if unknown:
        raise ValueError(f"stages={stages} has unknown stages {unknown}: choose from {list(ALL_STAGES)}")
    return [s for s in ALL_STAGES if s in stages]  # always in pipeline order


class CurationIncomplete(RuntimeError):
    """Rows were left unfinished (`stage.UnfinishedRows`, one per partition and stage); the message
    says how many, why, and what to rerun. Nothing finished is lost."""

    def __init__(self, parts: list[UnfinishedRows], rerun: str):
        self.parts = parts
        count = sum(p.count for p in parts)
        lines = [f"liveditor-curate: {count} rows are unfinished, so their stage wrote no manifest and the later stages did not run:"]
        lines += [f"  {p}" for p in parts]
        lines.append(f"Rerun the same command ({rerun}) once the VLM endpoint answers: finished rows are kept and only "
                     "these rows are made again.")
        super().__init__("\n".join(lines))


def check_models(cfg) -> None:
    """Every model path the selected stages will load is of the right kind: named errors before any work."""
    stages = _selected_stages(cfg)
    if {"clip_scores", "pairs"} & set(stages):
        ccfg = cfg.clip_scores
        if ccfg.checkpoint is None:
            # Fail before hours of probing and shot detection, not when the first CLIP stage starts.
            raise ValueError("clip_scores.checkpoint is not set: point it at an open_clip checkpoint file for "
                             f"'{ccfg.model}' (weights are never downloaded at run time), or use "
                             "clip_scores=tiny_random for a random-initialised model (tests, demo)")
        for key, path in (("clip_scores.checkpoint", ccfg.checkpoint), ("clip_scores.aesthetic_head", ccfg.get("aesthetic_head"))):
            if path is not None and not (key == "clip_scores.checkpoint" and str(path) == "random") and not os.path.isfile(str(path)):
                what = "does not exist" if not os.path.exists(str(path)) else "is a folder"
                raise ValueError(f"{key}='{path}' {what}: point it at the checkpoint file itself (e.g. the "
                                 f"open_clip_pytorch_model.bin of '{ccfg.model}'){', or set it to random' if key.endswith('checkpoint') else ''}")
    if "pairs" in stages:
        from .pairs import check_pairs_config

        check_pairs_config(cfg.pairs)  # pair size and edit names: named errors before probing and shot detection
        if cfg.pairs.get("generate") is not None and cfg.pairs.generate.enabled:
            from .generate.source import check_generate_config

            check_generate_config(cfg.pairs)  # endpoint, model folders and their kinds, categories


def prepare_curation(cfg: DictConfig):
    """Every check that needs no work: `(cfg, out_dir, stages)` with the paths resolved, or a
    ValueError naming the key or folder (the CLI prints it as one line and exits 2)."""
    from .settings import check_out_dir

    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.base_dir = os.path.abspath(cfg.base_dir or os.getcwd())
    out_dir = Path(cfg.base_dir, cfg.out_dir).resolve()
    cfg.out_dir = str(out_dir)
    count, index = int(cfg.partition.count), cfg.partition.index
    if count < 1 or (index is not None and not 0 <= int(index) < count):
        raise ValueError(f"partition.index={index} must be in [0, partition.count={count})")
    stages = _selected_stages(cfg)
    check_models(cfg)
    check_out_dir(out_dir, cfg, count)  # a stage made with other settings: refused, never mislabelled
    return cfg, out_dir, stages


def run_curation(cfg: DictConfig) -> Path:
    """Run the selected stages; returns the output folder. Raises `CurationIncomplete` when rows were
    left unfinished (after running every partition it could)."""
    cfg, out_dir, stages = prepare_curation(cfg)
    count, index = int(cfg.partition.count), cfg.partition.index
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    atomic_write_text(out_dir / "resolved_config.yaml", resolved)
    progress = bool(cfg.progress)

    unfinished: list[UnfinishedRows] = []
    indices = range(count) if index is None else [int(index)]
    for i in indices:
        ctx = StageContext(out_dir, cfg, Partition(i, count), progress)
        per_part = [s for s in stages if s in PER_PARTITION_STAGES]
        if per_part:
            _remove_partials(ctx.part_dir)  # this partition is ours alone: no other job writes here
            atomic_write_text(ctx.part_dir / "resolved_config.yaml", resolved)
        for stage in per_part:
            if _done_marker(ctx, stage).exists():
                log.info("%s %s: finished earlier, skipped", ctx.partition.name, stage)
                # a kill between the manifest's rename and the clean-up leaves the chunks: finish the clean-up
                shutil.rmtree(ctx.part_dir / f".{stage}.chunks", ignore_errors=True)
                continue
            log.info("%s %s: running", ctx.partition.name, stage)
            try:
                _stage_module(stage).run(ctx)
            except UnfinishedRows as exc:  # the other partitions still run; this one's later stages cannot
                log.warning("%s", exc)
                unfinished.append(exc)
                break
    rerun = f"out_dir={out_dir}" + (f" partition.index={index}" if index is not None else "")
    if unfinished:
        raise CurationIncomplete(unfinished, rerun)
    global_stages = [s for s in stages if s in GLOBAL_STAGES]
    if global_stages and index is not None:
        log.info("partition.index=%s: global stages %s are left for a run with partition.index=null "
                 "(after every partition has finished)", index, global_stages)
        return out_dir
    ctx = StageContext(out_dir, cfg, None, progress)
    _remove_partials(out_dir / "shards")
    for stage in global_stages:
        if _done_marker(ctx, stage).exists() and stage != "report":  # the report always reflects the latest state
            log.info("%s: finished earlier, skipped", stage)
            if stage == "shard" and not cfg.shard.keep_media:
                _stage_module("shard").remove_pair_media(ctx)  # finishes a clean-up that a kill interrupted
            continue
        log.info("%s: running", stage)
        _stage_module(stage).run(ctx)
    return out_dir


def _hydra_main():
    import hydra

    @hydra.main(config_path="../configs/curate", config_name="curate", version_base="1.3")
    def app(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        from liveditor.configcheck import ConfigError, check_config

        try:
            check_config(cfg, "curate", HydraConfig.get().overrides.task)  # this job's values (a sweep's included)
            prepare_curation(cfg)  # stage options, model kinds, out_dir's recorded settings
        except (ConfigError, ValueError) as exc:
            print(f"liveditor-curate: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        from .settings import SettingsChanged

        try:
            run_curation(cfg)
        except CurationIncomplete as exc:
            print(exc, file=sys.stderr)
            sys.exit(EXIT_UNFINISHED)
        except SettingsChanged as exc:  # a job with other settings started on this out_dir meanwhile
            print(f"liveditor-curate: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    return app


EXIT_BAD_INPUT = 2
EXIT_UNFINISHED = 3  # rows left unfinished (VLM endpoint down): rerun the same command


def main(argv=None) -> None:
    """The console entry; `argv` (default: the command line) are Hydra arguments, checked by
    `liveditor.configcheck` before Hydra starts (a bad key, type or range: one line, exit 2)."""
    from liveditor.configcheck import run_hydra_main

    run_hydra_main("curate", "liveditor-curate", argv, _hydra_main())


if __name__ == "__main__":
    main()
