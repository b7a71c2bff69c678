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

Every input is checked before anything is written (benchmark data, the editor's paths, model paths
and weights, `metrics.device`, plug-ins, the results folder, the judge endpoint): a mistake is one
line on stderr and exit 2, and the run's own log folder is removed again. A run that finishes with
items not generated or metric rows that failed exits 1 with one line saying so (a rerun retries them).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("liveditor.eval")

MODES = ("generate", "score", "all", "leaderboard")
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1  # the run finished, but some items or metric rows failed (a rerun retries them)


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


def load_items(cfg: DictConfig, benchmark: str, **options):
    """`benchmark`'s items from its `data.*` folder; `options` go to the loader (`require_sources`, `outside`)."""
    from .benchmarks import load_benchmark

    root, loader_options = _loader_options(cfg, benchmark)
    return load_benchmark(benchmark, root, **loader_options, **options)


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


def _check_editor(edit_cfg) -> None:
    """The editor's paths and settings (`check_edit_config` without an input video), before any
    item: a wrong `model.weights_path` in `edit.overrides` stops here, not after the benchmark loads."""
    from liveditor.pipeline.editor import EditError, check_edit_config, resolve_device

    checked = edit_cfg.copy()
    OmegaConf.set_struct(checked, False)
    checked.prompt = "a benchmark instruction"  # each item's own is set when it runs
    try:
        check_edit_config(checked, need_io=False)
        resolve_device(str(checked.runtime.get("device") or "auto"))  # runtime.device=cuda without a GPU
    except ValueError as exc:  # EditError, and the value checks' errors
        raise EditError(f"edit.overrides: {' '.join(str(exc).split())}") from exc


def _results_folder(cfg: DictConfig, run_dir: Path, benchmark: str) -> Path:
    return Path(str(cfg.results_dir)).expanduser() if cfg.get("results_dir") else run_dir / benchmark


def _check_results(cfg: DictConfig, run_dir: Path, benchmark: str, items) -> None:
    """`mode=score`: the results folder exists and holds some item's `generate.mp4`; every item with a
    result has a source (its `video1.mp4`, or the benchmark's video)."""
    from .benchmarks import BenchmarkError
    from .runner import missing_sources

    folder = _results_folder(cfg, run_dir, benchmark)
    key = "results_dir" if cfg.get("results_dir") else "run_dir"
    layout = "<item_id>/generate.mp4 (EditVerse's layout)" if cfg.get("results_dir") else f"{benchmark}/<item_id>/generate.mp4"
    if not folder.is_dir():
        raise FileNotFoundError(f"{key}: '{folder}' does not exist: point {key} at a folder holding {layout}"
                                + ("" if cfg.get("results_dir") else ", or run mode=generate first"))
    if not any((folder / it.id / "generate.mp4").is_file() for it in items):
        example = folder / (items[0].id if items else "<id>") / "generate.mp4"
        raise FileNotFoundError(f"{key}: '{folder}' holds no result of the {len(items)} {benchmark} items (no {example}): "
                                f"point {key} at a folder holding {layout}")
    lacking = missing_sources(items, folder)
    if lacking:
        raise BenchmarkError(f"{benchmark}: {len(lacking)} item(s) with a result have neither {folder}/<id>/video1.mp4 nor their "
                             f"source video in the benchmark folder (first: {lacking[0]}): add the sources, or the results' video1.mp4")


