"""`liveditor-train`: fine-tune a Wan DiT into an in-context editor (Lightning, optionally DeepSpeed).

    liveditor-train experiment=stage1 data.shards=/data/latents model.weights_path=/ckpt/Wan2.1-T2V-1.3B
    liveditor-train experiment=tiny data.shards=outputs/latents            # the tiny model on a CPU

Arguments are Hydra overrides of `configs/train/train.yaml`. The run directory (`run_dir`) receives
the resolved config, checkpoints, the sample log and validation edits. Rerunning the same command
resumes from the newest checkpoint there (`resume=auto`), including after `kill -9` or a SLURM
requeue, with the data order and the random draws continuing exactly where the checkpoint was.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from liveditor.files import atomic_write_text

log = logging.getLogger("liveditor.train")

EXIT_BAD_INPUT = 2


class TrainConfigError(ValueError):
    """A training config value is wrong; the message names the key and the fix."""


def compose_config(name: str, overrides=()):
    """Compose `configs/<name>/<name>.yaml` (packaged `liveditor.configs`) with Hydra `overrides`:
    the `train` and `precompute` configs."""
    from importlib.resources import files

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(files("liveditor.configs") / name), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def compose_train_config(overrides=()):
    """The resolved `train` config with Hydra `overrides` applied."""
    return compose_config("train", overrides)


def dit_config_of(cfg):
    from omegaconf import OmegaConf

    from liveditor.models import DiTConfig

    return DiTConfig.from_dict(OmegaConf.to_container(cfg.model.dit, resolve=True))


def strategy_name(cfg) -> str:
    target = cfg.strategy.get("_target_") or ""
    if target.endswith("DeepSpeedStrategy"):
        return f"deepspeed_stage_{cfg.strategy.stage}"
    return "ddp" if target.endswith("DDPStrategy") else "single"


def train_options(cfg):
    """`TrainOptions` from the config, checking paths and combinations (errors name the key)."""
    from liveditor.train.flow import TimestepConfig
    from liveditor.train.module import OptimConfig, TrainOptions

    init = cfg.get("init_weights")
    if init:
        if not Path(str(init)).expanduser().exists():
            raise TrainConfigError(f"init_weights='{init}' does not exist (it defaults to model.weights_path): point it at a Wan, "
                                   "diffusers-Wan or LIVEditor checkpoint, or set init_weights=null to start from random weights")
    o = cfg.optim
    offload = bool(cfg.strategy.get("offload_optimizer", False))
    cpu_adam = offload if o.get("cpu_adam") is None else bool(o.cpu_adam)
    degree = cfg.get("sequence_parallel", 1)
    if not isinstance(degree, int) or degree < 1:
        raise TrainConfigError(f"sequence_parallel={degree} must be an integer >= 1 (ranks sharing each sample)")
    ema = cfg.ema.get("decay")
    return TrainOptions(
        init_weights=str(Path(str(init)).expanduser()) if init else None, seed=int(cfg.seed), text_dropout=float(cfg.text_dropout),
        gradient_checkpointing=bool(cfg.gradient_checkpointing), ema_decay=None if ema is None else float(ema),
        ema_every=int(cfg.ema.every_n_steps), trainable=str(cfg.trainable), sequence_parallel=degree,
        timesteps=TimestepConfig(**{k: (float(v) if k not in ("sampler", "weighting") else str(v)) for k, v in cfg.timesteps.items()}),
        optim=OptimConfig(lr=float(o.lr), betas=tuple(float(b) for b in o.betas), weight_decay=float(o.weight_decay), eps=float(o.eps),
                          warmup_steps=int(o.warmup_steps), schedule=str(o.schedule),
                          decay_steps=None if o.decay_steps is None else int(o.decay_steps), min_lr_ratio=float(o.min_lr_ratio),
                          cpu_adam=cpu_adam),
    )


def build_strategy(cfg):
    from hydra.utils import instantiate

    if not cfg.strategy.get("_target_"):
        return str(cfg.strategy.get("name", "auto"))
    if strategy_name(cfg).startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise TrainConfigError(f"strategy={strategy_name(cfg)} needs DeepSpeed: pip install '.[deepspeed]' "
                                   f"(docs/training.md says how it builds) ({exc})") from exc
    return instantiate(cfg.strategy)


def wandb_run_id(run_dir: Path, configured: Optional[str]) -> str:
    """The configured id, else the one kept in `run_dir/wandb_id.txt` (made on the first run)."""
    if configured:
        return str(configured)
    path = run_dir / "wandb_id.txt"
    if path.exists():
        return path.read_text().strip()
    new = uuid.uuid4().hex[:12]
    atomic_write_text(path, new + "\n")
    return new


def build_logger(cfg, run_dir: Path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not cfg.get("logger") or not cfg.logger.get("_target_"):
        return False
    node = OmegaConf.to_container(cfg.logger, resolve=True)
    if node["_target_"].endswith("WandbLogger"):
        os.environ.setdefault("WANDB_SILENT", "true")
        node["id"] = wandb_run_id(run_dir, node.get("id"))
    return instantiate(node)


def build_callbacks(cfg, run_dir: Path) -> list:
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar

    from liveditor.train.callbacks import (DataPositionCallback, SampleLogCallback, StepProgressBar, ThroughputCallback,
                                          ValidationEditCallback)

    c = cfg.callbacks
    callbacks = [DataPositionCallback()]
    if c.get("sample_log", True):
        callbacks.append(SampleLogCallback(str(run_dir)))
    callbacks.append(ThroughputCallback(int(c.throughput.every_n_steps), c.throughput.get("peak_tflops")))
    v = cfg.validation
    if int(v.every_n_steps) > 0:
        callbacks.append(ValidationEditCallback(
            str(run_dir), int(v.every_n_steps), int(v.num_samples), cfg.model.get("vae_path"), steps=int(v.steps),
            guidance_scale=float(v.guidance_scale), shift=float(v.shift), sampler=str(v.sampler), use_ema=bool(v.use_ema),
        ))
    callbacks.append(ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"), filename="step-{step:07d}", auto_insert_metric_name=False,
        every_n_train_steps=int(c.checkpoint.every_n_steps), save_top_k=int(c.checkpoint.keep_last), monitor="step", mode="max",
        save_last=True,
    ))
    if cfg.trainer.get("enable_progress_bar", True):
        bars = {"rich": RichProgressBar, "tqdm": TQDMProgressBar, "steps": StepProgressBar}
        kind = str(c.get("progress", "rich"))
        if kind not in bars:
            raise TrainConfigError(f"callbacks.progress={kind!r}: choose one of {', '.join(bars)}")
        callbacks.append(bars[kind]())
    return callbacks


def find_resume_checkpoint(run_dir: Path, resume) -> Optional[str]:
    """The checkpoint to resume from: for `auto`, the newest of `run_dir/checkpoints/*.ckpt` and
    Lightning's SLURM `run_dir/hpc_ckpt_*.ckpt`; None to start afresh."""
    if resume in (None, "never", False):
        return None
    if resume != "auto":
        path = Path(str(resume)).expanduser()
        if not path.exists():
            raise TrainConfigError(f"resume='{resume}' does not exist: give a checkpoint path, auto or never")
        return str(path)
    candidates = list((run_dir / "checkpoints").glob("*.ckpt")) + list(run_dir.glob("hpc_ckpt_*.ckpt"))
    candidates = [p for p in candidates if not p.name.startswith(".")]
    return str(max(candidates, key=lambda p: p.stat().st_mtime)) if candidates else None


