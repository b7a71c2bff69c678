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
    """Compose `configs/<name>/<name>.yaml` (packaged `liveditor.configs`) with Hydra `overrides` and
    check it (`liveditor.configcheck`: unknown keys, types, ranges): the `train` and `precompute` configs."""
    from liveditor.configcheck import compose

    return compose(name, overrides)


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
    try:
        return _train_options(cfg)
    except TrainConfigError:
        raise
    except ValueError as exc:  # e.g. TimestepConfig's min_timestep < max_timestep
        raise TrainConfigError(str(exc)) from exc


def _train_options(cfg):
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
        sharded_build=strategy_name(cfg) == "deepspeed_stage_3",
        timesteps=TimestepConfig(**{k: (float(v) if k not in ("sampler", "weighting") else str(v)) for k, v in cfg.timesteps.items()}),
        optim=OptimConfig(lr=float(o.lr), betas=tuple(float(b) for b in o.betas), weight_decay=float(o.weight_decay), eps=float(o.eps),
                          warmup_steps=int(o.warmup_steps), schedule=str(o.schedule),
                          decay_steps=None if o.decay_steps is None else int(o.decay_steps), min_lr_ratio=float(o.min_lr_ratio),
                          cpu_adam=cpu_adam),
    )


def check_strategy(cfg) -> None:
    """DeepSpeed strategies need CUDA GPUs and the deepspeed package: say so before anything is built."""
    import importlib.util

    import torch

    name = strategy_name(cfg)
    if not name.startswith("deepspeed"):
        return
    missing = []
    if str(cfg.trainer.get("accelerator", "auto")) == "cpu" or not torch.cuda.is_available():
        missing.append("CUDA GPUs (" + ("trainer.accelerator=cpu" if str(cfg.trainer.get("accelerator")) == "cpu" else "this machine has none") + ")")
    if importlib.util.find_spec("deepspeed") is None:
        missing.append("DeepSpeed (pip install '.[deepspeed]'; docs/training.md says how it builds)")
    if missing:
        raise TrainConfigError(f"strategy={name} needs {' and '.join(missing)}: on CPUs use strategy=ddp or strategy=single")


def build_strategy(cfg):
    from hydra.utils import instantiate

    if not cfg.strategy.get("_target_"):
        return str(cfg.strategy.get("name", "auto"))
    return instantiate(cfg.strategy)


def wandb_run_id(run_dir: Path, configured: Optional[str], rank: int = 0) -> Optional[str]:
    """The configured id, else the one kept in `run_dir/wandb_id.txt`, which rank 0 makes on the
    first run (only rank 0 talks to wandb: the other ranks read the file when it is there)."""
    if configured:
        return str(configured)
    path = run_dir / "wandb_id.txt"
    if path.exists():
        return path.read_text().strip()
    if rank != 0:
        return None
    new = uuid.uuid4().hex[:12]
    atomic_write_text(path, new + "\n")
    return new


def build_logger(cfg, run_dir: Path):
    from hydra.utils import instantiate
    from lightning.pytorch.utilities import rank_zero_only
    from omegaconf import OmegaConf

    if not cfg.get("logger") or not cfg.logger.get("_target_"):
        return False
    node = OmegaConf.to_container(cfg.logger, resolve=True)
    if node["_target_"].endswith("WandbLogger"):
        os.environ.setdefault("WANDB_SILENT", "true")
        node["id"] = wandb_run_id(run_dir, node.get("id"), rank_zero_only.rank)  # the launcher's rank (SLURM_PROCID, RANK, ...)
    return instantiate(node)