def run_eval(cfg: DictConfig) -> dict:
    """Run `cfg.mode` for every benchmark in `cfg.benchmarks`; returns {benchmark: {"generate": report, "score": report, "leaderboard": paths}}.

    Every input is checked before anything is written (benchmark folders, the editor's config,
    model paths and weights, the device, plug-ins, the results folder, the judge endpoint): a
    mistake raises (ValueError, FileNotFoundError or JudgeError, naming the key) and leaves `run_dir`
    as it was."""
    from liveditor.files import atomic_write_text

    from .judge import JudgeClient, JudgeConfig
    from .leaderboard import build_leaderboard, write_leaderboard
    from .metrics import JUDGE_METRICS, build_metrics
    from .models import EvalModels
    from .runner import generate, pending_metrics, score, shard_items, write_item_csv, write_json_atomic
    from .store import ScoreStore

    _STATE["started"] = False
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r} must be one of {MODES}")
    run_dir = Path(str(cfg.run_dir)).expanduser().resolve()
    method = str(cfg.method or run_dir.name)
    shard_index, shard_count = cfg.shard.index, int(cfg.shard.count)
    if shard_count < 1 or (shard_index is not None and not 0 <= int(shard_index) < shard_count):
        raise ValueError(f"shard.index={shard_index} must be in [0, shard.count={shard_count})")
    if cfg.get("results_dir") and len(cfg.benchmarks) != 1:
        raise ValueError(f"results_dir={cfg.results_dir} holds one benchmark's results: give benchmarks=[<that benchmark>]")
    generating, scoring = cfg.mode in ("generate", "all"), cfg.mode in ("score", "all")

    # 1. Inputs, checked before anything is written.
    benchmarks = [str(b) for b in cfg.benchmarks]
    items_of, outside_of = {}, {}
    for benchmark in benchmarks:
        outside_of[benchmark] = []
        items_of[benchmark] = load_items(cfg, benchmark, require_sources=generating, outside=outside_of[benchmark])
    edit_cfg = _compose_edit(cfg) if generating else None
    if edit_cfg is not None and any(it.runnable for b in benchmarks for it in items_of[b]):
        _check_editor(edit_cfg)
    metrics_of: dict = {}
    if scoring:
        models = EvalModels(OmegaConf.to_container(cfg.models, resolve=True), cfg.metrics.device, cfg.metrics.batch_frames)
        models.check_paths()
        judge = JudgeClient(JudgeConfig.from_dict(OmegaConf.to_container(cfg.judge, resolve=True)))
        for benchmark in benchmarks:
            metrics_of[benchmark] = build_metrics(benchmark, models, judge, cfg.metrics.plugins, cfg.metrics.select,
                                                  quantity_field=str(cfg.metrics.quantity_field),
                                                  box_threshold=float(cfg.metrics.grounding_dino.box_threshold),
                                                  text_threshold=float(cfg.metrics.grounding_dino.text_threshold))
            if cfg.mode == "score":
                _check_results(cfg, run_dir, benchmark, items_of[benchmark])
        models.preload([m for metrics in metrics_of.values() for m in metrics])
        if judge.available:
            needs_judge = any(pending_metrics(shard_items(items_of[b], shard_index, shard_count), b,
                                              [m for m in metrics_of[b] if m in JUDGE_METRICS],
                                              ScoreStore(run_dir / "scores" / b), method,
                                              _results_folder(cfg, run_dir, b) if cfg.mode == "score" else None)
                              for b in benchmarks)
            if needs_judge:
                judge.probe()  # a wrong key, URL or model stops here, not as an error row per item
                log.info("judge endpoint %s answered the probe", judge.cfg.base_url)

    # 2. The work.
    _STATE["started"] = True  # from here on an error leaves what was done (and the log) in place
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if edit_cfg is not None:
        resolved["edit"]["resolved"] = OmegaConf.to_container(edit_cfg, resolve=True)
    suffix = "" if shard_index is None else f".shard{int(shard_index)}"
    atomic_write_text(run_dir / f"eval_config{suffix}.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    pipeline = None
    out: dict = {}
    for benchmark in benchmarks:
        out[benchmark] = {}
        items = items_of[benchmark]
        mine = shard_items(items, shard_index, shard_count)
        if outside_of[benchmark]:
            write_json_atomic(run_dir / benchmark / "outside_subsets.json", outside_of[benchmark])
            out[benchmark]["outside_subsets"] = outside_of[benchmark]
        if generating:
            fps = float(cfg.data.ivebench.frame_folder_fps)
            report = generate(edit_cfg, mine, benchmark, run_dir, fps, bool(cfg.progress), pipeline)
            not_run = {i.id: {"needs": sorted(i.extra_inputs), "category": i.category} for i in items if not i.runnable}
            write_json_atomic(run_dir / benchmark / "not_run.json", not_run)
            log.info("%s: generated %d, already done %d, not run (inputs the editor does not take) %d, failed %d",
                     benchmark, len(report.generated), len(report.skipped_done), len(report.not_runnable), len(report.failed))
            out[benchmark]["generate"] = report
        store = ScoreStore(run_dir / "scores" / benchmark)
        if scoring:
            results = _results_folder(cfg, run_dir, benchmark)
            report = score(mine, benchmark, results, metrics_of[benchmark], store, method, bool(cfg.progress))
            log.info("%s: %d metric rows written, %d items already complete, %d items without generate.mp4, %d items with failed rows",
                     benchmark, report.scored, report.skipped_done, len(report.items_without_result), len(report.errors))
            out[benchmark]["score"] = report
        if cfg.mode in ("score", "all", "leaderboard") and shard_index is None:
            mine_rows = [r for r in store.latest() if r.run == method]
            out[benchmark]["items_csv"] = write_item_csv(store.folder / "items.csv", benchmark, items, mine_rows)
            measured = {method: mine_rows}
            for name, other in dict(cfg.leaderboard.compare or {}).items():
                measured[str(name)] = ScoreStore(Path(str(other)) / "scores" / benchmark).latest()
            sizes: dict = {}
            for it in items:
                sizes[it.category] = sizes.get(it.category, 0) + 1
            board = build_leaderboard(benchmark, measured, len(items), sizes, bool(cfg.leaderboard.published),
                                      outside=outside_of[benchmark])
            out[benchmark]["leaderboard"] = write_leaderboard(board, Path(str(cfg.leaderboard.out_dir)))
            log.info("%s: leaderboard in %s", benchmark, out[benchmark]["leaderboard"]["md"])
    return out


def failures(out: dict) -> str:
    """One line naming what a finished run failed to do (items not generated, metric rows that are
    errors), or "" when nothing failed."""
    parts = []
    for benchmark, report in out.items():
        gen, sc = report.get("generate"), report.get("score")
        if gen is not None and gen.failed:
            parts.append(f"{benchmark}: {len(gen.failed)} item(s) not generated (first: {next(iter(gen.failed))})")
        if sc is not None and sc.errors:
            rows = sum(len(v) for v in sc.errors.values())
            first = next(iter(sc.errors))
            parts.append(f"{benchmark}: {rows} metric row(s) failed on {len(sc.errors)} item(s) (first: item {first}, {sc.errors[first][0]})")
    return "; ".join(parts)


# run_dir and its logs/ folder as they were before Hydra started (an exit-2 error removes what this run created).
_EXISTED: dict = {}
# Whether run_eval got past its checks (an error after that keeps the run's log and its work).
_STATE = {"started": False}


def _remove_own_output() -> None:
    """After an input error: remove this run's Hydra log folder, and `run_dir/logs` and `run_dir`
    when this run created them and they are empty now (an array task beside it may be writing)."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    if _STATE["started"]:
        return
    try:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(out_dir):
            logging.getLogger().removeHandler(handler)
            handler.close()
    shutil.rmtree(out_dir, ignore_errors=True)
    for folder, existed in sorted(_EXISTED.items(), key=lambda kv: -len(str(kv[0]))):
        if not existed:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass


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

        from .judge import JudgeError

        try:
            check_config(cfg, "eval", HydraConfig.get().overrides.task)  # this job's values (a sweep's included)
            out = run_eval(cfg)
        except MissingMandatoryValue as exc:
            _remove_own_output()
            print(f"liveditor-eval: error: {exc.full_key} is not set: pass {exc.full_key}=<folder> (docs/evaluation.md)", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        except (BenchmarkError, EditError, VideoError, FileNotFoundError, ValueError, JudgeError) as exc:
            _remove_own_output()
            print(f"liveditor-eval: error: {' '.join(str(exc).split())}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        failed = failures(out)
        if failed:
            print(f"liveditor-eval: {failed}: see the log; rerun the same command to retry them", file=sys.stderr)
            sys.exit(EXIT_FAILED)

    return app


def main(argv=None) -> None:
    """The console entry; `argv` (default: the command line) are Hydra arguments, checked by
    `liveditor.configcheck` before Hydra starts (a bad key, type or range: one line, exit 2)."""
    from liveditor.configcheck import run_hydra_main

    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    _EXISTED.clear()
    for a in args:
        if a.startswith("run_dir="):
            run_dir = Path(a.split("=", 1)[1]).expanduser().resolve()
            _EXISTED.update({run_dir: run_dir.exists(), run_dir / "logs": (run_dir / "logs").exists()})
    run_hydra_main("eval", "liveditor-eval", args, _hydra_main())


if __name__ == "__main__":
    main()