def _rank_triton_cache() -> None:
    """Point Triton's cache at a per-rank folder on local disk when the launcher has not (DESIGN.md:
    ranks compiling into one shared folder race)."""
    if "TRITON_CACHE_DIR" not in os.environ:
        rank = os.environ.get("SLURM_PROCID", os.environ.get("LOCAL_RANK", "0"))
        os.environ["TRITON_CACHE_DIR"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"triton-cache-rank{rank}")


@dataclass
class TrainResult:
    run_dir: Path
    trainer: object
    module: object
    resumed_from: Optional[str]


def run_training(cfg) -> TrainResult:
    """Build the data, model, strategy, logger and callbacks of `cfg` and fit."""
    import lightning.pytorch as pl
    import torch
    from omegaconf import OmegaConf

    from liveditor.train.data import make_datamodule
    from liveditor.train.module import EditorTrainingModule

    _rank_triton_cache()
    run_dir = Path(str(cfg.run_dir)).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    dit_cfg = dit_config_of(cfg)
    options = train_options(cfg)
    degree = options.sequence_parallel
    if dit_cfg.num_heads % degree:
        raise TrainConfigError(f"sequence_parallel={degree} must divide model.dit.num_heads={dit_cfg.num_heads}")
    if degree > 1 and strategy_name(cfg) == "single":
        raise TrainConfigError(f"sequence_parallel={degree} needs several ranks: use strategy=ddp or a deepspeed_* strategy "
                               f"with trainer.devices (x trainer.num_nodes) a multiple of {degree}")
    datamodule = make_datamodule(cfg.data, dit_cfg.in_dim, dit_cfg.text_dim, sequence_parallel=degree)
    if int(cfg.validation.every_n_steps) > 0 and not datamodule.val_shards:
        raise TrainConfigError("validation.every_n_steps > 0 needs held-out pairs: set data.holdout_shards >= 1")
    try:
        empty_text = datamodule.text_defaults()["empty"]
    except Exception as exc:
        raise TrainConfigError(f"data.shards: {exc}") from exc
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = EditorTrainingModule(dit_cfg, options, empty_text=empty_text)
    resume = find_resume_checkpoint(run_dir, cfg.get("resume", "auto"))
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = pl.Trainer(
        **trainer_kwargs, strategy=build_strategy(cfg), logger=build_logger(cfg, run_dir),
        callbacks=build_callbacks(cfg, run_dir), default_root_dir=str(run_dir),
    )
    if trainer.global_rank == 0:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved["resolved"] = {"world_size": trainer.world_size, "resumed_from": resume, "torch": str(torch.__version__)}
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    log.info("training %s in %s (%s, world size %d)%s", cfg.name, run_dir, strategy_name(cfg), trainer.world_size,
             f", resuming from {resume}" if resume else "")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # a process group left to exit-time teardown can abort (gloo)
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(run_dir, trainer, module, resume)


def main(argv=None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from liveditor.models.loading import CheckpointError
    from liveditor.pipeline.components import ComponentError
    from liveditor.train.shards import ShardError

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        from omegaconf import OmegaConf

        print(__doc__)
        print("Overrides (key=value) of configs/train/train.yaml; resolved defaults:\n")
        print(OmegaConf.to_yaml(compose_train_config(args and [a for a in args if a not in ("-h", "--help")])))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning.pytorch").propagate = False  # Lightning prints through its own handler
    try:
        run_training(compose_train_config(args))
    except (TrainConfigError, ShardError, CheckpointError, ComponentError, HydraException, OmegaConfBaseException) as exc:
        print(f"liveditor-train: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
