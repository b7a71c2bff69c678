"""`liveditor-eval`: generate edits on benchmarks, score results, write leaderboards (Hydra app).

    liveditor-eval mode=generate run_dir=/runs/ours benchmarks=[editverse] data.editverse.root=/data/EditVerseBench \
        "edit.overrides=['model.weights_path=/ckpt/liveditor.safetensors','model.vae_path=/ckpt/Wan2.2-T2V-A14B-Diffusers']"
    liveditor-eval mode=generate ... shard.index=$SLURM_ARRAY_TASK_ID shard.count=8     # one array task
    liveditor-eval mode=score run_dir=/runs/ours models.clip_l14=/w/clip-vit-large-patch14 judge.base_url=http://h:8000/v1
    liveditor-eval mode=score run_dir=/data/EditVerse_Comparison_Results/TokenFlow method=TokenFlow ...  # others' outputs
    liveditor-eval mode=all ...

`generate` skips items with a `generate.mp4` (resumable) and lists the items whose inputs the
editor does not take in `<run_dir>/<benchmark>/not_run.json`. `score` computes only the rows still
missing. Leaderboards are written after `score` and `all` (and by `mode=leaderboard`) when no shard
index is set. Each run writes its resolved config to `<run_dir>/eval_config[.shard<i>].yaml`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("liveditor.eval")

MODES = ("generate", "score", "all", "leaderboard")
EXIT_BAD_INPUT = 2


def _loader_options(cfg: DictConfig, benchmark: str) -> tuple[str, dict]:
    key = "ivebench" if benchmark.startswith("ivebench") else benchmark
    if key not in cfg.data:
        raise ValueError(f"unknown benchmark {benchmark!r} in benchmarks: choose from editverse, ivebench_short, ivebench_long, viebench")
    d = OmegaConf.to_container(cfg.data[key], resolve=True)
    root = d.pop("root", None)
    if not root:
        raise ValueError(f"data.{key}.root is not set: point it at the {benchmark} folder in its published layout "
                         "(docs/evaluation.md, 'Benchmarks')")
    d.pop("frame_folder_fps", None)
    return root, d


def load_items(cfg: DictConfig, benchmark: str):
    from .benchmarks import load_benchmark

    root, options = _loader_options(cfg, benchmark)
    return load_benchmark(benchmark, root, **options)


def _compose_edit(cfg: DictConfig):
    """The editor's config (configs/edit), composed outside this app's Hydra context."""
    from hydra.core.global_hydra import GlobalHydra

    from liveditor.pipeline.cli import compose_edit_config

    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()  # inside @hydra.main Hydra is initialised with configs/eval only
    try:
        return compose_edit_config(list(cfg.edit.overrides or []), str(cfg.edit.config_name))
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def run_eval(cfg: DictConfig) -> dict:
    """Run `cfg.mode` for every benchmark in `cfg.benchmarks`; returns {benchmark: {"generate": report, "score": report, "leaderboard": paths}}."""
    from liveditor.files import atomic_write_text

    from .judge import JudgeClient, JudgeConfig
    from .leaderboard import build_leaderboard, write_leaderboard
    from .metrics import build_metrics
    from .models import EvalModels
    from .runner import generate, score, shard_items, write_json_atomic
    from .store import ScoreStore

    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r} must be one of {MODES}")
    run_dir = Path(str(cfg.run_dir)).expanduser().resolve()
    method = str(cfg.method or run_dir.name)
    shard_index, shard_count = cfg.shard.index, int(cfg.shard.count)
    if shard_count < 1 or (shard_index is not None and not 0 <= int(shard_index) < shard_count):
        raise ValueError(f"shard.index={shard_index} must be in [0, shard.count={shard_count})")
    if cfg.get("results_dir") and len(cfg.benchmarks) != 1:
        raise ValueError(f"results_dir={cfg.results_dir} holds one benchmark's results: give benchmarks=[<that benchmark>]")
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    edit_cfg = None
    if cfg.mode in ("generate", "all"):
        edit_cfg = _compose_edit(cfg)
        resolved["edit"]["resolved"] = OmegaConf.to_container(edit_cfg, resolve=True)
    suffix = "" if shard_index is None else f".shard{int(shard_index)}"
    atomic_write_text(run_dir / f"eval_config{suffix}.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))

    judge = JudgeClient(JudgeConfig.from_dict(OmegaConf.to_container(cfg.judge, resolve=True)))
    models = EvalModels(OmegaConf.to_container(cfg.models, resolve=True), cfg.metrics.device, cfg.metrics.batch_frames)
    pipeline = None
    out: dict = {}
    for benchmark in cfg.benchmarks:
        benchmark = str(benchmark)
        out[benchmark] = {}
        items = load_items(cfg, benchmark)
        mine = shard_items(items, shard_index, shard_count)
        if cfg.mode in ("generate", "all"):
            fps = float(cfg.data.ivebench.frame_folder_fps)
            report = generate(edit_cfg, mine, benchmark, run_dir, fps, bool(cfg.progress), pipeline)
            not_run = {i.id: {"needs": sorted(i.extra_inputs), "category": i.category} for i in items if not i.runnable}
            write_json_atomic(run_dir / benchmark / "not_run.json", not_run)
            log.info("%s: generated %d, already done %d, not run (inputs the editor does not take) %d, failed %d",
                     benchmark, len(report.generated), len(report.skipped_done), len(report.not_runnable), len(report.failed))
            out[benchmark]["generate"] = report
        store = ScoreStore(run_dir / "scores" / benchmark)
        if cfg.mode in ("score", "all"):
            metrics = build_metrics(benchmark, models, judge, cfg.metrics.plugins, cfg.metrics.select,
                                    quantity_field=str(cfg.metrics.quantity_field),
                                    box_threshold=float(cfg.metrics.grounding_dino.box_threshold),
                                    text_threshold=float(cfg.metrics.grounding_dino.text_threshold))
            results = Path(str(cfg.results_dir)).expanduser() if cfg.get("results_dir") else run_dir / benchmark
            report = score(mine, benchmark, results, metrics, store, method, bool(cfg.progress))
            log.info("%s: %d metric rows written, %d items already complete, %d items without generate.mp4",
                     benchmark, report.scored, report.skipped_done, len(report.items_without_result))
            out[benchmark]["score"] = report
        if cfg.mode in ("score", "all", "leaderboard") and shard_index is None:
            measured = {method: [r for r in store.latest() if r.run == method]}
            for name, other in dict(cfg.leaderboard.compare or {}).items():
                measured[str(name)] = ScoreStore(Path(str(other)) / "scores" / benchmark).latest()
            sizes: dict = {}
            for it in items:
                sizes[it.category] = sizes.get(it.category, 0) + 1
            board = build_leaderboard(benchmark, measured, len(items), sizes, bool(cfg.leaderboard.published))
            out[benchmark]["leaderboard"] = write_leaderboard(board, Path(str(cfg.leaderboard.out_dir)))
            log.info("%s: leaderboard in %s", benchmark, out[benchmark]["leaderboard"]["md"])
    return out


def _hydra_main():
    import hydra

    @hydra.main(config_path="../configs/eval", config_name="eval", version_base="1.3")
    def app(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf.errors import MissingMandatoryValue

        from liveditor.configcheck import check_config

        from liveditor.pipeline.editor import EditError
        from liveditor.video import VideoError

        from .benchmarks import BenchmarkError

        try:
            check_config(cfg, "eval", HydraConfig.get().overrides.task)  # this job's values (a sweep's included)
            run_eval(cfg)
        except MissingMandatoryValue as exc:
            print(f"liveditor-eval: error: {exc.full_key} is not set: pass {exc.full_key}=<folder> (docs/evaluation.md)", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        except (BenchmarkError, EditError, VideoError, FileNotFoundError, ValueError) as exc:
            print(f"liveditor-eval: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    return app


def main(argv=None) -> None:
    """The console entry; `argv` (default: the command line) are Hydra arguments, checked by
    `liveditor.configcheck` before Hydra starts (a bad key, type or range: one line, exit 2)."""
    from liveditor.configcheck import run_hydra_main

    run_hydra_main("eval", "liveditor-eval", argv, _hydra_main())


if __name__ == "__main__":
    main()
