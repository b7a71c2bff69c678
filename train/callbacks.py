"""Lightning callbacks of `liveditor-train`: data position, sample log, throughput/MFU, validation
edits, checkpoints, the progress bar."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar

from liveditor.train.flops import dit_train_flops, peak_tflops, tokens_of

log = logging.getLogger("liveditor.train")


class DataPositionCallback(pl.Callback):
    """Tells the resumable loader which batch a finished step consumed, before any checkpoint of that
    step is written (`StepCheckpoint` comes last), so the saved position is exact; logs
    `train/skipped_samples`, the bad samples the loaders of all ranks have skipped so far."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loader = getattr(trainer.datamodule, "train_loader", None)
        if loader is not None and "position" in batch:
            loader.mark_consumed(batch["position"], int(batch.get("skipped", 0)))
            # summed over ranks; the ranks of a sequence-parallel group read the same data
            share = getattr(getattr(pl_module, "options", None), "sequence_parallel", 1)
            pl_module.log("train/skipped_samples", float(loader.skipped_total) / share, sync_dist=True, reduce_fx="sum",
                          batch_size=batch["target_latents"].shape[0])


class SampleLogCallback(pl.Callback):
    """Appends one JSON line per step to `<run_dir>/samples.rank<R>.jsonl`: global step, sample keys,
    data position, loss and `step_seconds` (the step's wall-clock, what learning curves against time
    add up). An audit trail of what the model saw (and how resume is checked): after a kill the file
    may end in a partial line, and a resumed run appends the steps after its checkpoint
    again, so readers keep the last complete record of each step (`read_sample_log`)."""

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)
        self._start: Optional[float] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("sample_loss", outputs.get("loss")) if isinstance(outputs, dict) else outputs
        # reading the loss waits for the step's kernels, so the clock below is the step's real end;
        # step_seconds is forward, backward and optimizer step (data loading and checkpoint writes excluded)
        loss_value = float(loss.detach().float().cpu()) if loss is not None else None
        seconds = time.perf_counter() - self._start if self._start is not None else None
        record = {"step": trainer.global_step, "keys": list(batch["keys"]), "position": batch.get("position"),
                  "loss": loss_value, "step_seconds": None if seconds is None else round(seconds, 6)}
        path = self.run_dir / f"samples.rank{trainer.global_rank}.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()


def read_sample_log(path) -> dict[int, dict]:
    """`{step: record}` of a sample log, the last complete record of each step winning."""
    records = {}
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        records[int(record["step"])] = record
    return records