def build_callbacks(cfg, run_dir: Path) -> list:
    """The run's callbacks, in the order their `on_train_batch_end` must run: the data position and
    the logs of a step before its checkpoint."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from liveditor.train.callbacks import (DataPositionCallback, SampleLogCallback, StepCheckpoint, StepProgressBar,
                                          ThroughputCallback, ValidationEditCallback)

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
    callbacks.append(StepCheckpoint(run_dir / "checkpoints", int(c.checkpoint.every_n_steps), int(c.checkpoint.keep_last)))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append({"steps": StepProgressBar, "tqdm": TQDMProgressBar}[str(c.progress)]())
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
    # last.ckpt links to the newest step checkpoint: resume from the file it names
    candidates = {p.resolve() for p in (run_dir / "checkpoints").glob("*.ckpt") if not p.name.startswith(".") and p.exists()}
    candidates |= set(run_dir.glob("hpc_ckpt_*.ckpt"))
    return str(max(candidates, key=lambda p: (p.stat().st_mtime, p.name))) if candidates else None


# architecture fields that decide the weights' shapes (the attention backend and ISA ratios may change on resume)
SHAPE_FIELDS = ("patch_size", "in_dim", "out_dim", "dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_dim", "qk_norm",
                "cross_attn_norm")


def check_resume(path: Optional[str], dit_cfg, options) -> None:
    """A checkpoint to resume from must hold this run's architecture (and, when both have EMA, the
    same trainable parameters): one error naming both, before any model is built."""
    import torch

    if path is None:
        return
    file = Path(path)
    if file.is_dir():  # a DeepSpeed checkpoint: Lightning's state (hyper-parameters included) is in the model states
        file = next(iter(sorted(file.glob("*/mp_rank_00_model_states.pt")) + sorted(file.glob("*/*model_states.pt"))), file)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:
        raise TrainConfigError(f"resume checkpoint '{path}' could not be read ({type(exc).__name__}: {exc}): give another one, "
                               "or resume=never") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hparams or "dit" not in hparams:
        raise TrainConfigError(f"resume checkpoint '{path}' was not written by liveditor-train (no DiT hyper-parameters): "
                               "give one of its checkpoints, or resume=never")
    mine, theirs = dit_cfg.to_dict(), hparams["dit"]
    differ = [k for k in SHAPE_FIELDS if k in theirs and theirs[k] != mine[k]]
    if differ:
        there = ", ".join(f"model.dit.{k}={theirs[k]}" for k in differ)
        here = ", ".join(f"model.dit.{k}={mine[k]}" for k in differ)
        raise TrainConfigError(f"resume checkpoint '{path}' is of another model ({there}; this run has {here}): resume with "
                               "the model it was trained with, or start afresh in another run_dir (or with resume=never)")
    trainable = (hparams.get("options") or {}).get("trainable")
    if "ema" in ckpt and options.ema_decay is not None and trainable not in (None, options.trainable):
        raise TrainConfigError(f"resume checkpoint '{path}' holds the EMA of trainable={trainable}, this run has "
                               f"trainable={options.trainable}: resume with trainable={trainable}, or start afresh in another run_dir")


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

    from liveditor.train.data import check_latent_encoders, make_datamodule
    from liveditor.train.module import EditorTrainingModule

    _rank_triton_cache()
    run_dir = Path(str(cfg.run_dir)).expanduser().resolve()
    # everything that can be checked without building a model, first: the config, the resume
    # checkpoint's architecture, the shards and the encoders they were made with
    dit_cfg = dit_config_of(cfg)
    options = train_options(cfg)
    check_strategy(cfg)
    degree = options.sequence_parallel
    if dit_cfg.num_heads % degree:
        raise TrainConfigError(f"sequence_parallel={degree} must divide model.dit.num_heads={dit_cfg.num_heads}")
    if degree > 1 and strategy_name(cfg) == "single":
        raise TrainConfigError(f"sequence_parallel={degree} needs several ranks: use strategy=ddp or a deepspeed_* strategy "
                               f"with trainer.devices (x trainer.num_nodes) a multiple of {degree}")
    resume = find_resume_checkpoint(run_dir, cfg.get("resume", "auto"))
    check_resume(resume, dit_cfg, options)
    datamodule = make_datamodule(cfg.data, dit_cfg.in_dim, dit_cfg.text_dim, sequence_parallel=degree)
    check_latent_encoders(datamodule.index, cfg.data.shards, cfg.model.get("vae_path"), cfg.model.get("text_encoder_path"))
    if int(cfg.validation.every_n_steps) > 0 and not datamodule.val_shards:
        raise TrainConfigError("validation.every_n_steps > 0 needs held-out pairs: set data.holdout_shards >= 1")
    try:
        empty_text = datamodule.text_defaults()["empty"]
    except Exception as exc:
        raise TrainConfigError(f"data.shards: {exc}") from exc
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = EditorTrainingModule(dit_cfg, options, empty_text=empty_text)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = pl.Trainer(
        **trainer_kwargs, strategy=build_strategy(cfg), logger=build_logger(cfg, run_dir),
        callbacks=build_callbacks(cfg, run_dir), default_root_dir=str(run_dir),
        enable_checkpointing=False,  # StepCheckpoint writes the checkpoints, not Lightning's ModelCheckpoint
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


def error_line(exc: Exception) -> str:
    """The message of `exc` on one line. An error raised in a DataLoader worker reaches the main
    process with the worker's traceback in its message: its last line is the worker's own message."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def main(argv=None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from liveditor.configcheck import ConfigError
    from liveditor.models.loading import CheckpointError
    from liveditor.pipeline.components import ComponentError
    from liveditor.train.shards import ShardError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if any(a in ("-h", "--help") for a in args):
            from omegaconf import OmegaConf

            print(__doc__)
            print("Overrides (key=value) of configs/train/train.yaml; resolved defaults:\n")
            print(OmegaConf.to_yaml(compose_train_config([a for a in args if a not in ("-h", "--help")])))
            return 0
        cfg = compose_train_config(args)  # the whole config is checked before anything is looked at
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("lightning.pytorch").propagate = False  # Lightning prints through its own handler
        run_training(cfg)
    except (ConfigError, TrainConfigError, ShardError, CheckpointError, ComponentError, HydraException, OmegaConfBaseException) as exc:
        print(f"liveditor-train: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
