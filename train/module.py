"""The LightningModule: the editor DiT, the flow-matching loss, the timestep sampler, EMA.

It knows nothing of SLURM, DeepSpeed or files: the Trainer, the strategy and the DataModule are
chosen by config (`liveditor-train`). Per step:

    x0 = target latents, e ~ N(0, I), s ~ timesteps sampler      (train/flow.py)
    x_t = (1 - s) x0 + s e;  v = DiT(x_t, 1000 s, text, source latents in context)
    loss = w(s) * mean((v - (e - x0))^2)  over the target latents only

Noise, timesteps and text dropout are drawn from a generator seeded by `(seed, rank, the batch's
data position)`, a pure function of where the batch sits in the data order, so a resumed run draws
exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import lightning.pytorch as pl
import torch

from liveditor.models import DiTConfig, EditorDiT, build_editor
from liveditor.models.sharded import build_editor_partitioned
from liveditor.train.ema import EMA
from liveditor.train.flow import TimestepConfig, flow_matching_loss, loss_weight, noisy_latents, sample_sigmas

log = logging.getLogger("liveditor.train")


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then constant or cosine decay to `min_lr_ratio * lr`."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    decay_steps: Optional[int] = None  # cosine: steps from the end of warmup to min_lr (default: trainer.max_steps)
    min_lr_ratio: float = 0.0
    cpu_adam: bool = False  # DeepSpeed's CPU Adam (needed with optimizer offload)

    def lr_factor(self, step: int, max_steps: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "cosine":
            span = max(1, (self.decay_steps or max_steps) - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        raise ValueError(f"optim.schedule must be constant or cosine, got {self.schedule!r}")


@dataclass
class TrainOptions:
    """What the module needs beyond the architecture (`configs/train/train.yaml`)."""

    init_weights: Optional[str] = None  # a Wan, diffusers-Wan or LIVEditor checkpoint; None: random init
    seed: int = 0
    text_dropout: float = 0.1  # probability of training a sample on the empty prompt (for CFG)
    gradient_checkpointing: bool = True
    ema_decay: Optional[float] = None  # e.g. 0.995 (stage II); None: no EMA
    ema_every: int = 1
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainable: str = "all"  # all | editor_only (source embedding and ISA gates; the base model frozen)
    sequence_parallel: int = 1  # Ulysses degree: consecutive ranks in groups of this size share each sample
    # Build the model in `configure_model`, inside the strategy's sharded-init context, instead of in
    # `__init__`: under ZeRO-3 each module is partitioned as soon as it exists and each rank reads only
    # its partition of `init_weights`, so no rank ever holds the whole model (liveditor-train sets it
    # for the deepspeed_stage_3 strategies).
    sharded_build: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.sequence_parallel, int) or self.sequence_parallel < 1:
            raise ValueError(f"sequence_parallel must be an integer >= 1, got {self.sequence_parallel!r}")


def adamw_kernel(params_on_cuda: bool, clips_under_amp: bool) -> dict:
    """AdamW's implementation: fused on CUDA, except when Lightning clips gradients under its mixed-precision
    plugin, which refuses optimizers that unscale gradients themselves (fused ones: "does not allow for
    gradient clipping", at the first step of every bf16-mixed run with gradient_clip_val); those take the
    multi-tensor `foreach` kernels. Same update either way."""
    if not params_on_cuda:
        return {}
    return {"foreach": True} if clips_under_amp else {"fused": True}


def _seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


class EditorTrainingModule(pl.LightningModule):
    """Trains an `EditorDiT` on batches of `LatentDataModule` (see the module docstring)."""

    def __init__(self, dit: DiTConfig, options: TrainOptions, empty_text: Optional[torch.Tensor] = None):
        super().__init__()
        self.dit_config, self.options = dit, options
        self.save_hyperparameters({"dit": dit.to_dict(), "options": asdict(options)})
        self.model: Optional[EditorDiT] = None
        self.sequence_parallel = None
        if not options.sharded_build:
            self._build_model()
        # the empty prompt's embedding [L, D] for text dropout; zeros of one token when not given
        empty = empty_text if empty_text is not None else torch.zeros(1, dit.text_dim)
        self.register_buffer("empty_text", empty.float(), persistent=False)
        self.ema: Optional[EMA] = None
        self.last_grad_norm: Optional[float] = None

    def _build_model(self) -> None:
        """The editor DiT with `init_weights` loaded: built from the meta device and filled tensor by
        tensor (`build_editor`), or, inside `deepspeed.zero.Init`, partitioned module by module with
        each rank reading only its partition (`build_editor_partitioned`)."""
        build = build_editor_partitioned if self.options.sharded_build else build_editor
        model, report = build(self.dit_config, self.options.init_weights, strict=True)
        if report is not None:
            log.info("initial weights: %s layout from %s%s", report.layout, self.options.init_weights,
                     " (editor parameters initialised: the ISA gates start at zero)" if report.initialised else "")
        self.model = model.train()
        self.model.gradient_checkpointing = bool(self.options.gradient_checkpointing)
        self._set_trainable(self.options.trainable)
        if self.sequence_parallel is not None:
            self.model.enable_sequence_parallel(self.sequence_parallel)

    def configure_model(self) -> None:
        """With `sharded_build`, the model is built here: Lightning calls this hook inside the strategy's
        sharded-init context (`deepspeed.zero.Init` for ZeRO-3), after `setup`."""
        if self.model is None:
            self._build_model()

    # ---- sequence parallelism -------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Make the sequence-parallel groups once the process group exists (consecutive ranks of
        `sequence_parallel` each; every rank creates every group, as torch.distributed requires)."""
        degree = self.options.sequence_parallel
        if degree == 1 or self.sequence_parallel is not None:
            return
        import torch.distributed as dist

        from liveditor.models.sequence_parallel import SequenceParallel

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"sequence_parallel={degree} needs a distributed run (strategy=ddp or deepspeed_*, several devices)")
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % degree:
            raise ValueError(f"sequence_parallel={degree} must divide the world size {world}")
        groups = [dist.new_group(list(range(start, start + degree))) for start in range(0, world, degree)]
        self.sequence_parallel = SequenceParallel(groups[rank // degree])
        if self.model is not None:  # else `configure_model` builds it and enables it
            self.model.enable_sequence_parallel(self.sequence_parallel)

    @property
    def data_parallel_rank(self) -> int:
        """Rank among the data-parallel replicas (ranks of one sequence-parallel group share it)."""
        return self.global_rank // self.options.sequence_parallel

    @property
    def data_parallel_size(self) -> int:
        """Number of data-parallel replicas."""
        return (self.trainer.world_size if self.trainer is not None else 1) // self.options.sequence_parallel

    def _set_trainable(self, which: str) -> None:
        if which not in ("all", "editor_only"):
            raise ValueError(f"trainable must be all or editor_only, got {which!r}")
        dense = self.dit_config.attention == "dense"
        for name, p in self.model.named_parameters():
            if name.endswith("self_attn.alpha_2.weight") or name.endswith("cross_attn.alpha_1.weight") or name.endswith("cross_attn.alpha_2.weight"):
                p.requires_grad_(False)  # carried by the release, never used
            elif dense and name.endswith("self_attn.alpha_1.weight"):
                p.requires_grad_(False)  # the ISA gate takes no part in dense attention (DDP rejects unused parameters)
            elif which == "editor_only":
                p.requires_grad_(name.startswith("source_video_embedding_more_memory") or name.endswith("self_attn.alpha_1.weight"))

    # ---- the step -------------------------------------------------------------------------

    def draw(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sigmas `[B]`, noise like the target latents, and the text-dropout mask `[B]`, all from a
        generator seeded by the batch's data position (CPU draws, so every device draws the same)."""
        pos = batch.get("position") or {}
        g = torch.Generator().manual_seed(_seed_of(self.options.seed, self.data_parallel_rank, pos.get("epoch"), pos.get("worker"), pos.get("seq")))
        x0 = batch["target_latents"]
        sigmas = sample_sigmas(x0.shape[0], self.options.timesteps, g)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float32)
        drop = torch.rand(x0.shape[0], generator=g) < self.options.text_dropout
        return sigmas, noise, drop

    def text_with_dropout(self, text: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Replace the dropped samples' prompts by the empty prompt (zero-padded like the others)."""
        if not bool(drop.any()):
            return text
        empty = self.empty_text.to(text.dtype)
        length = max(text.shape[1], empty.shape[0])
        out = torch.zeros(text.shape[0], length, text.shape[2], dtype=text.dtype, device=text.device)
        out[:, : text.shape[1]] = text
        out[drop.to(text.device)] = 0
        out[drop.to(text.device), : empty.shape[0]] = empty
        return out

    def compute_loss(self, batch: dict) -> torch.Tensor:
        sigmas, noise, drop = self.draw(batch)
        device = self.device
        x0 = batch["target_latents"].to(device, torch.float32)
        noise = noise.to(device)
        sigmas_d = sigmas.to(device, torch.float32)
        x_t = noisy_latents(x0, noise, sigmas_d)
        text = self.text_with_dropout(batch["text"].to(device), drop)
        prediction = self.model(x_t, sigmas_d * 1000.0, text, batch["source_latents"].to(device))
        weights = loss_weight(sigmas, self.options.timesteps.weighting).to(device)
        return flow_matching_loss(prediction, x0, noise, weights)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        bs = batch["target_latents"].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        # Under sequence parallelism each rank's gradients are its tokens' share of the sample's; the
        # data-parallel average over all ranks divides by the degree once too often.
        return {"loss": loss * self.options.sequence_parallel, "sample_loss": loss.detach()}

    # ---- optimisation ---------------------------------------------------------------------

    def configure_optimizers(self):
        o = self.options.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: check `trainable`")
        if o.cpu_adam:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        else:
            on_cuda = torch.cuda.is_available() and all(p.is_cuda for p in params)
            optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                                          **adamw_kernel(on_cuda, self._clips_under_amp()))
        max_steps = max(1, int(self.trainer.max_steps)) if self.trainer is not None and self.trainer.max_steps > 0 else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: o.lr_factor(step, max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _clips_under_amp(self) -> bool:
        """Lightning clips gradients itself, through its mixed-precision plugin (bf16-mixed, 16-mixed)."""
        if self.trainer is None or not self.trainer.gradient_clip_val:
            return False
        from lightning.pytorch.plugins.precision import MixedPrecision

        return isinstance(self.trainer.precision_plugin, MixedPrecision)

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:  # DeepSpeed keeps gradients in its own buffers: its norm is logged from the engine instead
            self.last_grad_norm = float(torch.nn.utils.get_total_norm(grads))
            self.log("train/grad_norm", self.last_grad_norm)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        engine = getattr(self.trainer.strategy, "deepspeed_engine", None) if self.trainer is not None else None
        if engine is not None:
            norm = engine.get_global_grad_norm()
            if norm is not None:
                self.last_grad_norm = float(norm)
                self.log("train/grad_norm", self.last_grad_norm)
        if self.trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer step, then the EMA's update of that step. Here, and not in `on_train_batch_end`
        (which runs after the callbacks, the checkpoint's included): a checkpoint of step N holds the EMA of
        step N, so a resumed run loses no update; and micro-batches of gradient accumulation do not update it."""
        super().optimizer_step(*args, **kwargs)
        if self.trainer.fit_loop._should_accumulate():  # DeepSpeed, which accumulates itself, is called every micro-batch
            return
        step = self.trainer.global_step + 1  # Lightning counts this step once the hook returns
        if self.options.ema_decay is not None and step % self.options.ema_every == 0:
            if self.ema is None:
                self.ema = EMA(self.model, self.options.ema_decay)
            self.ema.update(self.model)

    # ---- EMA in checkpoints ---------------------------------------------------------------

    def on_fit_start(self) -> None:
        if self.options.ema_decay is not None and self.ema is None:
            self.ema = EMA(self.model, self.options.ema_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict(self.model)  # under ZeRO-3 a collective: every rank gets here

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "ema" in checkpoint and self.options.ema_decay is not None:
            self.ema = EMA(self.model, self.options.ema_decay)
            self.ema.load_state_dict(checkpoint["ema"], self.model)