class ThroughputCallback(pl.Callback):
    """Logs, every `every_n_steps` optimizer steps: step time, tokens/s (all ranks), MFU, peak memory.

    Tokens are the DiT's tokens in context (target + source) per sample; FLOPs come from
    `liveditor.train.flops` (dense-equivalent for ISA runs). `peak_tflops` null takes the GPU's
    datasheet bf16 peak by name; on CPU, or for an unknown GPU, MFU is not logged.
    """

    def __init__(self, every_n_steps: int = 10, peak_tflops: Optional[float] = None):
        self.every, self.peak = int(every_n_steps), peak_tflops
        self._t0: Optional[float] = None
        self._flops = 0.0
        self._tokens = 0
        self._steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        cfg = pl_module.dit_config
        x = batch["target_latents"]
        nt, ns = tokens_of(cfg, x.shape), tokens_of(cfg, batch["source_latents"].shape)
        self._flops += x.shape[0] * dit_train_flops(cfg, nt, ns)
        self._tokens += x.shape[0] * (nt + ns)
        self._steps += 1
        if self._steps < self.every:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._t0
        world = trainer.world_size
        metrics = {"perf/step_time_s": elapsed / self._steps, "perf/tokens_per_s": world * self._tokens / elapsed}
        peak = self.peak
        if peak is None and torch.cuda.is_available():
            peak = peak_tflops(torch.cuda.get_device_name())
        if peak:
            metrics["perf/mfu"] = self._flops / elapsed / (peak * 1e12)
        if torch.cuda.is_available():
            metrics["perf/peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        pl_module.log_dict(metrics, rank_zero_only=True)
        self._t0, self._flops, self._tokens, self._steps = None, 0.0, 0, 0


class StepCheckpoint(pl.Callback):
    """Writes `<dirpath>/step-NNNNNNN.ckpt` every `every_n_steps` optimizer steps and at
    `trainer.max_steps` (a finished run always saves its final state), points `last.ckpt` at it (a
    symbolic link: a DeepSpeed checkpoint is a folder, and one copy is written, not two), and keeps
    the newest `keep_last` step checkpoints (-1: all).

    What to delete is read from the folder, by step number, never from state saved in a checkpoint:
    a checkpoint written just before a kill, whose older neighbour was not deleted yet, is pruned
    after the resume like any other. It must be the last callback: the data position and the
    logs of the step are recorded before its checkpoint is written."""

    NAME = re.compile(r"step-(\d+)\.ckpt")

    def __init__(self, dirpath, every_n_steps: int, keep_last: int = -1):
        if int(every_n_steps) < 1 or (int(keep_last) < 1 and int(keep_last) != -1):
            raise ValueError(f"StepCheckpoint: every_n_steps={every_n_steps} must be >= 1 and keep_last={keep_last} >= 1 or -1")
        self.dirpath, self.every, self.keep = Path(dirpath), int(every_n_steps), int(keep_last)
        self._step_at_start: Optional[int] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._step_at_start:  # a gradient-accumulation micro-batch: no optimizer step yet
            return
        if step % self.every == 0 or (trainer.max_steps > 0 and step >= trainer.max_steps):
            self.save(trainer, step)

    def save(self, trainer, step: int) -> Path:
        path = self.dirpath / f"step-{step:07d}.ckpt"
        trainer.save_checkpoint(path)  # every rank: a collective under DeepSpeed
        if trainer.is_global_zero:
            link = self.dirpath / ".last.ckpt.partial"
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(path.name, link)
            last = self.dirpath / "last.ckpt"
            if last.is_dir() and not last.is_symlink():  # a DeepSpeed last.ckpt folder written by an older version
                shutil.rmtree(last)
            os.replace(link, last)
            self.prune(trainer)
        trainer.strategy.barrier()
        return path

    def prune(self, trainer) -> None:
        """Delete all but the newest `keep_last` step checkpoints of the folder."""
        if self.keep < 0:
            return
        steps = sorted((int(m.group(1)), p) for p in self.dirpath.iterdir() if (m := self.NAME.fullmatch(p.name)))
        for _, old in steps[: -self.keep]:
            trainer.strategy.remove_checkpoint(old)


class StepProgressBar(ProgressBar):
    """One progress line for a run: optimizer steps toward `trainer.max_steps` with its ETA, the loss and
    tokens/s (target + source tokens of the step's samples, all data-parallel ranks). Lightning's own
    bars count batches of an epoch, which a step-budgeted run over a streamed data set does not have."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self.bar = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        if self._enabled and trainer.is_global_zero:
            from tqdm.auto import tqdm

            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
            self.bar = tqdm(total=total, initial=trainer.global_step, desc="train", unit="step", dynamic_ncols=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        cfg = pl_module.dit_config
        x = batch["target_latents"]
        replicas = getattr(pl_module, "data_parallel_size", trainer.world_size)
        tokens = replicas * x.shape[0] * (tokens_of(cfg, x.shape) + tokens_of(cfg, batch["source_latents"].shape))
        loss = outputs.get("sample_loss", outputs.get("loss")) if isinstance(outputs, dict) else outputs
        rate = self.bar.format_dict.get("rate")
        postfix = {"loss": f"{float(loss):.4f}"} if loss is not None else {}
        if rate:
            postfix["tokens/s"] = f"{rate * tokens:,.0f}"
        self.bar.set_postfix(postfix, refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ValidationEditCallback(pl.Callback):
    """Every `every_n_steps`, edits held-out pairs with the current weights and logs the videos.

    Each rank edits its own share (`held-out[rank::world_size]`, padded by repetition to the same
    count on every rank, so ZeRO-3's collectives inside the forward stay in step) and writes
    `<run_dir>/validation/step-XXXXXXX/<key>.mp4` (source | edit side by side); no rank waits on
    another (finetrainers' users hit NCCL timeouts when validation ran on one GPU). Rank 0 logs its
    videos to the logger.
    """

    def __init__(self, run_dir: str, every_n_steps: int, num_samples: int, vae_path: Optional[str], steps: int = 20,
                 guidance_scale: float = 2.5, shift: float = 5.0, sampler: str = "unipc", fps: float = 16.0, use_ema: bool = True):
        self.run_dir, self.every, self.num_samples = Path(run_dir), int(every_n_steps), int(num_samples)
        self.vae_path, self.steps, self.guidance, self.shift, self.sampler = vae_path, int(steps), float(guidance_scale), float(shift), sampler
        self.fps, self.use_ema = float(fps), bool(use_ema)
        self._vae = None
        self._samples = None
        self._sources = None
        self._negative = None
        self._last = None  # the step of the last validation (accumulation batches share a step)

    def setup(self, trainer, pl_module, stage: str) -> None:
        from liveditor.pipeline.components import check_wan_dir

        check_wan_dir(self.vae_path, "model.vae_path (validation decodes edits with the VAE)", ["vae"])

    @torch.no_grad()
    def _load(self, trainer, pl_module):
        from liveditor.pipeline.components import WanVAE
        from liveditor.pipeline.preprocess import to_uint8_frames

        if self._vae is None:
            self._vae = WanVAE.load(self.vae_path, device=pl_module.device, key="model.vae_path")
            dm = trainer.datamodule
            held_out = dm.held_out(self.num_samples)
            if not held_out:
                raise ValueError("validation needs held-out samples: set data.holdout_shards >= 1 (or validation.every_n_steps=0)")
            # by data-parallel rank: the ranks of a sequence-parallel group edit the same pairs together
            rank, world = pl_module.data_parallel_rank, pl_module.data_parallel_size
            mine = held_out[rank::world] or held_out[:1]
            count = -(-len(held_out) // world)
            self._samples = [mine[i % len(mine)] for i in range(count)]
            self._negative = dm.text_defaults()["negative"]
            # the sources do not change between validations: decode them once
            self._sources = [to_uint8_frames(self._vae.decode(s.source_latents.float().unsqueeze(0).to(pl_module.device))[0])
                             for s in self._samples]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every <= 0 or step == 0 or step % self.every or self._last == step:
            return
        self._last = step
        self.run(trainer, pl_module, step)

    @torch.no_grad()
    def run(self, trainer, pl_module, step: int) -> list[Path]:
        import numpy as np

        from liveditor.pipeline.preprocess import to_uint8_frames
        from liveditor.pipeline.sampling import Expert, sample_edit
        from liveditor.video import write_video

        self._load(trainer, pl_module)
        model = pl_module.model
        backup = None
        ema = getattr(pl_module, "ema", None)
        if self.use_ema and ema is not None:
            backup = ema.backup(model)
            ema.copy_to(model)
        was_training = model.training
        model.eval()
        out_dir = self.run_dir / "validation" / f"step-{step:07d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        try:
            for i, sample in enumerate(self._samples):
                device = pl_module.device
                g = torch.Generator().manual_seed(i)
                noise = torch.randn(sample.target_latents.shape, generator=g).unsqueeze(0).to(device)
                latents = sample_edit(
                    [Expert(model)], noise, sample.source_latents.float().unsqueeze(0).to(device),
                    sample.text_embedding.unsqueeze(0).to(device), self._negative.unsqueeze(0).to(device),
                    steps=self.steps, sampler=self.sampler, shift=self.shift, guidance_scale=self.guidance, progress=False,
                )
                edit = to_uint8_frames(self._vae.decode(latents)[0])
                source = self._sources[i]
                path = out_dir / f"{sample.key}.rank{trainer.global_rank}.mp4"
                write_video(path, np.concatenate([source, edit], axis=2), fps=self.fps)
                written.append(path)
        finally:
            if backup is not None:
                ema.restore(model, backup)
            model.train(was_training)
        if trainer.global_rank == 0 and trainer.logger is not None and hasattr(trainer.logger, "log_video"):
            try:
                trainer.logger.log_video("validation/edits", [str(p) for p in written], step=step, caption=[p.stem for p in written])
            except Exception as exc:  # a logger without video support must not stop training
                log.warning("could not log validation videos to %s: %s", type(trainer.logger).__name__, exc)
        log.info("validation at step %d: %d edits in %s", step, len(written), out_dir)
        return written

